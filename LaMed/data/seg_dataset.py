"""Datasets for text-prompted 3D segmentation and the prompt sampling of the published trainings.

Every dataset yields the same item::

    {"id": str, "volume": float32 (1, D, H, W) in [0, 1], "labels": uint8 (K, D, H, W),
     "prompts": [K texts], "names": [K structure names], "points": float32 (K, P, 3),
     "point_labels": int64 (K, P) (1 pos / 0 neg / -1 padding), "boxes": float32 (K, 6)}

and :class:`SegCollator` pads K across a batch (``label_mask``) and tokenises the prompts, giving
the training batch of ``LaMed.models.segmentation`` (``volume``, ``labels``, ``label_mask``,
``input_ids``, ``attention_mask``, ``points``, ``point_labels``, ``boxes``).

* :class:`PreparedSegDataset` - M3D-Seg style over the prepared format (contract 3): one entry per
  image with up to ``max_classes`` of its masks (``entries="image"``, one encoding serves them
  all), or one entry per (image, class) (``entries="class"``, M3D-Seg's layout); prompts are the
  structure names (the model adds its template), or, with ``refer=True`` (M3D-RefSeg), the
  item's referring expressions with their target masks.
* :class:`LabelMapSegDataset` - TotalSegmentator-style integer label maps beside their images.
* :class:`BiomedSegFMDataset` - CVPR-BiomedSegFM ``.npz`` (``imgs``, ``gts``) with the per-dataset
  prompt JSON (``{dataset: {"<class id>": [variants], "instance_label": 0|1}}``).

Prompt sampling (SegVol, BAAI-DCAI/SegVol, arXiv 2311.13385): :func:`sample_points` draws 1 positive
point, ``U[0, 10]`` more positives and ``U[0, 10]`` negatives, padded with ignored points to 21;
:func:`mask_to_box` gives the tight box ``(d0, h0, w0, d1, h1, w1)`` with inclusive maxima.
Coordinates are voxel indices of the item's volume.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from LaMed.data.checks import require_unit_interval
from LaMed.data.io import load_mask, load_volume
from LaMed.data.prepared import load_image, load_manifest, load_masks
from LaMed.data.presets import apply_preset, get_preset

NUM_POINTS = 21  # SegVol: 1 + up to 10 positive + up to 10 negative


def mask_to_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight box ``(d0, h0, w0, d1, h1, w1)`` (inclusive maxima, voxel indices) of a 3D mask; None if empty."""
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return None
    return np.array([i.min() for i in idx] + [i.max() for i in idx], dtype=np.float32)


