"""Detection over prompts (present / absent structures) and Dice on true positives, by hand."""

import json
import math

import numpy as np
import pytest

from Bench.common import MANIFEST_FORMAT
from LaMed.metrics.segmentation import detection_scores


def test_detection_scores_hand_worked():
    # 6 prompts: TP, TP, FP, FN, TN, TN  -> P = 2/3, R = 2/3, F1 = 2/3
    pred = [True, True, True, False, False, False]
    gt = [True, True, False, True, False, False]
    dices = [0.8, 0.6, 0.0, 0.0, 1.0, 1.0]
    out = detection_scores(pred, gt, dices)
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (2, 1, 1, 2)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["dice_tp"] == pytest.approx(0.7)  # (0.8 + 0.6) / 2: the TN's Dice of 1 is not averaged in


def test_detection_scores_edge_cases():
    # a model that reports everything present: recall 1, precision = share of present prompts
    out = detection_scores([True] * 4, [True, True, True, False])
    assert out["precision"] == pytest.approx(0.75) and out["recall"] == 1.0
    assert out["f1"] == pytest.approx(2 * 0.75 / 1.75)
    # nothing reported, something present: F1 0; all absent and nothing reported: perfect
    assert detection_scores([False, False], [True, False])["f1"] == 0.0
    assert detection_scores([False, False], [False, False])["f1"] == 1.0
    assert math.isnan(detection_scores([False], [True], [0.0])["dice_tp"])
    with pytest.raises(ValueError, match="same length"):
        detection_scores([True], [True, False])
    with pytest.raises(ValueError, match="dices"):
        detection_scores([True], [True], [0.1, 0.2])


def test_eval_seg_scores_absent_structures(tmp_path):
    from Bench import eval_seg

    gt = np.zeros((4, 6, 6), np.uint8)
    gt[1:3, 1:4, 1:4] = 1  # 18 voxels
    (tmp_path / "m").mkdir()
    np.save(tmp_path / "m" / "a_liver.npy", gt)
    np.save(tmp_path / "m" / "b_liver.npy", gt)
    items = [
        {"id": "a", "image": "x.npy", "spacing": [1, 1, 1], "masks": {"liver": "m/a_liver.npy"}, "absent": ["spleen"]},
        {"id": "b", "image": "x.npy", "spacing": [1, 1, 1], "masks": {"liver": "m/b_liver.npy"}, "absent": ["spleen"]},
    ]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": MANIFEST_FORMAT + "1", "items": items}))
    pred = tmp_path / "pred"
    pred.mkdir()
    half = gt.copy()
    half[2] = 0  # 9 of the 18 voxels: Dice = 2*9 / (9 + 18) = 2/3
    np.save(pred / "a_liver.npy", gt)
    np.save(pred / "a_spleen.npy", np.zeros_like(gt))  # correctly absent (TN)
    np.save(pred / "b_liver.npy", half)
    spleen = np.zeros_like(gt)
    spleen[0, 0, 0] = 1
    np.save(pred / "b_spleen.npy", spleen)  # a false mask for a removed organ (FP)
    summary, rows = eval_seg.evaluate_seg(str(pred), str(manifest))
    det = summary["detection"]
    assert (det["tp"], det["fp"], det["fn"], det["tn"]) == (2, 1, 0, 1)
    assert det["precision"] == pytest.approx(2 / 3) and det["recall"] == 1.0 and det["f1"] == pytest.approx(0.8)
    assert det["dice_tp"] == pytest.approx((1.0 + 2 / 3) / 2)
    by = {(r["id"], r["class"]): r for r in rows}
    assert by[("a", "spleen")]["dice"] == 1.0 and by[("b", "spleen")]["dice"] == 0.0
    # segmentation quality is over present structures only: the absent spleen is detection's business
    assert "spleen" not in json.dumps(summary["per_class"])
    assert summary["overall"]["dice"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_eval_seg_refuses_bad_absent(tmp_path):
    from Bench import eval_seg
    from Bench.common import BenchError

    np.save(tmp_path / "m.npy", np.ones((2, 2, 2), np.uint8))
    items = [{"id": "a", "image": "x.npy", "spacing": [1, 1, 1], "masks": {"liver": "m.npy"}, "absent": ["liver"]}]
    (tmp_path / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT + "1", "items": items}))
    (tmp_path / "p").mkdir()
    with pytest.raises(BenchError, match="both in 'masks' and 'absent'"):
        eval_seg.evaluate_seg(str(tmp_path / "p"), str(tmp_path / "manifest.json"))
