"""LaMedForCausalLM over tiny Phi-3, Phi-4-mini, Llama-2/3 and Qwen2.5: loss, placeholders, cache, padding, I/O."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from LaMed.data.tokenizer import train_tokenizer
from LaMed.models.mllm import (
    ImageTokenMismatch,
    LaMedConfig,
    LaMedForCausalLM,
    LaMedProcessor,
    MLLMCollator,
    prepare_tokenizer,
)

CORPUS = [
    "Findings: the liver is enlarged, measuring 18 cm. No focal lesion in the spleen.",
    "A 12 mm hypodense lesion is seen in the right kidney. The gallbladder is unremarkable.",
    "Status post left nephrectomy. Normal-caliber abdominal aorta.",
    "Which imaging phase is shown? Choices: A. arterial B. portal venous C. delayed D. non-contrast",
] * 10

# Tiny twins of the published LLMs: architecture and tokenizer conventions, nothing else.
LLMS = {
    "phi3": (dict(model_type="phi3"), dict(style="sentencepiece", bos=True)),
    "phi4_mini": (
        dict(model_type="phi3", partial_rotary_factor=0.75, tie_word_embeddings=True),
        dict(style="byte_level", bos=False),
    ),
    "llama2": (dict(model_type="llama", num_key_value_heads=4), dict(style="sentencepiece", bos=True)),
    "llama3": (dict(model_type="llama", rope_theta=500000.0), dict(style="byte_level", bos=True)),
    "qwen2_5": (dict(model_type="qwen2"), dict(style="byte_level", bos=False)),
}
VOLUME = (16, 64, 64)  # vit3d_test input


@pytest.fixture(scope="module")
def tokenizers():
    out = {}
    for name, (_, tk) in LLMS.items():
        tok = train_tokenizer(CORPUS, vocab_size=300, **tk)
        prepare_tokenizer(tok)
        out[name] = tok
    return out


def build(name: str, tok, seed: int = 0, **cfg) -> LaMedForCausalLM:
    from transformers import CONFIG_MAPPING

    arch = dict(LLMS[name][0])
    mt = arch.pop("model_type")
    text = CONFIG_MAPPING[mt](
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=arch.pop("num_key_value_heads", 2),
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **arch,
    )
    text._attn_implementation = "eager"
    torch.manual_seed(seed)
    cfg = {"vision_tower": "vit3d_test", "projector": "spp", **cfg}
    config = LaMedConfig(text_config=text, **prepare_tokenizer(tok), **cfg)
    return LaMedForCausalLM(config).eval()


def batch_of(proc, pairs, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = [{**proc.encode_example(q, a), "images": torch.rand((1, *VOLUME), generator=g)} for q, a in pairs]
    return MLLMCollator(proc.pad_token_id)(items)


PAIRS = [("Describe the findings.", "The liver is enlarged."), ("Is there a lesion?", "No.")]


@pytest.mark.parametrize("name", list(LLMS))
def test_forward_loss_matches_hand_computation(name, tokenizers):
    tok = tokenizers[name]
    model = build(name, tok)
    proc = LaMedProcessor(tok, model.num_image_tokens)
    b = batch_of(proc, PAIRS)
    out = model(**b)
    # By hand: embeddings with the T placeholder rows of each sample replaced, in order, by the
    # projector output; then the LLM; then mean CE of position t predicting label t+1.
    with torch.no_grad():
        feats = model.mm_projector(model.vision_tower(b["images"]))
        emb = model.get_input_embeddings()(b["input_ids"]).clone()
        for r in range(emb.shape[0]):
            pos = (b["input_ids"][r] == proc.image_token_id).nonzero().flatten()
            assert len(pos) == model.num_image_tokens == 8
            emb[r, pos] = feats[r]
        logits = model.language_model(inputs_embeds=emb, attention_mask=b["attention_mask"]).logits
        logp = F.log_softmax(logits.double()[:, :-1], -1)
        target = b["labels"][:, 1:]
        keep = target != -100
        hand = -(logp.gather(-1, target.clamp(min=0)[..., None])[..., 0][keep]).mean()
    torch.testing.assert_close(out.logits, logits)
    assert abs(out.loss.item() - hand.item()) < 1e-5
    # Supervised positions: answer + EOS only (prompt and padding excluded).
    n_answer = sum(len(tok(" " + a, add_special_tokens=False)["input_ids"]) for _, a in PAIRS) + len(PAIRS)
    assert 0 < int(keep.sum()) <= n_answer + 2


def test_per_sample_loss_weighs_every_row_alike(tokenizers):
    """loss_reduction='sample': mean over each row's answer tokens, then over rows (by hand)."""
    tok = tokenizers["phi3"]
    model = build("phi3", tok, loss_reduction="sample")
    proc = LaMedProcessor(tok, model.num_image_tokens)
    b = batch_of(proc, PAIRS)
    assert model.accepts_loss_kwargs is False  # the Trainer must not pass a token count
    out = model(**b, num_items_in_batch=torch.tensor(99))  # ignored in this mode
    with torch.no_grad():
        logp = F.log_softmax(out.logits.double()[:, :-1], -1)
        target = b["labels"][:, 1:]
        rows = []
        for r in range(target.shape[0]):
            keep = target[r] != -100
            rows.append(-(logp[r][keep].gather(-1, target[r][keep][:, None])).mean())
        hand = torch.stack(rows).mean()
        token_mean = -(logp.gather(-1, target.clamp(min=0)[..., None])[..., 0][target != -100]).mean()
    lengths = (target != -100).sum(1)
    assert lengths[0] != lengths[1]  # unequal answers: the two reductions differ
    assert abs(out.loss.item() - hand.item()) < 1e-5
    assert abs(out.loss.item() - token_mean.item()) > 1e-4
    out.loss.backward()  # differentiable through the tower
    assert model.mm_projector.parameters().__next__().grad is not None
    # A row without any answer token is left out of the mean, not counted as zero.
    labels = b["labels"].clone()
    labels[1] = -100
    only_first = model(input_ids=b["input_ids"], images=b["images"], attention_mask=b["attention_mask"], labels=labels)
    assert abs(only_first.loss.item() - rows[0].item()) < 1e-5
    with pytest.raises(ValueError, match="loss_reduction"):
        LaMedConfig(text_config=model.config.text_config, loss_reduction="mean")


