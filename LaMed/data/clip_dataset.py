"""Image-report pairs over the prepared format, with the published report truncation.

    ds = ImageReportDataset("prepared/train.json", tokenizer, max_length=512, truncation="random")
    ds[0] -> {"id", "image": FloatTensor (1, D, H, W) in [0, 1], "input_ids": LongTensor (T,),
              "attention_mask": LongTensor (T,)[, "slice_features": FloatTensor (S, C_2d)]}
    batch = ClipCollator(tokenizer)([ds[0], ds[1]])   # padded to the longest report; labels = arange(B)

Report truncation (M3D-CLIP ``ITRDataset.truncate_text``, copied by Med3DVLM and HSENet): a report
longer than the token budget keeps its first sentence, then other sentences are drawn at random
and kept while they fit. ``truncation="random"`` does that (at training); ``"deterministic"``
keeps the following sentences in document order while they fit (evaluation: the published code
also drew at random at test time, seeded, so its retrieval scores depend on the seed).
Differences from the published function, on purpose: sentences are split at sentence ends
(``". "``, ``"? "``, ``"! "``), not at every ``"."`` (which cut "13.1 cm" in two); the first
sentence counts towards the budget; the kept sentences stay in document order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from LaMed.data.checks import require_unit_interval
from LaMed.data.prepared import load_image, load_manifest

TRUNCATIONS = ("random", "deterministic")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Split a report at sentence ends (``.``, ``!``, ``?`` followed by white space); newlines too."""
    parts: list[str] = []
    for line in text.splitlines():
        parts += [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]
    return parts


def truncate_report(
    text: str, count_tokens: Callable[[str], int], budget: int, rng: np.random.Generator | None = None
) -> str:
    """Fit ``text`` into ``budget`` tokens by dropping sentences, never the first one.

    Args:
        count_tokens: tokens of a piece of text without special tokens (WordPiece / BPE counts add
            up over sentences separated by white space).
        budget: tokens available for the text (``max_length`` minus the special tokens).
        rng: draw the other sentences in random order (published, training); ``None``: in
            document order (evaluation, deterministic).
    Returns:
        ``text`` itself when it fits; else the first sentence plus the sentences that fit, in
        document order, joined by spaces. A first sentence longer than the budget is returned
        alone (the tokenizer then cuts it).
    """
    if count_tokens(text) <= budget:  # the common case: one tokenizer call
        return text
    sentences = split_sentences(text)
    if len(sentences) <= 1:
        return text
    counts = [count_tokens(s) for s in sentences]
    used, keep = counts[0], [0]
    order = range(1, len(sentences)) if rng is None else (1 + rng.permutation(len(sentences) - 1))
    for i in order:
        if used + counts[i] <= budget:
            keep.append(int(i))
            used += counts[i]
    return " ".join(sentences[i] for i in sorted(keep))


def pooled_slice_features(image, num_slices: int, size: int):
    """Parameter-free stand-in for HSENet's 2D slice features: ``(1, D, H, W)`` -> ``(S, size*size)``.

    The volume is average-pooled to ``(S, size, size)`` (``S`` evenly spread axial slabs, each
    ``size x size``) and each slab flattened. Used where no precomputed BiomedCLIP slice features
    exist (phantom twins, tests); real runs read the published ``(32, 768)`` features from a file.
    """
    import torch.nn.functional as F

    return F.adaptive_avg_pool3d(image[None].float(), (num_slices, size, size))[0, 0].reshape(num_slices, size * size)


