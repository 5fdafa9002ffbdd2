"""Report generation with a LaMed model over a test split, scored by ``Bench.eval_mrg``.

    python -m Bench.run_mrg --model runs/tiny_lamed --manifest data/phantoms/test.json --out out/mrg
    from Bench.run_mrg import run_mrg; summary = run_mrg("runs/tiny_lamed", "data/test.json", "out/mrg")

Writes ``<out>/predictions.jsonl`` (``{"id", "prediction", "question"}``; the prompt is the first
caption template, fixed) and the scorer's ``summary.json`` / ``per_sample.csv`` / ``summary.md``.
Decoding: greedy by default (M3D Bench); ``--decoding med3dvlm --seed 42`` is Med3DVLM's sampling at T 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def run_mrg(
    model,
    manifest: str,
    out: str,
    max_new_tokens: int = 256,
    decoding: str = "greedy",
    seed: int = 0,
    batch_size: int = 8,
    limit: int | None = None,
    meteor: bool = False,
    processor=None,
) -> dict:
    """Generate a report for every item of ``manifest`` that has one, write predictions, score them.

    ``model`` is a saved LaMed folder or an already loaded model (then pass ``processor``).
    Returns the scorer's summary dict.
    """
    from Bench import eval_mrg
    from LaMed.data.mllm_dataset import MLLMDataset
    from LaMed.inference.generate import load_mllm, predict_dataset, write_jsonl

    if processor is None:
        model, processor = load_mllm(model)
    ds = MLLMDataset(manifest, None, task="caption", train=False)
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
    preds = write_jsonl(Path(out) / "predictions.jsonl", rows, ("id", "prediction", "question"))
    argv = ["--predictions", str(preds), "--manifest", str(manifest), "--out", str(out)] + (
        ["--meteor"] if meteor else []
    )
    return eval_mrg.main(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="saved LaMed model folder")
    p.add_argument("--manifest", required=True, help="prepared test manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--decoding", default="greedy", help="greedy | m3d_demo | med3dvlm | flare_vqa")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="first N reports only")
    p.add_argument("--meteor", action="store_true")
    a = p.parse_args(argv)
    return run_mrg(a.model, a.manifest, a.out, a.max_new_tokens, a.decoding, a.seed, a.batch_size, a.limit, a.meteor)


if __name__ == "__main__":
    main()
