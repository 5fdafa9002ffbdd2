"""Numerical equivalence with the original reference implementations.

Each case holds the state dict of a reference module (keys exactly as its authors name them, every
parameter re-drawn so no tensor keeps a degenerate initialisation), its inputs and the outputs the
reference code computed on them. The test converts the weights with LaMed's converter for the
family, loads them strictly into the LaMed model, runs the same computation and compares every
output with ``atol = 1e-5 * max(1, absmax(reference))``.

Two sources of cases:

* ``../shared/goldens/<case>`` (next to the repository; skipped cleanly when absent);
* ``tests/fixtures/reference/<case>`` (small cases made by ``tests/fixtures/make_reference_cases.py``
  from the public reference repositories, run in a separate environment).

Reference code: BAAI-DCAI/M3D, BAAI-DCAI/SegVol, mirthAI/Med3DVLM, mirthAI/Text3DSAM.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDENS = REPO_ROOT.parent / "shared" / "goldens"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"


# ---- case loading and comparison ---------------------------------------------------------------


def formula_tensor(shape, salt: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """``offset + scale * sin(0.7 + 1.3 * salt + 2.39996 * i)`` over the flat index (float64 -> float32),
    the rule of cases stored as a formula (see their case.json)."""
    i = torch.arange(math.prod(shape), dtype=torch.float64)
    return (offset + scale * torch.sin(0.7 + 1.3 * salt + 2.39996 * i)).float().reshape(shape)


class Case:
    """One reference case: ``weights`` (reference key names), ``io`` (inputs / outputs), ``meta`` (case.json)."""

    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        self.folder = folder
        self.meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
        self.io: dict[str, torch.Tensor] = load_file(str(folder / "io.safetensors"))
        formula = self.meta.get("weights_formula")
        if formula is None:
            self.weights: dict[str, torch.Tensor] = load_file(str(folder / "weights.safetensors"))
            return
        # Too large to store: weights and inputs are the generator's closed-form tensors.
        kinds = formula["kinds"]
        self.weights = {}
        for salt, (key, spec) in enumerate(formula["keys"].items()):
            scale, offset = kinds[spec["kind"]]
            scale = 1.0 / math.sqrt(math.prod(spec["shape"][1:])) if scale is None else scale
            self.weights[key] = formula_tensor(spec["shape"], salt, scale, offset)
        for name, spec in self.meta.get("inputs_formula", {}).items():
            self.io[name] = formula_tensor(spec["shape"], spec["salt"], spec["scale"], spec.get("offset", 0.0))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.io[name]

    def outputs(self):
        return sorted((k for k in self.io if k.startswith("output")), key=lambda k: (len(k), k))


def golden(name: str) -> Case:
    folder = GOLDENS / name
    if not (folder / "case.json").is_file():
        pytest.skip(f"reference case {name!r} not found at {folder} (../shared/goldens absent)")
    return Case(folder)


def fixture_case(name: str) -> Case:
    folder = FIXTURES / name
    assert (folder / "case.json").is_file(), f"missing fixture {folder}"
    return Case(folder)


def tolerance(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, reference.abs().max().item())


def max_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert tuple(ours.shape) == tuple(reference.shape), (
        f"shape {tuple(ours.shape)} vs reference {tuple(reference.shape)}"
    )
    return (ours.detach().double() - reference.double()).abs().max().item()


def assert_matches(case: Case, ours: dict[str, torch.Tensor], only=None) -> dict[str, float]:
    """Every reference output of ``case`` (or those named in ``only``) is in ``ours`` and within
    tolerance; returns the max |diff| per output."""
    if only is None:
        assert sorted(ours) == case.outputs(), f"{case.folder.name}: compared {sorted(ours)}, case has {case.outputs()}"
    names = list(only) if only is not None else case.outputs()
    diffs, bad = {}, []
    for name in names:
        ref = case[name]
        if not ref.is_floating_point():  # token ids
            got = ours[name].to(ref.dtype)
            assert torch.equal(got, ref), f"{case.folder.name}/{name}: {got.tolist()} vs reference {ref.tolist()}"
            diffs[name] = 0.0
            continue
        diffs[name] = max_diff(ours[name], ref)
        if diffs[name] > tolerance(ref):
            bad.append(f"{name}: max |diff| {diffs[name]:.3g} > {tolerance(ref):.3g}")
    print(f"{case.folder.name}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert not bad, f"{case.folder.name} differs from the reference:\n" + "\n".join(bad)
    return diffs


def load_strict(module: torch.nn.Module, converted: dict, source: str) -> None:
    from LaMed.models.convert import load_converted

    report = load_converted(module, converted, strict=True, source=source)
    assert report.ok


@pytest.fixture(autouse=True)
def _float32_eval():
    torch.manual_seed(0)
    with torch.no_grad():
        yield


# ---- 3D ViT (M3D-CLIP / M3D-LaMed tower, with CLS) -------------------------------------------


def vit_from_case(kw: dict, converted: dict):
    from LaMed.models.encoders.vit3d import ViT3D

    return ViT3D(
        img_size=tuple(kw["img_size"]),
        patch_size=tuple(kw["patch_size"]),
        in_channels=kw["in_channels"],
        hidden_size=kw["hidden_size"],
        mlp_dim=kw["mlp_dim"],
        num_layers=kw["num_layers"],
        num_heads=kw["num_heads"],
        cls_token="cls_token" in converted,
        patch_embed=kw.get("pos_embed", "perceptron"),
    ).eval()


def test_m3d_vit_matches_reference():
    from LaMed.models.convert import convert_state_dict

    case = golden("m3d_vit")
    converted = convert_state_dict(case.meta["family"], case.weights)
    vit = vit_from_case(case.meta["constructor_kwargs"], converted)
    load_strict(vit, converted, "m3d_vit golden")
    final, hidden = vit.forward_hidden_states(case["input"])
    assert_matches(case, {"output": final, "output_2": hidden[-1], "output_3": hidden[0]})
    # The LaMed tower output ('patch' feature of the last layer) is the normed sequence without CLS.
    assert max_diff(vit(case["input"]), case["output"][:, 1:]) <= tolerance(case["output"])


# ---- spatial-pooling projector (M3D-LaMed 'spp') ------------------------------------------------


def test_m3d_projector_matches_reference():
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.projectors import create_projector

    case = golden("m3d_projector")
    kw = case.meta["constructor_kwargs"]
    grid = tuple(i // p for i, p in zip(kw["image_size"], kw["patch_size"]))
    proj = create_projector(
        "spp",
        in_dim=kw["in_dim"],
        out_dim=kw["out_dim"],
        grid_size=grid,
        pool_size=(kw["pooling_size"],) * 3,
        num_layers=kw["layer_num"],
    ).eval()
    load_strict(proj, convert_state_dict(case.meta["family"], case.weights), "m3d_projector golden")
    assert_matches(case, {"output": proj(case["input"])})


# ---- DCFormer (Med3DVLM key layout) -------------------------------------------------------------


def dcformer_from_weights(converted: dict, source: str, img_size):
    from LaMed.models.convert.dcformer import infer_dcformer_config
    from LaMed.models.encoders.dcformer import DCFormer, DCFormerConfig

    return DCFormer(DCFormerConfig(**infer_dcformer_config(converted, source=source), img_size=tuple(img_size))).eval()


def test_dcformer_med3dvlm_matches_reference():
    from LaMed.models.convert import convert_state_dict

    case = golden("dcformer_med3dvlm")
    converted = convert_state_dict(case.meta["family"], case.weights)
    x = case["input"]
    enc = dcformer_from_weights(converted, "med3dvlm", x.shape[2:])
    load_strict(enc, converted, "dcformer_med3dvlm golden")
    tokens = enc.forward_tokens(x, indices=(0, 1, 2, 3, 4))
    assert_matches(case, dict(zip(("output", "output_2", "output_3", "output_4", "output_5"), tokens)))


# ---- SegVol prompt encoder + mask decoder ------------------------------------------------------


def segvol_decoder_from_case(case: Case):
    """A ``segvol_published`` model at the case's sizes (no text tower: the case feeds the embedding)."""
    from LaMed.models.segmentation import create_seg_model

    kw = case.meta["constructor_kwargs"]
    md = kw["mask_decoder"]
    tr = md["transformer"]
    e = kw["embed_dim"]
    return create_seg_model(
        "segvol_published",
        img_size=tuple(kw["image_size"]),
        image_encoder="vit3d_test",
        image_encoder_overrides=dict(
            cls_token=False, patch_size=tuple(kw["patch_size"]), hidden_size=e, mlp_dim=2 * e, num_layers=1, num_heads=4
        ),
        embed_dim=e,
        num_heads=tr["num_heads"],
        mlp_dim=tr["mlp_dim"],
        transformer_depth=tr["depth"],
        attention_downsample_rate=tr["attention_downsample_rate"],
        iou_head_depth=md["iou_head_depth"],
        iou_head_hidden_dim=md["iou_head_hidden_dim"],
        num_multimask_outputs=md["num_multimask_outputs"],
        mask_in_chans=kw["prompt_encoder"]["mask_in_chans"],
        text_encoder_config=None,
    ).eval()


