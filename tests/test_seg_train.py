"""End to end: the tiny recipe learns on phantoms, ``lamed predict`` writes masks in the source
geometry, Bench's front end scores a split, a tiny model fine-tuned on real CT finds the liver.

These are the slow segmentation tests (a few CPU minutes in all): one training on
phantoms is shared by every test of the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import LaMed  # noqa: F401

pytestmark = pytest.mark.slow  # trains a model for minutes (make test-fast deselects it)

REPO = Path(__file__).resolve().parents[1]
LARGE_ORGANS = ["liver", "spleen", "kidney_left", "kidney_right"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: avoid oversubscription stalls
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    from LaMed.data.prepare import prepare_phantoms

    out = tmp_path_factory.mktemp("seg_learn_phantoms")
    prepare_phantoms(out, n=24, shape=(32, 64, 64), seed=0, val_fraction=0.2, test_fraction=0.0, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(phantom_set, tmp_path_factory):
    """The tiny SegVol recipe, text prompts only, trained on the phantom training split."""
    from LaMed.train.main import run_training

    work = tmp_path_factory.mktemp("seg_learn_run")
    recipe = work / "recipe.yaml"
    recipe.write_text(
        f"base: {REPO / 'configs/recipes/tiny_segvol.yaml'}\n"
        "model:\n  config_overrides:\n    train_prompt_types: [text]\n",
        encoding="utf-8",
    )
    run = run_training(
        str(recipe),
        [
            "--train_manifest",
            str(phantom_set / "train.json"),
            "--output_dir",
            str(work / "model"),
            "--max_steps",
            "200",
            "--learning_rate",
            "3e-3",
            "--logging_steps",
            "20",
        ],
    )
    return run, work / "model"


def test_tiny_text_prompted_model_learns_large_organs(trained, phantom_set):
    from LaMed.data.prepared import load_image, load_manifest, load_masks
    from LaMed.inference.segment import load_seg_model
    from LaMed.metrics.segmentation import dice

    run, folder = trained
    losses = [h["loss"] for h in run.trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.7 * losses[0]
    model = load_seg_model(folder)  # the saved folder reloads with its tokenizer
    val = phantom_set / "validation.json"
    scores, spleen_on_liver = {}, []
    for item in load_manifest(val)["items"]:
        names = [n for n in LARGE_ORGANS if n in item["masks"]]
        image = torch.from_numpy(np.asarray(load_image(val, item), np.float32))[None]
        probs = model.segment(image, names)
        gt = load_masks(val, item, names)
        for n, p in zip(names, probs):
            scores.setdefault(n, []).append(dice(p[0].numpy() > 0.5, gt[n][0]))
            if n == "spleen" and "liver" in gt:
                spleen_on_liver.append(dice(p[0].numpy() > 0.5, gt["liver"][0]))
    mean = {n: float(np.mean(v)) for n, v in scores.items()}
    print("held-out Dice", mean, "spleen prompt vs the liver", float(np.mean(spleen_on_liver)))
    assert len(scores["liver"]) >= 4
    assert mean["liver"] > 0.7
    # The prompt matters: asking for the spleen does not return the liver (a prompt-blind model would:
    # Dice ~0.7 with it) and finds some spleen (all-foreground chance ~0.01). After 200 steps on 19
    # phantoms the small organs are coarse (spleen Dice 0.09-0.25 each), so no higher bar is set here;
    # the demo and Bench.absent_ablation measure trained models.
    assert float(np.mean(spleen_on_liver)) < 0.05
    assert mean["spleen"] > 0.1


def test_bench_front_end_scores_the_validation_split(trained, phantom_set, tmp_path):
    from Bench.run_seg import run_seg

    _, folder = trained
    summary = run_seg(
        folder, phantom_set / "validation.json", tmp_path / "bench", classes=["liver", "spleen"], progress=False
    )
    assert (tmp_path / "bench" / "summary.json").is_file() and (tmp_path / "bench" / "per_sample.csv").is_file()
    rows = (tmp_path / "bench" / "per_sample.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) - 1 == summary["counts"]["evaluated"] and summary["counts"]["missing_predictions"] == 0
    per_class = json.loads((tmp_path / "bench" / "summary.json").read_text(encoding="utf-8"))
    assert "liver" in json.dumps(per_class)
    preds = sorted((tmp_path / "bench" / "predictions").glob("*_liver.npy"))
    assert preds and np.load(preds[0]).shape == (1 * 32, 64, 64)


def test_bench_front_end_prompts_absent_structures_and_scores_detection(trained, phantom_set, tmp_path):
    """--absent missing: every class without a mask is prompted too; detection counts by hand from
    the manifest and the written predictions (an absent decision is an empty mask)."""
    from Bench.run_seg import run_seg

    _, folder = trained
    classes = ["liver", "spleen", "kidney_left", "kidney_right", "pancreas"]  # no phantom has a pancreas
    out = tmp_path / "bench"
    summary = run_seg(folder, phantom_set / "validation.json", out, classes=classes, progress=False, absent="missing")
    man = json.loads((phantom_set / "validation.json").read_text(encoding="utf-8"))
    truth = {(it["id"], c): c in (it.get("masks") or {}) for it in man["items"] for c in classes}
    assert sum(not v for v in truth.values()) >= len(man["items"])  # at least the pancreas of each item
    rows = [json.loads(line) for line in (out / "presence.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {(r["id"], r["class"]): r["gt_present"] for r in rows} == truth
    tp = fp = fn = 0
    for (item_id, name), present in truth.items():
        predicted = bool(np.load(out / "predictions" / f"{item_id}_{name}.npy").astype(np.float32).max() > 0.5)
        tp, fp, fn = tp + (predicted and present), fp + (predicted and not present), fn + (present and not predicted)
    det = summary["detection"]
    assert det["tp"] == tp and det["fp"] == fp and det["fn"] == fn
    assert det["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    with pytest.raises(ValueError, match="--classes"):
        run_seg(folder, phantom_set / "validation.json", tmp_path / "x", progress=False, absent="missing")


def test_bench_front_end_calibrates_presence_on_another_split(trained, phantom_set, tmp_path):
    """--calibration: Platt scaling of the largest logit fitted on another split (checked against
    scikit-learn's logistic regression on scores computed here), applied to the scored split."""
    from sklearn.linear_model import LogisticRegression

    from Bench.run_seg import run_seg
    from LaMed.data.prepared import load_image, load_manifest
    from LaMed.inference.segment import load_seg_model, segment_prepared

    _, folder = trained
    classes = ["liver", "spleen", "pancreas"]  # pancreas: absent from every phantom
    model = load_seg_model(folder)
    scores, truth = [], []
    man = load_manifest(phantom_set / "train.json")
    for item in man["items"]:
        names = [c for c in classes if c in item["masks"]] + [c for c in classes if c not in item["masks"]]
        image = torch.from_numpy(np.asarray(load_image(phantom_set / "train.json", item), np.float32))[None]
        logits = segment_prepared(model, image, names, return_logits=True)
        scores += [float(x.max()) for x in logits]
        truth += [c in item["masks"] for c in names]
    ref = LogisticRegression(C=1 / 1e-2, tol=1e-10, max_iter=10000).fit(np.array(scores)[:, None], truth)
    out = tmp_path / "bench"
    summary = run_seg(
        folder,
        phantom_set / "validation.json",
        out,
        classes=classes,
        progress=False,
        absent="missing",
        calibration=phantom_set / "train.json",
    )
    cal = summary["presence_calibration"]
    assert cal["a"] == pytest.approx(ref.coef_[0, 0], rel=1e-3) and cal["b"] == pytest.approx(
        ref.intercept_[0], rel=1e-3
    )
    assert getattr(model.config, "presence_calibration", None) is None  # the folder's model is left as it was
    for r in (json.loads(x) for x in (out / "presence.jsonl").read_text(encoding="utf-8").splitlines()):
        mask = np.load(out / "predictions" / f"{r['id']}_{r['class']}.npy")
        assert r["pred_present"] == (r["presence_probability"] >= 0.5)
        if not r["pred_present"]:
            assert not mask.any()  # reported absent: an empty mask
    # a calibration split that is not there: refused, naming it, before anything is written
    from LaMed.data.prepared import PreparedError

    with pytest.raises(PreparedError, match="nope.json"):
        run_seg(
            folder,
            phantom_set / "validation.json",
            tmp_path / "x",
            classes=classes,
            absent="missing",
            calibration=tmp_path / "nope.json",
            progress=False,
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name,labels_key", [("ct_abdomen", "total"), ("mr_abdomen", "total_mr")])
def test_lamed_predict_writes_masks_on_the_source_grid(trained, totalseg_dir, tmp_path, name, labels_key):
    import nibabel as nib

    from LaMed.cli import main

    _, folder = trained
    src = totalseg_dir / f"{name}.nii.gz"
    out = tmp_path / f"{name}_liver.nii.gz"
    assert main(["predict", "--model", str(folder), "--image", str(src), "--prompt", "liver", "--out", str(out)]) == 0
    ref, got = nib.load(str(src)), nib.load(str(out))
    assert got.shape == ref.shape
    assert np.allclose(got.affine, ref.affine, atol=1e-6)
    assert nib.aff2axcodes(got.affine) == nib.aff2axcodes(ref.affine)
    data = np.asarray(got.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    # several prompts: one label map + legend + overlay, again on the source grid
    out_dir = tmp_path / "multi"
    assert (
        main(
            [
                "predict",
                "--model",
                str(folder),
                "--image",
                str(src),
                "--prompt",
                "liver",
                "--prompt",
                "spleen",
                "--out",
                str(out_dir),
                "--overlay",
                "--no-zoom-in",
            ]
        )
        == 0
    )
    lab = nib.load(str(out_dir / f"{name}_labels.nii.gz"))
    assert lab.shape == ref.shape and np.allclose(lab.affine, ref.affine, atol=1e-6)
    legend = json.loads((out_dir / f"{name}_labels.json").read_text(encoding="utf-8"))
    assert legend["labels"] == {"1": "liver", "2": "spleen"}
    assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2}
    assert (out_dir / f"{name}_labels.png").stat().st_size > 1000


def test_predict_batch_mode_and_errors(trained, totalseg_dir, tmp_path, capsys):
    from LaMed.cli import main
    from LaMed.commands.predict import predict_folder
    from LaMed.inference.segment import load_seg_model

    _, folder = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(totalseg_dir / "mr_abdomen.nii.gz", inputs / "a.nii.gz")
    (inputs / "broken.nii.gz").write_bytes(b"not a volume")
    model = load_seg_model(folder)
    res = predict_folder(model, inputs, ["liver"], tmp_path / "out", progress=False, zoom_in=False)
    assert isinstance(res["a.nii.gz"], dict) and res["a.nii.gz"]["mask"].is_file()
    assert res["broken.nii.gz"].startswith("error:") and "broken.nii.gz" in res["broken.nii.gz"]
    assert (
        main(["predict", "--model", str(tmp_path / "nope"), "--image", "x.nii.gz", "--prompt", "liver", "--out", "o"])
        == 1
    )
    assert "not a hub id" in capsys.readouterr().err


def test_finetune_on_real_ct_finds_the_liver(trained, totalseg_dir, tmp_path):
    """A few minutes of fine-tuning on ct_abdomen's liver label (id 5 of labels.json "total")."""
    from LaMed.data.io import load_mask, load_volume
    from LaMed.inference.segment import predict_volume
    from LaMed.metrics.segmentation import dice
    from LaMed.train.main import run_training

    _, init = trained
    ct, seg = totalseg_dir / "ct_abdomen.nii.gz", totalseg_dir / "ct_abdomen_seg.nii.gz"
    recipe = tmp_path / "ft.yaml"
    recipe.write_text(
        f"base: {REPO / 'configs/recipes/tiny_segvol.yaml'}\n"
        "model:\n  config_overrides:\n    train_prompt_types: [text]\n"
        f"  init_from: {init}\n"
        "data:\n  dataset: label_map\n"
        f"  label_map_pairs: ['{ct}:{seg}']\n"
        f"  label_table: '{totalseg_dir / 'labels.json'}#total'\n"
        "  classes: [liver]\n  repeat: 8\n  augment: true\n",
        encoding="utf-8",
    )
    run = run_training(
        str(recipe), ["--output_dir", str(tmp_path / "ft"), "--max_steps", "60", "--learning_rate", "1e-3"]
    )
    model = run.trainer.model.eval()
    vol = load_volume(ct)
    gt = load_mask(seg, like=vol).array == 5
    with torch.no_grad():
        pred = predict_volume(model, vol, ["liver"], zoom_in=False)
    d = dice(pred.masks["liver"], gt)
    all_foreground = dice(np.ones_like(gt), gt)
    print(f"liver Dice {d:.3f} vs all-foreground {all_foreground:.3f}")
    assert d > all_foreground + 0.3
