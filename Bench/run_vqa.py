"""VQA with a LaMed model over a test split, scored by ``Bench.eval_vqa``.

    python -m Bench.run_vqa --model runs/tiny_lamed --manifest data/phantoms/test.json --out out/vqa --types closed yes_no
    from Bench.run_vqa import run_vqa

Closed questions are asked in the M3D format (``"Q Choices: A. .. D. .."``); predictions are
``{"id", "question_index", "prediction"}`` JSON lines in ``<out>/predictions.jsonl``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

TASK_OF_TYPE = {"closed": "vqa_closed", "open": "vqa_open", "yes_no": "vqa_yes_no"}


def run_vqa(
    model,
    manifest: str,
    out: str,
    types: Sequence[str] = ("closed", "yes_no", "open"),
    max_new_tokens: int = 64,
    decoding: str = "greedy",
    seed: int = 0,
    batch_size: int = 16,
    limit: int | None = None,
    processor=None,
) -> dict:
    """Answer every VQA pair of the given ``types`` in ``manifest``; returns the scorer's summary."""
    from Bench import eval_vqa
    from LaMed.data.mllm_dataset import MLLMDataset
    from LaMed.inference.generate import load_mllm, predict_dataset, write_jsonl

    unknown = [t for t in types if t not in TASK_OF_TYPE]
    if unknown:
        raise ValueError(f"run_vqa: unknown question type(s) {unknown}; known: {sorted(TASK_OF_TYPE)}")
    if processor is None:
        model, processor = load_mllm(model)
    rows = []
    for t in types:
        try:
            ds = MLLMDataset(manifest, None, task=TASK_OF_TYPE[t], train=False)
        except ValueError:
            continue  # this split has no question of type t
        rows += predict_dataset(
            model,
            processor,
            ds,
            max_new_tokens=max_new_tokens,
            decoding=decoding,
            seed=seed,
            batch_size=batch_size,
            limit=limit,
        )
    for r in rows:
        r["question_index"] = r["vqa_index"]
    preds = write_jsonl(Path(out) / "predictions.jsonl", rows, ("id", "question_index", "prediction"))
    return eval_vqa.main(["--predictions", str(preds), "--manifest", str(manifest), "--out", str(out)])


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--types", nargs="+", default=["closed", "yes_no", "open"])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--decoding", default="greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="first N questions of each type")
    a = p.parse_args(argv)
    return run_vqa(a.model, a.manifest, a.out, a.types, a.max_new_tokens, a.decoding, a.seed, a.batch_size, a.limit)


if __name__ == "__main__":
    main()
