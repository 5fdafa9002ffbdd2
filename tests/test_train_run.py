"""The toy recipe end to end in this process: losses and their parts, evaluation, saving, reloading."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
TINY = TESTS / "recipes" / "tiny_toy.yaml"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from train_toy_task import make_phantom_data

    return make_phantom_data(tmp_path_factory.mktemp("phantoms"))


def train(out: Path, phantoms: Path, *extra: str):
    from LaMed.train.main import run_training

    return run_training(str(TINY), ["--train_manifest", str(phantoms / "train.json"), "--output_dir", str(out), *extra])


def test_tiny_recipe_trains_two_steps_with_loss_parts_and_eval(tmp_path, phantoms):
    import torch
    from train_toy_task import ToyOrgansModel

    from LaMed.train.checkpoint import is_complete

    run = train(
        tmp_path / "run",
        phantoms,
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--eval_manifest",
        str(phantoms / "validation.json"),
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
    )
    hist = run.trainer.state.log_history
    steps = [h for h in hist if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        # the parts are logged next to the total, and here the total is their sum
        assert h["loss"] == pytest.approx(h["loss_bce"] + h["loss_reg"], rel=1e-5)
        assert 0.0 <= h["data_wait_fraction"] <= 1.0
    evals = [h for h in hist if "eval_loss" in h]
    assert len(evals) == 1 and 0.0 <= evals[0]["eval_label_accuracy"] <= 1.0
    assert run.output.global_step == 2
    # checkpoints are complete; the final model reloads with the trained weights
    assert is_complete(tmp_path / "run" / "checkpoint-1") and is_complete(tmp_path / "run" / "checkpoint-2")
    reloaded = ToyOrgansModel.from_pretrained(tmp_path / "run")
    for (n, a), (_, b) in zip(run.trainer.model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), n
    resolved = (tmp_path / "run" / "lamed_recipe.yaml").read_text(encoding="utf-8")
    assert "max_steps: 2" in resolved and "task: train_toy_task:toy_organs" in resolved


@pytest.mark.slow
def test_training_learns_the_toy_labels(tmp_path, phantoms):
    run = train(tmp_path / "run", phantoms, "--max_steps", "30", "--save_strategy", "no", "--logging_steps", "5")
    losses = [h["loss"] for h in run.trainer.state.log_history if "loss" in h]
    # BCE over 4 present/absent labels starts near ln 2; the mean of the last 5 steps must be lower.
    assert losses[0] > 0.6 and losses[-1] < losses[0] - 0.05


def test_save_trainable_only_with_frozen_base(tmp_path, phantoms):
    import torch
    from train_toy_task import ToyOrgansConfig, ToyOrgansModel

    from LaMed.train.checkpoint import TRAINABLE_MANIFEST, TRAINABLE_WEIGHTS, load_trainable

    out = tmp_path / "run"
    run = train(
        out,
        phantoms,
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--save_trainable_only",
        "true",
        "--freeze",
        "*",
        "--trainable",
        "head",
    )
    for folder in (out, out / "checkpoint-2"):
        assert (folder / TRAINABLE_WEIGHTS).is_file() and not (folder / "model.safetensors").exists()
    manifest = json.loads((out / TRAINABLE_MANIFEST).read_text(encoding="utf-8"))
    assert manifest["trainable"] == ["head.weight", "head.bias"]
    assert manifest["base_checkpoints"] == {"": "random init (toy)"} and manifest["task"] == "train_toy_task:toy_organs"
    # Rebuild the base as the task does (same seed), load the trainable part: the trained model.
    torch.manual_seed(0)
    base = ToyOrgansModel(ToyOrgansConfig.from_pretrained(out))
    load_trainable(base, out)
    for (n, a), (_, b) in zip(run.trainer.model.state_dict().items(), base.state_dict().items()):
        assert torch.equal(a, b), n


def test_lora_recipe_trains_adapters_only(tmp_path, phantoms):
    import torch

    run = train(
        tmp_path / "run",
        phantoms,
        "--max_steps",
        "2",
        "--save_strategy",
        "no",
        "--lora.r",
        "2",
        "--lora.target_modules",
        "head",
        "--lora.dropout",
        "0",
    )
    model = run.trainer.model
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["base_model.model.head.lora_A.default.weight", "base_model.model.head.lora_B.default.weight"]
    assert model.base_model.model.head.lora_B["default"].weight.abs().sum() > 0
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()  # peft's own format for the final save
    assert isinstance(model.base_model.model.head.base_layer.weight, torch.nn.Parameter)


def test_lamed_train_command_end_to_end(tmp_path, phantoms, capsys):
    from LaMed.cli import main

    rc = main(
        [
            "train",
            str(TINY),
            "--train_manifest",
            str(phantoms / "train.json"),
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "1",
            "--save_strategy",
            "no",
        ]
    )
    assert rc == 0
    assert "trained 1 steps" in capsys.readouterr().out
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_lr_multipliers_scale_one_module_through_the_schedule(tmp_path, phantoms):
    """``lr_multipliers`` (YAML mapping on the command line): the head trains at 10x the base rate at every step."""

    run = train(
        tmp_path / "run",
        phantoms,
        "--max_steps",
        "3",
        "--save_strategy",
        "no",
        "--learning_rate",
        "1e-3",
        "--lr_scheduler_type",
        "linear",
        "--lr_multipliers",
        "{head: 10}",
    )
    opt = run.trainer.optimizer
    names = {id(p): n for n, p in run.trainer.model.named_parameters()}
    head = [g for g in opt.param_groups if any(names[id(p)].startswith("head.") for p in g["params"])]
    rest = [g for g in opt.param_groups if not any(names[id(p)].startswith("head.") for p in g["params"])]
    assert head and rest
    assert all(names[id(p)].startswith("head.") for g in head for p in g["params"])  # groups not mixed
    assert {g["initial_lr"] for g in head} == {1e-2} and {g["initial_lr"] for g in rest} == {1e-3}
    # after 3 of 3 linear-decay steps both are at 0; one step before, the ratio is still 10
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    lrs = run.trainer.lr_scheduler.base_lrs
    assert sorted(set(lrs)) == [1e-3, 1e-2]
    # the logged learning rate is the base one (base-rate groups come first)
    logged = [h["learning_rate"] for h in run.trainer.state.log_history if "learning_rate" in h]
    assert logged and max(logged) <= 1e-3 + 1e-12


def test_lr_multipliers_move_parameters_by_the_factor():
    """One AdamW step moves a parameter by ~lr (|m / sqrt(v)| = 1 at step 1): 10x for the scaled group."""
    import torch

    from LaMed.train.trainer import split_lr_groups

    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.AdamW([{"params": [a, b], "weight_decay": 0.0}], lr=1e-3)
    assert split_lr_groups(opt, {"enc.w": a, "head.w": b}, {"head": 10.0}) == {"head": 1}
    (a.sum() * 3.0 - b.sum() * 0.5).backward()
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((4,), -1e-3), rtol=1e-4, atol=0)
    torch.testing.assert_close(b.detach(), torch.full((4,), 1e-2), rtol=1e-4, atol=0)
    opt2 = torch.optim.AdamW([a], lr=1e-3)
    with pytest.raises(ValueError, match=r"\['haed'\] match no trainable parameter"):
        split_lr_groups(opt2, {"enc.w": a}, {"haed": 2.0})