def sample_points(
    mask: np.ndarray, rng: np.random.Generator, max_extra_pos: int = 10, max_neg: int = 10, num_points: int = NUM_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """SegVol's point prompts for one mask: ``(coords (P, 3) float32, labels (P,) int64)``.

    One positive point, ``U[0, max_extra_pos]`` more positives and ``U[0, max_neg]`` negatives
    (from the background), padded with label -1 to ``num_points``. An empty mask gives only padding.
    """
    coords = np.zeros((num_points, 3), np.float32)
    labels = -np.ones(num_points, np.int64)
    pos = np.argwhere(mask)
    if len(pos) == 0:
        return coords, labels
    neg = np.argwhere(~mask.astype(bool))
    n_pos = min(1 + int(rng.integers(0, max_extra_pos + 1)), len(pos))
    n_neg = min(int(rng.integers(0, max_neg + 1)), len(neg), num_points - n_pos)
    chosen = [pos[rng.choice(len(pos), n_pos, replace=False)]]
    if n_neg:
        chosen.append(neg[rng.choice(len(neg), n_neg, replace=False)])
    pts = np.concatenate(chosen)
    coords[: len(pts)] = pts
    labels[:n_pos] = 1
    labels[n_pos : n_pos + n_neg] = 0
    return coords, labels


def augment(volume: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """M3D / SegVol training augmentation: in-plane rot90 (p 0.5, square planes only), a flip of each
    axis (p 0.1), intensity scale and shift by up to 10 % (p 0.5 each); masks follow the geometry."""
    if volume.shape[-1] == volume.shape[-2] and rng.random() < 0.5:
        k = int(rng.integers(1, 4))
        volume, labels = np.rot90(volume, k, axes=(-2, -1)), np.rot90(labels, k, axes=(-2, -1))
    for ax in (-3, -2, -1):
        if rng.random() < 0.1:
            volume, labels = np.flip(volume, ax), np.flip(labels, ax)
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    if rng.random() < 0.5:
        volume = volume * (1.0 + rng.uniform(-0.1, 0.1))
    if rng.random() < 0.5:
        volume = volume + rng.uniform(-0.1, 0.1)
    return volume.astype(np.float32), np.ascontiguousarray(labels)


def build_item(
    item_id: str,
    volume: np.ndarray,
    masks: Sequence[np.ndarray],
    names: Sequence[str],
    prompts: Sequence[str],
    rng: np.random.Generator,
    do_augment: bool = False,
    num_points: int = NUM_POINTS,
) -> dict:
    """Assemble the common item (see module docstring) and sample its point / box prompts."""
    import torch

    vol = np.asarray(volume, np.float32)
    vol = vol[None] if vol.ndim == 3 else vol
    labels = np.stack([np.asarray(m).reshape(vol.shape[1:]) != 0 for m in masks]).astype(np.uint8)
    if do_augment:
        vol, labels = augment(vol, labels, rng)
    k = len(names)
    points = np.zeros((k, num_points, 3), np.float32)
    point_labels = -np.ones((k, num_points), np.int64)
    boxes = np.zeros((k, 6), np.float32)
    for i in range(k):
        points[i], point_labels[i] = sample_points(labels[i].astype(bool), rng, num_points=num_points)
        box = mask_to_box(labels[i])
        if box is not None:
            boxes[i] = box
    return {
        "id": item_id,
        "volume": torch.from_numpy(vol),
        "labels": torch.from_numpy(labels),
        "prompts": list(prompts),
        "names": list(names),
        "points": torch.from_numpy(points),
        "point_labels": torch.from_numpy(point_labels),
        "boxes": torch.from_numpy(boxes),
    }


class _SegDatasetBase:
    """Shared bookkeeping: a list of entries, deterministic per-(epoch, index) randomness."""

    entries: list[tuple]

    def __init__(self, seed: int = 0, augment: bool = False, num_points: int = NUM_POINTS):
        self.seed = int(seed)
        self.augment = augment
        self.num_points = num_points
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __len__(self) -> int:
        return len(self.entries)


ABSENT_MODES = ("none", "listed", "missing")


def absent_structures(item: dict, wanted: Sequence[str] | None, absent: str) -> list[str]:
    """The structures ``item`` is prompted for although they are not in its volume: ``"listed"`` its
    own ``"absent"`` names, ``"missing"`` every ``wanted`` class without a mask, ``"none"`` nothing
    (only names among ``wanted`` when it is given)."""
    masks = item.get("masks") or {}
    if absent == "listed":
        return [a for a in item.get("absent") or [] if a not in masks and (wanted is None or a in wanted)]
    if absent == "missing":
        return [c for c in wanted or [] if c not in masks]
    return []


class PreparedSegDataset(_SegDatasetBase):
    """M3D-Seg / M3D-RefSeg style segmentation entries over a prepared manifest.

    Args:
        manifest: ``<out>/<split>.json`` of the prepared format.
        classes: structure names to use (default: every mask of each item).
        entries: ``"image"`` (one entry per image, classes chunked by ``max_classes``) or
            ``"class"`` (one entry per (image, class)).
        max_classes: K per entry in ``"image"`` mode.
        refer: use the items' ``refer`` expressions (text -> target mask) instead of class names.
        templates: optional prompt templates with ``{}``; one is drawn per class and sample
            (M3D's templated questions); default: the bare name (the model adds its own template).
        absent: prompts for structures absent from the volume, with an empty target, so the model
            learns to return nothing for them (and the presence calibration sees such cases):
            ``"none"`` (default: only structures with a mask), ``"listed"`` (the item's own
            ``"absent": [names]``), or ``"missing"`` (every asked-for class without a mask is absent:
            only for fully labelled data such as the phantoms, where an unlabelled organ is a
            removed one -- on partially labelled data it would teach false negatives). Needs
            ``classes`` for ``"missing"``; not with ``refer``.
    """

    def __init__(
        self,
        manifest: str | Path,
        classes: Sequence[str] | None = None,
        entries: str = "image",
        max_classes: int = 4,
        refer: bool = False,
        templates: Sequence[str] = (),
        seed: int = 0,
        augment: bool = False,
        num_points: int = NUM_POINTS,
        absent: str = "none",
    ):

        if absent not in ABSENT_MODES:
            raise ValueError(f"{manifest}: absent must be 'none', 'listed' or 'missing', got {absent!r}")
        if absent != "none" and refer:
            raise ValueError(f"{manifest}: absent prompts are for class names, not referring expressions")
        if absent == "missing" and not classes:
            raise ValueError(f"{manifest}: absent='missing' needs the list of classes every item is labelled for")

        super().__init__(seed, augment, num_points)
        if entries not in ("image", "class"):
            raise ValueError(f"{manifest}: entries must be 'image' or 'class', got {entries!r}")
        self.manifest_path = Path(manifest)
        self.manifest = load_manifest(self.manifest_path)
        self.templates = list(templates)
        self.refer = refer
        self.entries = []
        wanted = None if not classes else list(classes)
        for i, item in enumerate(self.manifest["items"]):
            masks = item.get("masks") or {}
            if refer:
                pairs = [
                    (r["text"], r["target"])
                    for r in item.get("refer", [])
                    if r.get("target") in masks and (wanted is None or r["target"] in wanted)
                ]
            else:
                pairs = [(name, name) for name in (wanted or list(masks)) if name in masks]
                pairs += [(name, None) for name in absent_structures(item, wanted, absent)]
            if not pairs:
                continue
            step = 1 if entries == "class" else max(int(max_classes), 1)
            for j in range(0, len(pairs), step):
                self.entries.append((i, pairs[j : j + step]))
        if not self.entries:
            raise ValueError(
                f"{self.manifest_path}: no item has {'referring expressions' if refer else 'masks'} "
                f"for classes {wanted or 'any'}"
            )

    def sample_path(self, index: int) -> str:
        item = self.manifest["items"][self.entries[index][0]]
        return str(self.manifest_path.parent / item["image"])

    def __getitem__(self, index: int) -> dict:

        i, pairs = self.entries[index]
        item = self.manifest["items"][i]
        rng = self._rng(index)
        image = np.asarray(load_image(self.manifest_path, item), np.float32)
        require_unit_interval(image, self.sample_path(index))
        targets = [t for _, t in pairs]
        masks = load_masks(self.manifest_path, item, sorted({t for t in targets if t is not None}))
        empty = np.zeros(image.shape[-3:], np.uint8)  # the target of an absent structure
        prompts = []
        for text, target in pairs:
            name = text if target is None else target
            if not self.refer and self.templates:
                text = self.templates[int(rng.integers(len(self.templates)))].format(name.replace("_", " "))
            prompts.append(text)
        names = [text if t is None else t for text, t in pairs]
        return build_item(
            item["id"],
            image,
            [empty if t is None else masks[t][0] for t in targets],
            names,
            prompts,
            rng,
            self.augment,
            self.num_points,
        )


class LabelMapSegDataset(_SegDatasetBase):
    """TotalSegmentator-style (image, integer label map) pairs, preprocessed once and cached.

    Args:
        pairs: ``[(image file, label-map file), ...]`` (any format of ``LaMed.data.io``; the label
            map must lie on the image grid).
        label_names: ``{label id: structure name}`` (e.g. TotalSegmentator's ``labels.json["total"]``).
        classes: names to train on (present ones per case; default all present).
        preset / img_size: preprocessing (``LaMed.data.presets``) with its size replaced by ``img_size``.
        repeat: entries per case and epoch (a small real set seen many times).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        label_names: Mapping,
        classes: Sequence[str] | None = None,
        preset: str = "segvol",
        img_size: Sequence[int] = (32, 256, 256),
        max_classes: int = 4,
        repeat: int = 1,
        seed: int = 0,
        augment: bool = False,
        num_points: int = NUM_POINTS,
    ):
        import dataclasses

        super().__init__(seed, augment, num_points)
        names = {int(k): str(v) for k, v in label_names.items()}
        by_name = {v: k for k, v in names.items()}
        unknown = [c for c in (classes or []) if c not in by_name]
        if unknown:
            raise ValueError(f"classes {unknown} are not in label_names (e.g. {sorted(by_name)[:5]})")
        p = dataclasses.replace(get_preset(preset), size=tuple(int(s) for s in img_size))
        self.cases, self.entries = [], []
        for image_path, label_path in pairs:
            vol = load_volume(image_path)
            lab = load_mask(label_path, like=vol).array
            present = [
                n for n in (classes or [names[i] for i in np.unique(lab) if i in names]) if (lab == by_name[n]).any()
            ]
            if not present:
                continue
            res = apply_preset(p, vol.array, vol.spacing, {n: lab == by_name[n] for n in present})
            self.cases.append((Path(image_path).name, res["image"], res["masks"], res["spacing"]))
            c = len(self.cases) - 1
            for _ in range(max(int(repeat), 1)):
                for j in range(0, len(present), max(int(max_classes), 1)):
                    self.entries.append((c, present[j : j + max_classes]))
        if not self.entries:
            raise ValueError(f"no label of {classes or 'label_names'} found in {[str(b) for _, b in pairs]}")

    def __getitem__(self, index: int) -> dict:
        c, names = self.entries[index]
        case_id, image, masks, _ = self.cases[c]
        rng = self._rng(index)
        return build_item(
            case_id, image, [masks[n][0] for n in names], names, names, rng, self.augment, self.num_points
        )


class BiomedSegFMDataset(_SegDatasetBase):
    """CVPR-BiomedSegFM text-guided data: one entry per (npz file, class with a prompt).

    ``files``: ``.npz`` paths (keys ``imgs``, ``gts``); ``prompts``: the prompt JSON loaded or its
    path; ``dataset_of(path)`` names the JSON key of a file (default: its parent folder name, as in
    ``3D_train_npz_all/<modality>/<dataset>/``). Instance datasets (``instance_label`` 1) use the
    union of all labels as class 1. Volumes are resized to ``img_size`` (trilinear; labels
    nearest) and min-max scaled to [0, 1] (the challenge images come pre-normalised to 0-255).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        prompts: str | Path | Mapping,
        img_size: Sequence[int] = (128, 256, 256),
        dataset_of: Callable[[Path], str] | None = None,
        seed: int = 0,
        augment: bool = False,
        num_points: int = NUM_POINTS,
    ):
        super().__init__(seed, augment, num_points)
        table = json.loads(Path(prompts).read_text(encoding="utf-8")) if not isinstance(prompts, Mapping) else prompts
        self.img_size = tuple(int(s) for s in img_size)
        dataset_of = dataset_of or (lambda p: p.parent.name)
        self.entries = []
        for f in map(Path, files):
            ds = dataset_of(f)
            if ds not in table:
                raise ValueError(f"{f}: dataset {ds!r} has no entry in the prompt JSON")
            spec = table[ds]
            instance = bool(spec.get("instance_label", 0))
            with np.load(f) as z:
                if "gts" not in z or "imgs" not in z:
                    raise ValueError(f"{f}: BiomedSegFM npz needs keys 'imgs' and 'gts', has {list(z.keys())}")
                present = set(int(v) for v in np.unique(z["gts"]) if v != 0)
            classes = [1] if instance and present else sorted(c for c in present if str(c) in spec)
            for c in classes:
                self.entries.append((f, c, list(spec[str(c)]), instance))

    def sample_path(self, index: int) -> str:
        return str(self.entries[index][0])

    def __getitem__(self, index: int) -> dict:
        import torch
        import torch.nn.functional as F

        f, cls, variants, instance = self.entries[index]
        rng = self._rng(index)
        with np.load(f) as z:
            img, gts = z["imgs"].astype(np.float32), z["gts"]
        mask = (gts > 0) if instance else (gts == cls)
        t = F.interpolate(torch.from_numpy(img)[None, None], size=self.img_size, mode="trilinear", align_corners=False)[
            0
        ]
        lo, hi = float(t.min()), float(t.max())
        t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
        m = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=self.img_size, mode="nearest")[
            0, 0
        ]
        prompt = variants[int(rng.integers(len(variants)))]
        return build_item(f.stem, t.numpy(), [m.numpy()], [str(cls)], [prompt], rng, self.augment, self.num_points)