def test_segvol_decoder_matches_reference():
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.segmentation import ImageFeatures, Prompts
    from LaMed.models.segmentation.common import upsample_logits

    case = golden("segvol_decoder")
    converted = convert_state_dict(case.meta["family"], case.weights)
    assert sorted({k.split(".")[0] for k in converted}) == ["mask_decoder", "prompt_encoder"]
    model = segvol_decoder_from_case(case)
    for part in ("prompt_encoder", "mask_decoder"):
        sub = {k[len(part) + 1 :]: v for k, v in converted.items() if k.startswith(part + ".")}
        load_strict(getattr(model, part), sub, f"segvol_decoder golden ({part})")
    emb, text, boxes, points, labels = (case[k] for k in ("input", "input_2", "input_3", "input_4", "input_5"))
    feats = ImageFeatures(embeddings=emb)

    def low(**prompts):
        return model.decode_once(feats, Prompts(**prompts))[0]

    both = low(text_embedding=text, boxes=boxes)
    size = tuple(case.meta["constructor_kwargs"]["image_size"])
    # The iou head: run the decoder directly for its second output.
    pe = model.prompt_encoder.get_dense_pe()
    sparse, dense = model.prompt_encoder(2, None, boxes, None, [text])
    _, iou, _ = model.mask_decoder(emb, pe, sparse, dense, text)
    assert_matches(
        case,
        {
            "output": both,
            "output_2": upsample_logits(both, size),
            "output_3": iou,
            "output_4": low(text_embedding=text),
            "output_5": low(boxes=boxes),
            "output_6": low(text_embedding=text, points=points, point_labels=labels),
            "output_7": pe,
            "output_8": sparse,
        },
    )


