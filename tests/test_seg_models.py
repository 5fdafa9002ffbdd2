"""Segmentation models: published sizes and key layouts, conventions, losses, serialization."""

from __future__ import annotations

import math

import pytest
import torch

import LaMed  # noqa: F401  (torchvision shim before transformers)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def seg():
    import LaMed.models.segmentation as seg

    return seg


def _meta(seg, name, **kw):
    with torch.device("meta"):
        return seg.create_seg_model(name, **kw)


# ---- published sizes (public reference code) --------------------------------------------------------------


def test_segvol_published_parameter_counts(seg):
    m = _meta(seg, "segvol_published")
    # BAAI-DCAI/SegVol, arXiv 2311.13385: image encoder 87.39 M (ViT-B without CLS: 87,388,416), transformer 16.94 M,
    # output_upscaling 7.62 M of which 6.29 M is the (192, 16, 32, 32) LayerNorm, hypernets 5.02 M.
    assert _count(m.image_encoder) == 87_388_416
    assert round(_count(m.mask_decoder.transformer) / 1e6, 2) == 16.94
    assert round(_count(m.mask_decoder.output_upscaling) / 1e6, 2) == 7.62
    assert _count(m.mask_decoder.output_upscaling[1]) == 2 * 192 * 16 * 32 * 32
    assert round(_count(m.mask_decoder.output_hypernetworks_mlps) / 1e6, 2) == 5.02
    assert round(_count(m.prompt_encoder) / 1e3) == 18
    # M3D-LaMed's seg module = image encoder + prompt encoder + mask decoder: 117,331,280 tensor
    # elements, which counts the prompt encoder's (3, 384) Fourier buffer too.
    gauss = m.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    assert tuple(gauss.shape) == (3, 384)
    assert _count(m.image_encoder) + _count(m.prompt_encoder) + _count(m.mask_decoder) + gauss.numel() == 117_331_280
    # with the CLIPTextConfig() text tower and dim_align: "181.0M" in SegVol's readme (ours 180.89 M).
    assert abs(_count(m) - 181.0e6) < 0.15e6
    assert tuple(m.text_encoder.proj.weight.shape) == (768, 512)


def test_segvol_clean_decoder_drops_the_full_shape_layernorm(seg):
    m = _meta(seg, "segvol")
    assert _count(m.mask_decoder.output_upscaling[1]) == 2 * 192
    m2 = _meta(seg, "segvol", img_size=(64, 256, 256))  # any input size now builds
    assert m2.prompt_encoder.image_embedding_size == (16, 16, 16)


def test_text3dsam_published_sizes_and_key_count(seg):
    m = _meta(seg, "text3dsam_published")
    # mirthAI/Text3DSAM (tiny-clinicalbert geometry): 706 keys, 59.3 M.
    assert round(_count(m.image_encoder) / 1e6, 2) == 22.91
    assert round(_count(m.text_encoder.model) / 1e6, 2) == 13.87
    assert round(_count(m.text_encoder.proj) / 1e6, 2) == 0.83
    assert round((_count(m.mask_decoder) + _count(m.prompt_encoder)) / 1e6, 2) == 21.69
    assert round(_count(m.mask_decoder) / 1e6, 2) == 18.08
    assert round(_count(m.prompt_encoder) / 1e6, 2) == 3.61
    assert round(_count(m) / 1e6, 1) == 59.3
    assert len(m.state_dict()) == 706
    sd = m.state_dict()
    assert tuple(sd["mask_decoder.output_upscaling.1.weight"].shape) == (192, 768, 1, 1, 1)
    assert tuple(sd["mask_decoder.output_upscaling.5.weight"].shape) == (48, 192, 1, 1, 1)
    assert tuple(sd["mask_decoder.output_hypernetworks_mlps.0.layers.2.weight"].shape) == (48, 192)
    assert tuple(sd["prompt_encoder.mask_downscaling.0.c1.0.weight"].shape) == (96, 1, 7, 1, 1)


