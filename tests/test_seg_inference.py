"""Sliding-window and zoom-out-zoom-in inference, hub resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_configs import tiny_segvol

import LaMed  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize(
    "shape,roi,overlap,mode",
    [
        ((1, 1, 20, 37, 41), (8, 16, 16), 0.5, "constant"),
        ((2, 1, 20, 37, 41), (8, 16, 16), 0.25, "gaussian"),
        ((1, 1, 5, 40, 10), (8, 16, 16), 0.5, "gaussian"),  # smaller than the window on two axes: padded
    ],
)
def test_sliding_window_matches_monai(shape, roi, overlap, mode):
    from monai.inferers import sliding_window_inference as monai_swi

    from LaMed.inference.sliding_window import sliding_window_inference

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.rand(shape)
    with torch.no_grad():
        ours = sliding_window_inference(x, roi, lambda w, o: conv(w), overlap=overlap, mode=mode, sw_batch_size=3)
        ref = monai_swi(x, roi, 3, conv, overlap=overlap, mode=mode)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-6)


def test_window_origins_and_importance_map():
    from monai.data.utils import compute_importance_map

    from LaMed.inference.sliding_window import dense_windows, importance_map, sliding_window_inference

    # 20 voxels, window 8, overlap 0.5 -> step 4: starts 0, 4, 8, 12 (the last ends at 20)
    assert [w[0].start for w in dense_windows((20, 8, 8), (8, 8, 8), 0.5)] == [0, 4, 8, 12]
    # 21 voxels: the last window is pulled back to end at 21
    assert [w[0].start for w in dense_windows((21, 8, 8), (8, 8, 8), 0.5)] == [0, 4, 8, 12, 13]
    assert torch.equal(importance_map((7, 9, 12), "gaussian"), compute_importance_map((7, 9, 12), mode="gaussian"))
    seen = []

    def record(w, origins):
        seen.extend(origins)
        return w

    x = torch.rand(1, 1, 4, 16, 16)
    out = sliding_window_inference(x, (8, 8, 8), record, overlap=0.0)
    # depth 4 < 8: padded by 2 before, so windows start at d = -2
    assert sorted(seen) == [(-2, 0, 0), (-2, 0, 8), (-2, 8, 0), (-2, 8, 8)]
    assert torch.allclose(out, x)


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_segvol()


def test_sliding_window_of_a_model_equals_direct_inference_on_exact_tiles(tiny_model):
    from LaMed.inference.sliding_window import sliding_window_inference

    m = tiny_model
    ids = torch.tensor([[101, 5622, 102]])

    def predict(w, origins):
        return m(w, input_ids=ids.expand(w.shape[0], -1)).logits

    torch.manual_seed(1)
    x = torch.rand(1, 1, 32, 128, 64)  # two windows of 32x64x64 along H, no overlap needed
    with torch.no_grad():
        stitched = sliding_window_inference(x, (32, 64, 64), predict, overlap=0.0, sw_batch_size=2)
        top, bottom = predict(x[:, :, :, :64], None), predict(x[:, :, :, 64:], None)
        single = sliding_window_inference(x[:, :, :, :64], (32, 64, 64), predict, overlap=0.5)
    assert torch.allclose(stitched, torch.cat([top, bottom], dim=3), atol=1e-5)
    assert torch.allclose(single, top, atol=1e-6)  # a volume of exactly one window = direct inference


def test_roi_expansion_hand_computed():
    from LaMed.inference.segment import _roi

    mask = torch.zeros(40, 100, 100, dtype=torch.bool)
    mask[10:14, 50:60, 2:4] = True
    roi = _roi(mask, (32, 64, 64))
    # depth: box 10..14 (4) -> short 28 -> 10-14=-4 .. 14+14=28 -> shifted to 0..32
    # H: 50..60 (10) -> short 54 -> 23..87; W: 2..4 -> 2-31 <0 -> 0..64
    assert roi == (slice(0, 32), slice(23, 87), slice(0, 64))
    assert _roi(torch.zeros(5, 5, 5, dtype=torch.bool), (2, 2, 2)) is None


def _volume(shape=(40, 80, 72)):
    from LaMed.data.io import Volume
    from LaMed.data.phantom import make_phantom

    ph = make_phantom(3, shape=shape)
    return Volume.from_array(ph.image, spacing=ph.spacing), ph


def test_zoom_out_zoom_in_falls_back_cleanly_when_nothing_is_found(tiny_model):
    from LaMed.inference.segment import predict_volume

    vol, _ = _volume()
    m = tiny_model
    calls = {"n": 0}
    real_encode, real_decode = m.encode_image, m.decode

    def counting(x):
        calls["n"] += 1
        return real_encode(x)

    m.encode_image = counting
    m.decode = lambda *a, **k: real_decode(*a, **k) * 0.0 - 20.0  # nothing found anywhere
    try:
        with torch.no_grad():
            pred = predict_volume(m, vol, ["liver", "spleen"], zoom_in=True)
    finally:
        del m.encode_image, m.decode
    assert pred.fallback == ["liver", "spleen"]
    assert calls["n"] == 1  # zoom-out only: one encoding for both prompts, no windows
    assert pred.label_map.shape == vol.shape and not pred.label_map.any()
    assert not any(mk.any() for mk in pred.masks.values())


def test_zoom_in_refines_inside_the_roi(tiny_model):
    from LaMed.inference.segment import predict_volume, preprocess, zoom_out_zoom_in

    vol, _ = _volume((40, 96, 80))
    m = tiny_model
    with torch.no_grad():
        pre = preprocess(vol, m.config.img_size, m.config.preprocess_preset)
        out_only, _ = zoom_out_zoom_in(m, pre, ["liver"], zoom_in=False)
        refined, fb = zoom_out_zoom_in(m, pre, ["liver"], zoom_in=True)
    crop_shape = tuple(b - a for a, b in zip(pre.crop[:3], pre.crop[3:]))
    assert tuple(pre.native.shape[2:]) == crop_shape and tuple(out_only.shape[1:]) == crop_shape
    if fb:  # random weights may find nothing; then both agree exactly
        assert torch.equal(out_only, refined)
    else:
        assert not torch.equal(out_only, refined)
    pred = predict_volume(m, vol, ["liver"], zoom_in=False)
    assert pred.probabilities.shape == (1,) + vol.shape
    outside = np.ones(vol.shape, bool)
    outside[tuple(slice(a, b) for a, b in zip(pre.crop[:3], pre.crop[3:]))] = False
    assert not pred.probabilities[0][outside].any()  # nothing predicted outside the foreground crop


def test_hub_resolution_offline(tmp_path, monkeypatch):
    from LaMed.inference.hub import resolve_model

    (tmp_path / "config.json").write_text('{"model_type": "lamed_segvol"}', encoding="utf-8")
    assert resolve_model(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(tmp_path.parent)
    with pytest.raises(FileNotFoundError, match="not a hub id"):
        resolve_model(str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="offline"):
        resolve_model("someone/not-cached-model", cache_dir=str(tmp_path / "cache"))
    # a cached snapshot resolves offline
    snap = tmp_path / "cache" / "models--someone--cached" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text('{"model_type": "lamed_segvol"}', encoding="utf-8")
    (tmp_path / "cache" / "models--someone--cached" / "refs").mkdir()
    (tmp_path / "cache" / "models--someone--cached" / "refs" / "main").write_text("a" * 40, encoding="utf-8")
    assert resolve_model("someone/cached", cache_dir=str(tmp_path / "cache")) == snap
