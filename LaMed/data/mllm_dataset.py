"""Datasets for the multimodal LLM: report generation, VQA and positioning over the prepared format.

One class, :class:`MLLMDataset`, turns a prepared manifest into (volume, question, answer) samples
of one ``task``; the tokenisation and label masking are the processor's (written once):

* ``caption``: the item's ``text`` (report), asked with a caption template;
* ``vqa_closed`` / ``vqa_open`` / ``vqa_yes_no`` / ``vqa`` (all three): one sample per VQA pair;
  closed questions get the M3D format ``"Q Choices: A. .. D. .."`` and the answer ``"B. text"``;
  with ``conversation_turns=N > 1`` one sample holds up to N of an item's pairs as a multi-turn
  conversation (LLaVA style: the volume is encoded once for N supervised answers);
* ``rec`` / ``reg`` (positioning): structure name -> box text ``<bx_start>[..]<bx_end>``, and back.

:class:`MixtureDataset` mixes several of them with explicit weights. :func:`flare_items` and
:func:`radgenome_items` read the FLARE 2025 Task 5 and RadGenome-ChestCT VQA JSON formats into the
same item layout, so the same class serves them (``MLLMDataset.from_items``).

Samples are dicts ``{"input_ids", "labels", "attention_mask", "images" (1, D, H, W) float32}``;
:meth:`MLLMDataset.record` gives the untokenised ``{"id", "question", "answer", "kind", ...}``
that the evaluation front ends use.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from LaMed.data import prompts
from LaMed.data.checks import require_text, require_unit_interval

TASKS = ("caption", "vqa", "vqa_closed", "vqa_open", "vqa_yes_no", "rec", "reg")
_VQA_TYPES = {
    "vqa": ("closed", "open", "yes_no"),
    "vqa_closed": ("closed",),
    "vqa_open": ("open",),
    "vqa_yes_no": ("yes_no",),
}


@dataclass
class Sample:
    """One (item, sub-index) pair: ``sub`` is the VQA pair index or the box's structure name."""

    item: int
    sub: int | str | None = None