def test_shapes_of_the_published_forward_on_meta(seg):
    m = _meta(seg, "segvol_published")
    x = torch.empty(1, 1, 32, 256, 256, device="meta")
    feats = m.encode_image(x)
    assert tuple(feats.embeddings.shape) == (1, 768, 8, 16, 16)
    prompts = seg.Prompts(text_embedding=torch.empty(3, 768, device="meta"))
    low = m.decode(feats, prompts, image_index=torch.zeros(3, dtype=torch.long, device="meta"))
    assert tuple(low.shape) == (3, 1, 32, 64, 64)  # 1/4 of the input in-plane, full depth
    t = _meta(seg, "text3dsam_published")
    f = t.encode_image(torch.empty(1, 1, 128, 256, 256, device="meta"))
    assert tuple(f.embeddings.shape) == (1, 768, 2, 4, 4)
    assert [tuple(h.shape[1:]) for h in f.high_res] == [(48, 32, 64, 64), (192, 8, 16, 16)]
    low = t.decode(f, seg.Prompts(text_embedding=torch.empty(1, 768, device="meta")))
    assert tuple(low.shape) == (1, 1, 32, 64, 64)


# ---- published module sizes (hand-typed from the public reference code; whole layouts: test_published_layouts) ---


def test_segvol_published_module_shapes(seg):
    m = _meta(seg, "segvol_published")
    sd = m.state_dict()
    pe = [k for k in sd if k.startswith("prompt_encoder.")]
    md = [k for k in sd if k.startswith("mask_decoder.")]
    assert (len(pe), len(md), len([k for k in sd if k.startswith("image_encoder.")])) == (17, 122, 137)
    for key, shape in {
        "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
        "prompt_encoder.mask_downscaling.6.weight": (768, 16, 1, 1),
        "mask_decoder.output_upscaling.0.weight": (768, 192, 2, 2, 2),
        "mask_decoder.output_upscaling.1.weight": (192, 16, 32, 32),
        "mask_decoder.output_upscaling.3.weight": (192, 96, 2, 2, 2),
        "mask_decoder.txt_align_upscaled_embedding.weight": (96, 768),
        "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight": (384, 768),
        "mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight": (768, 384),
        "mask_decoder.transformer.layers.0.self_attn.q_proj.weight": (768, 768),
        "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
        "mask_decoder.mask_tokens.weight": (4, 768),
    }.items():
        assert tuple(sd[key].shape) == shape, key