# ---- Text3DSAM (DCFormer with attention, tiny BERT, SAM2-style decoder, refinements) ---------


def test_text3dsam_matches_reference():
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.convert.dcformer import infer_dcformer_config
    from LaMed.models.segmentation import create_seg_model
    from LaMed.models.segmentation.base import Prompts

    case = golden("text3dsam")
    kw = case.meta["constructor_kwargs"]
    converted = convert_state_dict(case.meta["family"], case.weights)
    enc_sd = {k[len("image_encoder.") :]: v for k, v in converted.items() if k.startswith("image_encoder.")}
    arch = infer_dcformer_config(enc_sd, source="text3dsam")
    arch["num_heads"] = kw["image_encoder"]["attention_heads"]
    tc = dict(kw["text_config"])
    model = create_seg_model(
        "text3dsam_published",
        img_size=tuple(kw["image_size"]),
        image_encoder="dcformer_text3dsam",
        image_encoder_overrides=arch,
        embed_dim=kw["embed_dim"],
        num_heads=kw["num_heads"],
        mlp_dim=kw["mlp_dim"],
        transformer_depth=kw["transformer_depth"],
        refine_passes=kw["pass_num"],
        text_encoder_config=tc,
    ).eval()
    load_strict(model, converted, "text3dsam golden")

    x, ids, mask = case["input"], case["input_2"], case["input_3"]
    t = model.encode_text(ids, mask)
    feats = model.encode_image(x)
    s0, s2 = feats.high_res
    prompts = Prompts(text_embedding=t)
    rough, token = model.decode_once(feats, prompts)
    final = model.decode(feats, prompts)
    # The last pass's prompts: [t, previous mask token] and the downscaled sigmoid of the previous logits.
    prev, prev_token = rough, token
    for _ in range(kw["pass_num"] - 1):
        prev, prev_token = model.decode_once(feats, prompts, mask=torch.sigmoid(prev), extra_token=prev_token)
    sparse, dense = model.prompt_encoder(1, None, None, torch.sigmoid(prev), [t, prev_token])
    assert_matches(
        case,
        {
            "output": final,
            "output_2": t,
            "output_3": feats.embeddings,
            "output_4": s0,
            "output_5": s2,
            "output_6": rough,
            "output_7": sparse,
            "output_8": dense,
            "output_9": model.prompt_encoder.get_dense_pe(),
        },
    )


# ---- M3D-LaMed (Phi-3 + ViT tower + spp projector) ---------------------------------------------