class SegCollator:
    """List of items -> training batch (see module docstring).

    ``tokenizer``: a HF tokenizer; ``prompt_fn``: text -> final prompt (e.g. ``model.prompt_text``,
    which applies the model's template); ``max_length`` caps the token length.
    """

    def __init__(self, tokenizer, prompt_fn: Callable[[str], str] = str, max_length: int = 64):
        self.tokenizer = tokenizer
        self.prompt_fn = prompt_fn
        self.max_length = max_length

    def __call__(self, items: Sequence[dict]) -> dict[str, object]:
        import torch

        b = len(items)
        k = max(len(it["names"]) for it in items)
        shape = items[0]["labels"].shape[1:]
        for it in items:
            if tuple(it["labels"].shape[1:]) != tuple(shape):
                raise ValueError(
                    f"item {it['id']}: labels of spatial size {tuple(it['labels'].shape[1:])} in a batch of {tuple(shape)}"
                )
        p = items[0]["points"].shape[1]
        labels = torch.zeros(b, k, *shape, dtype=torch.uint8)
        label_mask = torch.zeros(b, k, dtype=torch.bool)
        points = torch.zeros(b, k, p, 3)
        point_labels = -torch.ones(b, k, p, dtype=torch.long)
        boxes = torch.zeros(b, k, 6)
        texts = [[""] * k for _ in range(b)]
        for i, it in enumerate(items):
            n = len(it["names"])
            labels[i, :n] = it["labels"]
            label_mask[i, :n] = True
            points[i, :n], point_labels[i, :n], boxes[i, :n] = it["points"], it["point_labels"], it["boxes"]
            texts[i][:n] = [self.prompt_fn(t) for t in it["prompts"]]
            texts[i][n:] = [texts[i][0]] * (k - n)  # padding classes are masked out
        enc = self.tokenizer(
            [t for row in texts for t in row],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "volume": torch.stack([it["volume"] for it in items]),
            "labels": labels,
            "label_mask": label_mask,
            "input_ids": enc["input_ids"].view(b, k, -1),
            "attention_mask": enc["attention_mask"].view(b, k, -1),
            "points": points,
            "point_labels": point_labels,
            "boxes": boxes,
        }
