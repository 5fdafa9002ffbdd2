"""Reasoning-segmentation samples (question -> answer with ``[SEG]`` + target masks) over the prepared format.

:class:`ReasonSegDataset` turns a prepared manifest into samples of one ``task``:

* ``refer`` (M3D-RefSeg style): the item's ``refer`` entries, referring expressions ("the organ that
  stores bile") and reasoning questions ("Which organ would be removed in a cholecystectomy?
  Segment it."), each with its ``target`` mask. A noun phrase is wrapped in a question template;
  a full sentence is asked as it is. When the text does not name the target (an implicit
  reference), the answer names it before the ``[SEG]`` (R1Seg-3D's description samples:
  "The target is the gallbladder and the segmentation mask is [SEG].").
* ``seg`` (M3D-Seg style): one sample per mask, "Can you segment the liver in this image?" ->
  "It is [SEG]."; with ``multi_target`` > 0 that share of samples asks for two structures and
  is answered with two ``[SEG]`` (one mask each, in answer order).

``negatives=True`` adds, per item, a question about each structure of the vocabulary (``classes``,
default every mask name seen in the manifest without a digit) that the item lacks (e.g. a
surgically absent organ), answered without ``[SEG]``: no mask, no segmentation loss.
``absent_probes=n`` (training) adds, for each such question, n *probes*: the same question with a
present-style answer ("The spleen is [SEG].") whose ``[SEG]`` gets an **empty** target and whose
answer tokens carry no LM loss (only the closing end-of-sequence token does). The LLM is not taught
to say ``[SEG]`` for an absent organ; the mask decoder is taught to find nothing there, which is
what the presence gate of generation reads (``LaMedSegConfig.presence_gate``).

Samples are the MLLM dicts (``input_ids``, ``labels``, ``attention_mask``, ``images`` (1, D, H, W)
float32) plus ``seg_masks`` uint8 ``(K, D, H, W)`` (K = number of ``[SEG]`` in the answer, 0 for
a negative). :class:`ReasonSegCollator` batches them with report / VQA samples of
``LaMed.data.mllm_dataset`` (which have no ``seg_masks``) into the model's ``seg_masks`` ``(B, K, D, H, W)``
and ``seg_valid`` ``(B, K)``. Templates are this project's wording (training: a seeded random one;
evaluation: the first).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from LaMed.data.prepared import load_image, load_manifest, load_masks
from LaMed.models.mllm.processing import IGNORE_INDEX, MLLMCollator

SEG = "[SEG]"
TASKS = ("refer", "seg")

SEG_QUESTIONS = (
    "Can you segment the {target} in this image?",
    "Please segment the {target}.",
    "Where is the {target}? Please output its mask.",
    "Segment the {target} in this scan.",
    "Could you provide a segmentation of the {target}?",
    "Show me the mask of the {target}.",
)
SEG_ANSWERS = ("It is [SEG].", "Sure, [SEG].", "Sure, it is [SEG].", "The {target} is [SEG].")
NAMED_SEG_ANSWERS = ("The {target} is [SEG].", "Sure, the {target} is [SEG].")
REFER_QUESTIONS = (
    "Please segment {text}.",
    "Can you segment {text} in this image?",
    "Where is {text}? Please segment it.",
    "Segment {text} in this scan.",
)
REFER_ANSWERS = ("It is [SEG].", "Sure, [SEG].")
NAMED_ANSWERS = ("The target is the {target} and the segmentation mask is [SEG].", "It is the {target}: [SEG].")
MULTI_QUESTIONS = ("Please segment the {a} and the {b}.", "Can you segment the {a} and the {b} in this image?")
MULTI_ANSWERS = ("The {a} is [SEG] and the {b} is [SEG].", "Sure, {a}: [SEG], {b}: [SEG].")
NEGATIVE_ANSWERS = ("There is no {target} in this image.", "The {target} is not present in this scan.")
ANSWER_STYLES = ("auto", "short", "named")


def _seg_count(sample: ReasonSample) -> int:
    """``[SEG]`` tokens the sample's answer holds: one per target, one for a probe."""
    return 1 if sample.kind == "probe" else len(sample.targets)