def test_m3d_lamed_matches_reference():
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.convert.mllm import legacy_config_fields
    from LaMed.models.convert.releases import _text_config, _vision_fields
    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM

    case = golden("m3d_lamed")
    published = dict(case.meta["constructor_kwargs"]["LamedPhi3Config"])  # what the release's config.json holds
    published["model_type"] = "lamed_phi3"
    converted = convert_state_dict(case.meta["family"], case.weights)
    vocab = int(converted["language_model.model.embed_tokens.weight"].shape[0])
    fields = {**_vision_fields("m3d_lamed", converted, published), **legacy_config_fields("m3d_lamed")}
    config = LaMedConfig(
        text_config=_text_config("m3d_lamed", published, vocab),
        image_token_id=296,
        seg_token_id=published["seg_token_id"],
        **fields,
    )
    model = LaMedForCausalLM(config).eval()
    load_strict(model, converted, "m3d_lamed golden")

    images, ids, mask = case["input"], case["input_2"], case["input_3"]
    logits = model(images=images, input_ids=ids, attention_mask=mask).logits
    new = model.generate(
        images=images,
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=5,
        do_sample=False,
        num_beams=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    new = new[:, ids.shape[1] :] if new.shape[1] > 5 else new
    assert_matches(case, {"output": logits, "output_2": new, "output_3": model.get_image_features(images)})


# ---- SegVol whole model: ViT without CLS, CLIP text tower (transformers 4.x keys), decoder ---------


def test_segvol_full_matches_reference():
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.segmentation import create_seg_model

    case = fixture_case("segvol_full")
    kw = case.meta["constructor_kwargs"]
    vit, dec, e = kw["vit"], kw["decoder"], kw["embed_dim"]
    text = {
        k: v
        for k, v in kw["text_config"].items()
        if k
        in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        )
    }
    # The released tower pools at the first EOS, the largest id of CLIP's vocabulary (63 here).
    text.update(model_type="clip_text_model", eos_token_id=63, bos_token_id=62, pad_token_id=63)
    model = create_seg_model(
        "segvol_published",
        img_size=tuple(kw["img_size"]),
        image_encoder="vit3d_test",
        image_encoder_overrides=dict(cls_token=False, patch_size=tuple(kw["patch_size"]), **vit),
        embed_dim=e,
        num_heads=dec["num_heads"],
        mlp_dim=dec["mlp_dim"],
        transformer_depth=dec["depth"],
        iou_head_depth=dec["iou_head_depth"],
        iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        num_multimask_outputs=dec["num_multimask_outputs"],
        mask_in_chans=dec["mask_in_chans"],
        text_encoder_config=text,
    ).eval()
    load_strict(model, convert_state_dict(case.meta["family"], case.weights), "segvol_full fixture")

    volume, ids, mask, boxes, points, labels = (
        case[k] for k in ("input", "input_2", "input_3", "input_4", "input_5", "input_6")
    )

    def logits(**kw):
        return model(volume, **kw).logits

    text_kw = dict(input_ids=ids, attention_mask=mask)
    final, hidden = model.image_encoder.forward_hidden_states(volume)
    pooled = model.text_encoder.model(input_ids=ids, attention_mask=mask).pooler_output
    # The image encoder alone through the ``segvol_vit`` converter (ViT3D without CLS).
    tower = vit_from_case(
        {"img_size": kw["img_size"], "patch_size": kw["patch_size"], "in_channels": 1, **vit},
        convert_state_dict("segvol_vit", case.weights),
    )
    load_strict(tower, convert_state_dict("segvol_vit", case.weights), "segvol_full fixture (segvol_vit)")
    assert max_diff(tower.forward_features(volume), case["output_5"]) <= tolerance(case["output_5"])
    assert tower.num_prefix_tokens == 0
    assert_matches(
        case,
        {
            "output": logits(boxes=boxes, **text_kw),
            "output_2": logits(**text_kw),
            "output_3": logits(boxes=boxes),
            "output_4": logits(points=points, point_labels=labels, **text_kw),
            "output_5": final,
            "output_6": hidden[0],
            "output_7": model.encode_text(ids, mask),
            "output_8": pooled,
        },
    )


# ---- M3D-CLIP: ViT with CLS + BERT (transformers 4.x keys), forward and loss ---------------------


def test_m3d_clip_matches_reference():
    from LaMed.models.convert.clip import load_published_clip

    case = fixture_case("m3d_clip")
    published = {k: case.meta["constructor_kwargs"][k] for k in ("img_size", "patch_size", "num_heads", "gather_loss")}
    # Shapes do not show the head count (the release's bert-base has 64-wide heads; this tiny BERT 16-wide).
    text = {
        "model_type": "bert",
        **{
            k: v
            for k, v in case.meta["text_config"].items()
            if k
            in (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "max_position_embeddings",
                "type_vocab_size",
            )
        },
    }
    model, report = load_published_clip("m3d_clip", case.weights, published, text_config=text)
    assert report.ok
    model.eval()
    images, ids, mask = case["input"], case["input_2"], case["input_3"]
    out = model(image=images, input_ids=ids, attention_mask=mask, return_loss=True)
    # The reference encoders return whole normalised sequences; the CLIP embedding is token 0 of each.
    image_seq = F.normalize(model.visual_projection(model.vision_model.forward_features(images)), dim=-1)
    text_hidden = model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    text_seq = F.normalize(model.text_projection(text_hidden), dim=-1)
    assert_matches(
        case,
        {
            "output": out.loss.reshape(1),
            "output_2": (out.logits_per_image + out.logits_per_text) / 2,
            "output_3": image_seq,
            "output_4": text_seq,
        },
    )
    assert max_diff(out.image_embeds, case["output_3"][:, 0]) <= tolerance(case["output_3"])
    assert max_diff(out.text_embeds, case["output_4"][:, 0]) <= tolerance(case["output_4"])


