"""``lamed demo``: the scoring rules and chance levels by hand, then the ``--quick`` run end to end.

The quick run (session fixture ``quick_demo`` in conftest.py, ~13 CPU minutes) trains the four tiny
twins (CLIP, then the report/VQA model from a CLIP twin's tower, text-prompted segmentation, reasoning
segmentation) on 1200 phantoms, scores them with Bench on the 60 held-out ones, fine-tunes on the real
TotalSegmentator CT (when ``../shared/data`` is present), and must clear the margins the CLIP,
multimodal-LLM and segmentation issues set (``LaMed.demo.report.CHECKS``); the numbers measured are in the report
printed by ``pytest -s`` and in the README's demo section.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from LaMed.demo import scoring

# ---- scoring rules -----------------------------------------------------------------------------------


def test_findings_rules_recover_the_phantom_labels():
    """On ground-truth phantom reports the rules find exactly the findings the generator recorded."""
    from LaMed.data.phantom import make_phantom

    seen = set()
    for seed in range(40):
        p = make_phantom(seed, shape=(8, 32, 32))
        assert scoring.report_findings(p.report) == scoring.label_findings(p.labels), p.report
        seen |= scoring.label_findings(p.labels)
    assert {"hepatomegaly", "liver lesion", "lung nodule", "nephrectomy"} <= seen  # the rules were exercised


def test_findings_negations_and_micro_f1_by_hand():
    assert scoring.report_findings("No focal hepatic lesion. The spleen is homogeneous without focal lesion.") == set()
    assert scoring.report_findings("No hepatomegaly. A 12 mm cyst in the right lobe of the liver.") == {"liver lesion"}
    assert scoring.report_findings("The left kidney is surgically absent. Nodule in the left lower lobe (9 mm).") == {
        "nephrectomy",
        "lung nodule",
    }
    preds = ["Impression: Hepatomegaly. Cyst in the liver (20 mm).", "Impression: Splenomegaly.", "No abnormality."]
    refs = [
        "Impression: Hepatomegaly.",
        "Impression: Splenomegaly. Nodule in the right lower lobe (5 mm).",
        "Unremarkable CT of the abdomen.",
    ]
    # tp = 2 (hepatomegaly, splenomegaly), fp = 1 (liver lesion), fn = 1 (lung nodule)
    s = scoring.findings_f1(preds, refs)
    assert s["findings_precision"] == pytest.approx(2 / 3) and s["findings_recall"] == pytest.approx(2 / 3)
    assert s["findings_f1"] == pytest.approx(2 / 3) and s["findings_exact"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 predictions for 3"):
        scoring.findings_f1(preds[:2], refs)


def test_detection_summary_and_always_present_chance_by_hand():
    # 18 present prompts (16 found), 6 absent (4 reported absent): P = 16/18, R = 16/18
    det = {"tp": 16, "fp": 2, "fn": 2, "tn": 4, "precision": 16 / 18, "recall": 16 / 18, "f1": 16 / 18}
    s = scoring.detection_summary(det, {"a": 1.0, "b": -2.0})
    assert s["present_prompts"] == 18 and s["absent_prompts"] == 6
    assert s["absent_reported"] == pytest.approx(4 / 6) and s["chance_absent_reported"] == 0.0
    # always present: precision 18/24, recall 1, F1 = 2 * 0.75 / 1.75 = 36/42
    assert s["chance_precision"] == pytest.approx(0.75) and s["chance_f1"] == pytest.approx(36 / 42)
    assert s["calibration"] == {"a": 1.0, "b": -2.0}


def test_reasoning_summary_and_always_seg_chance_by_hand():
    from LaMed.demo.reasoning import reasoning_summary
    from LaMed.demo.report import evaluate_checks, render

    # 40 present-organ questions (39 with [SEG]); 10 about removed organs, 2 still with [SEG] after the
    # gate, 6 before it (the LLM alone): 8/10 and 4/10 answered in words.
    bench = {
        "reasoning": {
            "questions": 40,
            "seg_token_rate": 39 / 40,
            "negatives": 10,
            "false_seg_rate": 0.2,
            "seg_token_rate_llm": 1.0,
            "false_seg_rate_llm": 0.6,
            "withdrawn": 4,
        }
    }
    a = reasoning_summary(bench)
    assert a["absent_without_seg"] == pytest.approx(0.8) and a["absent_without_seg_llm"] == pytest.approx(0.4)
    assert a["chance_absent_without_seg"] == 0.0 and a["present_with_seg"] == pytest.approx(0.975)
    none = reasoning_summary({"reasoning": {**bench["reasoning"], "negatives": 0, "false_seg_rate": None}})
    assert none["absent_without_seg"] is None  # nothing asked about removed organs: no rate, no check
    part = {"answers": a, "per_class": {"liver": {"dice": 0.65}}, "chance": {"liver": {"all_foreground": 0.2}}}
    checks = evaluate_checks({"reasoning": part})
    assert checks["reasoning: removed organs answered without [SEG]"]["passed"]
    assert not checks["reasoning: liver Dice"]["passed"] and checks["reasoning: liver Dice"]["needed"] == 0.7
    assert "reasoning: removed organs answered without [SEG]" not in evaluate_checks(
        {"reasoning": {**part, "answers": none}}
    )
    text = render({"reasoning": part}, {})
    assert (
        "| model (LLM + presence gate) | 0.975 | 0.800 |" in text
        and "| chance (always `[SEG]`) | 1.000 | 0.000 |" in text
    )


def test_chance_levels_by_hand():
    assert scoring.chance_recall(12, (1, 5, 20)) == {"R@1": 1 / 12, "R@5": 5 / 12, "R@20": 1.0}

    def closed(ans, topic):
        return {
            "type": "closed",
            "topic": topic,
            "answer_choice": ans,  # noqa: E731
            "choices": {"A": "a", "B": "b", "C": "c", "D": "d"},
        }

    yn = lambda ans, topic: {"type": "yes_no", "topic": topic, "answer": ans}  # noqa: E731
    train = [
        {"vqa": [closed("B", "phase"), yn("Yes", "contrast")]},
        {"vqa": [closed("B", "phase"), yn("Yes", "contrast")]},
        {"vqa": [closed("C", "phase"), yn("No", "contrast"), yn("No", "cyst")]},
    ]
    test = [{"vqa": [closed("B", "phase"), yn("No", "contrast")]}, {"vqa": [closed("A", "organ"), yn("No", "cyst")]}]
    b = scoring.vqa_baselines(train, test)
    # closed: "phase" -> B (right), unseen topic "organ" -> overall majority B (wrong); yes/no: contrast -> yes
    # (wrong), cyst -> no (right)
    assert b["closed"] == {"uniform": 0.25, "majority": 0.5, "questions": 2.0}
    assert b["yes_no"] == {"uniform": 0.5, "majority": 0.5, "questions": 2.0}
    m = np.zeros((2, 4, 4), bool)
    m[0, :2, :2] = True  # 4 of 32 voxels
    seg = scoring.seg_baselines({"liver": [m, m, np.zeros_like(m)]}, {"liver": [m]})
    assert seg["liver"]["all_foreground"] == pytest.approx(2 * 4 / (4 + 32))
    assert seg["liver"]["atlas"] == pytest.approx(1.0)  # inside in 2 of 3 training masks -> the atlas is m
    rnd = scoring.random_report_baseline(["Impression: Hepatomegaly."], ["Impression: Hepatomegaly."], repeats=2)
    assert rnd["findings_f1"] == 1.0 and rnd["rouge_l"] == pytest.approx(1.0)


def test_other_volume_baseline_by_hand():
    h, sp = "Impression: Hepatomegaly.", "Impression: Splenomegaly."
    preds, refs = [h, h, sp], [h, sp, h]
    # shift 1 pairs (h, sp), (h, h), (sp, h): tp 1, fp 2, fn 2 -> F1 1/3; shift 2 pairs (h, h), (h, h),
    # (sp, sp): F1 1; the mean over the two shifts is 2/3.
    b = scoring.other_volume_baseline(preds, refs)
    assert b["findings_f1"] == pytest.approx(2 / 3) and b["findings_exact"] == pytest.approx((1 / 3 + 1) / 2)
    with pytest.raises(ValueError, match=">= 2 reports"):
        scoring.other_volume_baseline([h], [h])


def test_checks_compare_scores_with_their_margins():
    from LaMed.demo.report import evaluate_checks

    metrics = {
        "clip": {
            "bench": {"text_to_image_R@1": 0.5, "image_to_text_R@1": 0.2, "text_to_image_R@5": 0.9},
            "chance": {"R@1": 0.1, "R@5": 0.5},
        },
        "seg": {"per_class": {"liver": {"dice": 0.69}}, "chance": {"liver": {"all_foreground": 0.1}}},
    }
    checks = evaluate_checks(metrics)
    assert checks["report-to-volume R@1"]["needed"] == pytest.approx(0.4) and checks["report-to-volume R@1"]["passed"]
    assert not checks["volume-to-report R@1"]["passed"]
    assert (
        checks["report-to-volume R@5"]["needed"] == pytest.approx(1.5) and not checks["report-to-volume R@5"]["passed"]
    )
    assert checks["liver Dice"]["needed"] == 0.7 and not checks["liver Dice"]["passed"]
    assert "closed VQA accuracy" not in checks  # a part that did not run is not judged


def test_real_data_discovery(totalseg_dir, tmp_path):
    from LaMed.demo.stages import find_labelled_ct

    found = find_labelled_ct(totalseg_dir, "liver")
    assert found["image"].name == "ct_abdomen.nii.gz" and found["label_id"] == 5
    assert found["label_table"].endswith("labels.json#total")
    with pytest.raises(FileNotFoundError, match="no labels.json"):
        find_labelled_ct(tmp_path, "liver")
    with pytest.raises(FileNotFoundError, match="naming 'heart_of_gold'"):
        find_labelled_ct(totalseg_dir, "heart_of_gold")


def test_command_line_config():
    import argparse

    from LaMed.commands.demo import add_arguments, config_from_args
    from LaMed.demo import QUICK

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--quick", "--steps", "0.5", "--parts", "seg", "--n", "30"]))
    assert cfg.seg_steps == round(QUICK.seg_steps * 0.5) and cfg.parts == ["seg"] and cfg.n_phantoms == 30
    with pytest.raises(ValueError, match="--steps"):
        config_from_args(p.parse_args(["--steps", "-1"]))


# ---- the quick demo end to end -------------------------------------------------------------------------


def test_report_model_tower_is_the_clip_itself_when_the_readouts_agree(tmp_path):
    from LaMed.demo.config import FULL
    from LaMed.demo.stages import tower_clip

    clip = tmp_path / "clip_model"
    with pytest.raises(FileNotFoundError, match=r"clip_model/config\.json: the CLIP the report/VQA model"):
        tower_clip(FULL, tmp_path / "phantoms", tmp_path, clip)
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"vision_pooling": "mean"}))
    # same readout: no twin is trained (no phantoms exist here, so training would fail)
    assert tower_clip(FULL.replace(mllm_tower_pooling="mean"), tmp_path / "phantoms", tmp_path, clip) == (clip, None)
    assert not (tmp_path / "mllm_tower_clip").exists()


def test_quick_demo_runs_every_part_and_segmentation_beats_chance(quick_demo):
    rc, out, m = quick_demo
    assert rc == 0  # without --strict a finished demo exits 0 and reports failed checks in report.md
    assert set(m["checks"]) == {
        "report-to-volume R@1",
        "volume-to-report R@1",
        "report-to-volume R@5",
        "zero-shot findings AUROC",
        "report findings F1",
        "closed VQA accuracy",
        "detection F1 (present + absent prompts)",
        "absent organs reported absent",
        "liver Dice",
        "reasoning: removed organs answered without [SEG]",
        "reasoning: liver Dice",
    }
    seg = m["seg"]
    assert m["checks"]["liver Dice"]["passed"]
    assert seg["per_class"]["liver"]["dice"] > 0.7 > seg["chance"]["liver"]["all_foreground"]
    for part in (m["clip"], m["mllm"], seg):
        assert part["last_loss"] < part["first_loss"]
    # absent organs: removed spleens of the test phantoms, prompted and (mostly) reported absent
    det, counts = seg["detection"], seg["detection"]["counts"]
    assert det["absent_prompts"] == counts["tn"] + counts["fp"] >= 1 and seg["presence_training"]["steps"] > 0
    assert det["calibration"] is not None  # fitted on the separate calibration phantoms
    assert m["checks"]["detection F1 (present + absent prompts)"]["passed"]
    assert m["checks"]["absent organs reported absent"]["passed"]


def test_quick_demo_reasoning_answers_removed_organs_in_words(quick_demo):
    _, out, m = quick_demo
    r = m["reasoning"]
    a = r["answers"]
    assert a["absent_questions"] >= 1 and a["present_questions"] >= 2 * len(m["config"]["reason_classes"])
    assert r["absent_training"]["steps"] > 0 and r["calibration"] is not None  # stage 2, then calibrated
    assert m["checks"]["reasoning: removed organs answered without [SEG]"]["passed"]
    assert m["checks"]["reasoning: liver Dice"]["passed"]
    assert a["present_with_seg"] >= 0.9  # the gate does not withdraw the organs that are there
    answers = (out / "runs" / "reason_eval" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == a["present_questions"] + a["absent_questions"]
    assert "## Reasoning segmentation" in (out / "report.md").read_text()


def test_quick_demo_clip_and_report_models_beat_chance(quick_demo):
    _, out, m = quick_demo
    failed = {k: v for k, v in m["checks"].items() if not v["passed"]}
    assert not failed, failed  # the zero-shot check (mean AUROC >= 0.70 over every finding) among them
    clip, mllm = m["clip"], m["mllm"]
    assert clip["bench"]["text_to_image_R@1"] >= 4 * clip["chance"]["R@1"]
    assert clip["bench"]["image_to_text_R@1"] >= 4 * clip["chance"]["R@1"]
    assert mllm["report"]["findings_f1"] >= mllm["report_other_volume"]["findings_f1"] + 0.15
    assert mllm["vqa"]["closed"] >= 0.5
    zs = clip["zero_shot"]
    assert zs["chance"] == 0.5 and zs["mean_auroc"]["all"] >= 0.70 and zs["mean_auroc"]["organ"] >= 0.85
    # the small organs a mean-pooled readout lost (docs/inference.md): the flattened one keeps them
    saved = json.loads((out / "runs" / "clip_model" / "config.json").read_text())
    assert saved["vision_pooling"] == m["config"]["clip_vision_pooling"] == "flatten"
    # the report model starts from a twin CLIP with the mean readout, trained like the scored one
    tower = mllm["tower_training"]
    assert tower["vision_pooling"] == "mean" and tower["steps"] == m["config"]["clip_steps"]
    assert tower["last_loss"] < tower["first_loss"]
    twin = out / "runs" / "mllm_tower_clip"
    assert json.loads((twin / "config.json").read_text())["vision_pooling"] == "mean"
    assert str(twin / "model.safetensors") in (out / "runs" / "mllm_model" / "lamed_recipe.yaml").read_text()
    assert min(zs["per_finding"][f]["auroc"] for f in ("nephrectomy", "cholecystectomy")) >= 0.75
    # linear probes on the calibration phantoms' embeddings (unseen by the CLIP) sit next to each finding
    assert zs["probe"]["train_cases"] == 150 and zs["probe"]["mean_auroc"]["organ"] >= 0.70
    assert all("probe_auroc" in f for f in zs["per_finding"].values())
    assert {
        "hepatomegaly",
        "splenomegaly",
        "splenectomy",
        "nephrectomy",
        "lung nodule",
        "liver lesion",
        "arterial phase",
    } <= set(zs["per_finding"])


def test_quick_demo_writes_the_report_figures_and_bench_outputs(quick_demo):
    from PIL import Image

    _, out, m = quick_demo
    report = (out / "report.md").read_text()
    for heading in (
        "## Did it learn?",
        "## What was trained",
        "## Image-report retrieval (CLIP)",
        "## Zero-shot findings classification (CLIP)",
        "## Report generation and VQA",
        "## Text-prompted segmentation",
    ):
        assert heading in report
    assert "Generated:" in report and "Truth:" in report and "chance" in report
    for name in ("training_curves", "retrieval_matrix", "segmentation"):
        png = out / "figures" / f"{name}.png"
        with Image.open(png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
        assert f"figures/{name}.png" in report
    for sub in ("clip_eval/bench", "zero_shot", "mrg_eval", "vqa_eval", "seg_eval"):
        assert (out / "runs" / sub / "summary.json").is_file() and (out / "runs" / sub / "per_sample.csv").is_file()
    assert m["wall_seconds"] > 0 and set(m["stages"]) and m["machine"]["threads"] == 1


def test_quick_demo_real_ct_mask_on_the_source_grid(quick_demo, totalseg_dir):
    import nibabel as nib

    _, out, m = quick_demo
    real = m["real"]
    assert real["finetuned_dice"] > real["all_foreground_dice"] + 0.3
    src, mask = nib.load(str(totalseg_dir / "ct_abdomen.nii.gz")), nib.load(real["mask"])
    assert mask.shape == src.shape and np.allclose(mask.affine, src.affine)
    assert (out / "figures" / "real_ct.png").is_file() and "## Real CT" in (out / "report.md").read_text()