def test_r1seg_prompt_encoder_keys(seg):
    sd = _meta(seg, "r1seg_sam_published").state_dict()
    # lihaoqin168/R1Seg-3D: pe buffer + mask3D_downscaling {0,1,3,4,6} + no_mask_embed.
    assert sorted(k for k in sd if k.startswith("prompt_encoder.")) == sorted(
        ["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "prompt_encoder.no_mask_embed.weight"]
        + [f"prompt_encoder.mask_downscaling.{i}.{p}" for i in (0, 1, 3, 4, 6) for p in ("weight", "bias")]
    )


# ---- conventions ----------------------------------------------------------------------------------------


def test_point_conventions_against_hand_computation():
    from LaMed.models.segmentation.common import PositionEmbeddingRandom3D

    torch.manual_seed(0)
    pe = PositionEmbeddingRandom3D(4, axis_order="segvol")
    g = pe.positional_encoding_gaussian_matrix
    c = torch.tensor([[[3.0, 100.0, 7.0]]])
    size = (32, 256, 128)
    # SegVol: (c0 / S1, c1 / S0, c2 / S2), then [sin, cos](2 pi (2u - 1) G)
    u = torch.tensor([3.0 / 256, 100.0 / 32, 7.0 / 128])
    proj = 2 * math.pi * ((2 * u - 1) @ g)
    assert torch.allclose(
        pe.forward_with_coords(c, size, "segvol")[0, 0], torch.cat([proj.sin(), proj.cos()]), atol=1e-6
    )
    # consistent convention: a point at the centre of a grid cell gets the dense encoding of that cell
    for order in ("segvol", "dhw"):
        p = PositionEmbeddingRandom3D(4, axis_order=order)
        dense = p((4, 8, 8))  # grid of a (32, 64, 64) input, 8 voxels a cell
        centre = torch.tensor([[[2.5 / 4 * 32, 5.5 / 8 * 64, 1.5 / 8 * 64]]])  # cell (2, 5, 1)
        enc = p.forward_with_coords(centre, (32, 64, 64), "dhw")[0, 0]
        assert torch.allclose(enc, dense[:, 2, 5, 1], atol=1e-5)
    # ... which SegVol's convention does not give (it is only kept for the published weights)
    p = PositionEmbeddingRandom3D(4, axis_order="segvol")
    assert not torch.allclose(
        p.forward_with_coords(centre, (32, 64, 64), "segvol")[0, 0], p((4, 8, 8))[:, 2, 5, 1], atol=1e-3
    )


def test_text_similarity_branch_is_added_to_every_mask():
    from LaMed.models.segmentation.mask_decoder import MaskDecoder3D

    torch.manual_seed(0)
    d = MaskDecoder3D(32, (2, 2, 2), mlp_dim=64, num_heads=2, iou_head_hidden_dim=16).eval()
    emb, pe = torch.randn(1, 32, 2, 2, 2), torch.randn(1, 32, 2, 2, 2)
    sparse, dense, t = torch.randn(1, 2, 32), torch.randn(1, 32, 2, 2, 2), torch.randn(1, 32)
    with torch.no_grad():
        with_t = d(emb, pe, sparse, dense, t, multimask_output=True)[0]
        without = d(emb, pe, sparse, dense, None, multimask_output=True)[0]
        hs, src = d.transformer(
            emb + dense,
            pe,
            torch.cat([d.iou_token.weight, d.mask_tokens.weight])[None].expand(1, -1, -1).clone()
            if False
            else torch.cat([torch.cat([d.iou_token.weight, d.mask_tokens.weight])[None], sparse], 1),
        )
        up = d.output_upscaling(src.transpose(1, 2).reshape(1, 32, 2, 2, 2))
        sim = (d.txt_align_upscaled_embedding(t) @ up.flatten(2)).view(1, 1, 8, 8, 8)
    assert with_t.shape == (1, 3, 8, 8, 8)
    assert torch.allclose(with_t - without, sim.expand(1, 3, 8, 8, 8), atol=1e-5)


# ---- losses ----------------------------------------------------------------------------------------------


def test_losses_against_hand_computation_and_monai():
    from monai.losses import DiceFocalLoss

    from LaMed.models.segmentation.losses import SegLoss, bce_loss, binary_dice_loss

    logits = torch.tensor([[[[[0.0, 2.0], [-1.0, 3.0]]]]])  # (1, 1, 1, 2, 2)
    target = torch.tensor([[[[[0.0, 1.0], [1.0, -1.0]]]]])
    p = torch.sigmoid(logits).flatten()
    t = torch.tensor([0.0, 1.0, 1.0, 0.0])  # -1 counts as 0
    expect = 1 - 2 * (p * t).sum() / (p.sum() + t.sum() + 1)
    assert torch.allclose(binary_dice_loss(logits, target), expect[None])
    # By hand: p = sigmoid(0, 2, -1, 3) = (0.5, 0.8807971, 0.2689414, 0.9525741), t = (0, 1, 1, 0):
    # sum(pt) = 1.1497385, sum(p) + sum(t) + 1 = 5.6023126.
    m3d = 1 - 2 * 1.1497385 / 5.6023126  # M3D / SegVol: smoothing in the denominator only
    r1seg = 1 - (2 * 1.1497385 + 1) / 5.6023126  # R1Seg-3D: in the numerator too
    assert binary_dice_loss(logits, target).item() == pytest.approx(m3d, abs=1e-6)
    assert binary_dice_loss(logits, target, smooth_numerator=True).item() == pytest.approx(r1seg, abs=1e-6)
    assert SegLoss("dice_bce")(logits, target)["dice"].item() == pytest.approx(m3d, abs=1e-6)
    parts = SegLoss("dice_bce_r1seg")(logits, target)
    assert parts["dice"].item() == pytest.approx(r1seg, abs=1e-6)
    assert parts["loss"].item() == pytest.approx(r1seg + parts["bce"].item(), abs=1e-6)
    # an empty prediction of an empty mask: R1Seg-3D's Dice is 0, M3D's is 1
    empty, none = torch.full((1, 1, 2, 2, 2), -40.0), torch.zeros(1, 1, 2, 2, 2)
    assert binary_dice_loss(empty, none, smooth_numerator=True).item() == pytest.approx(0.0, abs=1e-6)
    assert binary_dice_loss(empty, none).item() == pytest.approx(1.0, abs=1e-6)
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert torch.allclose(bce_loss(logits, target), bce[None], atol=1e-6)
    torch.manual_seed(0)
    x, y = torch.randn(3, 1, 4, 6, 5), (torch.rand(3, 1, 4, 6, 5) > 0.6).float()
    ours = SegLoss("dice_focal")(x, y)["loss"].mean()
    ref = DiceFocalLoss(sigmoid=True, include_background=True, to_onehot_y=False, lambda_dice=1.0, lambda_focal=1.0)(
        x, y
    )
    assert torch.allclose(ours, ref, atol=1e-5)


def test_presence_loss_by_hand():
    """BCE between the mean of the k largest logits and "the target has foreground", by hand."""
    from LaMed.models.segmentation.losses import SegLoss, presence_loss

    logits = torch.tensor([[[[[4.0, -2.0], [1.0, 0.0]]]], [[[[-3.0, 2.0], [-1.0, -5.0]]]]])  # (2, 1, 1, 2, 2)
    target = torch.zeros_like(logits)
    target[0, 0, 0, 1, 1] = 1.0  # first sample: a structure (one voxel); second: absent
    # k = 2: scores (4 + 1) / 2 = 2.5 and (2 + -1) / 2 = 0.5;
    # BCE: -log(sigmoid(2.5)) = log(1 + e^-2.5) = 0.0788897; -log(1 - sigmoid(0.5)) = log(1 + e^0.5) = 0.9740770
    got = presence_loss(logits, target, topk=2)
    assert got.tolist() == pytest.approx([0.0788897, 0.9740770], abs=1e-6)
    # k = 1 is the largest logit; k above the voxel count is the mean of all
    assert presence_loss(logits, target, topk=1)[1].item() == pytest.approx(math.log1p(math.exp(2.0)), abs=1e-6)
    assert presence_loss(logits, target, topk=99)[0].item() == pytest.approx(math.log1p(math.exp(-0.75)), abs=1e-6)
    # -1 (ignore) is not foreground
    assert presence_loss(logits, -torch.ones_like(logits), topk=2)[0].item() == pytest.approx(
        math.log1p(math.exp(2.5)), abs=1e-6
    )
    parts = SegLoss("dice_bce", presence_weight=0.5, presence_topk=2)(logits, target)
    assert torch.allclose(parts["presence"], got)
    assert torch.allclose(parts["loss"], parts["dice"] + parts["bce"] + 0.5 * got)
    assert "presence" not in SegLoss("dice_bce")(logits, target)  # off by default, as published
    # on="absent": only the sample with an empty target counts (its BCE against "absent", as above)
    assert presence_loss(logits, target, topk=2, on="absent").tolist() == pytest.approx([0.0, 0.9740770], abs=1e-6)
    with pytest.raises(ValueError, match="on must be"):
        presence_loss(logits, target, on="some")


# ---- training forward: one encoding per volume ------------------------------------------------------


def _batch(k=3, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(b, k, 32, 64, 64, generator=g) > 0.7).float()
    label_mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)[:b, :k]
    ids = torch.randint(1000, 2000, (b, k, 5), generator=g)
    pts = torch.randint(0, 32, (b, k, 4, 3), generator=g).float()
    pl = torch.randint(-1, 2, (b, k, 4), generator=g)
    boxes = torch.tensor([1.0, 2.0, 3.0, 20.0, 40.0, 50.0]).expand(b, k, 6)
    return dict(
        volume=torch.rand(b, 1, 32, 64, 64, generator=g),
        labels=labels,
        label_mask=label_mask,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        points=pts,
        point_labels=pl,
        boxes=boxes,
    )


