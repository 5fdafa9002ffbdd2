"""Every released checkpoint layout imports strictly through ``lamed import``.

The layouts are independent of LaMed: ``../shared/reference/published_layouts/*.json`` hold, per
release, the key -> shape table taken from the original reference code's model class built at the
published configuration (transformers 4.x text-tower names, MONAI 1.3 ViT names), the release's
``config.json`` and, for LLM releases, the tokenizer length. Each table is turned into a state dict
of meta tensors (scalars as zeros: the config reads them), converted by the family's importer,
the config derived from the release's ``config`` field, the model built on the meta device and
loaded strictly: key set and every shape equal. The keys an import may leave out are listed here
from the reference code's own documentation (never-used heads, buffers, the other model in the
file), not from LaMed: any other key left out fails.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pytest
import torch

LAYOUTS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "published_layouts"
TABLES = sorted(p.stem for p in LAYOUTS.glob("*.json")) if LAYOUTS.is_dir() else []
pytestmark = pytest.mark.skipif(len(TABLES) < 11, reason=f"{LAYOUTS}: the eleven release layout tables are absent")

M3D_TOKENS = ["<im_patch>", "<bx_start>", "<bx_end>", "[SEG]"]
# What each release's training script added to its base tokenizer (M3D train.py; Med3DVLM adds
# <im_patch> only; R1Seg-3D copies M3D's four).
RELEASE_TOKENS = {
    "m3d_lamed": M3D_TOKENS,
    "m3d_lamed_seg": M3D_TOKENS,
    "r1seg_llm": M3D_TOKENS,
    "med3dvlm": ["<im_patch>"],
}
SPECIAL = {"<im_patch>", "<bx_start>", "<bx_end>"}

# Keys the reference code never reads: the BERT pooler (the CLIPs take token 0 of last_hidden_state),
# the transformers-4 position_ids buffer, R1Seg-3D's step-1 CLIP-style heads, and (for the
# ``m3d_lamed`` family) the segmentation module that the ``m3d_lamed_seg`` family loads.
DROPPABLE = {
    "m3d_clip": r"^language_encoder\.pooler\.",
    "hsenet_clip_stage1": r"^language_encoder\.pooler\.",
    "hsenet_clip_stage2": r"^(stage1_pretrained_CLIP\.)?language_encoder\.pooler\.",
    "med3dvlm_siglip": None,
    "segvol": r"text_model\.embeddings\.position_ids$",
    "text3dsam": None,
    "r1seg_sam": r"^(mm_vision_proj|mm_language_proj)\.|^logit_scale$",
    "m3d_lamed": r"^model\.(seg_module|seg_projector)\.",
    "m3d_lamed_seg": None,
    "med3dvlm": None,
    "r1seg_llm": r"^model\.vision_module\.((mm_vision_proj|mm_language_proj)\.|logit_scale$)",
}


def load_table(name: str) -> dict:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def release_state_dict(table: dict) -> dict:
    """Meta tensors of the table's shapes; scalars (logit scale, bias) as real zeros."""
    return {
        k: torch.zeros(shape) if math.prod(shape) <= 16 else torch.empty(shape, device="meta")
        for k, (shape, _dtype) in table["keys"].items()
    }


