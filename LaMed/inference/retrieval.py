"""Image-report retrieval with a 3D CLIP: encode a split once (cached), then score.

    emb = encode_split(model, tokenizer, "prepared/test.json", cache_dir="runs/cache", max_items=2000)
    emb.save_predictions("out/embeddings.npz")         # the predictions file of Bench/eval_retrieval.py
    scores = score_embeddings(emb, ks=(1, 5, 10, 50, 100), first_n=(100, 500, 1000, 2000))

    evaluate_clip("runs/tiny_m3d_clip", "phantoms/", "runs/tiny_m3d_clip/retrieval")   # all in one

The embeddings of a split are written to ``cache_dir`` under a key made of the model weights and
config, the manifest's content and the encoding settings; a second evaluation of the same model on
the same split reads them instead of re-encoding (``SplitEmbeddings.from_cache`` says which).
Reports are truncated deterministically (first sentence, then the following ones while they fit),
so scores do not depend on a seed, unlike the published evaluations.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LaMed.data.clip_dataset import ClipCollator, ImageReportDataset
from LaMed.metrics.retrieval import label_overlap_at_k, labels_to_multihot, recall_at_k_from_embeddings
from LaMed.models.checkpoint_files import load_pretrained
from LaMed.models.clip import LamedClipModel
from LaMed.utils.atomic import atomic_write_bytes, write_json_atomic

logger = logging.getLogger("LaMed.inference")

CACHE_VERSION = 1
RETRIEVAL_KS = (1, 5, 10, 50, 100)
LABEL_KS = (1, 5, 10, 50)


@dataclass
class SplitEmbeddings:
    """L2-normalised embeddings of the first ``N`` pairs of a split; row ``i`` of both is item ``ids[i]``."""

    ids: list[str]
    image: np.ndarray  # (N, P) float32
    text: np.ndarray  # (N, P) float32
    labels: list[list[str] | None] = field(default_factory=list)
    from_cache: bool = False
    cache_path: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def save_predictions(self, path: str | Path) -> Path:
        """Write the ``.npz`` that ``Bench/eval_retrieval.py`` reads (``ids``, ``image``, ``text``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_npz(path, ids=np.asarray(self.ids), image=self.image, text=self.text)
        return path


def _save_npz(path: Path, **arrays) -> None:
    # The one atomic writer: an interrupted run never leaves a truncated cache.

    atomic_write_bytes(path, lambda fh: np.savez(fh, **arrays))


def default_max_length(model, published: int = 512) -> int:
    """The published 512-token budget, capped by the text model's position embeddings."""
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    positions = getattr(text_config, "max_position_embeddings", None) or published
    return min(published, int(positions))


def model_fingerprint(model) -> str:
    """sha256 of the model's config and of every parameter / buffer (names, dtypes, bytes)."""
    import torch

    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        data = t.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
            data = data.view(torch.int16)
        h.update(data.numpy().tobytes())
    return h.hexdigest()


def _cache_key(fingerprint: str, manifest: Path, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "model": fingerprint, **settings}, sort_keys=True).encode())
    h.update(manifest.read_bytes())
    return h.hexdigest()[:20]


def encode_split(
    model,
    tokenizer,
    manifest: str | Path,
    *,
    cache_dir: str | Path | None = None,
    max_items: int | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
    slice_features: str = "",
    num_slices: int = 32,
    device: str | None = None,
    dtype=None,
) -> SplitEmbeddings:
    """Encode the first ``max_items`` (image, report) pairs of a prepared split.

    Args:
        model: a :class:`~LaMed.models.clip.LamedClipModel` (anything with ``encode_image`` /
            ``encode_text``); it is put in eval mode.
        tokenizer: the text tokenizer of the model.
        manifest: ``<prepared>/<split>.json``.
        cache_dir: where to keep the embeddings (``None``: no cache).
        max_length: report token budget (default: 512, or fewer if the text model has fewer positions).
        slice_features / num_slices: as ``ImageReportDataset``.
        device / dtype: where and in which precision to run (default: the model's device, fp32;
            ``torch.bfloat16`` runs under autocast).
    Returns:
        :class:`SplitEmbeddings` (float32, L2-normalised).
    """
    import torch

    manifest = Path(manifest)
    if max_length is None:
        max_length = default_max_length(model)
    settings = dict(
        manifest=str(manifest.resolve()),
        max_items=max_items,
        max_length=max_length,
        slice_features=slice_features,
        num_slices=num_slices,
        dtype=str(dtype),
    )
    cache_path = None
    if cache_dir is not None:
        key = _cache_key(model_fingerprint(model), manifest, settings)
        cache_path = Path(cache_dir) / f"{manifest.stem}-{key}.npz"
        if cache_path.is_file():
            with np.load(cache_path, allow_pickle=False) as z:
                labels = json.loads(str(z["labels"]))
                emb = SplitEmbeddings([str(i) for i in z["ids"]], z["image"], z["text"], labels, True, cache_path)
            logger.info("retrieval: %d pairs of %s read from the cache %s", len(emb), manifest, cache_path)
            return emb

    ds = ImageReportDataset(
        manifest,
        tokenizer,
        max_length=max_length,
        truncation="deterministic",
        slice_features=slice_features,
        num_slices=num_slices,
        limit=max_items,
    )
    collate = ClipCollator(tokenizer)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    images, texts = [], []
    autocast = torch.autocast(device.type, dtype=dtype) if dtype not in (None, torch.float32) else None
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            batch = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
            extra = {"slice_features": batch["slice_features"].to(device)} if "slice_features" in batch else {}
            if autocast is not None:
                with autocast:
                    img = model.encode_image(batch["image"].to(device), **extra)
                    txt = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            else:
                img = model.encode_image(batch["image"].to(device), **extra)
                txt = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            images.append(img.float().cpu().numpy())
            texts.append(txt.float().cpu().numpy())
    ids = [it["id"] for it in ds.items]
    labels = [it.get("labels") for it in ds.items]
    emb = SplitEmbeddings(
        ids,
        np.concatenate(images).astype(np.float32),
        np.concatenate(texts).astype(np.float32),
        labels,
        False,
        cache_path,
    )
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        _save_npz(
            cache_path, ids=np.asarray(ids), image=emb.image, text=emb.text, labels=np.asarray(json.dumps(labels))
        )
    return emb