# ---- HSENet CLIP: stage 1 (M3D layout) and stage 2 (2E3 tower, frozen stage-1 teacher) ----------


def _clip_text_config(case: Case) -> dict:
    # Shapes do not show the head count (the releases' bert-base has 64-wide heads; this tiny BERT 16-wide).
    keep = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
    )
    return {"model_type": "bert", **{k: v for k, v in case.meta["text_config"].items() if k in keep}}


def test_hsenet_clip_stage1_matches_reference():
    from LaMed.models.convert.clip import load_published_clip

    case = fixture_case("hsenet_clip_stage1")
    published = {k: case.meta["constructor_kwargs"][k] for k in ("img_size", "patch_size", "num_heads", "gather_loss")}
    model, _ = load_published_clip("hsenet_clip_stage1", case.weights, published, text_config=_clip_text_config(case))
    model.eval()
    images, ids, mask = case["input"], case["input_2"], case["input_3"]
    out = model(image=images, input_ids=ids, attention_mask=mask, return_loss=True)
    image_seq = F.normalize(model.visual_projection(model.vision_model.forward_features(images)), dim=-1)
    text_hidden = model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    text_seq = F.normalize(model.text_projection(text_hidden), dim=-1)
    assert_matches(
        case,
        {
            "output": out.loss.reshape(1),
            "output_2": (out.logits_per_image + out.logits_per_text) / 2,
            "output_3": image_seq,
            "output_4": text_seq,
        },
    )


def test_hsenet_clip_stage2_matches_reference():
    from LaMed.models.convert.clip import load_published_clip

    case = fixture_case("hsenet_clip_stage2")
    kw = case.meta["constructor_kwargs"]
    published = {**{k: kw[k] for k in ("img_size", "patch_size", "num_heads", "gather_loss")}, "num_slices": 32}
    model, report = load_published_clip(
        "hsenet_clip_stage2", case.weights, published, text_config=_clip_text_config(case)
    )
    assert report.ok and hasattr(model, "teacher")
    model.eval()
    images, ids, mask, slices = case["input"], case["input_2"], case["input_3"], case["input_4"]
    out = model(
        image=images,
        input_ids=ids,
        attention_mask=mask,
        slice_features=slices,
        return_loss=True,
        step=case.meta["global_step"],
    )
    final, hidden = model.vision_model.forward_hidden_states(images, slice_features=slices)
    # The 2E3 tower alone through the ``hsenet_2e3`` converter, as the VLM loads it.
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.encoders.e2e3 import E2E3Encoder

    tower_sd = convert_state_dict("hsenet_2e3", case.weights, prefix="vision_encoder.")
    tower = E2E3Encoder(**model.vision_model.config.to_dict()).eval()
    load_strict(tower, tower_sd, "hsenet_clip_stage2 fixture (hsenet_2e3)")
    assert max_diff(tower.forward_features(images, slice_features=slices), case["output_3"]) <= tolerance(
        case["output_3"]
    )
    assert_matches(
        case,
        {
            "output": out.loss.reshape(1),
            "output_2": (out.logits_per_image + out.logits_per_text) / 2,
            "output_3": final,
            "output_4": hidden[0],
            "output_5": model.teacher.encode_image(images),
            "output_6": out.text_embeds,
        },
    )


# ---- Med3DVLM DEC_CLIP: DCFormer + DistilBERT (transformers 4.x keys), SigLIP loss -------------------


def test_med3dvlm_siglip_matches_reference():
    from LaMed.models.convert.clip import load_published_clip

    case = fixture_case("med3dvlm_siglip")
    kw = case.meta["constructor_kwargs"]
    keep = ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_position_embeddings")
    text = {"model_type": "distilbert", **{k: v for k, v in case.meta["text_config"].items() if k in keep}}
    model, report = load_published_clip(
        "med3dvlm_siglip", case.weights, {"input_size": kw["input_size"]}, text_config=text
    )
    assert report.ok
    model.eval()
    images, ids, mask = case["input"], case["input_2"], case["input_3"]
    out = model(image=images, input_ids=ids, attention_mask=mask, return_loss=True)
    assert_matches(
        case,
        {
            "output": out.loss.reshape(1),
            "output_2": (out.logits_per_image + out.logits_per_text) / 2,
            "output_3": out.image_embeds,
            "output_4": out.text_embeds,
            "output_5": model.vision_model.forward_features(images),
        },
    )


# ---- multimodal LLM wrappers built the way `lamed import` builds them ------------------------------