def display_name(name: str) -> str:
    """Structure name as written in a sentence: ``kidney_right`` -> ``right kidney``."""
    m = re.fullmatch(r"(.+)_(left|right)", name)
    return f"{m.group(2)} {m.group(1).replace('_', ' ')}" if m else name.replace("_", " ")


def _pick(options: Sequence[str], rng: random.Random | None) -> str:
    return options[0] if rng is None else options[rng.randrange(len(options))]


@dataclass
class ReasonSample:
    """One sample: the item index, the question kind and its target structure(s) (none: negative)."""

    item: int
    kind: str  # "refer" | "seg" | "multi" | "negative" | "probe"
    targets: list[str] = field(default_factory=list)
    text: str = ""  # the refer entry's text, or the negative's structure name


class ReasonSegDataset:
    """Map-style reasoning-segmentation dataset of one ``task`` (see the module docstring).

    Args:
        manifest: prepared manifest (``<out>/<split>.json``).
        processor: a :class:`~LaMed.models.mllm.processing.LaMedProcessor` (``None``: only
            :meth:`record` works).
        task: ``"refer"`` or ``"seg"``.
        train: random templates per sample (seeded by ``seed`` and the index) and optional augmentation;
            ``False``: the first template (deterministic evaluation).
        classes: structures to use (default: all masks); also the negatives' vocabulary.
        negatives: add questions about absent structures, answered without ``[SEG]``.
        negative_repeat: each such question this many times per epoch (absent organs are rare -- a
            few % of the phantoms -- and a model that always answers ``[SEG]`` would otherwise
            never be told otherwise often enough to learn it).
        absent_probes: with ``negatives`` and ``train``, this many probes per absent-structure
            question (see the module docstring; 0: none). Counted apart from ``negative_repeat``: a
            model whose presence gate decides wants many probes for its decoder but few negative
            answers, so that its LLM keeps answering ``[SEG]`` and leaves the decision to the gate.
        multi_target: share of ``seg`` samples that ask for two structures (two ``[SEG]``).
        answer_style: ``"auto"`` (name the target when the question does not), ``"short"`` or ``"named"``
            (always name it right before ``[SEG]``, for ``seg`` samples too: the state that predicts
            ``[SEG]`` then follows the name, which a small LLM learns much sooner).
        augment: intensity scale / shift (0.1, p 0.5 each); no flips (they would swap left / right).
    """

    def __init__(
        self,
        manifest: str | Path,
        processor=None,
        task: str = "refer",
        train: bool = True,
        seed: int = 0,
        classes: Sequence[str] | None = None,
        negatives: bool = False,
        multi_target: float = 0.0,
        answer_style: str = "auto",
        augment: bool = False,
        load_images: bool = True,
        negative_repeat: int = 1,
        absent_probes: int = 0,
    ):

        if int(negative_repeat) < 1:
            raise ValueError(f"ReasonSegDataset: negative_repeat must be at least 1, got {negative_repeat}")
        if int(absent_probes) < 0:
            raise ValueError(f"ReasonSegDataset: absent_probes must be 0 or more, got {absent_probes}")

        if task not in TASKS:
            raise ValueError(f"ReasonSegDataset: task must be one of {TASKS}, got {task!r}")
        if answer_style not in ANSWER_STYLES:
            raise ValueError(f"ReasonSegDataset: answer_style must be one of {ANSWER_STYLES}, got {answer_style!r}")
        if not 0.0 <= float(multi_target) <= 1.0:
            raise ValueError(f"ReasonSegDataset: multi_target is a share in [0, 1], got {multi_target}")
        self.manifest_path = Path(manifest)
        self.items = load_manifest(self.manifest_path)["items"]
        self.root = self.manifest_path.parent
        self.processor, self.task, self.train, self.seed = processor, task, train, int(seed)
        self.answer_style, self.augment, self.load_images = answer_style, augment, load_images
        self.multi_target = float(multi_target)
        wanted = set(classes) if classes else None
        vocab = (
            sorted(wanted)
            if wanted
            else sorted({n for it in self.items for n in it.get("masks", {}) if not any(ch.isdigit() for ch in n)})
        )
        self.samples: list[ReasonSample] = []
        rng = random.Random(self.seed)
        for i, it in enumerate(self.items):
            masks = it.get("masks") or {}
            names = [n for n in masks if wanted is None or n in wanted]
            if task == "refer":
                for r in it.get("refer", []):
                    if r.get("target") in masks and (wanted is None or r["target"] in wanted):
                        self.samples.append(ReasonSample(i, "refer", [r["target"]], r["text"]))
            else:
                for n in names:
                    others = [o for o in names if o != n]
                    if others and self.train and rng.random() < self.multi_target:
                        self.samples.append(ReasonSample(i, "multi", [n, others[rng.randrange(len(others))]]))
                    else:
                        self.samples.append(ReasonSample(i, "seg", [n]))
            if negatives:
                counts = {"negative": int(negative_repeat) if train else 1, "probe": int(absent_probes) if train else 0}
                self.samples += [
                    ReasonSample(i, kind, [], n)
                    for n in vocab
                    if n not in masks
                    for kind, count in counts.items()
                    for _ in range(count)
                ]
        if not self.samples:
            raise ValueError(
                f"{self.manifest_path}: no sample for task '{task}' (items lack "
                f"{'refer entries with a target mask' if task == 'refer' else 'masks'} for classes "
                f"{sorted(wanted) if wanted else 'any'})"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def sample_path(self, index: int) -> str:
        """The file that identifies sample ``index`` in bad-sample reports."""
        return str(self.root / self.items[self.samples[index].item]["image"])

    # ---- text ---------------------------------------------------------------------------------
    def _rng(self, index: int) -> random.Random | None:
        return random.Random(self.seed * 1_000_003 + index) if self.train else None

    def _refer_qa(self, text: str, target: str, rng) -> tuple:
        text = text.strip()
        shown = display_name(target)
        question = text if text.endswith((".", "?", "!")) else _pick(REFER_QUESTIONS, rng).format(text=text)
        names_it = shown.lower() in text.lower() or target.replace("_", " ").lower() in text.lower()
        named = self.answer_style == "named" or (self.answer_style == "auto" and not names_it)
        answer = _pick(NAMED_ANSWERS if named else REFER_ANSWERS, rng).format(target=shown)
        return question, answer

    def record(self, index: int) -> dict[str, Any]:
        """Untokenised sample: ``{"id", "index", "kind", "question", "answer", "targets"[, "text"]}``."""
        s = self.samples[index]
        it = self.items[s.item]
        rng = self._rng(index)
        rec: dict[str, Any] = {"id": it["id"], "index": index, "kind": s.kind, "targets": list(s.targets)}
        if s.kind == "refer":
            q, a = self._refer_qa(s.text, s.targets[0], rng)
            rec["text"] = s.text
        elif s.kind == "seg":
            t = display_name(s.targets[0])
            answers = NAMED_SEG_ANSWERS if self.answer_style == "named" else SEG_ANSWERS
            q, a = _pick(SEG_QUESTIONS, rng).format(target=t), _pick(answers, rng).format(target=t)
        elif s.kind == "multi":
            names = dict(a=display_name(s.targets[0]), b=display_name(s.targets[1]))
            q, a = _pick(MULTI_QUESTIONS, rng).format(**names), _pick(MULTI_ANSWERS, rng).format(**names)
        elif s.kind == "probe":
            t = display_name(s.text)
            q, a = _pick(SEG_QUESTIONS, rng).format(target=t), _pick(NAMED_SEG_ANSWERS, rng).format(target=t)
        else:
            t = display_name(s.text)
            q, a = _pick(SEG_QUESTIONS, rng).format(target=t), _pick(NEGATIVE_ANSWERS, rng).format(target=t)
        if a.count(SEG) != _seg_count(s):  # the templates are data: keep them honest
            raise ValueError(f"answer template {a!r} has {a.count(SEG)} {SEG} for {_seg_count(s)} target(s)")
        rec.update(question=q, answer=a)
        return rec

    # ---- arrays -------------------------------------------------------------------------------
    def load_image(self, index: int):
        """``(1, D, H, W)`` float32 tensor in [0, 1] (intensity-augmented when training with ``augment``)."""
        import torch

        img = torch.from_numpy(
            np.asarray(load_image(self.manifest_path, self.items[self.samples[index].item]), np.float32)
        )
        if self.train and self.augment:
            g = torch.Generator().manual_seed(self.seed * 7919 + index)
            if torch.rand((), generator=g) < 0.5:
                img = img * (1 + (torch.rand((), generator=g) * 0.2 - 0.1))
            if torch.rand((), generator=g) < 0.5:
                img = img + (torch.rand((), generator=g) * 0.2 - 0.1)
        return img

    def load_targets(self, index: int):
        """``(K, D, H, W)`` uint8 masks of the sample's targets, in ``[SEG]`` order."""
        import torch

        s = self.samples[index]
        it = self.items[s.item]
        if not s.targets:  # a negative has no mask; a probe's one [SEG] has an empty one
            shape = tuple(np.load(self.root / it["image"], mmap_mode="r").shape[1:])
            return torch.zeros((_seg_count(s),) + shape, dtype=torch.uint8)
        masks = load_masks(self.manifest_path, it, s.targets)
        return torch.from_numpy(np.stack([np.asarray(masks[n][0] != 0, np.uint8) for n in s.targets]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.processor is None:
            raise RuntimeError("ReasonSegDataset was built without a processor; use record(i) or pass one")
        rec = self.record(index)
        out = dict(self.processor.encode_example(rec["question"], rec["answer"]))
        seg_id = self.processor.token_ids["seg_token_id"]
        kept, wanted = out["input_ids"].count(seg_id), _seg_count(self.samples[index])
        if kept != wanted:  # max_length cut an answer: never pair a mask with the wrong [SEG]
            raise ValueError(
                f"{self.sample_path(index)}: the encoded answer keeps {kept} of {wanted} {SEG} tokens (raise max_length)"
            )
        if rec["kind"] == "probe":  # the decoder learns from it, the LLM only where the answer ends
            out["labels"] = [IGNORE_INDEX] * (len(out["labels"]) - 1) + out["labels"][-1:]
        if self.load_images:
            out["images"] = self.load_image(index)
            out["seg_masks"] = self.load_targets(index)
        return out


class ReasonSegCollator:
    """``list[item] -> batch``: the MLLM batch (right-padded ids / labels, stacked ``images``) plus
    ``seg_masks`` ``(B, K, D, H, W)`` uint8 and ``seg_valid`` ``(B, K)`` bool, ``K = max(1, most
    targets in an item)``. Items without ``seg_masks`` (report / VQA samples, negatives) get
    ``seg_valid`` False rows; the keys are always present so every data-parallel process runs the
    same segmentation path."""

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None):

        self.base = MLLMCollator(pad_token_id, padding_side, pad_to_multiple_of)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.base(items)
        if "images" not in batch:
            return batch
        shape = tuple(batch["images"].shape[2:])
        k = max([1] + [int(it["seg_masks"].shape[0]) for it in items if "seg_masks" in it])
        masks = torch.zeros((len(items), k) + shape, dtype=torch.uint8)
        valid = torch.zeros(len(items), k, dtype=torch.bool)
        for i, it in enumerate(items):
            m = it.get("seg_masks")
            if m is None or m.shape[0] == 0:
                continue
            if tuple(m.shape[1:]) != shape:
                raise ValueError(f"batch item {i}: seg_masks of spatial size {tuple(m.shape[1:])}, volume {shape}")
            masks[i, : m.shape[0]] = torch.as_tensor(m)
            valid[i, : m.shape[0]] = True
        batch["seg_masks"], batch["seg_valid"] = masks, valid
        return batch


__all__ = [
    "ReasonSegDataset",
    "ReasonSegCollator",
    "ReasonSample",
    "display_name",
    "TASKS",
    "SEG_QUESTIONS",
    "SEG_ANSWERS",
    "NAMED_SEG_ANSWERS",
    "REFER_QUESTIONS",
    "REFER_ANSWERS",
    "NAMED_ANSWERS",
    "MULTI_QUESTIONS",
    "MULTI_ANSWERS",
    "NEGATIVE_ANSWERS",
]
