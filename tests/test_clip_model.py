"""LamedClipModel: Auto registration, save / load round trip, pooling, loss wiring, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from LaMed.models.clip import LamedClipConfig, LamedClipModel

TINY_BERT = dict(
    model_type="bert",
    vocab_size=200,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def tiny(**kw) -> LamedClipModel:
    torch.manual_seed(0)
    return LamedClipModel(LamedClipConfig(vision_encoder="vit3d_test", text_config=TINY_BERT, projection_dim=16, **kw))


def inputs(b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (b, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # a padded report
    return dict(image=torch.rand(b, 1, 16, 64, 64, generator=g), input_ids=ids, attention_mask=mask)


def test_auto_classes_round_trip(tmp_path):
    from transformers import AutoConfig, AutoModel

    model = tiny().eval()
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "lamed_clip"
    again = AutoModel.from_pretrained(tmp_path).eval()
    assert type(again) is LamedClipModel
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        o1, o2 = model(**inputs()), again(**inputs())
    torch.testing.assert_close(o1.image_embeds, o2.image_embeds, rtol=0, atol=0)
    torch.testing.assert_close(o1.loss, o2.loss, rtol=0, atol=0)


def test_embeddings_follow_the_published_recipe():
    model = tiny().eval()
    x = inputs()
    with torch.no_grad():
        out = model(**x)
        cls = model.vision_model.forward_features(x["image"])[:, 0]
        img = torch.nn.functional.normalize(model.visual_projection(cls), dim=-1)
        hidden = model.text_model(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
        txt = torch.nn.functional.normalize(model.text_projection(hidden[:, 0]), dim=-1)
    torch.testing.assert_close(out.image_embeds, img)
    torch.testing.assert_close(out.text_embeds, txt)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(3))
    # Default scale: exp(ln(1/0.07)) = 14.29; logits are scale * cosine similarities.
    torch.testing.assert_close(out.logits_per_image, (1 / 0.07) * img @ txt.T, rtol=1e-5, atol=1e-5)
    target = torch.arange(3)
    expected = (
        torch.nn.functional.cross_entropy(out.logits_per_image, target)
        + torch.nn.functional.cross_entropy(out.logits_per_text, target)
    ) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not hasattr(model.text_model, "pooler") or model.text_model.pooler is None  # unused head left out


def test_mean_text_pooling_ignores_padding():
    model = tiny(text_pooling="mean").eval()
    x = inputs()
    with torch.no_grad():
        full = model.encode_text(x["input_ids"][:1, :6])
        padded = model.encode_text(x["input_ids"][:1], x["attention_mask"][:1])
    torch.testing.assert_close(full, padded, rtol=1e-5, atol=1e-6)


def test_siglip_model_has_a_learnable_bias_and_every_parameter_gets_a_gradient():
    model = tiny(loss_type="siglip")
    assert model.logit_scale.item() == pytest.approx(math.log(10)) and model.logit_bias.item() == -10.0
    out = model(**inputs())
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []  # nothing unused (DDP would refuse it)


def test_gradient_checkpointing_reaches_both_towers():
    model = tiny()
    model.activation_checkpointing_enable()
    assert model.vision_model.grad_checkpointing
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.text_model.modules())
    ref = tiny()
    x = inputs()
    out, out_ref = model(**x), ref(**x)
    out.loss.backward()
    out_ref.loss.backward()
    torch.testing.assert_close(model.visual_projection.weight.grad, ref.visual_projection.weight.grad)


def test_bf16_autocast_forward_is_finite():
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_teacher_is_frozen_and_stays_in_eval_mode():
    teacher = tiny()
    model = tiny(teacher_config=teacher.config.to_dict(), consistency_weight=0.5, consistency_steps=10)
    model.teacher.load_state_dict(teacher.state_dict())
    model.load_state_dict({**model.state_dict(), **teacher.state_dict()})  # student = teacher
    model.train()
    assert not model.teacher.training and not any(p.requires_grad for p in model.teacher.parameters())
    x = inputs()
    out0 = model(**x, step=0)
    out5 = model(**x, step=5)
    out10 = model(**x, step=10)
    # loss = itc + 0.5 * (1 - step / 10) * consistency, 0 from step 10 on.
    assert out0.loss.item() == pytest.approx(out0.loss_itc.item() + 0.5 * out0.loss_consistency.item(), rel=1e-6)
    assert out5.loss.item() == pytest.approx(out5.loss_itc.item() + 0.25 * out5.loss_consistency.item(), rel=1e-6)
    assert out10.loss.item() == pytest.approx(out10.loss_itc.item(), rel=1e-6)
    # Student equal to the teacher: the consistency term is 0 and the teacher's loss is the student's.
    assert out0.loss_consistency.item() == pytest.approx(0.0, abs=1e-10)
    assert out0.loss_teacher_itc.item() == pytest.approx(out0.loss_itc.item(), rel=1e-6)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("loss_type", "nce", "loss_type"),
        ("vision_pooling", "max", "vision_pooling"),
        ("logit_scale_mode", "log", "logit_scale_mode"),
        ("projection_dim", 0, "projection_dim"),
    ],
)
def test_config_errors_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        LamedClipConfig(text_config=TINY_BERT, **{field: value})


def test_cls_pooling_needs_a_cls_token():
    with pytest.raises(ValueError, match="vision_pooling='mean'"):
        LamedClipModel(
            LamedClipConfig(vision_encoder="vit3d_test", vision_overrides={"cls_token": False}, text_config=TINY_BERT)
        )


def test_flatten_pooling_weighs_each_grid_token_on_its_own(tmp_path):
    from transformers import AutoModel

    model = tiny(vision_pooling="flatten").eval()
    grid = model.vision_model.grid_size  # (4, 4, 4) for vit3d_test at 16x64x64
    n, width = math.prod(grid), model.vision_model.hidden_size
    assert model.visual_projection.weight.shape == (16, n * width)
    x = inputs()
    with torch.no_grad():
        tokens = model.vision_model.forward_features(x["image"])[:, 1:]  # the CLS token is not read
        # By hand: one (16, width) block of the projection per grid position, summed over positions.
        blocks = model.visual_projection.weight.reshape(16, n, width)
        by_hand = torch.einsum("pnc,bnc->bp", blocks, tokens) + model.visual_projection.bias
        torch.testing.assert_close(model.encode_image(x["image"]), torch.nn.functional.normalize(by_hand, dim=-1))
        # Swapping two grid positions moves a flattened embedding; a mean cannot see the swap.
        swapped = tokens.clone()
        swapped[:, [0, n - 1]] = tokens[:, [n - 1, 0]]
        cls = torch.zeros(3, 1, width)
        flat_a = model.visual_projection(model.pool_image_tokens(torch.cat([cls, tokens], 1)))
        flat_b = model.visual_projection(model.pool_image_tokens(torch.cat([cls, swapped], 1)))
        assert (flat_a - flat_b).abs().max() > 1e-3
        torch.testing.assert_close(tokens.mean(1), swapped.mean(1))
    model.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x["image"]), model.encode_image(x["image"]), rtol=0, atol=0)


def test_flatten_pooling_refuses_a_grid_it_was_not_built_for():
    torch.manual_seed(0)
    model = LamedClipModel(
        LamedClipConfig(
            vision_encoder="dcformer_test", vision_pooling="flatten", text_config=TINY_BERT, projection_dim=8
        )
    )
    d, h, w = model.vision_model.config.img_size
    assert model.encode_image(torch.rand(1, 1, d, h, w)).shape == (1, 8)
    with pytest.raises(
        ValueError, match=r"vision_pooling='flatten' reads the fixed grid \(1, 2, 2\) \(4 tokens\).*8 tokens"
    ):
        model.encode_image(torch.rand(1, 1, d, 2 * h, w))  # DCFormer itself would accept it


def test_flatten_is_not_a_text_pooling():
    with pytest.raises(ValueError, match="text_pooling"):
        LamedClipConfig(text_config=TINY_BERT, text_pooling="flatten")
