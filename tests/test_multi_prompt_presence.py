"""All prompts of a volume in one pass (same outputs as one call per prompt, fewer encodings) and
the presence decision (calibration against scikit-learn, absent prompts -> empty masks)."""

import json
import math

import numpy as np
import pytest
import torch
from tiny_configs import phantom_volume, tiny_segvol


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_segvol()


def test_batched_zoom_in_equals_one_call_per_prompt(tiny_model, monkeypatch):
    from LaMed.inference.segment import preprocess, zoom_out_zoom_in

    m = tiny_model
    prompts = ["liver", "spleen", "left kidney"]
    pre = preprocess(phantom_volume(), m.config.img_size, m.config.preprocess_preset)
    with torch.no_grad():
        zo, _ = zoom_out_zoom_in(m, pre, prompts, zoom_in=False)
    # random weights: a threshold every prompt's zoom-out passes somewhere, so all of them zoom in
    monkeypatch.setattr(m.config, "threshold", float(torch.sigmoid(torch.quantile(zo.flatten()[::7], 0.9))))
    calls = {"n": 0}
    real = m.encode_image

    def counting(x):
        calls["n"] += x.shape[0]
        return real(x)

    monkeypatch.setattr(m, "encode_image", counting)
    with torch.no_grad():
        one = [zoom_out_zoom_in(m, pre, [p]) for p in prompts]
        n_sequential = calls["n"]
        calls["n"] = 0
        batched, skipped = zoom_out_zoom_in(m, pre, prompts)
    assert not skipped and not any(fb for _, fb in one)
    assert not torch.equal(batched, zo)  # the zoom-in did change the logits
    diff = (torch.sigmoid(torch.cat([lg for lg, _ in one])) - torch.sigmoid(batched)).abs().max()
    assert float(diff) <= 1e-5
    # one zoom-out encoding instead of three, and each window once however many prompts visit it
    assert calls["n"] < n_sequential


def test_fit_platt_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    from LaMed.inference.presence import fit_platt

    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    s = np.where(y, rng.normal(2.0, 1.5, 200), rng.normal(-1.0, 1.5, 200))
    ours = fit_platt(s, y, l2=0.5)
    ref = LogisticRegression(C=1 / 0.5, tol=1e-10, max_iter=1000).fit(s[:, None], y)
    assert ours["a"] == pytest.approx(float(ref.coef_[0, 0]), abs=1e-5)
    assert ours["b"] == pytest.approx(float(ref.intercept_[0]), abs=1e-5)
    with pytest.raises(ValueError, match="both present and absent"):
        fit_platt([1.0, 2.0], [True, True])


def test_uncalibrated_rule_is_the_non_empty_mask():
    from types import SimpleNamespace

    from LaMed.inference.presence import decide

    cfg = SimpleNamespace(threshold=0.3)
    edge = math.log(0.3 / 0.7)
    prob, present = decide(cfg, np.array([edge + 1e-3, edge - 1e-3, 5.0]))
    assert list(present) == [True, False, True]
    assert prob[0] == pytest.approx(0.5, abs=1e-3)
    cfg.presence_calibration = {"a": 2.0, "b": -1.0}
    prob, _ = decide(cfg, np.array([0.0, 0.5]))
    assert prob == pytest.approx([1 / (1 + math.e), 0.5])


def test_absent_prompt_gets_an_empty_mask_and_present_false(tiny_model, tmp_path, monkeypatch):
    from LaMed.inference.outputs import write_segmentation
    from LaMed.inference.segment import predict_volume

    m = tiny_model
    vol = phantom_volume()
    real_decode = m.decode

    def decode(features, prompts, image_index=None):
        low = real_decode(features, prompts, image_index=image_index)
        # row 0 ("liver"): confident foreground in a corner block; row 1 ("spleen"): lukewarm everywhere
        out = torch.full_like(low, -8.0)
        out[0, :, : low.shape[2] // 2, : low.shape[3] // 2] = 6.0
        out[1] = -0.5
        return out

    monkeypatch.setattr(m, "decode", decode)
    monkeypatch.setattr(m.config, "presence_calibration", None, raising=False)
    with torch.no_grad():
        # uncalibrated at threshold 0.3 (logit -0.85): spleen's -0.5 is above it -> a false mask
        loose = predict_volume(m, vol, ["liver", "spleen"], zoom_in=False, threshold=0.3)
        assert loose.present == {"liver": True, "spleen": True} and loose.masks["spleen"].any()
        # calibrated so that a max logit of -0.5 means absent: sigmoid(1.0 * s - 1.0)
        m.config.presence_calibration = {"a": 1.0, "b": -1.0}
        pred = predict_volume(m, vol, ["liver", "spleen"], zoom_in=False, threshold=0.3)
    assert pred.present == {"liver": True, "spleen": False}
    assert pred.presence["spleen"] == pytest.approx(1 / (1 + math.exp(1.5)), abs=1e-3)
    assert not pred.masks["spleen"].any() and pred.masks["liver"].any()
    assert set(np.unique(pred.label_map)) == {0, 1}  # spleen's label 2 nowhere
    written = write_segmentation(pred, vol, tmp_path / "out")
    record = json.loads(written["legend"].read_text())
    by = {s["prompt"]: s for s in record["structures"]}
    assert by["spleen"]["present"] is False and by["liver"]["present"] is True
    assert by["spleen"]["presence_probability"] == pytest.approx(pred.presence["spleen"])
