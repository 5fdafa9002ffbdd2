"""``lamed predict`` with bad options, bad model folders and failing output places.

Every case ends in exit status 1 with one line on stderr naming the option or file and the problem
(no traceback), and nothing written (or the previous file left intact). The tiny model folders and
inputs are the ones of test_predict_families.py (random weights: the plumbing, not accuracy).
"""

from __future__ import annotations

import errno
import json
import math
import shutil
import struct

import pytest
from test_predict_families import SHAPE, clip_dir, inputs, mllm_dir, phantom, seg_dir  # noqa: F401  (fixtures)

from LaMed.cli import main


def _predict(model, image, out, *extra):
    return main(["predict", "--model", str(model), "--image", str(image), "--out", str(out), *extra])


def _refused(capsys, *words):
    err = capsys.readouterr().err
    assert any(line.startswith("lamed predict: error:") for line in err.splitlines()), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    return err


# ---- options -----------------------------------------------------------------------------------------


def test_classify_is_refused_for_a_model_that_is_not_a_clip(seg_dir, mllm_dir, inputs, tmp_path, capsys):
    for model in (seg_dir, mllm_dir):
        out = tmp_path / f"{model.name}.json"
        extra = ("--prompt", "liver", "--no-zoom-in") if model == seg_dir else ()
        assert _predict(model, inputs["nifti"], out, "--classify", *extra) == 1
        _refused(capsys, "--classify", "needs a CLIP model")
        assert not out.exists()


@pytest.mark.parametrize("prompt", ["", "   "])
def test_blank_prompt_is_refused(seg_dir, inputs, tmp_path, capsys, prompt):
    out = tmp_path / "m.nii.gz"
    assert _predict(seg_dir, inputs["nifti"], out, "--prompt", prompt, "--no-zoom-in") == 1
    _refused(capsys, "--prompt", "empty")
    assert not out.exists()


@pytest.mark.parametrize("value", ["-1", "2", "nan", "0", "1", "inf"])
def test_threshold_outside_the_open_unit_interval_is_refused(seg_dir, inputs, tmp_path, capsys, value):
    out = tmp_path / "m.nii.gz"
    assert _predict(seg_dir, inputs["nifti"], out, "--prompt", "liver", "--threshold", value) == 1
    _refused(capsys, "--threshold", "between 0 and 1")
    assert not out.exists()


@pytest.mark.parametrize("value", ["0.99", "-0.1", "1"])
def test_overlap_out_of_range_is_refused(seg_dir, inputs, tmp_path, capsys, value):
    assert _predict(seg_dir, inputs["nifti"], tmp_path / "m.nii.gz", "--prompt", "liver", "--overlap", value) == 1
    _refused(capsys, "--overlap")


def test_library_refuses_the_same_values(seg_dir, inputs):
    from LaMed.data.io import load_volume
    from LaMed.inference.segment import load_seg_model, predict_volume

    model, vol = load_seg_model(seg_dir), load_volume(inputs["nifti"])
    with pytest.raises(ValueError, match="empty"):
        predict_volume(model, vol, [" "], zoom_in=False)
    with pytest.raises(ValueError, match="between 0 and 1"):
        predict_volume(model, vol, ["liver"], zoom_in=False, threshold=float("nan"))
    with pytest.raises(ValueError, match="overlap"):
        predict_volume(model, vol, ["liver"], overlap=0.99)


@pytest.mark.parametrize("question", ["", "  \t "])
def test_blank_question_is_refused(mllm_dir, inputs, tmp_path, capsys, question):
    out = tmp_path / "a.json"
    assert _predict(mllm_dir, inputs["nifti"], out, "--question", question) == 1
    _refused(capsys, "--question", "empty")
    assert not out.exists()


def test_question_longer_than_the_llm_positions_is_refused(mllm_dir, inputs, tmp_path, capsys):
    from transformers import AutoConfig

    import LaMed.models.mllm  # noqa: F401

    limit = AutoConfig.from_pretrained(mllm_dir).text_config.max_position_embeddings
    out = tmp_path / "a.json"
    question = "Is the liver enlarged? " * 1000  # 5,000+ words: far past the positions
    assert _predict(mllm_dir, inputs["nifti"], out, "--question", question, "--max-new-tokens", "4") == 1
    _refused(capsys, "--question", f"{limit} positions")
    assert not out.exists()


def test_segmentation_prompt_longer_than_the_text_tower_is_refused(seg_dir, inputs, tmp_path, capsys):
    out = tmp_path / "m.nii.gz"
    assert _predict(seg_dir, inputs["nifti"], out, "--prompt", "liver " * 2000, "--no-zoom-in") == 1
    _refused(capsys, "--prompt", "tokens long", "text encoder")
    assert not out.exists()