class MLLMDataset:
    """Map-style dataset of one ``task`` over prepared items.

    Args:
        manifest: a prepared manifest (``<out>/<split>.json``).
        processor: a :class:`~LaMed.models.mllm.processing.LaMedProcessor` (``None``: only
            :meth:`record` works, e.g. to list the questions of a test split).
        task: one of :data:`TASKS`.
        train: random templates per sample (seeded by ``seed`` and the index) and optional
            augmentation; ``False`` uses the first template (deterministic evaluation).
        augment: intensity scale/shift (0.1, p 0.5 each) as in M3D; geometric flips are left out
            because they would contradict left/right statements in the texts.
        load_images: ``False`` skips reading volumes (text-only checks).
        closed_answer: ``"letter"`` (published M3D format ``"B. arterial"``) or ``"text"`` (the
            option text alone, ``"arterial"``; still scored by the choice it names).
        conversation_turns: VQA tasks only: group an item's questions into multi-turn samples of
            up to this many turns (shuffled per sample in training); 1 = one question per sample.
    """

    def __init__(
        self,
        manifest: str | Path | None,
        processor=None,
        task: str = "caption",
        train: bool = True,
        seed: int = 0,
        augment: bool = False,
        load_images: bool = True,
        items: list[dict] | None = None,
        root: str | Path | None = None,
        closed_answer: str = "letter",
        conversation_turns: int = 1,
    ):
        if task not in TASKS:
            raise ValueError(f"MLLMDataset: task must be one of {TASKS}, got {task!r}")
        if items is None:
            from LaMed.data.prepared import load_manifest

            if manifest is None:
                raise ValueError("MLLMDataset: pass a manifest path or items")
            self.manifest_path = Path(manifest)
            items = load_manifest(self.manifest_path)["items"]
            root = self.manifest_path.parent
        else:
            self.manifest_path = Path(manifest) if manifest else None
        self.root = Path(root) if root is not None else Path(".")
        self.items = items
        self.processor, self.task, self.train, self.seed = processor, task, train, seed
        self.augment, self.load_images = augment, load_images
        if closed_answer not in ("letter", "text"):
            raise ValueError(f"MLLMDataset: closed_answer must be 'letter' or 'text', got {closed_answer!r}")
        self.closed_answer = closed_answer
        if int(conversation_turns) < 1:
            raise ValueError(f"MLLMDataset: conversation_turns must be >= 1, got {conversation_turns!r}")
        self.turns = int(conversation_turns) if task in _VQA_TYPES else 1
        self.samples = self._index()
        if not self.samples:
            where = self.manifest_path or "items"
            raise ValueError(f"{where}: no sample for task '{task}' (items lack the field it needs)")

    @classmethod
    def from_items(cls, items: list[dict], root: str | Path, processor=None, **kwargs) -> MLLMDataset:
        """Build from manifest-like items (e.g. :func:`flare_items`); image paths resolve against ``root``."""
        return cls(None, processor, items=items, root=root, **kwargs)

    # ---- indexing --------------------------------------------------------------------------
    def _index(self) -> list[Sample]:
        out: list[Sample] = []
        for i, it in enumerate(self.items):
            if self.task == "caption":
                if "text" in it:  # a blank report is indexed and refused when read (counted, never dropped)
                    out.append(Sample(i))
            elif self.task in _VQA_TYPES:
                js = [j for j, qa in enumerate(it.get("vqa", [])) if qa.get("type") in _VQA_TYPES[self.task]]
                if self.turns > 1:
                    out += [Sample(i, tuple(js[k : k + self.turns])) for k in range(0, len(js), self.turns)]
                else:
                    out += [Sample(i, j) for j in js]
            else:
                out += [Sample(i, name) for name in sorted(it.get("boxes", {}))]
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def sample_path(self, index: int) -> str:
        """The file that identifies sample ``index`` in bad-sample reports."""
        it = self.items[self.samples[index].item]
        return str(self.root / it["image"]) if "image" in it else f"{self.manifest_path}#{it.get('id')}"

    # ---- text ------------------------------------------------------------------------------
    def _rng(self, index: int) -> random.Random | None:
        return random.Random(self.seed * 1_000_003 + index) if self.train else None

    def record(self, index: int) -> dict[str, Any]:
        """Untokenised sample: ``{"id", "question", "answer", "kind", "index"[, "vqa_index", "choices",
        "answer_choice", "vqa_type", "topic", "target", "box"]}``."""
        s = self.samples[index]
        it = self.items[s.item]
        rng = self._rng(index)
        rec: dict[str, Any] = {"id": it["id"], "index": index, "kind": self.task}
        if self.task == "caption":
            rec.update(
                question=prompts.pick(it.get("caption_prompts") or prompts.CAPTION_TEMPLATES, rng), answer=it["text"]
            )
        elif self.task in _VQA_TYPES and isinstance(s.sub, tuple):
            order = list(s.sub)
            if rng is not None:
                rng.shuffle(order)
            turns = [self._vqa_record(it["vqa"][j], j) for j in order]
            rec.update(
                turns=[(t["question"], t["answer"]) for t in turns],
                question=turns[0]["question"],
                answer=turns[0]["answer"],
                vqa_indices=order,
            )
        elif self.task in _VQA_TYPES:
            rec.update(self._vqa_record(it["vqa"][s.sub], s.sub))
        else:
            from LaMed.models.mllm.processing import format_box

            box = it["boxes"][s.sub]
            fill = dict(target=s.sub.replace("_", " "), box=format_box(box))
            if self.task == "rec":
                q, a = prompts.pick(prompts.REC_TEMPLATES, rng), prompts.pick(prompts.REC_ANSWERS, rng)
            else:
                q, a = prompts.pick(prompts.REG_TEMPLATES, rng), prompts.pick(prompts.REG_ANSWERS, rng)
            rec.update(question=q.format(**fill), answer=a.format(**fill), target=s.sub, box=list(box))
        return rec

    def _vqa_record(self, qa: dict[str, Any], index: int) -> dict[str, Any]:
        q, a = qa["question"], str(qa["answer"])
        rec: dict[str, Any] = {}
        if qa.get("type") == "closed" and qa.get("choices"):
            q = prompts.closed_question(q, qa["choices"])
            if qa.get("answer_choice") and self.closed_answer == "letter":
                a = prompts.closed_answer(qa["answer_choice"], a)
            rec.update(choices=qa["choices"], answer_choice=qa.get("answer_choice"))
        rec.update(
            question=q,
            answer=a,
            vqa_index=index,
            vqa_type=qa.get("type"),
            topic=qa.get("topic"),
            reference=str(qa["answer"]),
        )
        return rec

    # ---- image -----------------------------------------------------------------------------
    def load_image(self, index: int):
        """``(1, D, H, W)`` float32 tensor in [0, 1] of sample ``index``."""
        import torch

        it = self.items[self.samples[index].item]
        path = self.root / it["image"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image not found (item {it['id']!r})")
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 4 or arr.shape[0] != 1:
            raise ValueError(f"{path}: expected an image of shape (1, D, H, W), got {arr.shape}")
        img = torch.from_numpy(np.asarray(arr, dtype=np.float32))
        require_unit_interval(img.numpy(), str(path))
        if self.train and self.augment:
            g = torch.Generator().manual_seed(self.seed * 7919 + index)
            if torch.rand((), generator=g) < 0.5:
                img = img * (1 + (torch.rand((), generator=g) * 0.2 - 0.1))
            if torch.rand((), generator=g) < 0.5:
                img = img + (torch.rand((), generator=g) * 0.2 - 0.1)
        return img

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.processor is None:
            raise RuntimeError("MLLMDataset was built without a processor; use record(i) or pass one")
        rec = self.record(index)
        where = self.sample_path(index)
        for q, a in rec.get("turns") or [(rec["question"], rec["answer"])]:
            require_text(q, "question", where)
            require_text(a, "report" if self.task == "caption" else "answer", where)
        if "turns" in rec:
            out = dict(self.processor.encode_conversation(rec["turns"]))
        else:
            out = dict(self.processor.encode_example(rec["question"], rec["answer"]))
        if self.load_images:
            out["images"] = self.load_image(index)
            sf = self.items[self.samples[index].item].get("slice_features")
            if sf:
                import torch

                out["slice_features"] = torch.from_numpy(np.load(self.root / sf).astype(np.float32))
        return out


class MixtureDataset:
    """Weighted mixture of datasets with a fixed, seeded schedule.

    ``weights`` are relative sampling rates; ``length`` defaults to the sum of the lengths (so one
    "epoch" sees about as many samples as a plain concatenation). Within each dataset the samples
    are taken in a seeded permutation, cycling when a dataset is used more often than its size.
    """

    def __init__(
        self, datasets: Sequence[Any], weights: Sequence[float] | None = None, length: int | None = None, seed: int = 0
    ):
        if not datasets:
            raise ValueError("MixtureDataset needs at least one dataset")
        weights = [1.0] * len(datasets) if weights is None else [float(w) for w in weights]
        if len(weights) != len(datasets) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"MixtureDataset: weights must be {len(datasets)} non-negative numbers with a positive sum, got {weights}"
            )
        self.datasets = list(datasets)
        n = int(length) if length is not None else sum(len(d) for d in datasets)
        rng = np.random.default_rng(seed)
        p = np.asarray(weights) / sum(weights)
        which = rng.choice(len(datasets), size=n, p=p)
        perms = [rng.permutation(len(d)) for d in datasets]
        counters = [0] * len(datasets)
        self.schedule: list[tuple[int, int]] = []
        for d in which.tolist():
            self.schedule.append((d, int(perms[d][counters[d] % len(perms[d])])))
            counters[d] += 1

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, index: int):
        d, i = self.schedule[index]
        return self.datasets[d][i]

    def sample_path(self, index: int) -> str:
        d, i = self.schedule[index]
        ds = self.datasets[d]
        return ds.sample_path(i) if hasattr(ds, "sample_path") else f"dataset {d} index {i}"


