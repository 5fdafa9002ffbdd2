"""The one inference path: ``LaMed.load`` (the Python API), the stored preprocessing, the dtype the
weights are loaded in, and ``lamed predict`` giving the same results through it.

Tiny models of every family (random weights: plumbing, geometry and equality with the direct
computation, not accuracy). The real RAS CT and LPS MR of ../shared/data and a DICOM series written
here from the CT check that masks land on the source grid.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from dicom_series import write_dicom_series
from test_predict_families import SHAPE, clip_dir, inputs, mllm_dir, phantom, seg_dir  # noqa: F401  (fixtures)

import LaMed
from LaMed.cli import main

# ---- segmentation --------------------------------------------------------------------------------------


def test_segment_equals_the_direct_computation_and_saves_like_predict(seg_dir, inputs, tmp_path):
    from LaMed.data.io import load_mask, load_volume
    from LaMed.inference.segment import load_seg_model, predict_volume

    model = LaMed.load(seg_dir)
    assert type(model).__name__ == "SegmentationModel" and model.dtype == torch.float32
    result = model.segment(inputs["nifti"], ["liver", "spleen"], zoom_in=False)
    vol = load_volume(inputs["nifti"])
    direct = predict_volume(load_seg_model(seg_dir), vol, ["liver", "spleen"], zoom_in=False)
    np.testing.assert_array_equal(result.probabilities, direct.probabilities)
    assert result.masks["liver"].shape == vol.shape
    written = result.save(tmp_path / "api")
    assert (
        main(
            [
                "predict",
                "--model",
                str(seg_dir),
                "--image",
                str(inputs["nifti"]),
                "--prompt",
                "liver",
                "--prompt",
                "spleen",
                "--out",
                str(tmp_path / "cli"),
                "--no-zoom-in",
            ]
        )
        == 0
    )
    cli = tmp_path / "cli" / written["labels"].name
    np.testing.assert_array_equal(load_mask(written["labels"], like=vol).array, load_mask(cli, like=vol).array)


@pytest.mark.parametrize("name", ["ct_abdomen", "mr_abdomen", "dicom_from_ct"])
def test_masks_land_on_the_source_grid_of_real_scans(seg_dir, totalseg_dir, tmp_path, name):
    import nibabel as nib

    from LaMed.data.io import load_mask, load_volume

    if name == "dicom_from_ct":
        ct = load_volume(totalseg_dir / "ct_abdomen.nii.gz")
        src = write_dicom_series(ct.array, ct.spacing, tmp_path / "series", origin=(-150.0, -120.0, 30.0))
    else:
        src = totalseg_dir / f"{name}.nii.gz"
    result = LaMed.load(seg_dir).segment(src, "liver", zoom_in=False)
    out = result.save(tmp_path / "liver.nii.gz")["mask"]
    source = load_volume(src)
    mask = load_mask(out, like=source)  # refuses a mask on another grid (shape, spacing, direction)
    np.testing.assert_array_equal(mask.array, result.masks["liver"].astype(np.uint8))
    if name != "dicom_from_ct":  # the NIfTI keeps the source header: same voxel grid and affine
        ref, got = nib.load(str(src)), nib.load(str(out))
        assert got.shape == ref.shape and np.allclose(got.affine, ref.affine)
    else:
        assert np.allclose(mask.affine, source.affine)


# ---- preprocessing stored with the model ----------------------------------------------------------------


def test_stored_preprocessing_is_used_and_another_preset_warns(seg_dir, inputs, tmp_path, caplog):
    import shutil

    from LaMed.data.presets import preset_spec
    from LaMed.inference.preprocessing import model_input

    model_dir = tmp_path / "seg"
    shutil.copytree(seg_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["preprocessing"] = preset_spec("m3d_refseg")
    (model_dir / "config.json").write_text(json.dumps(config))
    loaded = LaMed.load(model_dir)
    with caplog.at_level(logging.WARNING, logger="LaMed.inference"):
        chosen = loaded.preprocessing
    assert chosen.name == "m3d_refseg" and chosen.size == tuple(config["img_size"]) and not caplog.records
    with caplog.at_level(logging.WARNING, logger="LaMed.inference"):
        other = LaMed.load(model_dir, preset="segvol").preprocessing
    assert other.name == "segvol"
    assert any("segvol" in r.getMessage() and "m3d_refseg" in r.getMessage() for r in caplog.records)
    # the stored pipeline is what the model is fed (percentile clipping, not SegVol's normalisation)
    from LaMed.data.io import load_volume

    vol = load_volume(inputs["nifti"])
    a = model_input(vol, chosen.size, chosen)
    b = model_input(vol, other.size, other)
    assert a.shape == b.shape and not torch.equal(a, b)


def test_clip_predict_uses_the_stored_preprocessing(clip_dir, inputs, tmp_path, capsys):
    import dataclasses
    import shutil

    from LaMed.data.io import load_volume
    from LaMed.data.presets import get_preset, preset_spec
    from LaMed.inference.preprocessing import model_input
    from LaMed.models.clip import LamedClipModel

    folder = tmp_path / "clip"
    shutil.copytree(clip_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["preprocessing"] = preset_spec("hsenet_bimcv")  # [-1000, 200] HU window, not m3d's
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "c.json"
    assert (
        main(
            ["predict", "--model", str(folder), "--image", str(inputs["nifti"]), "--prompt", "liver", "--out", str(out)]
        )
        == 0
    )
    emb = np.load(out.with_suffix(".npz"))["image"]
    model = LamedClipModel.from_pretrained(str(folder)).eval()
    size = tuple(model.vision_model.config.img_size)
    vol = load_volume(inputs["nifti"])
    with torch.no_grad():
        want = model.encode_image(model_input(vol, size, dataclasses.replace(get_preset("hsenet_bimcv"), size=size)))
        m3d = model.encode_image(model_input(vol, size, dataclasses.replace(get_preset("m3d"), size=size)))
    np.testing.assert_allclose(emb, want[0].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(emb, m3d[0].numpy(), atol=1e-4)
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                "--model",
                str(folder),
                "--image",
                str(inputs["nifti"]),
                "--prompt",
                "liver",
                "--out",
                str(out),
                "--preset",
                "m3d",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "--preset m3d differs" in err and "hsenet_bimcv" in err


def test_training_stores_the_preprocessing_of_its_data(tmp_path):
    from LaMed.data.prepare import prepare_phantoms
    from LaMed.data.prepared import manifest_preprocessing
    from LaMed.data.presets import preset_from_spec

    prepare_phantoms(
        tmp_path / "p", n=2, shape=(16, 32, 32), seed=0, val_fraction=0.0, test_fraction=0.0, progress=False
    )
    record = manifest_preprocessing(tmp_path / "p" / "train.json")
    p = preset_from_spec(record)
    # phantoms: HU mapped linearly from [-160, 240] at their final size, no crop (see prepare_phantoms)
    assert (p.name, p.window, p.crop_foreground, p.normalize) == ("m3d", (-160.0, 240.0), False, "minmax")
    prepare_phantoms(
        tmp_path / "q",
        n=2,
        shape=(32, 64, 64),
        seed=0,
        val_fraction=0.0,
        test_fraction=0.0,
        progress=False,
        preset="m3d_seg",
    )
    assert manifest_preprocessing(tmp_path / "q" / "train.json")["preset"] == "m3d_seg"


# ---- text and CLIP ---------------------------------------------------------------------------------


def test_generate_equals_generate_texts(mllm_dir, inputs):
    from LaMed.data.io import load_volume
    from LaMed.data.presets import get_preset
    from LaMed.inference.generate import generate_texts, load_mllm
    from LaMed.inference.preprocessing import model_input

    vlm = LaMed.load(mllm_dir)
    got = vlm.generate(inputs["nifti"], ["Is there a liver lesion?", "Describe the findings."], max_new_tokens=5)
    model, processor = load_mllm(mllm_dir)
    x = model_input(load_volume(inputs["nifti"]), SHAPE, "m3d")  # nothing stored: the m3d default
    assert get_preset("m3d").window == (-160.0, 240.0)
    want = generate_texts(
        model,
        processor,
        x.expand(2, -1, -1, -1, -1),
        ["Is there a liver lesion?", "Describe the findings."],
        max_new_tokens=5,
    )
    assert got == want
    assert isinstance(vlm.generate(inputs["nifti"], max_new_tokens=3), str)


def test_similarity_is_the_cosine_of_the_embeddings(clip_dir, inputs):
    clip = LaMed.load(clip_dir)
    texts = ["hepatomegaly", "normal liver"]
    sims = clip.similarity(inputs["nifti"], texts)
    image, text = clip.embed(inputs["nifti"]), clip.embed_text(texts)
    want = text @ image / (np.linalg.norm(text, axis=1) * np.linalg.norm(image))
    np.testing.assert_allclose([sims[t] for t in texts], want, rtol=1e-5)


# ---- dtype, device map, quantisation ------------------------------------------------------------------


def test_bf16_loads_bf16_weights_and_fp16_is_refused_on_cpu(seg_dir, clip_dir, mllm_dir, inputs):
    for folder in (seg_dir, clip_dir, mllm_dir):
        m = LaMed.load(folder, dtype="bf16")
        assert {p.dtype for p in m.model.parameters()} == {torch.bfloat16}, folder
    emb32 = LaMed.load(clip_dir).embed(inputs["nifti"])
    emb16 = LaMed.load(clip_dir, dtype="bf16").embed(inputs["nifti"])
    assert np.corrcoef(emb32, emb16)[0, 1] > 0.99  # bf16 keeps ~3 significant digits
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        LaMed.load(seg_dir, dtype="fp16")
    with pytest.raises(ValueError, match="expected one of fp32, bf16, fp16"):
        LaMed.load(seg_dir, dtype="int8")


def test_device_map_auto_gives_the_same_answers(mllm_dir, seg_dir, inputs):
    plain = LaMed.load(mllm_dir).generate(inputs["npy"], "Describe the findings.", max_new_tokens=4)
    mapped = LaMed.load(mllm_dir, device_map="auto")
    assert mapped.generate(inputs["npy"], "Describe the findings.", max_new_tokens=4) == plain
    with pytest.raises(ValueError, match="report and reasoning models"):
        LaMed.load(seg_dir, device_map="auto")


def test_quantised_loading_needs_bitsandbytes(mllm_dir):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here; the GPU check exercises 4-bit loading")
    with pytest.raises(ValueError, match="bitsandbytes"):
        LaMed.load(mllm_dir, load_in="4bit")


def test_the_llm_is_built_once(tmp_path, monkeypatch):
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    from LaMed.data.tokenizer import train_tokenizer
    from LaMed.models.mllm.factory import MLLMModelArguments, create_mllm

    tok = train_tokenizer(["The liver is enlarged.", "No lesion."] * 20, vocab_size=120)
    text = CONFIG_MAPPING["phi3"](
        vocab_size=len(tok) + 8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(text).save_pretrained(tmp_path / "llm")
    built = []
    original = AutoModelForCausalLM.from_config
    monkeypatch.setattr(AutoModelForCausalLM, "from_config", lambda *a, **k: built.append(1) or original(*a, **k))
    spec = MLLMModelArguments(llm=str(tmp_path / "llm"), vision_tower=["vit3d_test"], projector="spp")
    model = create_mllm(spec, tok, dtype=torch.bfloat16)
    assert built == []  # the loaded LLM is used as it is: no second, random one
    assert model.language_model.dtype == torch.bfloat16
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "llm")
    name = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(
        model.language_model.state_dict()[name].float(), loaded.state_dict()[name].bfloat16().float()
    )


@pytest.mark.parametrize("family", ["seg", "clip", "mllm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_load_equals_transformers_from_pretrained(family, dtype, seg_dir, clip_dir, mllm_dir):
    from transformers import AutoConfig, AutoModel

    from LaMed.models.checkpoint_files import load_pretrained
    from LaMed.models.clip import LamedClipModel
    from LaMed.models.mllm import LaMedForCausalLM

    folder = {"seg": seg_dir, "clip": clip_dir, "mllm": mllm_dir}[family]
    cls = {"clip": LamedClipModel, "mllm": LaMedForCausalLM}.get(family)
    if cls is None:
        cls = AutoModel._model_mapping[type(AutoConfig.from_pretrained(folder))]
    ours = load_pretrained(cls, folder, dtype).state_dict()
    ref = cls.from_pretrained(str(folder), dtype=dtype).state_dict()
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and torch.equal(ours[k], ref[k]), k


def test_streamed_load_ties_a_tied_output_head(tmp_path):
    from transformers import CONFIG_MAPPING

    from LaMed.models.checkpoint_files import load_pretrained
    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM

    # Phi-4-mini ties its output head to the embedding: saved once, loaded into both names
    text = CONFIG_MAPPING["phi3"](
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LaMedForCausalLM(
        LaMedConfig(text_config=text, vision_tower="vit3d_test", projector="spp", image_token_id=63)
    )
    model.save_pretrained(tmp_path)
    again = load_pretrained(LaMedForCausalLM, tmp_path, torch.bfloat16)
    head, emb = again.get_output_embeddings().weight, again.get_input_embeddings().weight
    assert head.data_ptr() == emb.data_ptr()
    torch.testing.assert_close(emb.float(), model.get_input_embeddings().weight.bfloat16().float())


def test_damaged_or_mismatched_weights_are_refused(seg_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel

    from LaMed.models.checkpoint_files import load_pretrained

    folder = tmp_path / "m"
    shutil.copytree(seg_dir, folder)
    sd = load_file(str(folder / "model.safetensors"))
    name = sorted(sd)[0]
    del sd[name]
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cls = AutoModel._model_mapping[type(AutoConfig.from_pretrained(folder))]
    with pytest.raises(KeyError, match=name.replace(".", r"\.")):
        load_pretrained(cls, folder)