def mllm_from_case(case: Case, family: str, published: dict, image_token_id: int, **extra_fields):
    """Convert, derive the config as the importer does (LLM from config.json, vision side from the
    shapes and config.json, the published splice), build and load strictly."""
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.convert.mllm import legacy_config_fields
    from LaMed.models.convert.releases import _text_config, _vision_fields
    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM

    converted = convert_state_dict(family, case.weights)
    vocab = int(converted["language_model.model.embed_tokens.weight"].shape[0])
    fields = {**_vision_fields(family, converted, published), **legacy_config_fields(family), **extra_fields}
    config = LaMedConfig(text_config=_text_config(family, published, vocab), image_token_id=image_token_id, **fields)
    model = LaMedForCausalLM(config).eval()
    load_strict(model, converted, f"{case.folder.name} fixture")
    return model


def greedy_new_tokens(model, images, ids, mask, eos: int, pad: int, **extra) -> torch.Tensor:
    new = model.generate(
        images=images,
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=5,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=pad,
        **extra,
    )
    return new[:, ids.shape[1] :] if new.shape[1] > 5 else new


def test_med3dvlm_matches_reference():
    case = fixture_case("med3dvlm")
    published = {**case.meta["constructor_kwargs"]["VLMQwenConfig"], "model_type": "vlm_qwen"}
    tok = case.meta["tokenizer"]
    # The mixer's token schedule (low_output_size / high_output_size) comes from config.json.
    model = mllm_from_case(case, "med3dvlm", published, tok["im_patch"])
    images, ids, mask = case["input"], case["input_2"], case["input_3"]
    assert_matches(
        case,
        {
            "output": model(images=images, input_ids=ids, attention_mask=mask).logits,
            "output_2": greedy_new_tokens(model, images, ids, mask, tok["eos"], tok["pad"]),
            "output_3": model.get_image_features(images),
        },
    )


# ---- R1Seg-3D step-1 SAM: text-only SegVol decoder, conv3d mask path, one click, its Dice + BCE ------


def test_r1seg_sam_matches_reference():
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.segmentation import create_seg_model

    case = fixture_case("r1seg_sam")
    kw = case.meta["constructor_kwargs"]
    vit, dec, e = kw["vit"], kw["decoder"], kw["embed_dim"]
    text = {
        k: v
        for k, v in kw["text_config"].items()
        if k
        in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        )
    }
    text.update(model_type="clip_text_model", eos_token_id=63, bos_token_id=62, pad_token_id=63)
    model = create_seg_model(
        "r1seg_sam_published",
        img_size=tuple(kw["img_size"]),
        image_encoder="vit3d_test",
        image_encoder_overrides=dict(cls_token=False, patch_size=tuple(kw["patch_size"]), **vit),
        embed_dim=e,
        num_heads=dec["num_heads"],
        mlp_dim=dec["mlp_dim"],
        transformer_depth=dec["depth"],
        iou_head_depth=dec["iou_head_depth"],
        iou_head_hidden_dim=dec["iou_head_hidden_dim"],
        num_multimask_outputs=dec["num_multimask_outputs"],
        mask_in_chans=dec["mask_in_chans"],
        text_encoder_config=text,
        refine_passes=kw["num_clicks"],
        loss="dice_bce_r1seg",
    ).eval()
    load_strict(model, convert_state_dict(case.meta["family"], case.weights), "r1seg_sam fixture")

    volume, ids, mask, segs = (case[k] for k in ("input", "input_2", "input_3", "input_4"))
    final, hidden = model.image_encoder.forward_hidden_states(volume)
    train = model(volume, labels=segs, input_ids=ids[:, None], attention_mask=mask[:, None])
    assert_matches(
        case,
        {
            "output": model(volume, input_ids=ids, attention_mask=mask).logits,
            "output_2": train.loss.reshape(1),
            "output_3": model.encode_text(ids, mask),
            "output_4": final,
            "output_5": hidden[-1],
        },
    )