# ---- other source formats ---------------------------------------------------------------------
def _answer_text(answer: Any) -> str:
    return ", ".join(map(str, answer)) if isinstance(answer, (list, tuple)) else str(answer)


def flare_items(json_path: str | Path, image_dir: str = "") -> list[dict]:
    """FLARE 2025 Task 5 JSON (a list of cases) -> prepared-style items.

    A case ``{"case_id", "findings": {region: text}, "global_vqa": [...], "local_vqa": [...]}`` becomes
    ``{"id", "image": image_dir/<case_id>.npy, "text": "region: text" lines, "vqa": [...]}``; list answers
    are joined with ", "; questions with ``choices`` are closed (choices shown as given).
    """
    path = Path(json_path)
    cases = json.loads(path.read_text())
    if not isinstance(cases, list):
        raise ValueError(f"{path}: a FLARE Task 5 file is a JSON list of cases, got {type(cases).__name__}")
    items = []
    for k, case in enumerate(cases):
        if "case_id" not in case:
            raise ValueError(f"{path}: case {k} has no 'case_id'")
        stem = Path(str(case["case_id"])).name
        for suffix in (".nii.gz", ".nii", ".npy"):
            stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
        findings = case.get("findings") or {}
        text = "\n".join(f"{r}: {t}" for r, t in findings.items()) if isinstance(findings, dict) else str(findings)
        vqa = []
        for qa in list(case.get("global_vqa") or []) + list(case.get("local_vqa") or []):
            q = qa["question"] + (f" Choices: {qa['choices']}" if qa.get("choices") else "")
            vqa.append({"question": q, "answer": _answer_text(qa["answer"]), "type": "open", "topic": "flare"})
        item = {
            "id": stem,
            "image": str(Path(image_dir) / f"{stem}.npy"),
            "vqa": vqa,
            "caption_prompts": [prompts.FLARE_REPORT_PROMPT],
        }
        if text:
            item["text"] = text
        items.append(item)
    return items


