"""Recipes end to end on phantoms: stage 1 -> stage 2 (LoRA) -> lamed merge-lora -> Bench front ends."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "recipes"
# The multimodal-LLM recipes: the ones whose task is ``mllm`` (other families share name prefixes).
MLLM_RECIPES = sorted(p for p in glob.glob(str(RECIPES / "*.yaml")) if "\ntask: mllm\n" in "\n" + Path(p).read_text())


def test_every_published_recipe_has_a_tiny_twin_and_a_launcher():
    published = [Path(p).stem for p in MLLM_RECIPES if not Path(p).name.startswith("tiny_")]
    assert len(published) == 9
    for name in published:
        assert (RECIPES / f"tiny_{name}.yaml").is_file(), name
        for n in (name, f"tiny_{name}"):
            script = (REPO / "scripts" / f"{n}.sh").read_text()
            assert f"configs/recipes/{n}.yaml" in script and "_launch.sh" in script


@pytest.mark.parametrize("path", MLLM_RECIPES, ids=lambda p: Path(p).stem)
def test_recipes_parse(path):
    from LaMed.train.recipe import parse_recipe

    r = parse_recipe(path, ["--use_cpu", "true"])  # published recipes ask for bf16 GPUs
    assert r.task == "mllm"
    s = r.stage_args
    if "stage2" in path or "hsenet" in path or "flare" in path:
        assert s.lora_r == 16 and s.lora_alpha == 32 and s.lora_dropout == 0.05
    if "stage1" in path:
        assert s.freeze == ["*"] and "mm_projector" in s.trainable and s.lora_r == 0


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from LaMed.data.prepare import prepare_phantoms

    out = tmp_path_factory.mktemp("mllm_ph")
    prepare_phantoms(out, n=10, shape=(16, 64, 64), seed=11, val_fraction=0.0, test_fraction=0.2)
    return out


@pytest.fixture(scope="module")
def chain(phantoms, tmp_path_factory):
    """tiny M3D-LaMed Phi-3 stage 1 (2 steps) then stage 2 with LoRA (2 steps)."""
    from LaMed.train.main import run_training

    runs = tmp_path_factory.mktemp("runs")
    common = ["--train_manifest", str(phantoms / "train.json"), "--max_steps", "2", "--logging_steps", "1"]
    s1 = run_training(str(RECIPES / "tiny_m3d_lamed_phi3_stage1.yaml"), common + ["--output_dir", str(runs / "s1")])
    s2 = run_training(
        str(RECIPES / "tiny_m3d_lamed_phi3_stage2.yaml"),
        common + ["--output_dir", str(runs / "s2"), "--pretrained_model", str(runs / "s1")],
    )
    return runs, s1, s2


def test_stage1_trains_projector_and_embeddings_only_and_stage2_starts_from_them(chain):
    from LaMed.models.mllm import LaMedForCausalLM

    runs, s1, s2 = chain
    base = LaMedForCausalLM.from_pretrained(runs / "s1" / "base_model")
    stage1 = LaMedForCausalLM.from_pretrained(runs / "s1")
    b, t = base.state_dict(), stage1.state_dict()
    changed = {k for k in t if not torch.equal(b[k], t[k])}
    assert any(k.startswith("mm_projector.") for k in changed)
    assert "language_model.model.embed_tokens.weight" in changed
    assert all(k.startswith("mm_projector.") or k == "language_model.model.embed_tokens.weight" for k in changed), (
        changed
    )
    # Stage 2 was built from the stage-1 folder: its base checkpoint, embeddings included.
    manifest = json.loads((runs / "s2" / "trainable_manifest.json").read_text())
    assert manifest["base_checkpoints"] == {"": str(runs / "s1")}
    assert manifest["stage"]["lora_r"] == 16
    trained = set(manifest["trainable"])
    assert any(".lora_A." in n for n in trained)
    assert any(n.endswith("embed_tokens.weight") for n in trained) and any("vision_tower" in n for n in trained)


def test_merge_lora_gives_a_plain_checkpoint_with_the_same_logits(chain, phantoms):
    from LaMed.cli import main
    from LaMed.models.mllm import LaMedForCausalLM, LaMedProcessor, MLLMCollator
    from LaMed.train.args import StageArguments
    from LaMed.train.checkpoint import load_trainable
    from LaMed.train.stages import apply_lora

    runs, _, _ = chain
    assert main(["merge-lora", str(runs / "s2"), str(runs / "merged")]) == 0
    merged = LaMedForCausalLM.from_pretrained(runs / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # Reference: the stage-1 base + LoRA adapters + the saved trainable tensors, unmerged.
    manifest = json.loads((runs / "s2" / "trainable_manifest.json").read_text())
    stage = StageArguments(**{k: v for k, v in manifest["stage"].items() if k in StageArguments.__dataclass_fields__})
    peft_model = apply_lora(LaMedForCausalLM.from_pretrained(runs / "s1"), stage)
    load_trainable(peft_model, runs / "s2")
    peft_model.eval()
    proc = LaMedProcessor.from_pretrained(runs / "merged")
    batch = MLLMCollator(proc.pad_token_id)(
        [{**proc.encode_example("Describe.", "The liver is enlarged."), "images": torch.rand(1, 16, 64, 64)}]
    )
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, peft_model(**batch).logits, atol=1e-4, rtol=1e-4)
    from LaMed.commands.merge_lora import merge_lora

    (runs / "fake").mkdir(exist_ok=True)
    (runs / "fake" / "trainable_manifest.json").write_text(
        json.dumps({"base_checkpoints": {"": str(runs / "s1")}, "stage": {"lora_r": 0}})
    )
    with pytest.raises(ValueError, match="has no LoRA"):
        merge_lora(runs / "fake", runs / "x")
    assert main(["merge-lora", str(runs / "missing"), str(runs / "x")]) == 1  # clear error, no traceback


def test_bench_front_ends_round_trip_through_the_scorers(chain, phantoms, tmp_path):
    from Bench.run_mrg import run_mrg
    from Bench.run_pos import run_pos
    from Bench.run_vqa import run_vqa

    runs, _, _ = chain
    test = json.loads((phantoms / "test.json").read_text())["items"]
    model = str(runs / "merged") if (runs / "merged").is_dir() else str(runs / "s1")
    mrg = run_mrg(model, str(phantoms / "test.json"), str(tmp_path / "mrg"), max_new_tokens=8)
    assert mrg["counts"]["evaluated"] == len(test) == 2
    lines = [json.loads(x) for x in (tmp_path / "mrg" / "predictions.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [it["id"] for it in test]
    assert (tmp_path / "mrg" / "summary.json").is_file() and (tmp_path / "mrg" / "per_sample.csv").is_file()
    vqa = run_vqa(
        model, str(phantoms / "test.json"), str(tmp_path / "vqa"), types=["closed", "yes_no"], max_new_tokens=4
    )
    n_q = sum(1 for it in test for q in it["vqa"] if q["type"] in ("closed", "yes_no"))
    assert vqa["overall"]["count"] == n_q
    pos = run_pos(model, str(phantoms / "test.json"), str(tmp_path / "pos"), max_new_tokens=6, limit=3)
    assert pos["overall"]["count"] == 3  # limit: the first 3 (item, structure) questions
    # Sampling at T = 1 (Med3DVLM's evaluation) is reproducible with a seed.
    run_mrg(model, str(phantoms / "test.json"), str(tmp_path / "s1"), max_new_tokens=8, decoding="med3dvlm", seed=3)
    run_mrg(model, str(phantoms / "test.json"), str(tmp_path / "s2"), max_new_tokens=8, decoding="med3dvlm", seed=3)
    assert (tmp_path / "s1" / "predictions.jsonl").read_text() == (tmp_path / "s2" / "predictions.jsonl").read_text()