class ImageReportDataset:
    """Map-style dataset of (volume, report) pairs from one prepared manifest.

    Args:
        manifest: ``<prepared>/<split>.json``.
        tokenizer: an HF tokenizer (fast or slow); reports are tokenised here, padded by the collator.
        max_length: token budget of a report including special tokens (published: 512).
        truncation: ``"random"`` (training) or ``"deterministic"`` (evaluation); see the module docstring.
        transform: optional ``dict -> dict`` applied to ``{"image": tensor}`` (augmentation).
        slice_features: ``""`` (none), ``"field:<key>"`` (item field holding a relative ``.npy``
            path of ``(S, C_2d)`` features) or ``"pooled:<size>"`` (:func:`pooled_slice_features`).
        num_slices: ``S`` for ``"pooled:..."``.
        limit: use only the first ``limit`` items (the papers evaluate on the first N pairs).
        seed: seeds the random truncation (with the item index and a per-dataset draw counter).

    Items without a report are refused at construction (the error names the manifest and ids).
    An unreadable, mis-shaped or out-of-range volume raises ``ValueError`` naming the file when the
    item is read (the training wrapper skips and counts such samples).
    """

    def __init__(
        self,
        manifest: str | Path,
        tokenizer,
        max_length: int = 512,
        truncation: str = "random",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        slice_features: str = "",
        num_slices: int = 32,
        limit: int | None = None,
        seed: int = 0,
    ):

        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation: expected one of {TRUNCATIONS}, got {truncation!r}")
        if max_length < 3:
            raise ValueError(f"max_length: expected >= 3 tokens, got {max_length}")
        self.manifest_path = Path(manifest)
        self.manifest = load_manifest(self.manifest_path)
        self.root = self.manifest_path.parent
        items = self.manifest["items"]
        missing = [it["id"] for it in items if not str(it.get("text", "")).strip()]
        if missing:
            raise ValueError(
                f"{self.manifest_path}: field 'text' (the report) is missing or empty in "
                f"{len(missing)} item(s), e.g. {missing[:3]}"
            )
        self.items: list[dict[str, Any]] = items[:limit] if limit else list(items)
        if not self.items:
            raise ValueError(f"{self.manifest_path}: no items")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.budget = self.max_length - tokenizer.num_special_tokens_to_add(pair=False)
        self.truncation = truncation
        self.transform = transform
        self.slice_features = self._parse_slice_features(slice_features)
        self.num_slices = int(num_slices)
        self.seed = int(seed)
        self._draws = 0

    def _parse_slice_features(self, spec: str):
        if not spec:
            return None
        kind, _, arg = spec.partition(":")
        if kind == "field" and arg:
            bad = [it["id"] for it in self.items if arg not in it]
            if bad:
                raise ValueError(
                    f"{self.manifest_path}: slice_features='field:{arg}' but {len(bad)} item(s) have "
                    f"no field '{arg}', e.g. {bad[:3]}"
                )
            return ("field", arg)
        if kind == "pooled" and arg.isdigit() and int(arg) > 0:
            return ("pooled", int(arg))
        raise ValueError(f"slice_features: expected '', 'field:<item key>' or 'pooled:<size>', got {spec!r}")

    def __len__(self) -> int:
        return len(self.items)

    def sample_path(self, index: int) -> str:
        """The image file of item ``index`` (named in bad-sample reports)."""
        return str(self.root / self.items[index]["image"])

    # ---- text -----------------------------------------------------------------------------------
    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def report(self, index: int) -> str:
        """The (possibly truncated) report of item ``index``."""
        text = " ".join(self.items[index]["text"].split())  # newlines and runs of spaces -> one space
        rng = None
        if self.truncation == "random":
            self._draws += 1
            rng = np.random.default_rng([self.seed, index, self._draws])
        return truncate_report(text, self._count, self.budget, rng)

    # ---- items ----------------------------------------------------------------------------------
    def load_image(self, index: int):
        import torch

        path = self.sample_path(index)
        arr = np.asarray(load_image(self.manifest_path, self.items[index]), dtype=np.float32)
        require_unit_interval(arr, str(path))
        return torch.from_numpy(arr)

    def load_slice_features(self, index: int, image):
        import torch

        kind, arg = self.slice_features
        if kind == "pooled":
            return pooled_slice_features(image, self.num_slices, arg)
        path = self.root / self.items[index][arg]
        try:
            feats = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: slice features cannot be read ({exc})") from None
        if feats.ndim != 2:
            raise ValueError(f"{path}: slice features must be (S, C_2d), got shape {feats.shape}")
        return torch.from_numpy(np.asarray(feats, dtype=np.float32))

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        sample: dict[str, Any] = {"image": self.load_image(index)}
        if self.transform is not None:
            sample = self.transform(sample)
            image = sample["image"]  # MONAI returns a MetaTensor: keep the plain tensor
            sample["image"] = (image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)).float()
        enc = self.tokenizer(self.report(index), truncation=True, max_length=self.max_length)
        out = {
            "id": self.items[index]["id"],
            "image": sample["image"],
            "input_ids": torch.tensor(enc["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(enc["attention_mask"], dtype=torch.long),
        }
        if self.slice_features is not None:
            out["slice_features"] = self.load_slice_features(index, out["image"])
        return out


class ClipCollator:
    """Stack volumes, pad token ids to the longest report, add ``labels = arange(B)``.

    ``labels`` only tells the Trainer that the batch has targets (so that evaluation runs
    ``compute_metrics``); the loss matches pairs by position. Item ``id`` is dropped.
    """

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.multiple = pad_to_multiple_of

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        length = max(len(it["input_ids"]) for it in items)
        if self.multiple:
            length = -(-length // self.multiple) * self.multiple
        ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            ids[i, :n] = it["input_ids"]
            mask[i, :n] = it["attention_mask"]
        batch = {
            "image": torch.stack([it["image"] for it in items]),
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.arange(len(items)),
        }
        if "slice_features" in items[0]:
            batch["slice_features"] = torch.stack([it["slice_features"] for it in items])
        return batch
