"""``run_demo``: the whole demo in order, timing each stage, writing ``metrics.json``, figures, ``report.md``.

    from LaMed.demo import QUICK, run_demo
    metrics = run_demo(QUICK, "demo_out")            # metrics["checks"]: learned-above-chance checks

Layout of ``out``::

    report.md  metrics.json  figures/*.png
    phantoms/                the prepared phantom set
    runs/                    clip_model, mllm_model, seg_model, reason_model (+ real_model), Bench outputs
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from LaMed.demo import figures, stages
from LaMed.demo.config import PARTS, DemoConfig
from LaMed.demo.reasoning import run_reasoning
from LaMed.demo.report import evaluate_checks, write_metrics, write_report

logger = logging.getLogger("LaMed.demo")


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not available on every platform
        return None


@contextmanager
def _stage(timings: dict[str, dict[str, float]], index: int, total: int, title: str):
    print(f"\n[{index}/{total}] {title}", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    timings[title] = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    print(f"[{index}/{total}] done in {timings[title]['wall']:.0f} s", flush=True)


def run_demo(
    cfg: DemoConfig, out: str | Path, real_data: str | Path | None = None, quick: bool = False
) -> dict[str, Any]:
    """Run the demo parts of ``cfg`` (see :mod:`LaMed.demo`) into ``out``; returns the metrics dict."""
    import torch

    unknown = sorted(set(cfg.parts) - set(PARTS))
    if unknown:
        raise ValueError(f"demo parts: unknown {unknown}; known: {list(PARTS)}")
    if "mllm" in cfg.parts and "clip" not in cfg.parts:
        raise ValueError(
            "demo part 'mllm' starts its vision tower from the demo's CLIP (as M3D-LaMed does): keep the 'clip' part"
        )
    if real_data is not None and "seg" not in cfg.parts:
        raise ValueError("--real-data fine-tunes the segmentation model: keep the 'seg' part")
    out = Path(out)
    runs, figs = out / "runs", out / "figures"
    runs.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    start = time.perf_counter()
    load_start = _load()
    timings: dict[str, dict[str, float]] = {}
    metrics: dict[str, Any] = {"quick": quick, "config": cfg.to_dict(), "stages": timings}
    titles = ["phantoms"] + [p for p in PARTS if p in cfg.parts] + (["real"] if real_data else [])
    total = len(titles) + 1
    step = iter(range(1, total + 1))
    fig_paths: dict[str, str] = {}
    try:
        with _stage(timings, next(step), total, "generate and prepare the phantom set"):
            metrics["data"] = stages.prepare(cfg, out / "phantoms")
        prepared = out / "phantoms"
        if "clip" in cfg.parts:
            with _stage(
                timings, next(step), total, f"CLIP: train {cfg.clip_recipe} ({cfg.clip_steps} steps), Bench retrieval"
            ):
                metrics["clip"] = stages.run_clip(cfg, prepared, runs)
        if "mllm" in cfg.parts:
            with _stage(
                timings,
                next(step),
                total,
                f"report/VQA: train {cfg.mllm_recipe} ({cfg.mllm_steps} steps"
                + ("" if cfg.mllm_tower_pooling == cfg.clip_vision_pooling else ", after its CLIP twin")
                + "), Bench MRG + VQA",
            ):
                metrics["mllm"] = stages.run_mllm(cfg, prepared, runs, Path(metrics["clip"]["model"]))
        if "seg" in cfg.parts:
            with _stage(
                timings,
                next(step),
                total,
                f"segmentation: train {cfg.seg_recipe} ({cfg.seg_steps} + {cfg.seg_presence_steps} presence steps), Bench seg",
            ):
                metrics["seg"] = stages.run_seg(cfg, prepared, runs)
        if "reasoning" in cfg.parts:
            with _stage(
                timings,
                next(step),
                total,
                f"reasoning segmentation: train {cfg.reason_recipe} ({cfg.reason_steps} steps) + "
                f"{cfg.reason_absent_recipe} ({cfg.reason_absent_steps} steps), Bench reasoning seg",
            ):
                metrics["reasoning"] = run_reasoning(cfg, prepared, runs)
        if real_data is not None:
            with _stage(timings, next(step), total, f"real CT: {cfg.real_structure} from {real_data}"):
                try:
                    metrics["real"] = stages.run_real(cfg, Path(real_data), Path(metrics["seg"]["model"]), runs)
                except FileNotFoundError as exc:
                    metrics["real"] = {"error": str(exc)}
                    print(f"real CT skipped: {exc}", flush=True)
        with _stage(timings, next(step), total, "figures and report"):
            fig_paths = _figures(cfg, metrics, prepared, figs)
    finally:
        torch.set_num_threads(threads)
        metrics["wall_seconds"] = time.perf_counter() - start
        metrics["machine"] = {
            "cpus": os.cpu_count(),
            "threads": max(1, cfg.threads),
            "load_start": load_start,
            "load_end": _load(),
        }
        metrics["checks"] = evaluate_checks(metrics)
        metrics["figures"] = fig_paths
        write_metrics(metrics, out / "metrics.json")
        write_report(metrics, fig_paths, out / "report.md")
    return metrics


def _figures(cfg: DemoConfig, metrics: dict[str, Any], prepared: Path, figs: Path) -> dict[str, str]:
    """Draw every figure whose data exists; paths relative to ``out`` (for report.md links)."""
    import numpy as np

    paths: dict[str, str] = {}
    logs = {}
    for part, title in (
        ("clip", "CLIP (InfoNCE)"),
        ("mllm", "report / VQA (LM loss)"),
        ("seg", "segmentation (Dice + BCE)"),
        ("real", "real-CT fine-tuning"),
    ):
        if isinstance(metrics.get(part), dict) and metrics[part].get("log"):
            logs[title] = metrics[part]["log"]
    if logs:
        figures.training_curves(logs, figs / "training_curves.png")
        paths["curves"] = "figures/training_curves.png"
    clip = metrics.get("clip")
    if clip:
        with np.load(clip["embeddings"], allow_pickle=False) as z:
            r1 = clip["bench"].get("text_to_image_R@1")
            figures.retrieval_matrix(
                z["text"],
                z["image"],
                figs / "retrieval_matrix.png",
                title=f"Test reports vs test volumes (report -> volume R@1 {r1:.2f}, "
                f"chance {clip['chance']['R@1']:.2f})",
            )
        paths["retrieval"] = "figures/retrieval_matrix.png"
    seg = metrics.get("seg")
    if seg:
        cases = figures.seg_cases(prepared, Path(seg["predictions"]), cfg.seg_classes, n=3)
        if cases:
            figures.mask_panels(
                cases,
                figs / "segmentation.png",
                title="Held-out phantoms: truth (solid) vs prediction (dashed), Dice per structure",
            )
            paths["seg"] = "figures/segmentation.png"
    real = metrics.get("real")
    if isinstance(real, dict) and "mask" in real:
        from LaMed.data.io import load_mask, load_volume

        vol = load_volume(real["image"])
        truth = load_mask(real["labels"], like=vol).array
        from LaMed.demo.stages import find_labelled_ct

        label_id = find_labelled_ct(Path(real["image"]).parent, real["structure"])["label_id"]
        s = real["structure"]
        cases = []
        for tag, key in (("phantom-trained", "phantom_only"), ("fine-tuned", "finetuned")):
            mask_file = Path(real["mask"]).with_name(f"real_{key}.nii.gz")
            if mask_file.is_file():
                pred = load_mask(mask_file, like=vol).array > 0
                cases.append(
                    {
                        "image": vol.array,
                        "truth": {s: truth == label_id},
                        "pred": {s: pred},
                        "label": f"{Path(real['image']).name}: {tag}",
                        "dice": {s: real[f"{key}_dice"]},
                    }
                )
        if cases:
            figures.mask_panels(
                cases, figs / "real_ct.png", title=f"Real CT, {s}: truth (solid) vs prediction (dashed)"
            )
            paths["real"] = "figures/real_ct.png"
    return paths