def _m3d_lamed_seg_model(case: Case):
    """The M3D-LaMed + SegVol fixture built the way ``lamed import m3d_lamed_seg`` builds it."""
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.convert.mllm import legacy_config_fields
    from LaMed.models.convert.releases import _text_config, _vision_fields
    from LaMed.models.reasoning import LaMedSegConfig, LaMedSegForCausalLM

    kw = case.meta["constructor_kwargs"]
    published = {**kw["LamedPhi3Config"], "model_type": "lamed_phi3"}
    tok = case.meta["tokenizer"]
    converted = convert_state_dict("m3d_lamed_seg", case.weights)
    fields = {**_vision_fields("m3d_lamed_seg", converted, published), **legacy_config_fields("m3d_lamed")}
    vit, dec = kw["vit (tower and seg)"], kw["decoder"]
    # config.json has no head count; the release's towers use 64-wide heads, this tiny one 8-wide.
    fields["vision_overrides"]["num_heads"] = vit["num_heads"]
    # The SegVol module's sizes (ViT-B, decoder MLP 2048 / 8 heads / IoU 256 in the release) are shrunk here.
    fields["seg_overrides"] = {
        **fields["seg_overrides"],
        "image_encoder": "vit3d_test",
        "embed_dim": vit["hidden_size"],
        "image_encoder_overrides": dict(cls_token=False, patch_size=tuple(published["patch_size"]), **vit),
        "num_heads": dec["num_heads"],
        "mlp_dim": dec["mlp_dim"],
        "transformer_depth": dec["depth"],
        "iou_head_hidden_dim": dec["iou_head_hidden_dim"],
    }
    vocab = int(converted["language_model.model.embed_tokens.weight"].shape[0])
    config = LaMedSegConfig(
        text_config=_text_config("m3d_lamed_seg", published, vocab),
        image_token_id=tok["im_patch"],
        seg_token_id=tok["seg"],
        **fields,
    )
    model = LaMedSegForCausalLM(config).eval()
    load_strict(model, converted, "m3d_lamed_seg fixture")
    return model


def test_m3d_lamed_seg_matches_reference():
    case = fixture_case("m3d_lamed_seg")
    model = _m3d_lamed_seg_model(case)
    images, ids, mask, labels, segs = (case[k] for k in ("input", "input_2", "input_3", "input_4", "input_5"))
    seg = model(
        images=images, input_ids=ids, attention_mask=mask, labels=labels, seg_masks=segs, return_seg_logits=True
    )
    lm = model(images=images, input_ids=ids, attention_mask=mask, labels=labels)
    assert seg.seg_index.tolist() == [[0, 0], [1, 0]]  # one averaged prompt per row
    assert_matches(
        case,
        {
            "output": seg.loss.reshape(1),
            "output_2": seg.seg_logits,
            "output_3": lm.loss.reshape(1),
            "output_4": lm.logits,
        },
        only=("output", "output_2", "output_3", "output_4"),
    )


def test_r1seg_llm_matches_reference():
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.convert.mllm import legacy_config_fields
    from LaMed.models.convert.releases import _text_config, _vision_fields
    from LaMed.models.reasoning import LaMedSegConfig, LaMedSegForCausalLM

    case = fixture_case("r1seg_llm")
    kw = case.meta["constructor_kwargs"]
    published = {**kw["LamedPhi3Config"], "model_type": "lamed_phi3"}
    tok, dec = case.meta["tokenizer"], kw["decoder"]
    converted = convert_state_dict("r1seg_llm", case.weights)
    fields = {**_vision_fields("r1seg_llm", converted, published), **legacy_config_fields("m3d_lamed")}
    # The release's ViT has 64-wide heads (R1Seg3DSAM_Config defaults); this tiny one 8-wide.
    fields["vision_overrides"]["num_heads"] = published["num_heads"]
    # The decoder's sizes (MLP 2048 / 8 heads / IoU 256 in the release) are shrunk here.
    fields["seg_overrides"] = {
        **fields["seg_overrides"],
        "embed_dim": published["mm_hidden_size"],
        "num_heads": dec["num_heads"],
        "mlp_dim": dec["mlp_dim"],
        "transformer_depth": dec["depth"],
        "iou_head_hidden_dim": dec["iou_head_hidden_dim"],
    }
    vocab = int(converted["language_model.model.embed_tokens.weight"].shape[0])
    config = LaMedSegConfig(
        text_config=_text_config("r1seg_llm", published, vocab),
        image_token_id=tok["im_patch"],
        seg_token_id=tok["seg"],
        **fields,
    )
    model = LaMedSegForCausalLM(config).eval()
    load_strict(model, converted, "r1seg_llm fixture")

    images, ids, mask, labels, segs = (case[k] for k in ("input", "input_2", "input_3", "input_4", "input_5"))
    seg = model(
        images=images, input_ids=ids, attention_mask=mask, labels=labels, seg_masks=segs, return_seg_logits=True
    )
    lm = model(images=images, input_ids=ids, attention_mask=mask, labels=labels)
    assert_matches(
        case,
        {
            "output": seg.loss.reshape(1),
            "output_2": seg.seg_logits,
            "output_3": lm.loss.reshape(1),
            "output_4": lm.logits,
            "output_5": greedy_new_tokens(model, images, ids[:, :9], mask[:, :9], tok["eos"], tok["pad"]),
            "output_6": model.get_image_features(images),
            "output_7": model.vision_tower.forward_features(images),
        },
    )


# ---- DCFormer, original mirthAI/DCFormer layout (gamma, BatchNorm aliases, VQ codebook) -------------


