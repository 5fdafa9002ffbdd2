"""Resolve a model given as a local folder or a Hugging Face hub id to a local folder.

``resolve_model(path_or_id)``: an existing folder is returned as it is (it must hold a
``config.json``); anything else of the form ``owner/name`` is fetched with
``huggingface_hub.snapshot_download`` into the standard cache (``HF_HOME`` / ``HF_HUB_CACHE``),
so a second call, or any call with ``HF_HUB_OFFLINE=1``, reads the cache without the network.
When offline and not cached the error says so and how to fix it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_model(
    path_or_id: str | Path,
    revision: str | None = None,
    cache_dir: str | None = None,
    required_file: str = "config.json",
) -> Path:
    """Local folder of a model given as a folder path or a hub id (see module docstring).

    Raises:
        FileNotFoundError: a path that does not exist and is not a hub id; a folder without
            ``required_file``; a hub id that is not cached while offline (message names the cache).
        ValueError: the hub could not be reached or refused the id.
    """
    text = str(path_or_id)
    p = Path(text).expanduser()
    if p.exists():
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: a model is a folder (with {required_file}), not a file")
        if required_file and not (p / required_file).is_file():
            raise FileNotFoundError(f"{p}: not a model folder (no {required_file})")
        return _checked(p, required_file)
    if not _HUB_ID.match(text):
        raise FileNotFoundError(f"{text}: no such model folder, and not a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = cache_dir or HF_HUB_CACHE
    offline = is_offline()
    try:
        folder = snapshot_download(text, revision=revision, cache_dir=cache_dir, local_files_only=offline)
    except Exception as exc:  # huggingface_hub raises several types (LocalEntryNotFound, HTTP, ...)
        if offline or type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            raise FileNotFoundError(
                f"{text}: not in the local Hugging Face cache ({cache}) and the hub is offline "
                "(HF_HUB_OFFLINE=1); download it once on a machine with network access "
                f"(`huggingface-cli download {text}`) and copy the cache, or pass a local folder"
            ) from None
        raise ValueError(
            f"{text}: could not download from the Hugging Face hub ({type(exc).__name__}: {exc})"
        ) from None
    folder = Path(folder)
    if required_file and not (folder / required_file).is_file():
        raise FileNotFoundError(f"{text}: the downloaded snapshot {folder} has no {required_file}")
    return _checked(folder, required_file)


def _checked(folder: Path, required_file: str) -> Path:
    """A model folder whose config.json and safetensors headers are sound (see LaMed.utils.model_files)."""
    if required_file == "config.json":
        from LaMed.utils.model_files import check_model_folder

        check_model_folder(folder)
    return folder
