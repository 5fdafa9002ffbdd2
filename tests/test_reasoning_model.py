"""Reasoning-segmentation model: [SEG] state selection, mixed batches, generation with masks, save / load.

Tiny models of both arrangements are built in code (2-layer Phi-3-style LLM of width 64, tiny ViT3D,
SegVol-tiny decoder on 16x64x64 volumes); the expectations are hand computations on the same weights.
"""

from __future__ import annotations

import pytest
import torch

TEXTS = [
    "Where is the liver? Please segment it.",
    "It is [SEG].",
    "The liver is [SEG] and the spleen is [SEG].",
    "In the right upper quadrant.",
    "Segment the liver and the spleen.",
] * 10


@pytest.fixture(scope="module")
def tok():
    from LaMed.data.tokenizer import train_tokenizer
    from LaMed.models.mllm import prepare_tokenizer

    t = train_tokenizer(TEXTS, vocab_size=300)
    prepare_tokenizer(t)
    return t


def build(tok, shared: bool, seg_overrides=None, **fields):
    from transformers import CONFIG_MAPPING

    from LaMed.models.mllm import prepare_tokenizer
    from LaMed.models.reasoning import LaMedSegConfig, LaMedSegForCausalLM

    torch.manual_seed(0)
    text = CONFIG_MAPPING["phi3"](
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if shared:
        vision = dict(
            vision_tower="vit3d_test",
            vision_overrides=dict(img_size=(16, 64, 64), patch_size=(4, 16, 16), cls_token=False),
            projector_overrides=dict(pool_size=(2, 2, 2)),
        )
    else:
        vision = dict(
            vision_tower="vit3d_test",
            vision_overrides=dict(img_size=(16, 64, 64)),
            projector_overrides=dict(pool_size=(2, 2, 2)),
        )
    seg = {"img_size": [16, 64, 64], **(seg_overrides or {})}
    cfg = LaMedSegConfig(
        text_config=text,
        projector="spp",
        seg_variant="segvol_tiny",
        shared_encoder=shared,
        seg_projector_dropout=0.0,
        seg_overrides=seg,
        **vision,
        **prepare_tokenizer(tok),
        **fields,
    )
    return LaMedSegForCausalLM(cfg).eval()


def batch(tok, model, pairs):
    from LaMed.models.mllm import LaMedProcessor, MLLMCollator

    proc = LaMedProcessor(tok, model.num_image_tokens)
    return proc, MLLMCollator(proc.pad_token_id)([proc.encode_example(q, a) for q, a in pairs])


# ---- selection --------------------------------------------------------------------------------------
def test_seg_positions_match_hand_indexing():
    from LaMed.models.reasoning import gather_seg_states, seg_token_positions

    S = 9
    ids = torch.tensor(
        [[1, 5, S, 7, 0, 0], [1, 4, 4, 4, 4, 4], [S, 3, S, 2, S, 8]]
    )  # a [SEG] at position 0 has no predicting state
    rows, cols, ords = seg_token_positions(ids, S, predicting=True)
    assert rows.tolist() == [0, 2, 2] and cols.tolist() == [1, 1, 3] and ords.tolist() == [0, 1, 2]
    rows, cols, ords = seg_token_positions(ids, S, predicting=False)
    assert rows.tolist() == [0, 2, 2, 2] and cols.tolist() == [2, 0, 2, 4] and ords.tolist() == [0, 0, 1, 2]
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[2, 4:] = False  # e.g. after EOS
    rows, cols, _ = seg_token_positions(ids, S, True, valid)
    assert cols.tolist() == [1, 1]
    hidden = torch.randn(3, 6, 5)
    r, c, o = seg_token_positions(ids, S, True)
    states, rr, oo = gather_seg_states(hidden, r, c, o, "each")
    torch.testing.assert_close(states, torch.stack([hidden[0, 1], hidden[2, 1], hidden[2, 3]]))
    states, rr, oo = gather_seg_states(hidden, r, c, o, "mean")  # published: one averaged prompt per row
    assert rr.tolist() == [0, 2] and oo.tolist() == [0, 0]
    torch.testing.assert_close(states, torch.stack([hidden[0, 1], (hidden[2, 1] + hidden[2, 3]) / 2]))


def test_hook_captures_what_lm_head_reads(tok):
    model = build(tok, shared=True)
    _, b = batch(tok, model, [("Where is the liver?", "It is [SEG].")])
    images = torch.rand(1, 1, 16, 64, 64)
    with torch.no_grad(), model.capture_last_hidden() as rec:
        out = model(**b, images=images)
    torch.testing.assert_close(model.language_model.lm_head(rec.value), out.logits)


# ---- training forward -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shared", [False, True], ids=["m3d_separate", "r1seg_shared"])
def test_mixed_batch_losses_and_gradients_only_where_a_mask_exists(tok, shared):
    from LaMed.models.reasoning import gather_seg_states, seg_token_positions

    model = build(tok, shared)
    proc, b = batch(
        tok,
        model,
        [
            ("Where is the liver? Please segment it.", "It is [SEG]."),
            ("Where is the liver?", "In the right upper quadrant."),
            ("Segment the liver and the spleen.", "The liver is [SEG] and the spleen is [SEG]."),
        ],
    )
    images = torch.rand(3, 1, 16, 64, 64, requires_grad=True)
    masks = (torch.rand(3, 2, 16, 64, 64) > 0.7).to(torch.uint8)
    valid = torch.tensor([[True, False], [False, False], [True, True]])
    out = model(**b, images=images, seg_masks=masks, seg_valid=valid, return_seg_logits=True)
    assert out.seg_index.tolist() == [[0, 0], [2, 0], [2, 1]]
    # hand computation of the segmentation part on the same weights
    with torch.no_grad(), model.capture_last_hidden() as rec:
        model(**b, images=images)
    r, c, o = seg_token_positions(b["input_ids"], model.config.seg_token_id, True)
    states, r, o = gather_seg_states(rec.value, r, c, o)
    prompts = model.seg_projector(states)
    logits = []
    for row, p in zip(r.tolist(), prompts):
        feats = model.seg_image_features(images[row : row + 1].detach())
        logits.append(model.decode_prompts(feats, p[None], torch.zeros(1, dtype=torch.long), (16, 64, 64)))
    logits = torch.cat(logits)
    torch.testing.assert_close(out.seg_logits.detach(), logits, atol=2e-4, rtol=1e-4)
    parts = model.seg_module.loss_fn(logits, masks[r, o].unsqueeze(1))
    torch.testing.assert_close(out.loss_dice.detach(), parts["dice"].mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss_bce.detach(), parts["bce"].mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss.detach(), (out.loss_lm + out.loss_dice + out.loss_bce).detach())
    # gradients of the segmentation loss reach the volumes of rows 0 and 2 only
    (out.loss_dice + out.loss_bce).backward()
    g = images.grad.flatten(1).abs().sum(1)
    assert g[0] > 0 and g[2] > 0 and g[1] == 0
    # and the decoder gets gradients, from the segmentation loss alone
    assert model.seg_module.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad.abs().sum() > 0


def test_rows_without_mask_give_the_plain_lm_loss(tok):
    model = build(tok, shared=False)
    _, b = batch(tok, model, [("Where is the liver? Please segment it.", "It is [SEG]."), ("Where?", "Here.")])
    images = torch.rand(2, 1, 16, 64, 64)
    masks = torch.ones(2, 1, 16, 64, 64, dtype=torch.uint8)
    plain = model(**b, images=images).loss
    none_valid = model(**b, images=images, seg_masks=masks, seg_valid=torch.zeros(2, 1, dtype=torch.bool))
    assert none_valid.loss_dice is None and none_valid.loss_bce is None
    torch.testing.assert_close(none_valid.loss, plain)
    model.train()  # training adds a zero-weighted touch of the seg parameters (same value, DDP-safe graph)
    trained = model(**b, images=images, seg_masks=masks, seg_valid=torch.zeros(2, 1, dtype=torch.bool))
    trained.loss.backward()
    torch.testing.assert_close(trained.loss.detach(), plain.detach())
    w = model.seg_module.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight
    assert w.grad is not None and w.grad.abs().sum() == 0


# ---- generation -----------------------------------------------------------------------------------------
class ForceTokens:
    """Logits processor that forces a fixed continuation (one list per row)."""

    def __init__(self, prompt_len, rows):
        self.prompt_len, self.rows = prompt_len, rows

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1] - self.prompt_len
        forced = torch.full_like(scores, float("-inf"))
        for r, seq in enumerate(self.rows):
            forced[r, seq[min(t, len(seq) - 1)]] = 0.0
        return forced