def radgenome_items(json_path: str | Path, split: str = "train", seed: int = 0) -> list[dict]:
    """RadGenome-ChestCT location VQA (HSENet) ``{split: [{"image", "biomedclip_features", "anatomy",
    "abnormality"}]}`` -> items with one open question ("where is the {abnormality}?", answer = anatomy)."""
    path = Path(json_path)
    data = json.loads(path.read_text())
    if split not in data:
        raise ValueError(f"{path}: no split '{split}' (has {sorted(data)})")
    rng = random.Random(seed)
    items = []
    for k, r in enumerate(data[split]):
        for key in ("image", "anatomy", "abnormality"):
            if key not in r:
                raise ValueError(f"{path}: {split}[{k}] has no '{key}'")
        q = prompts.pick(prompts.RADGENOME_TEMPLATES, rng).format(abnormality=r["abnormality"])
        item = {
            "id": f"{Path(r['image']).stem}_{k}",
            "image": r["image"],
            "vqa": [{"question": q, "answer": r["anatomy"], "type": "open", "topic": "location"}],
        }
        if r.get("biomedclip_features"):
            item["slice_features"] = r["biomedclip_features"]
        items.append(item)
    return items


__all__ = ["MLLMDataset", "MixtureDataset", "flare_items", "radgenome_items", "TASKS"]