def tokenizer_folder(folder: Path, length: int, added, eos: str = "t1") -> str:
    """A fast tokenizer of ``length`` tokens: a word-level base vocabulary plus ``added``."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = length - len(added)
    vocab = {"<unk>": 0, **{f"t{i}": i for i in range(1, base)}}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>", eos_token=eos, bos_token="t2")
    for t in added:
        tok.add_tokens([AddedToken(t, special=t in SPECIAL, normalized=False)], special_tokens=t in SPECIAL)
    assert len(tok) == length
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return str(folder)


def import_table(name: str, tokenizer: str = "", overrides=None):
    from LaMed.models.convert.releases import build_release

    table = load_table(name)
    args = argparse.Namespace(src=f"<{name} layout>", tokenizer=tokenizer, base="", lora_scaling=2.0, meta=True)
    return table, build_release(table["family"], release_state_dict(table), table["config"], overrides or {}, args)


@pytest.fixture(scope="module")
def llm_tokenizers(tmp_path_factory):
    """One tokenizer per LLM release: its length, with the tokens its training script added."""
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for name, added in RELEASE_TOKENS.items():
        out[name] = tokenizer_folder(root / name, load_table(name)["tokenizer_length"], added)
    return out


def test_every_table_is_present_and_consistent():
    from LaMed.models.convert.published import PUBLISHED

    assert len(TABLES) == 11
    for name in TABLES:
        table = load_table(name)
        assert table["num_keys"] == len(table["keys"]) and table["family"] == name
        values = sum(math.prod(shape) for shape, _ in table["keys"].values())
        assert values == table["num_values"]
        # LaMed's stored published counts are the reference counts
        assert (PUBLISHED[name].keys, PUBLISHED[name].values) == (table["num_keys"], table["num_values"])
        assert PUBLISHED[name].tokenizer_length == table.get("tokenizer_length")


@pytest.mark.parametrize(
    "name",
    [
        "m3d_clip",
        "hsenet_clip_stage1",
        "hsenet_clip_stage2",
        "med3dvlm_siglip",
        "segvol",
        "text3dsam",
        "r1seg_sam",
        "m3d_lamed",
        "m3d_lamed_seg",
        "med3dvlm",
        "r1seg_llm",
    ],
)
def test_release_imports_strictly(name, llm_tokenizers):
    table, (model, report) = import_table(name, llm_tokenizers.get(name, ""))
    # strict: every model key is in the converted checkpoint with the same shape, nothing extra
    assert report.ok, str(report)
    own = model.state_dict()
    # every published key is consumed, or dropped for a documented reason, and named
    pattern = DROPPABLE[name]
    expect_dropped = {k for k in table["keys"] if pattern and re.search(pattern, k)}
    assert {k for k, _ in report.dropped} == expect_dropped
    assert report.source_keys == table["num_keys"] and report.consumed == table["num_keys"] - len(expect_dropped)
    assert report.source_values == table["num_values"]
    # the loaded model holds exactly the consumed values (a shape-for-shape load, no padding)
    dropped_values = sum(math.prod(table["keys"][k][0]) for k in expect_dropped)
    loaded = sum(t.numel() for t in own.values())
    assert loaded == table["num_values"] - dropped_values


def test_derived_configs_follow_the_release_config(llm_tokenizers):
    """The config is read from the release (config.json + shapes), not from LaMed's defaults."""
    table, (clip, _) = import_table("m3d_clip")
    vit = clip.config.vision_overrides
    assert (
        list(vit["img_size"]) == table["config"]["img_size"]
        and list(vit["patch_size"]) == table["config"]["patch_size"]
    )
    assert vit["hidden_size"] == table["config"]["hidden_size"] and vit["num_layers"] == table["config"]["num_layers"]
    assert clip.config.logit_scale_mode == "raw"  # M3D multiplies by the raw parameter

    table, (siglip, _) = import_table("med3dvlm_siglip")
    h, w, d = table["config"]["input_size"]
    assert list(siglip.config.vision_overrides["img_size"]) == [d, h, w]
    assert siglip.config.loss_type == "siglip" and siglip.config.logit_scale_mode == "exp"
    assert siglip.config.logit_scale_max is None  # DEC_CLIP: exp(t') unbounded

    table, (vlm, _) = import_table("med3dvlm", llm_tokenizers["med3dvlm"])
    cfg = table["config"]
    text = vlm.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads, text.vocab_size) == (
        cfg["hidden_size"],
        cfg["num_hidden_layers"],
        cfg["num_key_value_heads"],
        table["tokenizer_length"],
    )
    assert [list(t) for t in vlm.mm_projector.config.out_tokens] == [cfg["low_output_size"], cfg["high_output_size"]]
    assert vlm.num_image_tokens == cfg["proj_out_num"]
    assert vlm.config.image_insertion == "legacy_offset"

    table, (r1, _) = import_table("r1seg_llm", llm_tokenizers["r1seg_llm"])
    assert list(r1.towers[0].config.img_size) == table["config"]["img_size"]
    assert r1.seg_module.config.refine_passes == table["config"]["num_clicks"]
    assert r1.seg_module.config.loss == "dice_bce_r1seg"
    assert r1.num_image_tokens == 256  # (32/4 * 256/16 * 256/16) / 2**3 pooled


