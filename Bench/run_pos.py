"""Positioning (structure name -> box as text) with a LaMed model, scored by ``Bench.eval_pos``.

    python -m Bench.run_pos --model runs/tiny_lamed --manifest data/phantoms/test.json --out out/pos

One question per (item, structure with a box); predictions ``{"id", "target", "prediction"}``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def run_pos(
    model,
    manifest: str,
    out: str,
    max_new_tokens: int = 48,
    decoding: str = "greedy",
    seed: int = 0,
    batch_size: int = 16,
    limit: int | None = None,
    processor=None,
) -> dict:
    """Ask for the box of every structure in ``manifest``; returns the scorer's summary."""
    from Bench import eval_pos
    from LaMed.data.mllm_dataset import MLLMDataset
    from LaMed.inference.generate import load_mllm, predict_dataset, write_jsonl

    if processor is None:
        model, processor = load_mllm(model)
    ds = MLLMDataset(manifest, None, task="rec", train=False)
    rows = predict_dataset(
        model,
        processor,
        ds,
        max_new_tokens=max_new_tokens,
        decoding=decoding,
        seed=seed,
        batch_size=batch_size,
        limit=limit,
    )
    preds = write_jsonl(Path(out) / "predictions.jsonl", rows, ("id", "target", "prediction"))
    return eval_pos.main(["--predictions", str(preds), "--manifest", str(manifest), "--out", str(out)])


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--decoding", default="greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None)
    a = p.parse_args(argv)
    return run_pos(a.model, a.manifest, a.out, a.max_new_tokens, a.decoding, a.seed, a.batch_size, a.limit)


if __name__ == "__main__":
    main()
