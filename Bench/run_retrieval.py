"""Model-running front end of ``Bench/eval_retrieval.py``: encode a split with a 3D CLIP, then score.

    # a LaMed CLIP folder (save_pretrained + tokenizer), e.g. the output of a clip recipe
    python -m Bench.run_retrieval --model runs/m3d_clip --manifest data/m3d_cap/test.json \
        --out results/m3d_clip --max-items 2000 --first-n 100,500,1000,2000
    # a published checkpoint, converted on load (families: m3d_clip, hsenet_clip_stage1,
    # hsenet_clip_stage2, med3dvlm_siglip); the tokenizer from --tokenizer (default: the folder)
    python -m Bench.run_retrieval --published m3d_clip --model pretrained/M3D-CLIP \
        --tokenizer bert-base-uncased --manifest data/m3d_cap/test.json --out results/m3d_clip_published

Writes ``<out>/embeddings.npz`` (the predictions file of ``Bench/eval_retrieval.py``: ``ids``,
``image``, ``text``) and then ``summary.json``, ``per_sample.csv`` and ``summary.md`` through
``Bench.eval_retrieval``. The embeddings of a split are cached (``--cache``, default
``<out>/cache``) under a key of the model weights, the manifest and the settings, so scoring the
same model again does not re-encode. From Python, :func:`run_retrieval` does the same (the demo
calls it on phantoms).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

DEFAULT_KS = (1, 5, 10, 50, 100)


def load_model(model: str, published: str = "", tokenizer: str = "", device: str | None = None):
    """``(model, tokenizer)`` from a LaMed folder or, with ``published``, a converted published checkpoint."""
    from transformers import AutoTokenizer

    from LaMed.inference.retrieval import load_clip

    if not published:
        clip, tok = load_clip(model, device)
        if tokenizer:
            tok = AutoTokenizer.from_pretrained(tokenizer)
        return clip, tok
    from LaMed.models.checkpoint_files import resolve_text_path
    from LaMed.models.convert.clip import load_published_clip

    clip, report = load_published_clip(published, model)
    tok = AutoTokenizer.from_pretrained(resolve_text_path(tokenizer) if tokenizer else model)
    if device is not None:
        clip.to(device)
    return clip, tok


def run_retrieval(
    prepared: str | Path,
    out_dir: str | Path,
    model: str | Path,
    split: str = "test",
    published: str = "",
    tokenizer: str = "",
    max_items: int | None = 2000,
    first_n: Sequence[int] = (),
    ks: Sequence[int] = DEFAULT_KS,
    max_length: int | None = None,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    slice_features: str = "",
    num_slices: int = 32,
) -> dict:
    """Encode ``<prepared>/<split>.json`` (or a manifest path) with the CLIP ``model`` and score it.

    Returns the summary dict of ``Bench.eval_retrieval.evaluate_retrieval`` with ``"encoding"``
    added (``from_cache``, number of pairs, cache file); writes the Bench outputs into ``out_dir``.
    """
    from Bench.common import write_outputs
    from Bench.eval_retrieval import evaluate_retrieval
    from LaMed.inference.retrieval import default_max_length, encode_split

    prepared = Path(prepared)
    manifest = prepared if prepared.suffix == ".json" else prepared / f"{split}.json"
    out = Path(out_dir)
    clip, tok = load_model(str(model), published, tokenizer, device)
    emb = encode_split(
        clip,
        tok,
        manifest,
        cache_dir=cache_dir or out / "cache",
        max_items=max_items or None,
        max_length=max_length,
        batch_size=batch_size,
        slice_features=slice_features,
        num_slices=num_slices,
        device=device,
    )
    predictions = emb.save_predictions(out / "embeddings.npz")
    ks = [k for k in ks if k <= len(emb)] or [1]
    v2v = [k for k in (1, 5, 10, 50) if k < len(emb)]
    summary, rows = evaluate_retrieval(str(predictions), str(manifest), ks, v2v, list(first_n))
    summary["encoding"] = {
        "model": str(model),
        "published_family": published or None,
        "pairs": len(emb),
        "from_cache": emb.from_cache,
        "cache": str(emb.cache_path) if emb.cache_path else None,
        "max_length": max_length or default_max_length(clip),
        "truncation": "deterministic",
    }
    metrics = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in ks]
    write_outputs(
        out,
        summary,
        rows,
        ["id", "dataset", "rank_image_to_text", "rank_text_to_image"] + metrics,
        metrics,
        "Retrieval",
    )
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description="Encode a prepared split with a 3D CLIP and score retrieval "
        "(report->volume, volume->report, volume->volume)"
    )
    p.add_argument("--model", required=True, help="LaMed CLIP folder, or a published checkpoint with --published")
    p.add_argument(
        "--published",
        default="",
        help="converter family of a published checkpoint "
        "(m3d_clip, hsenet_clip_stage1, hsenet_clip_stage2, med3dvlm_siglip)",
    )
    p.add_argument("--tokenizer", default="", help="tokenizer folder / hub id ('minilm' allowed); default: the model's")
    p.add_argument("--manifest", required=True, help="prepared manifest (e.g. data/m3d_cap/test.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-items", type=int, default=2000, help="first N pairs of the split (papers: 2000); 0 = all")
    p.add_argument("--first-n", default="", help="also score the first n pairs, e.g. 100,500,1000,2000")
    p.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="K values of Recall@K")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="report token budget (default: the published 512, capped by the text model's positions)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cache", default="", help="embedding cache folder (default <out>/cache)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: where the model is)")
    p.add_argument("--slice-features", default="", help="2E3 encoder: field:<item key> or pooled:<size>")
    p.add_argument("--num-slices", type=int, default=32)
    a = p.parse_args(argv)
    summary = run_retrieval(
        a.manifest,
        a.out,
        a.model,
        published=a.published,
        tokenizer=a.tokenizer,
        max_items=a.max_items,
        first_n=[int(n) for n in a.first_n.split(",") if n],
        ks=[int(k) for k in a.ks.split(",") if k],
        max_length=a.max_length,
        batch_size=a.batch_size,
        cache_dir=a.cache or None,
        device=a.device,
        slice_features=a.slice_features,
        num_slices=a.num_slices,
    )
    print(Path(a.out) / "summary.md")
    return summary


if __name__ == "__main__":
    main()