def test_fine_tuned_release_sizes_come_from_its_config(llm_tokenizers):
    """Another token schedule in config.json is taken as given (no --config); a config that
    contradicts the released tensors is refused naming config.json."""
    from LaMed.models.convert.releases import build_release

    table = load_table("med3dvlm")
    sd = release_state_dict(table)
    # a fine-tune with another schedule: the token-MLP shapes change with it
    cfg = dict(table["config"], low_output_size=[160, 96], high_output_size=[48, 96])
    for key in list(sd):
        m = re.match(r"model\.mm_projector\.(low|high)_mixer\.(\d)\.mlp1\.mm_projector\.(0|1\.1)\.(weight|bias)$", key)
        if m:
            stream, layer, lin, kind = m.groups()
            lin = lin[0]
            sched = cfg[f"{stream}_output_size"]
            n_in = (256 if stream == "low" else 32) if layer == "0" else sched[0]
            n_out = sched[int(layer)]
            shape = ((n_out, n_in) if lin == "0" else (n_out, n_out)) if kind == "weight" else (n_out,)
            sd[key] = torch.empty(shape, device="meta")
    args = argparse.Namespace(
        src="<fine-tune>", tokenizer=llm_tokenizers["med3dvlm"], base="", lora_scaling=2.0, meta=True
    )
    model, report = build_release("med3dvlm", sd, cfg, {}, args)
    assert report.ok and model.num_image_tokens == 96 + 96
    bad = dict(table["config"], low_input_size=[512, 384])
    with pytest.raises(ValueError, match="config.json: low_input_size"):
        build_release("med3dvlm", release_state_dict(table), bad, {}, args)


def test_release_tokenizers_are_accepted_and_foreign_tokens_refused(tmp_path):
    from LaMed.models.convert.releases import build_release

    table = load_table("med3dvlm")
    n = table["tokenizer_length"]
    # the base Qwen2.5 tokenizer without <im_patch>: the importer adds the one token the release added
    base = tokenizer_folder(tmp_path / "qwen", n - 1, [])
    args = argparse.Namespace(src="<med3dvlm>", tokenizer=base, base="", lora_scaling=2.0, meta=True)
    model, report = build_release("med3dvlm", release_state_dict(table), table["config"], {}, args)
    assert report.ok and model.config.image_token_id == n - 1
    assert model.config.seg_token_id is None and model.config.box_start_token_id is None
    # a tokenizer with tokens the release never had (LaMed's four) does not fit the 151,666 rows
    foreign = tokenizer_folder(tmp_path / "lamed", n + 3, M3D_TOKENS)
    args.tokenizer = foreign
    with pytest.raises(ValueError, match=f"{n + 3} tokens but the med3dvlm checkpoint's embeddings have {n} rows"):
        build_release("med3dvlm", release_state_dict(table), table["config"], {}, args)


def test_unconsumed_keys_are_named():
    """A key the converter does not recognise fails the import, by name (no silent drop)."""
    from LaMed.models.convert.releases import build_release

    for name, extra in (
        ("m3d_clip", "vision_encoder.extra_head.weight"),
        ("segvol", "model.adapter.weight"),
        ("text3dsam", "image_encoder.encoder.s1.0.extra.weight"),
    ):
        table = load_table(name)
        sd = release_state_dict(table)
        sd[extra] = torch.zeros(3)
        args = argparse.Namespace(src=f"<{name}>", tokenizer="", base="", lora_scaling=2.0, meta=True)
        with pytest.raises(KeyError, match=re.escape(extra)):
            build_release(name, sd, table["config"], {}, args)


