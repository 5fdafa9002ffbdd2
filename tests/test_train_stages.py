"""Stage switches: freeze / trainable globs and LoRA (peft) applied from recipe fields."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def toy_model():
    import torch
    from train_toy_task import ToyOrgansConfig, ToyOrgansModel

    torch.manual_seed(0)
    return ToyOrgansModel(ToyOrgansConfig(channels=4, hidden=16, num_labels_out=4))


def trainable(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_freeze_all_then_train_one_module():
    from LaMed.train.args import StageArguments
    from LaMed.train.stages import apply_stage

    m = apply_stage(toy_model(), StageArguments(freeze=["*"], trainable=["head"]))
    assert trainable(m) == ["head.bias", "head.weight"]
    m = apply_stage(toy_model(), StageArguments(freeze=["stem", "body.weight"]))
    assert trainable(m) == ["body.bias", "head.bias", "head.weight"]


def test_pattern_matching_nothing_is_an_error():
    from LaMed.train.args import StageArguments
    from LaMed.train.stages import apply_stage

    with pytest.raises(ValueError, match=r"stage.freeze: pattern\(s\) \['vision_tower'\] match no parameter"):
        apply_stage(toy_model(), StageArguments(freeze=["vision_tower"]))
    with pytest.raises(ValueError, match="no trainable parameter is left"):
        apply_stage(toy_model(), StageArguments(freeze=["*"]))


def test_lora_adapters_and_modules_to_save():
    import torch

    from LaMed.train.args import StageArguments
    from LaMed.train.stages import apply_stage, count_parameters

    base = toy_model()
    stem_before = base.stem.weight.detach().clone()
    m = apply_stage(
        base,
        StageArguments(
            lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["head"], lora_modules_to_save=["stem"]
        ),
    )
    names = trainable(m)
    lora = [n for n in names if "lora_" in n]
    assert lora == ["base_model.model.head.lora_A.default.weight", "base_model.model.head.lora_B.default.weight"]
    assert all("stem.modules_to_save" in n for n in names if n not in lora)
    n_train, n_total = count_parameters(m)
    stem_params = 4 * 1 * 27 + 4
    assert n_train == 4 * (16 + 4) + stem_params  # r * (in + out) for the head adapter + a full stem copy
    # LoRA B starts at zero: the wrapped model computes exactly what the base did.
    x = torch.rand(2, 1, 8, 16, 16)
    with torch.no_grad():
        ref = toy_model()(image=x)["logits"]
        out = m(image=x)["logits"]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # Training: the frozen base keeps its values, the adapters move.
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    y = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])
    for _ in range(2):
        opt.zero_grad()
        m(image=x, labels=y)["loss"].backward()
        opt.step()
    assert torch.equal(m.base_model.model.stem.original_module.weight, stem_before)
    assert not torch.equal(m.base_model.model.stem.modules_to_save["default"].weight, stem_before)
    assert m.base_model.model.head.lora_B["default"].weight.abs().sum() > 0


def test_trainable_after_lora_accepts_names_without_peft_prefix():
    from LaMed.train.args import StageArguments
    from LaMed.train.stages import apply_stage

    m = apply_stage(toy_model(), StageArguments(lora_r=2, lora_target_modules=["head"], trainable=["body"]))
    names = trainable(m)
    assert "base_model.model.body.weight" in names and "base_model.model.body.bias" in names
    assert "base_model.model.stem.weight" not in names
