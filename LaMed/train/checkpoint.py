"""Checkpoints that are either complete or ignored, resume discovery, trainable-only weights.

The stock Trainer writes ``checkpoint-N/`` file by file, so a crash during a save leaves a folder
that ``get_last_checkpoint`` happily resumes from. LaMed's Trainer lets the stock code write the
folder, waits for every process, and only then writes :data:`COMPLETE_MARKER` (atomically: a
temporary file renamed over) listing every file with its size. A checkpoint counts as complete
only if the marker exists and every listed file still has its size. Rotation
(``save_total_limit``) runs after the marker, over complete checkpoints only, so a crash can never
delete the last good checkpoint in favour of a half-written one.

Test hook: ``LAMED_FAULT_INJECT=kill_in_save:N`` SIGKILLs the process in the middle of writing
checkpoint N (after the weights, before the optimizer state and the marker);
``kill_after_step:N`` SIGKILLs it right after optimizer step N (see ``maybe_inject_fault``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_path, atomic_write_text

logger = logging.getLogger("LaMed.train")

COMPLETE_MARKER = "lamed_checkpoint.json"
TRAINABLE_WEIGHTS = "trainable.safetensors"
TRAINABLE_MANIFEST = "trainable_manifest.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
FAULT_ENV = "LAMED_FAULT_INJECT"


def _file_sizes(folder: Path) -> dict[str, int]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != COMPLETE_MARKER and not p.name.endswith(".tmp"):
            out[str(p.relative_to(folder))] = p.stat().st_size
    return out


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def mark_complete(folder: str | Path, step: int, **info: Any) -> None:
    """Write the completion marker of checkpoint ``folder`` (call once every process has saved).

    The marker lists every file with its size (cheap completeness check) and its SHA-256 (checked
    by :func:`verify_checkpoint` before a resume: a file damaged without a size change, by a bad
    disk or a copy gone wrong, must not be trained on). Hashing reads the folder once more, at
    about the speed it was written.
    """
    folder = Path(folder)
    sizes = _file_sizes(folder)
    record = {
        "format": "lamed.checkpoint/2",
        "step": int(step),
        **info,
        "files": sizes,
        "sha256": {rel: _sha256(folder / rel) for rel in sizes},
    }
    atomic_write_text(folder / COMPLETE_MARKER, json.dumps(record, indent=1))


class CheckpointError(ValueError):
    """A checkpoint that must not be resumed from; the message names the folder, file and problem."""


def verify_checkpoint(folder: str | Path) -> None:
    """Refuse a checkpoint whose files no longer match the hashes written at save time, or whose
    weights hold NaN / infinite values (a run that diverged and saved, or a damaged file).

    Markers written before hashes existed (``lamed.checkpoint/1``) are checked for sizes only.
    """
    from safetensors import safe_open

    folder = Path(folder)
    if not is_complete(folder):
        raise CheckpointError(
            f"{folder}: incomplete checkpoint (files listed in {COMPLETE_MARKER} are missing or have another size)"
        )
    record = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
    bad = [rel for rel, want in (record.get("sha256") or {}).items() if _sha256(folder / rel) != want]
    if bad:
        raise CheckpointError(
            f"{folder}: {', '.join(bad)} changed since the checkpoint was saved (SHA-256 differs "
            f"from {COMPLETE_MARKER}); resume from an earlier checkpoint with "
            f"--resume <folder>, or delete this one"
        )
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                t = f.get_tensor(key)
                if t.is_floating_point() and not bool(t.isfinite().all()):
                    raise CheckpointError(
                        f"{path}: tensor '{key}' holds NaN or infinite values; the run diverged "
                        f"before this save. Resume from an earlier checkpoint with --resume "
                        f"<folder> (and a lower learning rate), or delete this one"
                    )


def is_complete(folder: str | Path) -> bool:
    """True if ``folder`` has a valid marker and every file it lists is present with its size."""
    folder = Path(folder)
    try:
        record = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for rel, size in files.items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders in ``output_dir``, oldest (smallest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir`` (what ``resume: auto`` continues from)."""
    complete = [p for p in list_checkpoints(output_dir) if is_complete(p)]
    return complete[-1] if complete else None


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete checkpoint folders without a valid marker (left by a crash during a save)."""
    removed = []
    for p in list_checkpoints(output_dir):
        if not is_complete(p):
            logger.warning("removing incomplete checkpoint %s (interrupted while saving)", p)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def rotate_checkpoints(output_dir: str | Path, limit: int | None, keep: Iterable[str | Path] = ()) -> list[Path]:
    """Keep the ``limit`` newest complete checkpoints (plus ``keep``, e.g. the best one); delete the rest.

    Incomplete folders older than the newest complete checkpoint are deleted too.
    """
    if not limit or limit <= 0:
        return []
    ckpts = list_checkpoints(output_dir)
    complete = [p for p in ckpts if is_complete(p)]
    protected = {Path(k).resolve() for k in keep if k} | {p.resolve() for p in complete[-limit:]}
    newest = complete[-1] if complete else None
    removed = []
    for p in ckpts:
        if p.resolve() in protected:
            continue
        if p in complete or (
            newest is not None
            and int(CHECKPOINT_RE.match(p.name).group(1)) < int(CHECKPOINT_RE.match(newest.name).group(1))
        ):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def maybe_inject_fault(point: str, step: int) -> None:
    """Kill this process with SIGKILL if ``LAMED_FAULT_INJECT`` asks for ``point`` at ``step``.

    Only for tests of crash recovery: ``LAMED_FAULT_INJECT=kill_in_save:4`` or ``kill_after_step:3``.
    A missing or different value does nothing.
    """
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    want, _, at = spec.partition(":")
    if want == point and at.strip().isdigit() and int(at) == int(step):
        logger.warning("%s=%s: killing process %d now", FAULT_ENV, spec, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


# ---- trainable-only weights -------------------------------------------------------------------


def trainable_parameter_names(model) -> list[str]:
    """Names of parameters with ``requires_grad`` (state_dict naming, as ``named_parameters`` gives)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def save_trainable(
    model,
    output_dir: str | Path,
    state_dict: dict[str, Any] | None = None,
    base_checkpoints: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the trainable parameters to ``trainable.safetensors`` and a JSON manifest.

    The manifest records the model class, the trainable and frozen parameter names and where the
    frozen parts come from (``base_checkpoints``: ``{module prefix: path or hub id}``), so that the
    full model is the base rebuilt from those sources plus these weights (:func:`load_trainable`).
    ``state_dict`` may be given (e.g. gathered from ZeRO-3 shards); otherwise ``model.state_dict()``.
    """
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = trainable_parameter_names(model)
    source = state_dict if state_dict is not None else model.state_dict()
    missing = [n for n in names if n not in source]
    if missing:
        raise KeyError(f"save_trainable: trainable parameters not in the state_dict: {missing[:5]}")
    tensors = {n: source[n].detach().cpu().contiguous() for n in names}
    with atomic_path(output_dir / TRAINABLE_WEIGHTS, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    manifest = {
        "format": "lamed.trainable/1",
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "base_checkpoints": dict(base_checkpoints or {}),
        "trainable": names,
        "num_trainable": int(sum(t.numel() for t in tensors.values())),
        "frozen": frozen,
        **(extra or {}),
    }
    atomic_write_text(output_dir / TRAINABLE_MANIFEST, json.dumps(manifest, indent=1))
    return output_dir / TRAINABLE_WEIGHTS


def load_trainable(model, folder: str | Path) -> dict[str, Any]:
    """Load ``trainable.safetensors`` from ``folder`` into ``model`` (the rebuilt frozen base).

    Strict on the saved keys: every saved tensor must exist in the model with the same shape, and
    every parameter the manifest lists as trainable must be in the file. Returns the manifest.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        manifest = json.loads((folder / TRAINABLE_MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no {TRAINABLE_MANIFEST} (not a save_trainable_only checkpoint)") from None
    tensors = load_file(str(folder / TRAINABLE_WEIGHTS))
    absent = [n for n in manifest["trainable"] if n not in tensors]
    if absent:
        raise KeyError(f"{folder / TRAINABLE_WEIGHTS}: missing trainable tensors {absent[:5]}")
    own = model.state_dict()
    unexpected = [n for n in tensors if n not in own]
    if unexpected:
        raise KeyError(
            f"{folder / TRAINABLE_WEIGHTS}: tensors the model does not have: {unexpected[:5]} "
            f"(model class {type(model).__name__}, saved from {manifest.get('model_class')})"
        )
    shapes = [
        f"{n}: saved {tuple(t.shape)} vs model {tuple(own[n].shape)}"
        for n, t in tensors.items()
        if tuple(t.shape) != tuple(own[n].shape)
    ]
    if shapes:
        raise ValueError(f"{folder / TRAINABLE_WEIGHTS}: shape mismatch: {shapes[:5]}")
    model.load_state_dict(tensors, strict=False)
    return manifest