def test_original_dcformer_layout_drops_every_batchnorm_alias():
    """mirthAI/DCFormer registers the branch BatchNorms of every DecompConv3D twice (``c{i}.1`` and
    ``norm.{i-1}``), the four stem convolutions included; ``gamma`` is the layer scale."""
    from LaMed.models.convert.releases import build_release

    table = load_table("med3dvlm_siglip")
    sd = {}
    for key, value in release_state_dict(table).items():
        m = re.match(r"^(vision_encoder\.encoder\.s\d\.\d+(?:\.\d|\.dwconv))\.c([123])\.1\.(\w+)$", key)
        if key.endswith(".scale") and key.startswith("vision_encoder.encoder."):
            key = key[: -len("scale")] + "gamma"
        sd[key] = value
        if m:
            sd[f"{m.group(1)}.norm.{int(m.group(2)) - 1}.{m.group(3)}"] = torch.empty(value.shape, device="meta")
    stem_aliases = [k for k in sd if re.match(r"vision_encoder\.encoder\.s0\.0\.[0-3]\.norm\.", k)]
    assert len(stem_aliases) == 4 * 3 * 5  # 4 convolutions x 3 branches x (weight, bias, mean, var, count)
    args = argparse.Namespace(src="<dcformer>", tokenizer="", base="", lora_scaling=2.0, meta=True)
    model, report = build_release("med3dvlm_siglip", sd, table["config"], {}, args)
    assert report.ok
    dropped = {k for k, _ in report.dropped}
    assert dropped == {k for k in sd if re.search(r"\.norm\.[0-2]\.", k)} and set(stem_aliases) <= dropped


def test_segvol_training_checkpoint_and_monai_extras():
    """GitHub ``SegVol_v1.pth``: ``{"model": {"module.*"}, "optimizer", "epoch", "scheduler"}``; a ViT
    re-saved by MONAI >= 1.4 carries unused cross-attention norms. Both import, the extras named."""
    from LaMed.models.convert.releases import build_release

    table = load_table("segvol")
    model_sd = {"module." + k[len("model.") :]: v for k, v in release_state_dict(table).items()}
    model_sd["module.image_encoder.blocks.0.norm_cross_attn.weight"] = torch.zeros(768)
    ckpt = {
        "model": model_sd,
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(4)}}},
        "epoch": 3,
        "scheduler": {"last_epoch": 3},
    }
    args = argparse.Namespace(src="<SegVol_v1.pth>", tokenizer="", base="", lora_scaling=2.0, meta=True)
    model, report = build_release("segvol", ckpt, table["config"], {}, args)
    assert report.ok
    reasons = dict(report.dropped)
    assert set(reasons) == {
        "model.module.text_encoder.clip_text_model.text_model.embeddings.position_ids",
        "model.module.image_encoder.blocks.0.norm_cross_attn.weight",
        "optimizer.state.0.exp_avg",
    }
    assert "training state" in reasons["optimizer.state.0.exp_avg"]
    assert "cross-attention" in reasons["model.module.image_encoder.blocks.0.norm_cross_attn.weight"]


# Input size and pipeline of each release's own inference code (papers / READMEs): M3D-LaMed and SegVol
# take 32x256x256 volumes; Med3DVLM's DCFormer 128x256x256 (Med3DVLM paper, Sec. 3); the windows are
# M3D's and Med3DVLM's soft-tissue window [-160, 240] HU, SegVol's foreground normalisation.
EXPECTED_INPUT = {
    "m3d_lamed": ((32, 256, 256), "m3d", (-160.0, 240.0)),
    "med3dvlm": ((128, 256, 256), "med3dvlm", (-160.0, 240.0)),
    "med3dvlm_siglip": ((128, 256, 256), "med3dvlm", (-160.0, 240.0)),
    "segvol": ((32, 256, 256), "segvol", None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_INPUT))
def test_imported_release_carries_its_preprocessing(name, llm_tokenizers, caplog):
    from LaMed.inference.preprocessing import model_preset

    _, (model, _) = import_table(name, llm_tokenizers.get(name, ""))
    size, preset, window = EXPECTED_INPUT[name]
    with caplog.at_level("WARNING", logger="LaMed.inference"):
        chosen = model_preset(model)  # what lamed predict applies when no --preset is given
    assert (chosen.name, chosen.size, chosen.window) == (preset, size, window)
    assert not caplog.records  # the stored pipeline is used silently
    with caplog.at_level("WARNING", logger="LaMed.inference"):
        other = model_preset(model, "hsenet")
    assert other.name == "hsenet" and other.size == size
    assert any("differs from the preprocessing" in r.getMessage() and preset in r.getMessage() for r in caplog.records)