def score_embeddings(
    emb: SplitEmbeddings,
    ks: Iterable[int] = RETRIEVAL_KS,
    first_n: Sequence[int] = (),
    label_ks: Iterable[int] = LABEL_KS,
    max_label_pairs: int = 20000,
) -> dict[str, dict[str, float]]:
    """Recall@K in both directions on all pairs and on the first ``n`` of ``first_n``, plus
    volume-to-volume label overlap (Jaccard of the retrieved volumes' label sets, self excluded,
    over volumes with labels) when the items carry ``labels``.

    Returns ``{"all": {...}, "first_<n>": {...}}``; each holds ``pairs``,
    ``text_to_image_R@K`` (report -> volume), ``image_to_text_R@K`` and ``chance_R@K = K / N``
    for the K <= N, and (``all`` only) ``v2v_jaccard@K``. Label overlap needs the full
    ``N x N`` similarity matrix, so it is skipped above ``max_label_pairs`` volumes.
    """

    out: dict[str, dict[str, float]] = {}
    groups = [("all", len(emb))] + [(f"first_{n}", int(n)) for n in first_n if 0 < int(n) <= len(emb)]
    for name, n in groups:
        ks_n = [int(k) for k in ks if int(k) <= n]
        if not ks_n:
            continue
        img, txt = emb.image[:n], emb.text[:n]
        t2i = recall_at_k_from_embeddings(txt, img, ks_n)
        i2t = recall_at_k_from_embeddings(img, txt, ks_n)
        res = {"pairs": float(n)}
        res.update({f"text_to_image_R@{k}": v for k, v in t2i.items()})
        res.update({f"image_to_text_R@{k}": v for k, v in i2t.items()})
        res.update({f"chance_R@{k}": k / n for k in ks_n})
        out[name] = res
    labelled = [i for i, lab in enumerate(emb.labels) if lab]
    if 1 < len(labelled) <= max_label_pairs:
        multihot, _ = labels_to_multihot([emb.labels[i] for i in labelled])
        e = emb.image[labelled]
        lks = [int(k) for k in label_ks if int(k) < len(labelled)]
        if lks:
            overlap = label_overlap_at_k(e @ e.T, multihot, multihot, lks, "jaccard", exclude_self=True)
            out["all"].update({f"v2v_jaccard@{k}": v for k, v in overlap.items()})
            out["all"]["v2v_volumes"] = float(len(labelled))
    return out


def load_clip(model_dir: str | Path, device: str | None = None, dtype=None):
    """``(model, tokenizer)`` from a LaMed CLIP folder (``save_pretrained`` + tokenizer files); ``dtype``:
    the dtype the weights are loaded in (default float32)."""
    import torch
    from transformers import AutoTokenizer

    model = load_pretrained(LamedClipModel, model_dir, dtype or torch.float32)
    tok_dir = Path(model_dir)
    if not any((tok_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        path = model.config.text_model_path
        if not path:
            raise FileNotFoundError(f"{model_dir}: no tokenizer files and no text_model_path in its config")
        from LaMed.models.checkpoint_files import resolve_text_path

        tok_dir = Path(resolve_text_path(path))
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    if device is not None:
        model.to(device)
    return model, tokenizer


def evaluate_clip(
    model_dir: str | Path,
    prepared: str | Path,
    out_dir: str | Path,
    split: str = "test",
    max_items: int | None = None,
    first_n: Sequence[int] = (),
    ks: Iterable[int] = RETRIEVAL_KS,
    cache_dir: str | Path | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
) -> dict[str, dict[str, float]]:
    """Encode ``<prepared>/<split>.json`` with the CLIP in ``model_dir`` and score it.

    Writes ``out_dir/embeddings.npz`` (Bench's retrieval predictions) and ``out_dir/retrieval.json``
    (the scores of :func:`score_embeddings`); the cache defaults to ``out_dir/cache``.
    """
    prepared = Path(prepared)
    manifest = prepared if prepared.suffix == ".json" else prepared / f"{split}.json"
    out = Path(out_dir)
    model, tokenizer = load_clip(model_dir, device)
    emb = encode_split(
        model,
        tokenizer,
        manifest,
        cache_dir=cache_dir or out / "cache",
        max_items=max_items,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
    )
    emb.save_predictions(out / "embeddings.npz")
    scores = score_embeddings(emb, ks=ks, first_n=first_n)

    write_json_atomic(out / "retrieval.json", {"model": str(model_dir), "manifest": str(manifest), "scores": scores})
    return scores