def test_vision_feature_norm_standardises_tower_tokens(tokenizers, tmp_path):
    """vision_feature_norm='batch': the projector sees per-channel standardised tokens (batch stats in
    training, running stats after), and the statistics travel with save_pretrained."""
    tok = tokenizers["phi3"]
    model = build("phi3", tok, vision_feature_norm="batch").train()
    seen = []
    model.mm_projector.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    images = torch.rand(4, 1, *VOLUME) * 0.1 + 0.5  # a large shared offset, small differences
    model.get_image_features(images)
    x = seen[-1]  # (B, N, C) as the projector received it
    assert x.shape[-1] == model.towers[0].hidden_size
    flat = x.reshape(-1, x.shape[-1])
    torch.testing.assert_close(flat.mean(0), torch.zeros(x.shape[-1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.var(0, unbiased=False), torch.ones(x.shape[-1]), atol=1e-2, rtol=0)
    raw = model.towers[0](images).reshape(-1, x.shape[-1])
    norm = model.feature_norm[0]
    torch.testing.assert_close(norm.running_mean, 0.1 * raw.mean(0).detach(), atol=1e-5, rtol=1e-4)  # momentum 0.1
    model.save_pretrained(tmp_path)
    again = LaMedForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again.feature_norm[0].running_var, norm.running_var)
    model.eval()
    torch.testing.assert_close(again.get_image_features(images), model.get_image_features(images))
    assert build("phi3", tok).feature_norm is None  # default: the published layout, no extra keys
    with pytest.raises(ValueError, match="vision_feature_norm"):
        LaMedConfig(text_config=model.config.text_config, vision_feature_norm="layer")


@pytest.mark.parametrize("name", ["phi3", "qwen2_5"])
def test_placeholder_count_mismatch_raises(name, tokenizers):
    tok = tokenizers[name]
    model = build(name, tok)
    proc = LaMedProcessor(tok, model.num_image_tokens)
    b = batch_of(proc, PAIRS)
    ids = b["input_ids"].clone()
    first = (ids[1] == proc.image_token_id).nonzero()[0, 0]
    ids[1, first] = tok.pad_token_id
    with pytest.raises(ImageTokenMismatch, match=r"rows of input_ids hold \[8, 7\]"):
        model(input_ids=ids, images=b["images"], attention_mask=b["attention_mask"])
    with pytest.raises(ValueError, match="one <image>"):
        proc.encode_prompt("<image> and <image>")


@pytest.mark.parametrize("name", list(LLMS))
def test_generate_with_cache_equals_without_and_encodes_once(name, tokenizers):
    tok = tokenizers[name]
    model = build(name, tok, seed=1).double()
    proc = LaMedProcessor(tok, model.num_image_tokens)
    calls = []
    model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    b = proc(["Describe the findings.", "Is there a lesion in the liver?"], images=torch.rand(2, 1, *VOLUME).double())
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=proc.pad_token_id)
    cached = model.generate(**b, use_cache=True, **kw)
    assert len(calls) == 1  # the volume is encoded in the prefill step only
    uncached = model.generate(**b, use_cache=False, **kw)
    assert len(calls) == 1 + 6  # without a cache every step re-encodes
    assert cached.shape == (2, b["input_ids"].shape[1] + 6)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", list(LLMS))