def test_clip_prompt_longer_than_the_text_tower_is_refused(clip_dir, inputs, tmp_path, capsys):
    out = tmp_path / "c.json"
    # clip_dir's BERT has 64 positions: 100 words do not fit
    assert _predict(clip_dir, inputs["nifti"], out, "--prompt", "hepatomegaly " * 100) == 1
    _refused(capsys, "--prompt", "at most 64")
    assert not out.exists()


@pytest.mark.parametrize(
    "device,words",
    [
        ("gpu0", ["--device", "not a torch device"]),
        ("cuda", ["--device", "CUDA is not available"]),
        ("meta", ["--device", "not supported"]),
    ],
)
def test_unusable_device_is_refused(seg_dir, inputs, tmp_path, capsys, device, words):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert _predict(seg_dir, inputs["nifti"], tmp_path / "m.nii.gz", "--prompt", "liver", "--device", device) == 1
    _refused(capsys, *words)


# ---- output places -----------------------------------------------------------------------------------


def test_out_under_a_regular_file_is_refused_before_any_prediction(seg_dir, inputs, tmp_path, capsys, monkeypatch):
    import LaMed.inference.segment as segment

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded when --out cannot be written")

    monkeypatch.setattr(segment, "load_seg_model", no_model)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert _predict(seg_dir, inputs["nifti"], blocker / "m.nii.gz", "--prompt", "liver") == 1
    _refused(capsys, "--out", "regular file")


def test_disk_full_keeps_the_existing_output_and_says_so(seg_dir, inputs, tmp_path, capsys, monkeypatch):
    import LaMed.data.io_nifti as io_nifti

    out = tmp_path / "m.nii.gz"
    assert _predict(seg_dir, inputs["nifti"], out, "--prompt", "liver", "--no-zoom-in") == 0
    before = out.read_bytes()

    def full_disk(arr, path, like):
        with open(path, "wb") as fh:
            fh.write(b"\x00" * 100)  # a partial file, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_nifti, "save_nifti", full_disk)
    capsys.readouterr()
    assert _predict(seg_dir, inputs["nifti"], out, "--prompt", "liver", "--no-zoom-in") == 1
    _refused(capsys, str(out), "no space left")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.nii.gz"]


# ---- damaged model folders ---------------------------------------------------------------------------


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_are_refused_naming_the_file(seg_dir, inputs, tmp_path, capsys):
    model = _copy(seg_dir, tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    assert _predict(model, inputs["nifti"], tmp_path / "m.nii.gz", "--prompt", "liver") == 1
    _refused(capsys, str(weights), "truncated")


def test_header_edited_weights_are_refused_naming_the_tensor(seg_dir, inputs, tmp_path, capsys):
    model = _copy(seg_dir, tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k, v in header.items() if k != "__metadata__" and math.prod(v["shape"]) > 1)
    header[name]["shape"] = [math.prod(header[name]["shape"]) * 2]  # claims twice the data it has
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    assert len(raw) == n  # same header size: only the claim differs
    weights.write_bytes(data[:8] + raw + data[8 + n :])
    assert _predict(model, inputs["nifti"], tmp_path / "m.nii.gz", "--prompt", "liver") == 1
    _refused(capsys, str(weights), name)


@pytest.mark.parametrize(
    "text,words",
    [("{not json", ["not valid JSON"]), ("[1, 2]", ["JSON object"]), ('{"hidden_size": 3}', ["model_type"])],
)
def test_invalid_config_json_is_refused_naming_the_file(seg_dir, inputs, tmp_path, capsys, text, words):
    model = _copy(seg_dir, tmp_path)
    (model / "config.json").write_text(text)
    assert _predict(model, inputs["nifti"], tmp_path / "m.nii.gz", "--prompt", "liver") == 1
    _refused(capsys, str(model / "config.json"), *words)


def test_series_uid_picks_one_of_two_dicom_series(seg_dir, tmp_path, capsys):
    from test_bad_input_io import UID, _write_series

    from LaMed.data.io import load_mask, load_volume

    other = UID + ".2"
    _write_series(tmp_path / "two", uid=UID, prefix="a")
    _write_series(tmp_path / "two", n=4, uid=other, prefix="b")
    out = tmp_path / "m.nii.gz"
    assert _predict(seg_dir, tmp_path / "two", out, "--prompt", "liver", "--no-zoom-in") == 1
    _refused(capsys, "2 DICOM series", "--series-uid")
    assert not out.exists()
    assert _predict(seg_dir, tmp_path / "two", out, "--prompt", "liver", "--no-zoom-in", "--series-uid", other) == 0
    chosen = load_volume(tmp_path / "two", series_uid=other)
    assert load_mask(out, like=chosen).shape == chosen.shape == (4, 5, 4)
