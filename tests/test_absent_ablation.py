"""``Bench.absent_ablation`` end to end at smoke size: three trainings, the table read back from each
variant's own Bench evaluation, the always-present row by hand."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # five tiny trainings (a few seconds each)


def test_absent_ablation_table(tmp_path):
    from Bench.absent_ablation import main

    out = tmp_path / "abl"
    summary = main(["--out", str(out), "--n", "12", "--heldout", "10", "--steps", "2", "--presence-steps", "2"])
    names = [r["variant"] for r in summary["variants"]]
    assert names == ["no absent prompts", "absent prompts", "absent prompts + presence"]
    for row, slug in zip(summary["variants"], ["no_absent_prompts", "absent_prompts", "absent_prompts_presence"]):
        scored = json.loads((out / f"{slug}_eval" / "summary.json").read_text(encoding="utf-8"))
        assert row["dice_present"] == scored["overall"]["dice"] and row["f1"] == scored["detection"]["f1"]
        assert row["dice_tp"] == scored["detection"]["dice_tp"]
        assert scored["presence_calibration"] is not None  # fitted on the held-out validation half
        # every organ was prompted on every test phantom: present + absent prompts = phantoms x organs
        test = json.loads((out / "heldout" / "test.json").read_text(encoding="utf-8"))
        assert row["tp"] + row["fn"] + row["tn"] + row["fp"] == 4 * len(test["items"])
    p, a = summary["prompts"]["present"], summary["prompts"]["absent"]
    assert summary["chance"]["f1"] == pytest.approx(2 * p / (2 * p + a))
    assert summary["dice_difference"] == pytest.approx(
        summary["variants"][2]["dice_present"] - summary["variants"][0]["dice_present"]
    )
    assert "always present (chance)" in (out / "summary.md").read_text(encoding="utf-8")
    # the presence stage is on only where it should be
    cfgs = {
        s: json.loads((out / s / "config.json").read_text()) for s in ("no_absent_prompts", "absent_prompts_presence")
    }
    assert cfgs["no_absent_prompts"].get("presence_weight", 0.0) == 0.0
    assert cfgs["absent_prompts_presence"]["presence_weight"] > 0