def test_dcformer_original_layout_matches_reference():
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.convert.dcformer import detect_source

    case = fixture_case("dcformer_original")
    assert detect_source(case.weights) == "dcformer"
    converted = convert_state_dict(case.meta["family"], case.weights)
    x = case["input"]
    enc = dcformer_from_weights(converted, "dcformer", x.shape[2:])
    load_strict(enc, converted, "dcformer_original fixture")
    maps = enc.forward_intermediates(x, indices=(0, 1, 2, 3, 4))  # (B, C, D, H, W)
    names = ("output", "output_2", "output_3", "output_4", "output_5")
    # The reference keeps its internal (B, C, H, W, D) layout.
    assert_matches(case, {n: m.permute(0, 1, 3, 4, 2) for n, m in zip(names, maps)})


def test_m3d_lamed_seg_generation_with_masks_matches_reference():
    """Greedy answers with [SEG]; row 1 starts with [SEG], which the published generate skips."""
    case = fixture_case("m3d_lamed_seg")
    model = _m3d_lamed_seg_model(case)
    assert model.config.seg_first_new_token is False  # set by the importer's published fields
    images, ids, mask = case["input"], case["input_2"], case["input_3"]
    tok = case.meta["tokenizer"]
    out = model.generate_with_masks(
        ids[:, :7],
        images,
        mask[:, :7],
        max_new_tokens=5,
        do_sample=False,
        num_beams=1,
        eos_token_id=tok["eos"],
        pad_token_id=tok["pad"],
    )
    assert out.seg_index[:, 0].tolist() == [0, 1]  # one averaged prompt per row
    assert_matches(case, {"output_5": out.sequences, "output_6": out.seg_logits}, only=("output_5", "output_6"))
    # LaMed's own default reads the leading [SEG] too, which changes row 1's averaged prompt.
    model.config.seg_first_new_token = True
    again = model.generate_with_masks(
        ids[:, :7],
        images,
        mask[:, :7],
        max_new_tokens=5,
        do_sample=False,
        num_beams=1,
        eos_token_id=tok["eos"],
        pad_token_id=tok["pad"],
    )
    assert max_diff(again.seg_logits[1], case["output_6"][1]) > tolerance(case["output_6"])


# ---- HSENet packers (two VisualPacker_3d_phi_v3 streams; weights by formula) ---------------------------


def test_hsenet_packer_matches_reference():
    from LaMed.models.convert import convert_state_dict
    from LaMed.models.projectors import create_projector

    case = fixture_case("hsenet_packer")
    kw = case.meta["constructor_kwargs"]
    grid = tuple(i // p for i, p in zip(kw["image_size"], kw["patch_size"]))
    proj = create_projector("hsenet_packer", in_dim=kw["in_dim"], out_dim=kw["out_dim"], grid_size=grid).eval()
    load_strict(proj, convert_state_dict(case.meta["family"], case.weights), "hsenet_packer fixture")
    assert_matches(case, {"output": proj([case["input"], case["input_2"]])})


def test_hsenet_vlm_matches_reference():
    """HSENet: 3D ViT and 2E3 towers (768 wide, given slice features), two packers, Phi-3; formula weights."""
    from transformers import Phi3Config

    from LaMed.models.convert import convert_state_dict
    from LaMed.models.convert.mllm import legacy_config_fields
    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM

    case = fixture_case("hsenet")
    kw = case.meta["constructor_kwargs"]
    llm = {
        k: v
        for k, v in kw["LamedPhi3Config"].items()
        if k
        in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "original_max_position_embeddings",
            "rope_theta",
            "rms_norm_eps",
            "sliding_window",
            "tie_word_embeddings",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
        )
    }
    t = kw["towers"]
    tower = dict(
        img_size=kw["LamedPhi3Config"]["image_size"],
        patch_size=kw["LamedPhi3Config"]["patch_size"],
        hidden_size=t["hidden_size"],
        num_layers=t["num_layers"],
        mlp_dim=t["mlp_dim"],
        num_heads=t["num_heads"],
    )
    tok = case.meta["tokenizer"]
    config = LaMedConfig(
        text_config=Phi3Config(**llm),
        vision_tower=["vit3d_base", "vit3d_2e3_base"],
        vision_overrides=[tower, tower],
        projector="hsenet_packer",
        slice_feature_source="input",
        image_token_id=tok["im_patch"],
        **legacy_config_fields("hsenet"),
    )
    model = LaMedForCausalLM(config).eval()
    load_strict(model, convert_state_dict("hsenet", case.weights), "hsenet fixture")
    images, ids, mask, slices = case["input"], case["input_2"], case["input_3"], case["input_4"]
    feats = model.get_image_features(images, slice_features=slices)
    logits = model(input_ids=ids, attention_mask=mask, image_features=feats).logits
    assert_matches(
        case,
        {
            "output": logits[:, -8:],
            "output_2": greedy_new_tokens(model, images, ids, mask, tok["eos"], tok["pad"], slice_features=slices),
            "output_3": feats,
        },
    )