def test_left_padded_batch_equals_one_by_one(name, tokenizers):
    tok = tokenizers[name]
    model = build(name, tok, seed=2).double()
    proc = LaMedProcessor(tok, model.num_image_tokens)
    qs = ["Liver?", "Which imaging phase is shown? Choices: A. arterial B. delayed"]
    imgs = torch.rand(2, 1, *VOLUME).double()
    kw = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=proc.pad_token_id)
    b = proc(qs, images=imgs)
    assert (b["attention_mask"][0] == 0).any()  # the shorter prompt is left-padded
    batched = model.generate(**b, **kw)[:, -10:]
    for i in range(2):
        single = model.generate(**proc([qs[i]], images=imgs[i : i + 1]), **kw)[:, -10:]
        assert torch.equal(batched[i], single[0]), f"row {i}"


def test_save_load_roundtrip_auto_class_and_tied_embeddings(tokenizers, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tokenizers["phi4_mini"]
    model = build("phi4_mini", tok)
    lm = model.language_model
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    proc = LaMedProcessor(tok, model.num_image_tokens)
    b = batch_of(proc, PAIRS)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "lamed"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is LaMedForCausalLM
    lm2 = loaded.language_model
    assert lm2.lm_head.weight.data_ptr() == lm2.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(model(**b).logits, loaded(**b).logits)


def test_lora_merge_roundtrip_identical_logits(tokenizers, tmp_path):
    from LaMed.train.args import StageArguments
    from LaMed.train.stages import apply_lora

    tok = tokenizers["llama3"]
    model = build("llama3", tok)
    proc = LaMedProcessor(tok, model.num_image_tokens)
    b = batch_of(proc, PAIRS)
    stage = StageArguments(
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    peft_model = apply_lora(model, stage)
    with torch.no_grad():  # non-zero adapters, or merging would be a no-op
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
        ref = peft_model(**b).logits
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = peft_model(**b).logits
    assert not torch.allclose(ref, plain)
    merged = peft_model.merge_and_unload()
    assert type(merged) is LaMedForCausalLM and not any("lora" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path)
    again = LaMedForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**b).logits, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(again(**b).logits, merged(**b).logits)
    assert base is merged


def test_legacy_offset_splice_reproduces_published_positions(tokenizers):
    tok = tokenizers["qwen2_5"]  # no BOS: the published splice overwrites the first question token
    model = build("qwen2_5", tok, image_insertion="legacy_offset", legacy_image_offset=1)
    proc = LaMedProcessor(tok, model.num_image_tokens)
    b = batch_of(proc, PAIRS[:1])
    assert proc.add_bos is False and int(b["input_ids"][0, 0]) == proc.image_token_id
    with torch.no_grad():
        feats = model.get_image_features(b["images"])
        emb = model.get_input_embeddings()(b["input_ids"]).clone()
        emb[0, 1:9] = feats[0]  # positions 1..T, whatever tokens sit there
        want = model.language_model(inputs_embeds=emb).logits
        got = model(input_ids=b["input_ids"], images=b["images"]).logits
    torch.testing.assert_close(got, want)
    # The clean mode on the same weights differs exactly because of that off-by-one.
    model.config.image_insertion = "placeholder"
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=b["input_ids"], images=b["images"]).logits, want)