def test_encode_once_equals_reencoding_per_class(seg):
    torch.manual_seed(0)
    m = seg.create_seg_model("segvol_tiny").eval()
    batch = _batch()
    calls = {"n": 0}
    real = m.encode_image

    def counting(x):
        calls["n"] += 1
        return real(x)

    m.encode_image = counting
    with torch.no_grad():
        once = m(**batch)
        n_once = calls["n"]
        m.config.encode_once = False
        calls["n"] = 0
        again = m(**batch)
    assert n_once == 1 and calls["n"] == 3  # three distinct classes -> three encodings
    assert torch.allclose(once.loss, again.loss, atol=1e-6)
    assert torch.allclose(once.loss_dice, again.loss_dice, atol=1e-6)
    # six prompt types x four valid (volume, class) pairs all contribute: dropping one changes the loss
    m.config.encode_once = True
    m.config.train_prompt_types = ["text"]
    with torch.no_grad():
        text_only = m(**batch)
    assert not torch.allclose(text_only.loss, once.loss)


def test_missing_prompt_kind_is_refused(seg):
    m = seg.create_seg_model("segvol_tiny").eval()
    batch = _batch()
    del batch["boxes"]
    with pytest.raises(ValueError, match="box"):
        m(**batch)


@pytest.mark.parametrize("name", ["text3dsam_tiny", "refsam3d_tiny"])
def test_other_families_train_and_infer(seg, name):
    torch.manual_seed(0)
    m = seg.create_seg_model(name)
    batch = _batch()
    for k in ("points", "point_labels", "boxes"):
        batch.pop(k)
    out = m(**batch)
    out.loss.backward()
    grads = [p.grad for n, p in m.named_parameters() if n.startswith("mask_decoder.") and "iou_" not in n]
    assert all(g is not None for g in grads)
    with torch.no_grad():
        y = m.eval()(batch["volume"], input_ids=batch["input_ids"][:, 0]).logits
    assert y.shape == (2, 1, 32, 64, 64)