@pytest.mark.parametrize(
    "shared,state",
    [(True, "predicting"), (False, "predicting"), (True, "at")],
    ids=["shared", "separate", "shared_state_at"],
)
def test_generated_seg_including_the_first_new_token(tok, shared, state):
    from transformers import LogitsProcessorList

    model = build(tok, shared, seg_token_state=state)
    proc, _ = batch(tok, model, [("a", "b")])
    S, E = model.config.seg_token_id, tok.eos_token_id
    word = tok.convert_tokens_to_ids(tok.tokenize("liver")[0])
    rows = [[S, word, S, E], [word, word, E, E], [word, S, E, E]]  # [SEG] first; none; one later
    enc = proc(["Segment the liver and the spleen.", "Where is the liver?", "Where is the liver?"], padding_side="left")
    images = torch.rand(3, 1, 16, 64, 64)
    gen = model.generate_with_masks(
        enc["input_ids"],
        images,
        attention_mask=enc["attention_mask"],
        max_new_tokens=5,
        do_sample=False,
        eos_token_id=E,
        pad_token_id=tok.pad_token_id,
        logits_processor=LogitsProcessorList([ForceTokens(enc["input_ids"].shape[1], rows)]),
    )
    assert gen.sequences[0, :3].tolist() == [S, word, S]
    assert gen.seg_index.tolist() == [[0, 0], [0, 1], [2, 0]]
    assert gen.masks_of(1).shape == (0, 16, 64, 64) and gen.masks_of(0).shape == (2, 16, 64, 64)
    # hand computation: one teacher-forced pass over prompt + answer
    L = enc["input_ids"].shape[1]
    full = torch.cat([enc["input_ids"], gen.sequences], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(gen.sequences)], 1)
    with torch.no_grad(), model.capture_last_hidden() as rec:
        model(input_ids=full, attention_mask=mask, images=images)
    h = rec.value
    if state == "predicting":  # one position before each [SEG]; the first one is the last prompt position
        want = torch.stack([h[0, L - 1], h[0, L + 1], h[2, L]])
    else:  # at the [SEG] tokens themselves
        want = torch.stack([h[0, L], h[0, L + 2], h[2, L + 1]])
    with torch.no_grad():
        prompts = model.seg_projector(want)
    torch.testing.assert_close(gen.seg_prompts, prompts, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        feats = model.seg_image_features(images[[0, 2]])
        logits = model.decode_prompts(feats, prompts, torch.tensor([0, 0, 1]), (16, 64, 64))
    torch.testing.assert_close(gen.seg_logits, logits, atol=1e-3, rtol=1e-3)


def test_segment_with_prompts_reuses_an_answer_on_other_windows(tok):
    model = build(tok, shared=True)
    prompts = torch.randn(2, 96)
    images = torch.rand(1, 1, 16, 64, 64)
    with torch.no_grad():
        a = model.segment_with_prompts(images, prompts)
        feats = model.seg_image_features(images)
        b = model.decode_prompts(feats, prompts, torch.zeros(2, dtype=torch.long), (16, 64, 64))
    torch.testing.assert_close(a, b)


# ---- construction, save / load ------------------------------------------------------------------------
def test_save_load_roundtrip_through_auto_classes(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    import LaMed.models.reasoning  # noqa: F401

    for shared in (False, True):
        model = build(tok, shared)
        model.save_pretrained(tmp_path / str(shared))
        again = AutoModelForCausalLM.from_pretrained(tmp_path / str(shared))
        assert type(again).__name__ == "LaMedSegForCausalLM" and again.config.shared_encoder == shared
        sd, sd2 = model.state_dict(), again.state_dict()
        assert sd.keys() == sd2.keys()
        assert all(torch.equal(sd[k], sd2[k]) for k in sd)
        assert any(k.startswith("seg_module.image_encoder.") for k in sd) != shared  # shared: the tower only


def test_from_mllm_keeps_the_mllm_and_adds_a_head(tok):
    from LaMed.models.mllm import LaMedConfig, LaMedForCausalLM, prepare_tokenizer
    from LaMed.models.reasoning import LaMedSegForCausalLM

    ref = build(tok, shared=True)
    c = ref.config
    mllm = LaMedForCausalLM(
        LaMedConfig(
            text_config=c.text_config,
            vision_tower=c.vision_tower,
            vision_overrides=c.vision_overrides,
            projector="spp",
            projector_overrides=c.projector_overrides,
            **prepare_tokenizer(tok),
        )
    ).eval()
    _, b = batch(tok, ref, [("Where is the liver?", "In the abdomen.")])
    images = torch.rand(1, 1, 16, 64, 64)
    with torch.no_grad():
        before = mllm(**b, images=images).logits
    keys = set(mllm.state_dict())
    model = LaMedSegForCausalLM.from_mllm(mllm, seg_variant="segvol_tiny", shared_encoder=True).eval()
    assert model is mllm and isinstance(model, LaMedSegForCausalLM) and model.config.model_type == "lamed_seg"
    added = set(model.state_dict()) - keys
    assert keys <= set(model.state_dict()) and {k.split(".")[0] for k in added} == {"seg_module", "seg_projector"}
    assert not any(k.startswith("seg_module.image_encoder.") for k in added)  # shared: the tower is the encoder
    with torch.no_grad():
        torch.testing.assert_close(model(**b, images=images).logits, before)


def test_shared_encoder_geometry_and_config_errors(tok):
    from LaMed.models.reasoning import LaMedSegConfig

    with pytest.raises(ValueError, match="seg_reduce"):
        LaMedSegConfig(text_config={"model_type": "llama"}, seg_reduce="sum")
    with pytest.raises(ValueError, match="text_encoder_config must stay None"):
        LaMedSegConfig(text_config={"model_type": "llama"}, seg_overrides={"text_encoder_config": "clip_text"})
    with pytest.raises(ValueError, match="expects"):  # tower 16x64x64 vs decoder 32x64x64
        from transformers import CONFIG_MAPPING

        from LaMed.models.reasoning import LaMedSegForCausalLM

        text = CONFIG_MAPPING["llama"](
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=len(tok)
        )
        LaMedSegForCausalLM(
            LaMedSegConfig(text_config=text, vision_tower="vit3d_test", projector="spp", seg_variant="segvol_tiny")
        )


def test_question_on_a_large_volume_generates_once_and_reuses_seg_on_windows(tok, tmp_path, monkeypatch):
    import numpy as np
    from transformers import LogitsProcessorList

    from LaMed.data.io import load_volume
    from LaMed.inference import reasoning as inference
    from LaMed.models.mllm import LaMedProcessor

    model = build(tok, shared=True)
    proc = LaMedProcessor(tok, model.num_image_tokens)
    S, E = model.config.seg_token_id, tok.eos_token_id
    arr = np.random.default_rng(0).normal(40, 30, (24, 100, 80)).astype(np.float32)  # foreground everywhere
    np.save(tmp_path / "big.npy", arr)
    volume = load_volume(tmp_path / "big.npy")
    calls = []
    real = model.generate_with_masks

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        kwargs["logits_processor"] = LogitsProcessorList([ForceTokens(args[0].shape[1], [[S, E]])])
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate_with_masks", counted)
    pred = inference.predict_question(model, proc, volume, "Where is the liver?", overlap=0.25)
    assert len(calls) == 1  # one answer for the whole volume, not one per window
    assert pred.answer == "[SEG]" and pred.masks.shape == (1,) + volume.shape and pred.windows > 1
    crop = tuple(slice(a, b) for a, b in zip(pred.crop[:3], pred.crop[3:]))
    # inside the crop the probabilities are the windows' decodes of the one [SEG] prompt
    assert np.isfinite(pred.probabilities[(0,) + crop].astype(np.float32)).all()
    no_zoom = inference.predict_question(model, proc, volume, "Where is the liver?", zoom_in=False)
    assert no_zoom.windows == 1 and not np.array_equal(no_zoom.probabilities, pred.probabilities)


def test_a_second_stage_changes_only_loss_fields_and_the_gate(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from LaMed.train.tasks.reasoning_seg import ReasonSegModelArguments, continue_training

    folder = tmp_path / "stage1"
    build(tok, True, seg_overrides={"point_prompts": False}).save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.seg_module.config.presence_weight == 0.0 and model.config.presence_gate is False
    args = ReasonSegModelArguments(
        pretrained_model=str(folder),
        seg_overrides={"point_prompts": False, "presence_weight": 0.3, "presence_on": "absent"},
        presence_gate=True,
    )
    continue_training(model, args)
    loss = model.seg_module.loss_fn  # built from the config at each call: the new term is in it
    assert (loss.presence_weight, loss.presence_on) == (0.3, "absent")
    assert model.config.presence_gate is True
    model.save_pretrained(tmp_path / "stage2")  # and the change is saved with the model
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "stage2")
    assert again.seg_module.config.presence_weight == 0.3 and again.config.presence_gate is True
    with pytest.raises(ValueError, match="may change only"):
        continue_training(model, ReasonSegModelArguments(pretrained_model=str(folder), seg_overrides={"embed_dim": 64}))
    with pytest.raises(ValueError, match="presence_on must be one of"):
        continue_training(
            model, ReasonSegModelArguments(pretrained_model=str(folder), seg_overrides={"presence_on": "x"})
        )