def test_token_hidden_states_hook():
    h = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    ids = torch.tensor([[1, 2, 9, 3, 9], [1, 2, 3, 4, 5]])
    states, found = LaMedForCausalLM.token_hidden_states(h, ids, token_id=9)
    assert found.tolist() == [True, False]
    torch.testing.assert_close(states[0], (h[0, 1] + h[0, 3]) / 2)  # positions predicting the [SEG]s
    assert torch.equal(states[1], torch.zeros(3))
    at, _ = LaMedForCausalLM.token_hidden_states(h, ids, token_id=9, predicting=False, reduce="last")
    torch.testing.assert_close(at[0], h[0, 4])


def test_multi_tower_and_multi_stage_geometries_come_from_the_parts(tokenizers):
    tok = tokenizers["phi4_mini"]
    # HSENet layout: 3D ViT + 2E3 ViT (pooled slice features), two-stream packer -> 2 x 16 tokens.
    hsenet = build(
        "phi4_mini",
        tok,
        vision_tower=["vit3d_test", "vit3d_2e3_test"],
        vision_overrides=[{}, {"slice_dim": 64}],
        projector="packer",
        projector_overrides={"window": [1, 2, 2]},
        slice_feature_source="pooled",
    )
    assert hsenet.num_image_tokens == 2 * 16 and len(hsenet.towers) == 2
    proc = LaMedProcessor(tok, hsenet.num_image_tokens)
    out = hsenet(**batch_of(proc, PAIRS))
    assert torch.isfinite(out.loss)
    # Med3DVLM layout: DCFormer stages 3 and 4 -> two-stream mixer (4 + 4 tokens).
    m3v = build(
        "qwen2_5",
        tokenizers["qwen2_5"],
        vision_tower="dcformer_test",
        vision_feature_stages=[3, 4],
        projector="mixer",
        projector_overrides={"out_tokens": [[6, 4], [4, 4]]},
    )
    assert m3v.num_image_tokens == 8
    proc = LaMedProcessor(tokenizers["qwen2_5"], 8)
    items = [{**proc.encode_example(q, a), "images": torch.rand(1, 32, 64, 64)} for q, a in PAIRS]
    assert torch.isfinite(m3v(**MLLMCollator(proc.pad_token_id)(items)).loss)


def test_resize_token_embeddings_mean_initialises_new_rows(tokenizers):
    tok = tokenizers["llama2"]
    model = build("llama2", tok)
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(old.shape[0] + 2)
    new = model.get_input_embeddings().weight.detach()
    assert new.shape[0] == old.shape[0] + 2 and model.config.text_config.vocab_size == old.shape[0] + 2
    torch.testing.assert_close(new[-1], old.mean(0), atol=0.05, rtol=0)  # mean resizing (sampled around the mean)
    assert model.get_output_embeddings().weight.shape[0] == old.shape[0] + 2