def test_save_and_reload_with_auto_classes(seg, tmp_path):
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    m = seg.create_seg_model("segvol_tiny").eval()
    m.save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.model_type == "lamed_segvol" and cfg.img_size == [32, 64, 64]
    r = AutoModel.from_pretrained(tmp_path).eval()
    assert type(r).__name__ == "SegVolModel"
    x, ids = torch.rand(1, 1, 32, 64, 64), torch.tensor([[101, 7, 102]])
    sa, sb = m.state_dict(), r.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # bit-exact weights and buffers
    with torch.no_grad():  # the reloaded text tower may pick another attention kernel: float-level agreement
        assert torch.allclose(m(x, input_ids=ids).logits, r(x, input_ids=ids).logits, atol=1e-5)


def test_config_errors_name_the_field(seg):
    with pytest.raises(ValueError, match="refine_passes"):
        seg.SegVolConfig(refine_passes=1)
    with pytest.raises(ValueError, match="prompt type"):
        seg.SegVolConfig(train_prompt_types=["text+mask"])
    with pytest.raises(ValueError, match="presence_weight"):
        seg.SegVolConfig(presence_weight=-1.0)
    with pytest.raises(ValueError, match="presence_topk"):
        seg.SegVolConfig(presence_topk=0)
    with pytest.raises(ValueError, match="presence_on"):
        seg.SegVolConfig(presence_on="present")
    with pytest.raises(TypeError, match="not_a_field"):
        seg.create_seg_model("segvol_tiny", not_a_field=1)
