"""The demo's stages: phantoms -> three tiny trainings -> Bench on the held-out split -> baselines.

The CLIP is also scored zero-shot on the phantom findings (:func:`run_zero_shot`).

Each ``run_*`` function takes the demo config and folders and returns a plain dict (JSON-ready)
that :mod:`LaMed.demo.report` turns into ``metrics.json`` and ``report.md``. Training goes through
``LaMed.train`` with the tiny twins of the published recipes (:func:`train_recipe`); scoring goes
through Bench's command lines (:func:`LaMed.demo.bench.run_bench`); the chance levels come from
:mod:`LaMed.demo.scoring`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from LaMed.data.io import load_mask, load_volume
from LaMed.data.prepare import prepare_phantoms
from LaMed.data.prepared import load_manifest, load_masks
from LaMed.demo import scoring
from LaMed.demo.bench import run_bench
from LaMed.demo.config import DemoConfig
from LaMed.inference.outputs import predict_file
from LaMed.inference.retrieval import evaluate_clip
from LaMed.inference.segment import load_seg_model
from LaMed.train.main import run_training
from LaMed.train.tasks.clip import train_clip
from LaMed.utils.atomic import atomic_write_text, write_json_atomic

logger = logging.getLogger("LaMed.demo")

RECIPES_DIR = Path(__file__).resolve().parents[2] / "configs" / "recipes"


def recipe_path(name: str) -> Path:
    """A recipe given by path or by its name in ``configs/recipes`` (``"tiny_segvol"``)."""
    p = Path(name)
    if p.is_file():
        return p
    q = RECIPES_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not q.is_file():
        raise FileNotFoundError(f"{name}: recipe not found (nor {q})")
    return q


def _log_every(steps: int) -> int:
    return max(1, steps // 25)  # about 25 points on each training curve


def train_recipe(
    recipe: str | Path, out_dir: Path, steps: int, overrides: Sequence[str] = (), yaml_extra: str = ""
) -> dict[str, Any]:
    """Train ``recipe`` for ``steps`` optimizer steps into ``out_dir`` (a fresh run, progress bar on).

    ``yaml_extra`` (recipe YAML text) is merged over the recipe through a ``base:`` file, for
    nested fields the command line cannot set. Returns ``{"recipe", "steps", "seconds", "log"}``
    with the Trainer's log history.
    """

    path = recipe_path(str(recipe))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if yaml_extra:
        derived = out_dir.parent / f"{out_dir.name}_recipe.yaml"
        atomic_write_text(derived, f"base: {path.resolve()}\n{yaml_extra}")
        path = derived
    args = [
        "--output_dir",
        str(out_dir),
        "--max_steps",
        str(steps),
        "--logging_steps",
        str(_log_every(steps)),
        "--disable_tqdm",
        "false",
        "--resume",
        "never",
        *overrides,
    ]
    run = run_training(str(path), args)
    history = list(run.trainer.state.log_history)
    write_json_atomic(out_dir / "log_history.json", history)
    return {
        "recipe": str(recipe),
        "steps": int(run.trainer.state.global_step),
        "seconds": float(run.output.metrics.get("train_runtime", float("nan"))),
        "log": history,
    }


def stage_record(recipe: str, trained: dict[str, Any]) -> dict[str, Any]:
    """What the report shows of a second training stage (a :func:`train_recipe` result): recipe,
    steps, seconds and the first / last loss."""
    return {"recipe": recipe, "steps": trained["steps"], "seconds": trained["seconds"], **loss_ends(trained["log"])}


def loss_ends(log: list[dict]) -> dict[str, float]:
    """``{"first_loss", "last_loss"}`` of a Trainer log history (empty when it logged no loss)."""
    losses = [h["loss"] for h in log if "loss" in h]
    return {"first_loss": float(losses[0]), "last_loss": float(losses[-1])} if losses else {}


# --------------------------------------------------------------------------------------------- data


def prepare(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """Write the phantom set (prepared format) and return its split sizes."""

    prepare_phantoms(
        out,
        n=cfg.n_phantoms,
        shape=cfg.shape,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        progress=True,
    )
    sizes = {
        s: len(load_manifest(out / f"{s}.json")["items"]) if (out / f"{s}.json").is_file() else 0
        for s in ("train", "validation", "test")
    }
    if sizes["test"] < 2 or sizes["train"] < 4:
        raise ValueError(f"demo: {cfg.n_phantoms} phantoms give splits {sizes}; raise --n (test needs >= 2 items)")
    return {"folder": str(out), "shape": list(cfg.shape), "splits": sizes}


def _items(prepared: Path, split: str) -> list[dict]:

    return load_manifest(prepared / f"{split}.json")["items"]


# --------------------------------------------------------------------------------------------- CLIP


def _tower_overrides(cfg: DemoConfig) -> str:
    """The ViT3D geometry shared by the demo's CLIP and the report model that starts from it (JSON).

    The tiny recipes' encoder is sized for 16x64x64 (4x16x16 patches: a 4x4x4 grid of 64 tokens);
    patches grow with the phantoms' shape so the grid (and the cost) stays.
    """
    return json.dumps({"img_size": list(cfg.shape), "patch_size": [max(1, n // 4) for n in cfg.shape]})


def _train_clip(cfg: DemoConfig, prepared: Path, model_dir: Path, pooling: str):
    """Train the demo's CLIP recipe into ``model_dir`` with image readout ``pooling``; the run's
    log history is written next to the model. Returns the ``train_clip`` run."""
    run = train_clip(
        recipe_path(cfg.clip_recipe),
        prepared,
        model_dir,
        [
            "--max_steps",
            str(cfg.clip_steps),
            "--logging_steps",
            str(_log_every(cfg.clip_steps)),
            "--disable_tqdm",
            "false",
            "--resume",
            "never",
            "--vision_overrides",
            _tower_overrides(cfg),
            "--per_device_train_batch_size",
            str(cfg.clip_batch_size),
            "--vision_pooling",
            pooling,
            "--dataloader_num_workers",
            str(cfg.clip_loader_workers),
        ],
    )
    write_json_atomic(model_dir / "log_history.json", list(run.trainer.state.log_history))
    return run


def run_clip(cfg: DemoConfig, prepared: Path, work: Path) -> dict[str, Any]:
    """Tiny M3D-CLIP (ViT3D + BERT, InfoNCE): train, encode the test split, score with Bench."""

    model_dir = work / "clip_model"
    run = _train_clip(cfg, prepared, model_dir, cfg.clip_vision_pooling)
    history = list(run.trainer.state.log_history)
    out = work / "clip_eval"
    # Encode test reports with the recipe's own token budget (the tiny text tower has 256 positions).
    import yaml

    resolved = yaml.safe_load((model_dir / "lamed_recipe.yaml").read_text())
    evaluate_clip(model_dir, prepared, out, split="test", ks=(1, 5, 10), max_length=int(resolved["data"]["max_length"]))
    summary = run_bench(
        "eval_retrieval",
        ["--predictions", out / "embeddings.npz", "--manifest", prepared / "test.json", "--out", out / "bench"],
        out / "bench",
        cfg.threads,
    )
    overall = summary["overall"]
    n = int(overall.get("count") or len(_items(prepared, "test")))
    scores = {k: float(v) for k, v in overall.items() if "R@" in k and v is not None}
    return {
        "recipe": cfg.clip_recipe,
        "steps": int(run.trainer.state.global_step),
        "model": str(model_dir),
        "train_seconds": float(run.output.metrics.get("train_runtime", float("nan"))),
        **loss_ends(history),
        "log": history,
        "pairs": n,
        "bench": scores,
        "chance": scoring.chance_recall(n),
        "embeddings": str(out / "embeddings.npz"),
        "bench_dir": str(out / "bench"),
        "zero_shot": run_zero_shot(
            cfg, prepared, model_dir, work / "zero_shot", probe_split=calibration_split(cfg, work) / "train.json"
        ),
    }


def run_zero_shot(
    cfg: DemoConfig, prepared: Path, model_dir: Path, out: Path, probe_split: Path | None = None
) -> dict[str, Any]:
    """The CLIP scored zero-shot on the phantom findings (``Bench.run_classify``, prompt set ``phantom``):
    per-finding AUROC with its bootstrap 95 % interval, and the mean AUROC per finding group next to
    chance (0.5, a score that ignores the volume). ``probe_split``: labelled phantoms the CLIP has not
    seen; linear probes fitted on their embeddings score the same test split (what the embedding
    carries, next to what the prompts reach)."""
    args: list = ["--model", model_dir, "--manifest", prepared / "test.json", "--prompt-set", cfg.zero_shot_prompts]
    if probe_split is not None:
        args += ["--probe-manifest", probe_split, "--probe-c", cfg.zero_shot_probe_c]
    args += ["--n-boot", cfg.zero_shot_boot, "--seed", cfg.seed, "--out", out]
    summary = run_bench("run_classify", args, out, cfg.threads)
    return {**scoring.zero_shot_summary(summary), "bench_dir": str(out)}


# --------------------------------------------------------------------------------------------- MLLM


def tower_clip(cfg: DemoConfig, prepared: Path, work: Path, clip_model: Path) -> tuple[Path, dict | None]:
    """The CLIP whose vision tower the report model starts from, and the record of its training.

    ``clip_model`` (the demo's CLIP) itself when its image readout is ``cfg.mllm_tower_pooling``
    (record ``None``); else a twin trained with that readout (same recipe, phantoms, steps and seed)
    into ``work/mllm_tower_clip``: the report model reads the tower's tokens one by one, and a tower
    trained under a flattened readout spreads what it knows over positions the 2-layer LLM does not
    learn to read within its steps (DemoConfig.mllm_tower_pooling)."""
    config = Path(clip_model) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: the CLIP the report/VQA model starts from is missing")
    if json.loads(config.read_text()).get("vision_pooling") == cfg.mllm_tower_pooling:
        return Path(clip_model), None
    model_dir = work / "mllm_tower_clip"
    run = _train_clip(cfg, prepared, model_dir, cfg.mllm_tower_pooling)
    record = {
        "recipe": cfg.clip_recipe,
        "vision_pooling": cfg.mllm_tower_pooling,
        "steps": int(run.trainer.state.global_step),
        "seconds": float(run.output.metrics.get("train_runtime", float("nan"))),
        **loss_ends(list(run.trainer.state.log_history)),
    }
    return model_dir, record


def run_mllm(cfg: DemoConfig, prepared: Path, work: Path, clip_model: Path) -> dict[str, Any]:
    """Tiny LaMed (a CLIP's ViT3D, trained at 0.03x + MLP projector + 2-layer Phi-3-style LLM): reports
    and VQA, scored by Bench. ``clip_model``: the demo's CLIP folder; the recipe starts from its vision
    tower, or from a twin's (:func:`tower_clip`)."""
    model_dir = work / "mllm_model"
    tower_dir, tower_training = tower_clip(cfg, prepared, work, Path(clip_model))
    weights = tower_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: the CLIP the report/VQA model starts from is missing")
    trained = train_recipe(
        cfg.mllm_recipe,
        model_dir,
        cfg.mllm_steps,
        [
            "--train_manifest",
            str(prepared / "train.json"),
            "--pretrained_vision",
            f"lamed_clip_vision:{weights}",
            "--vision_overrides",
            _tower_overrides(cfg),
        ],
    )
    test = prepared / "test.json"
    mrg_dir, vqa_dir = work / "mrg_eval", work / "vqa_eval"
    mrg = run_bench(
        "run_mrg",
        ["--model", model_dir, "--manifest", test, "--out", mrg_dir, "--max-new-tokens", cfg.mrg_max_new_tokens],
        mrg_dir,
        cfg.threads,
    )
    vqa = run_bench(
        "run_vqa",
        [
            "--model",
            model_dir,
            "--manifest",
            test,
            "--out",
            vqa_dir,
            "--types",
            "closed",
            "yes_no",
            "--max-new-tokens",
            16,
        ],
        vqa_dir,
        cfg.threads,
    )
    rows = [json.loads(line) for line in (mrg_dir / "predictions.jsonl").read_text().splitlines() if line.strip()]
    by_id = {it["id"]: it for it in _items(prepared, "test")}
    preds = [r["prediction"] for r in rows]
    refs = [by_id[r["id"]]["text"] for r in rows]
    train_items = _items(prepared, "train")
    report_scores = {
        k: float(mrg["overall"][k])
        for k in ("bleu1", "bleu4", "rouge_l", "cider", "m3d_bleu1")
        if mrg["overall"].get(k) is not None
    }
    report_scores.update({k: v for k, v in scoring.findings_f1(preds, refs).items() if k != "cases"})
    report_chance = scoring.random_report_baseline(
        [it["text"] for it in train_items if it.get("text")], refs, seed=cfg.seed
    )
    other_volume = scoring.other_volume_baseline(preds, refs)
    examples = [
        {
            "id": r["id"],
            "prediction": r["prediction"],
            "truth": by_id[r["id"]]["text"],
            "findings_predicted": sorted(scoring.report_findings(r["prediction"])),
            "findings_true": sorted(scoring.report_findings(by_id[r["id"]]["text"])),
        }
        for r in rows[: cfg.mrg_examples]
    ]
    per_type = vqa.get("per_class", {})
    vqa_scores = {
        t: float(per_type[t]["correct"])
        for t in ("closed", "yes_no")
        if t in per_type and per_type[t].get("correct") is not None
    }
    counts = {t: int(per_type[t]["count"]) for t in vqa_scores}
    return {
        "recipe": cfg.mllm_recipe,
        "steps": trained["steps"],
        "model": str(model_dir),
        "train_seconds": trained["seconds"],
        **loss_ends(trained["log"]),
        "log": trained["log"],
        "report": report_scores,
        "report_chance": report_chance,
        "report_other_volume": other_volume,
        "reports_scored": len(rows),
        "examples": examples,
        "vqa": vqa_scores,
        "vqa_questions": counts,
        "vqa_chance": scoring.vqa_baselines(train_items, list(by_id.values())),
        "bench_dirs": {"mrg": str(mrg_dir), "vqa": str(vqa_dir)},
        "tower": str(tower_dir),
        "tower_training": tower_training,
    }


# ---------------------------------------------------------------------------------------- segmentation


def split_masks(prepared: Path, split: str, classes: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """The masks of ``classes`` over a prepared split: ``{class: [(D, H, W) bool, ...]}`` (for the chance levels)."""
    out: dict[str, list[np.ndarray]] = {c: [] for c in classes}
    manifest = prepared / f"{split}.json"
    for item in _items(prepared, split):
        names = [c for c in classes if c in (item.get("masks") or {})]
        for name, m in load_masks(manifest, item, names).items():
            out[name].append(np.asarray(m[0], bool))
    return out


def run_seg(cfg: DemoConfig, prepared: Path, work: Path) -> dict[str, Any]:
    """Tiny SegVol (text prompts): train on phantoms (stage 1, with prompts for removed organs when
    ``cfg.seg_absent``), fine-tune with the presence loss (stage 2), calibrate the presence rule on
    separate phantoms, then segment the test split with Bench's front end, absent organs prompted too."""
    model_dir = work / "seg_model"
    stage1 = work / "seg_stage1" if cfg.seg_presence_steps else model_dir
    classes = "data:\n  classes: [" + ", ".join(cfg.seg_classes) + f"]\n  max_classes: {len(cfg.seg_classes)}\n"
    extra = "model:\n  config_overrides:\n    train_prompt_types: [text]\n" + classes
    extra += f"  absent: {cfg.seg_absent}\n"
    overrides = ["--train_manifest", str(prepared / "train.json")]
    if cfg.seg_lr:
        overrides += ["--learning_rate", str(cfg.seg_lr)]
    trained = train_recipe(cfg.seg_recipe, stage1, cfg.seg_steps, overrides, yaml_extra=extra)
    presence = None
    if cfg.seg_presence_steps:
        presence = train_recipe(
            cfg.seg_presence_recipe,
            model_dir,
            cfg.seg_presence_steps,
            ["--train_manifest", str(prepared / "train.json"), "--init_from", str(stage1)],
            yaml_extra=classes + f"  absent: {cfg.seg_absent}\n",
        )
    bench_args = ["--model", model_dir, "--manifest", prepared / "test.json", "--classes", ",".join(cfg.seg_classes)]
    if cfg.seg_absent != "none":
        bench_args += ["--absent", cfg.seg_absent]
        if cfg.calibration_phantoms:
            bench_args += ["--calibration", calibration_split(cfg, work) / "train.json"]
    out = work / "seg_eval"
    summary = run_bench("run_seg", [*bench_args, "--out", out], out, cfg.threads)
    per_class = {
        name: {k: float(v) for k, v in g.items() if k in ("dice", "nsd", "hd95", "count") and v is not None}
        for name, g in summary.get("per_class", {}).items()
    }
    chance = scoring.seg_baselines(
        split_masks(prepared, "train", cfg.seg_classes), split_masks(prepared, "test", cfg.seg_classes)
    )
    result = {
        "recipe": cfg.seg_recipe,
        "steps": trained["steps"],
        "model": str(model_dir),
        "train_seconds": trained["seconds"],
        **loss_ends(trained["log"]),
        "log": trained["log"],
        "per_class": per_class,
        "overall": {k: v for k, v in summary.get("overall", {}).items() if k in ("dice", "nsd", "hd95", "count")},
        "chance": chance,
        "predictions": str(out / "predictions"),
        "bench_dir": str(out),
    }
    if presence is not None:
        result["presence_training"] = stage_record(cfg.seg_presence_recipe, presence)
    if cfg.seg_absent != "none":
        result["detection"] = scoring.detection_summary(summary["detection"], summary.get("presence_calibration"))
    return result


def calibration_split(cfg: DemoConfig, work: Path) -> Path:
    """``cfg.calibration_phantoms`` phantoms drawn after the main set (seeds ``seed + n_phantoms`` on), all
    in ``train.json``: data the presence rule is fitted on and that no model has seen."""
    out = work / "calibration_phantoms"
    done = out / "train.json"
    # The segmentation and reasoning parts share it: drawn once per demo run.
    if done.is_file() and len(load_manifest(done)["items"]) == cfg.calibration_phantoms:
        return out
    prepare_phantoms(
        out,
        cfg.calibration_phantoms,
        shape=cfg.shape,
        seed=cfg.seed + cfg.n_phantoms,
        val_fraction=0.0,
        test_fraction=0.0,
        progress=False,
    )
    return out


# ---------------------------------------------------------------------------------------- real data


def find_labelled_ct(folder: Path, structure: str) -> dict[str, Any]:
    """The first ``<name>.nii.gz`` with ``<name>_seg.nii.gz`` beside it whose label table (``labels.json``:
    ``{id: name}``, or tables by key, ``total_mr`` for names containing ``mr`` and ``total`` otherwise
    as in TotalSegmentator) names ``structure``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--real-data {folder}: not a folder")
    table_file = folder / "labels.json"
    if not table_file.is_file():
        raise FileNotFoundError(f"--real-data {folder}: no labels.json (label id -> structure name) in it")
    tables = json.loads(table_file.read_text())
    for seg in sorted(folder.glob("*_seg.nii*")):
        image = seg.with_name(seg.name.replace("_seg", ""))
        if not image.is_file():
            continue
        key = ""
        if not all(isinstance(v, str) for v in tables.values()):
            key = "total_mr" if "mr" in image.name.lower() and "total_mr" in tables else "total"
            if key not in tables:
                continue
        table = tables[key] if key else tables
        ids = [int(i) for i, name in table.items() if name == structure]
        if ids:
            return {
                "image": image,
                "labels": seg,
                "label_id": ids[0],
                "label_table": f"{table_file}#{key}" if key else str(table_file),
            }
    raise FileNotFoundError(f"--real-data {folder}: no image with a *_seg label file naming '{structure}'")


def run_real(cfg: DemoConfig, folder: Path, seg_model: Path, work: Path) -> dict[str, Any]:
    """Segment a real labelled CT with the phantom-trained model, fine-tune on it, segment again.

    The fine-tuning uses the scan's own label, so the second score shows that the whole pipeline
    (real geometry, HU, resampling, writing the mask back onto the source grid) works; it is not
    a measure of generalisation. The mask is written by ``lamed predict``'s function on the source grid.
    """
    import torch

    found = find_labelled_ct(folder, cfg.real_structure)
    vol = load_volume(found["image"])
    truth = load_mask(found["labels"], like=vol).array == found["label_id"]
    structure = cfg.real_structure

    def score(model_dir: Path, tag: str) -> dict[str, Any]:
        model = load_seg_model(model_dir)
        with torch.no_grad():
            written = predict_file(model, found["image"], [structure], work / f"real_{tag}.nii.gz", zoom_in=False)
        pred = load_mask(written["mask"], like=vol).array > 0
        return {"dice": scoring.dice(pred, truth), "mask": str(written["mask"])}

    before = score(seg_model, "phantom_only")
    model_dir = work / "real_model"
    extra = (
        "model:\n  config_overrides:\n    train_prompt_types: [text]\n"
        f"  init_from: {seg_model}\n"
        "data:\n  dataset: label_map\n"
        f"  label_map_pairs: ['{found['image']}:{found['labels']}']\n"
        f"  label_table: '{found['label_table']}'\n"
        f"  classes: [{structure}]\n  max_classes: 1\n  repeat: 8\n  augment: true\n"
    )
    trained = train_recipe(cfg.seg_recipe, model_dir, cfg.real_steps, ["--learning_rate", "1e-3"], yaml_extra=extra)
    after = score(model_dir, "finetuned")
    return {
        "image": str(found["image"]),
        "labels": str(found["labels"]),
        "structure": structure,
        "shape": list(vol.shape),
        "spacing_mm": [float(s) for s in vol.spacing],
        "steps": trained["steps"],
        "train_seconds": trained["seconds"],
        **loss_ends(trained["log"]),
        "log": trained["log"],
        "phantom_only_dice": before["dice"],
        "finetuned_dice": after["dice"],
        "all_foreground_dice": scoring.dice(np.ones_like(truth), truth),
        "mask": after["mask"],
    }
