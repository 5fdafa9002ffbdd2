"""Model-running front end of ``Bench/eval_classify.py``: zero-shot findings classification with a 3D CLIP.

    # CT-RATE's 18 abnormalities, CT-CLIP's prompts, thresholds from the validation split
    python -m Bench.run_classify --model runs/m3d_clip --manifest data/ct_rate/test.json \
        --val-manifest data/ct_rate/validation.json --prompt-set ct_rate --style ct_clip --out results/zs
    # a published checkpoint, converted on load (m3d_clip, hsenet_clip_stage1/2, med3dvlm_siglip)
    python -m Bench.run_classify --published med3dvlm_siglip --model pretrained/Med3DVLM-SigLIP \
        --manifest data/ct_rate/test.json --out results/zs_siglip --style merlin

Writes ``<out>/predictions.jsonl`` (and ``val_predictions.jsonl``): one record a volume,
``{"id", "findings": {name: {"probability", "similarity", "similarity_negative"}}}``, then
``summary.json``, ``per_sample.csv`` and ``summary.md`` through ``Bench.eval_classify``.

``--probe-manifest TRAIN`` also fits a linear probe per finding on the image embeddings of a
labelled training split (``LaMed.inference.linear_probe``) and scores the same test split with it:
``<out>/linear_probe/`` (the same files) and ``summary["linear_probe"]`` (per-finding AUROC). A probe
is supervised; it tells whether the embedding carries a finding that zero-shot misses. Fit it on
labelled volumes the CLIP was not trained on (see the module's docstring for why).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def write_predictions(path: Path, records: list[dict]) -> Path:
    from LaMed.utils.atomic import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def run_classify(
    manifest: str | Path,
    out_dir: str | Path,
    model: str | Path,
    val_manifest: str | Path | None = None,
    prompt_set: str = "ct_rate",
    style: str | None = None,
    findings: Sequence[str] | None = None,
    published: str = "",
    tokenizer: str = "",
    score: str = "probability",
    criterion: str = "f1",
    max_items: int | None = None,
    batch_size: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
    slice_features: str = "",
    device: str | None = None,
    clip=None,
    probe_manifest: str | Path | None = None,
    probe_c: float = 1.0,
) -> dict:
    """Classify ``manifest`` (and ``val_manifest``) zero-shot and score it; returns the summary dict.

    ``clip``: an already loaded ``(model, tokenizer)`` pair (the demo passes its own).
    ``probe_manifest`` / ``probe_c``: the labelled split linear probes are fitted on, and their
    inverse regularisation (see the module docstring).
    """
    from Bench.eval_classify import evaluate_classify, write_classify_outputs
    from LaMed.inference.classify import classify_split, load_prompt_set

    out = Path(out_dir)
    if probe_manifest and not probe_c > 0:
        from Bench.common import BenchError

        raise BenchError(f"--probe-c: the probes' inverse regularisation must be > 0, got {probe_c}")
    ps = load_prompt_set(prompt_set, style=style, findings=findings)
    if clip is None:
        from Bench.run_retrieval import load_model

        clip = load_model(str(model), published, tokenizer, device)
    net, tok = clip
    # The probes are fitted first: a bad probe split is refused before anything is written.
    probe = (
        fit_probe(net, tok, ps, probe_manifest, manifest, probe_c, batch_size, slice_features, device)
        if probe_manifest
        else None
    )
    res = classify_split(
        net, tok, manifest, ps, max_items=max_items, batch_size=batch_size, slice_features=slice_features, device=device
    )
    preds = write_predictions(
        out / "predictions.jsonl", [{k: v for k, v in r.items() if k != "labels"} for r in res.records()]
    )
    val_preds = ""
    if val_manifest:
        vres = classify_split(
            net, tok, val_manifest, ps, batch_size=batch_size, slice_features=slice_features, device=device
        )
        val_preds = str(
            write_predictions(
                out / "val_predictions.jsonl", [{k: v for k, v in r.items() if k != "labels"} for r in vres.records()]
            )
        )
    summary, rows = evaluate_classify(
        str(preds), str(manifest), val_preds, str(val_manifest or ""), score, criterion, ps.source, n_boot, seed
    )
    summary["prompt_set"] = ps.to_dict()
    summary["encoding"] = {"model": str(model), "published_family": published or None, "cases": len(res.ids)}
    if probe is not None:
        summary["linear_probe"] = score_probe(
            probe, res, manifest, out / "linear_probe", ps.source, criterion, n_boot, seed
        )
    write_classify_outputs(out, summary, rows)
    return summary


def fit_probe(net, tok, ps, probe_manifest, manifest, c, batch_size=8, slice_features="", device=None) -> dict:
    """Encode the labelled ``probe_manifest`` and fit one probe per finding of ``ps``.

    Refused: a split without labels, a finding with one class in it, and a split sharing image files
    with the test ``manifest`` (a probe scored on the volumes it was fitted on measures nothing).
    """
    from Bench.common import BenchError, load_manifest
    from LaMed.inference.classify import classify_split
    from LaMed.inference.linear_probe import fit_linear_probe

    def volumes(path) -> dict[Path, str]:
        # The same volume is the same image file; ids alone collide across sets (phantom_00000, ...).
        m = load_manifest(path)
        return {(Path(m["_root"]) / str(it.get("image", ""))).resolve(): it["id"] for it in m["items"]}

    test_files, probe_files = volumes(manifest), volumes(probe_manifest)
    shared = sorted(probe_files[f] for f in probe_files.keys() & test_files.keys())
    if shared:
        raise BenchError(
            f"{probe_manifest}: shares {len(shared)} volume(s) with the test manifest {manifest} "
            f"(e.g. {shared[:3]}); fit the probes on other volumes"
        )
    train = classify_split(
        net, tok, probe_manifest, ps, batch_size=batch_size, slice_features=slice_features, device=device
    )
    if train.labels is None:
        raise BenchError(f"{probe_manifest}: the items carry no 'labels'; a linear probe needs them")
    try:
        fitted = fit_linear_probe(train.embeddings, train.labels, train.names, c)
    except ValueError as exc:
        raise BenchError(f"{probe_manifest}: {exc}") from None
    return {"fitted": fitted, "train_manifest": str(probe_manifest), "train_cases": len(train.ids), "c": float(c)}


def score_probe(
    probe: dict,
    test,
    manifest: str | Path,
    out: Path,
    prompt_set: str,
    criterion: str = "f1",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Score ``test``'s embeddings (a ``ZeroShotResult``) with a :func:`fit_probe` result and evaluate
    them like zero-shot scores (threshold 0.5 on the probability), in ``out``."""
    from Bench.eval_classify import evaluate_classify, write_classify_outputs

    p = probe["fitted"].predict_proba(test.embeddings)
    records = [
        {"id": item_id, "findings": {n: {"probability": float(p[i, k])} for k, n in enumerate(test.names)}}
        for i, item_id in enumerate(test.ids)
    ]
    preds = write_predictions(out / "predictions.jsonl", records)
    summary, rows = evaluate_classify(
        str(preds), str(manifest), "", "", "probability", criterion, prompt_set, n_boot, seed
    )
    summary["probe"] = {k: v for k, v in probe.items() if k != "fitted"}
    write_classify_outputs(out, summary, rows)
    return {
        "auroc": {n: g["auroc"] for n, g in summary["per_class"].items()},
        "macro_auroc": summary["overall"]["auroc"],
        **summary["probe"],
        "out": str(out),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Zero-shot multi-label findings classification with a 3D CLIP")
    p.add_argument("--model", required=True, help="LaMed CLIP folder, or a published checkpoint with --published")
    p.add_argument("--published", default="", help="converter family of a published checkpoint")
    p.add_argument("--tokenizer", default="", help="tokenizer folder / hub id; default: the model's")
    p.add_argument("--manifest", required=True, help="prepared manifest of the test split")
    p.add_argument("--val-manifest", default="", help="prepared manifest of the validation split (thresholds)")
    p.add_argument("--prompt-set", default="ct_rate", help="bundled prompt set (ct_rate, phantom) or a YAML file")
    p.add_argument("--style", default=None, help="prompt style: ct_clip (default of ct_rate), ct_clip_present, merlin")
    p.add_argument("--findings", default="", help="comma-separated subset of the prompt set's findings")
    p.add_argument("--score", default="probability", choices=("probability", "similarity"))
    p.add_argument("--criterion", default="f1", choices=("f1", "youden"))
    p.add_argument("--max-items", type=int, default=0, help="first N test items (0 = all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slice-features", default="", help="item field of HSENet stage 2's slice features")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--probe-manifest",
        default="",
        help="labelled split, unseen by the CLIP, to fit linear probes on (image embeddings)",
    )
    p.add_argument("--probe-c", type=float, default=1.0, help="inverse L2 regularisation of the probes (> 0)")
    p.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    summary = run_classify(
        a.manifest,
        a.out,
        a.model,
        a.val_manifest or None,
        a.prompt_set,
        a.style,
        [f.strip() for f in a.findings.split(",") if f.strip()] or None,
        a.published,
        a.tokenizer,
        a.score,
        a.criterion,
        a.max_items or None,
        a.batch_size,
        a.n_boot,
        a.seed,
        a.slice_features,
        a.device,
        probe_manifest=a.probe_manifest or None,
        probe_c=a.probe_c,
    )
    print(Path(a.out) / "summary.md")
    return summary


if __name__ == "__main__":
    main()
