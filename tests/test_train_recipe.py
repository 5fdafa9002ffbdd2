"""Recipe parsing: YAML sections -> argument dataclasses, CLI overrides, clear errors."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))  # the toy task module, as subprocess tests get it via PYTHONPATH

TINY = TESTS / "recipes" / "tiny_toy.yaml"


@pytest.fixture(scope="module")
def parse():
    from LaMed.train.recipe import parse_recipe

    return parse_recipe


def write(tmp_path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_tiny_recipe_values_and_types(parse):
    r = parse(TINY)
    assert r.task == "train_toy_task:toy_organs"
    assert (r.model_args.channels, r.model_args.hidden) == (4, 16)
    t = r.training_args
    # "1e-2" is a string for PyYAML (no dot); the field type makes it a float.
    assert t.learning_rate == pytest.approx(0.01) and isinstance(t.learning_rate, float)
    assert (t.max_steps, t.per_device_train_batch_size, t.save_steps, t.save_total_limit) == (6, 2, 2, 2)
    assert t.warmup_steps == pytest.approx(0.1)
    assert t.resume == "auto" and t.max_bad_sample_fraction == pytest.approx(0.01)
    assert t.remove_unused_columns is False and t.report_to == []
    assert r.stage_args.freeze == [] and r.stage_args.lora_enabled is False


def test_overrides_win_in_every_spelling(parse):
    r = parse(
        TINY,
        [
            "--learning_rate",
            "5e-4",
            "--training.max_steps=3",
            "--lora.r",
            "8",
            "--stage.lora.alpha=24",
            "--lora-target-modules",
            "head",
            "stem",
            "--freeze",
            "stem",
            "--channels",
            "2",
            "--data.structure_names",
            "spleen",
            "--disable_tqdm",
            "false",
        ],
    )
    assert r.training_args.learning_rate == pytest.approx(5e-4)
    assert r.training_args.max_steps == 3
    assert (r.stage_args.lora_r, r.stage_args.lora_alpha) == (8, 24)
    assert r.stage_args.lora_target_modules == ["head", "stem"] and r.stage_args.lora_enabled
    assert r.stage_args.freeze == ["stem"]
    assert r.model_args.channels == 2 and r.data_args.structure_names == ["spleen"]
    assert r.training_args.disable_tqdm is False
    # Untouched values still come from the recipe.
    assert r.training_args.save_steps == 2


def test_nested_lora_section_and_base_inheritance(parse, tmp_path):
    child = write(
        tmp_path,
        f"""
base: {TINY}
description: child
training: {{max_steps: 2, learning_rate: 0.5}}
stage:
  freeze: ["*"]
  lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: [head], modules_to_save: [stem]}}
""",
    )
    r = parse(child)
    assert r.training_args.max_steps == 2 and r.training_args.learning_rate == 0.5
    assert r.training_args.save_steps == 2  # inherited
    assert r.model_args.hidden == 16  # inherited section
    s = r.stage_args
    assert (s.freeze, s.lora_r, s.lora_alpha, s.lora_dropout) == (["*"], 4, 8, 0.0)
    assert s.lora_target_modules == ["head"] and s.lora_modules_to_save == ["stem"]


def test_a_list_of_bases_merges_left_to_right(parse, tmp_path):
    """``base: [A, B]``: B's values replace A's, the file's own values replace both."""
    write(tmp_path, "training: {max_steps: 7, learning_rate: 0.25, seed: 3}\n", "_cpu.yaml")
    child = write(tmp_path, f"base: [{TINY}, _cpu.yaml]\ntraining: {{seed: 11}}\n")
    r = parse(child)
    assert (r.training_args.max_steps, r.training_args.learning_rate, r.training_args.seed) == (7, 0.25, 11)
    assert r.model_args.hidden == 16  # from the first base
    with pytest.raises(Exception, match="'base' must be a file name or a list"):
        parse(write(tmp_path, f"base: [{TINY}, 3]\n", "bad.yaml"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("training: {lerning_rate: 0.1}", "unknown key 'training.lerning_rate'"),
        ("training: {lerning_rate: 0.1}", "did you mean 'learning_rate'"),
        ("model: {learning_rate: 0.1}", "'learning_rate' belongs to the 'training' section"),
        ("stage: {lora: {r: 4, rank: 2}}", "lora_rank"),
        ("optimizer: {lr: 1}", "unknown top-level key 'optimizer'"),
        ("training: {max_steps: [1, 2]}", "'training.max_steps' expects int, got list"),
        ("training: {max_steps: 1.5}", "'training.max_steps' expects int"),
        ("training: {learning_rate: fast}", "invalid float value: 'fast'"),
        ("training: [1, 2]", "section 'training' must be a mapping"),
        ("training: {resume: ''}", "training.resume"),
    ],
)
def test_bad_recipe_errors_name_file_and_key(parse, tmp_path, text, expected):
    from LaMed.train.recipe import RecipeError

    p = write(tmp_path, f"base: {TINY}\n{text}\n")
    with pytest.raises(RecipeError) as err:
        parse(p)
    assert str(err.value).startswith(str(p)) or str(p) in str(err.value)
    assert expected in str(err.value)


def test_bad_override_and_missing_task(parse, tmp_path):
    from LaMed.train.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"tiny_toy.yaml: unknown override '--max_step'.*'max_steps'"):
        parse(TINY, ["--max_step", "3"])
    with pytest.raises(RecipeError, match="unexpected command-line values"):
        parse(TINY, ["3"])
    with pytest.raises(RecipeError, match="missing 'task:'"):
        parse(write(tmp_path, "training: {max_steps: 1}\n"))
    with pytest.raises(RecipeError, match="unknown training task 'no_such_task'"):
        parse(write(tmp_path, "task: no_such_task\n", "t.yaml"))
    with pytest.raises(RecipeError, match="recipe file not found"):
        parse(tmp_path / "absent.yaml")
    loop = write(tmp_path, "base: loop.yaml\ntask: x\n", "loop.yaml")
    with pytest.raises(RecipeError, match="loops back"):
        parse(loop)


def test_task_fields_may_not_shadow_training_fields(parse, tmp_path):
    from LaMed.train.recipe import RecipeError
    from LaMed.train.tasks import TaskBundle, register_task

    @dataclass
    class ShadowArgs:
        seed: int = 3

    @register_task("shadow_test_task", model_args=ShadowArgs)
    def build(m, d, t):
        return TaskBundle(model=None)

    with pytest.raises(RecipeError, match="field 'seed' is defined by both ShadowArgs and LaMedTrainingArguments"):
        parse(write(tmp_path, "task: shadow_test_task\n"))


def test_task_registry_lazy_import_and_errors(tmp_path, monkeypatch):
    from LaMed.train.tasks import get_task, list_tasks

    spec = get_task("train_toy_task:toy_organs")
    assert spec.name == "toy_organs" and spec.model_args.__name__ == "ToyModelArguments"
    assert get_task("toy_organs") is spec or get_task("toy_organs").build is spec.build
    assert "toy_organs" in list_tasks()
    with pytest.raises(KeyError, match="did you mean 'toy_organs'"):
        get_task("toy_organ")
    # A task module that exists but fails to import must surface its own error, not "unknown task".
    (tmp_path / "lamed_task_with_missing_dep.py").write_text("import no_such_dependency_xyz\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        get_task("lamed_task_with_missing_dep:anything")


def test_lamed_train_check_prints_resolved_recipe(capsys):
    from LaMed.cli import main

    assert main(["train", str(TINY), "--check", "--max_steps", "9", "--lora.r", "2"]) == 0
    out = capsys.readouterr().out
    assert "task: train_toy_task:toy_organs" in out and "max_steps: 9" in out and "lora_r: 2" in out
    assert main(["train", str(TINY), "--check", "--lerning_rate", "1"]) == 1
    assert "unknown override '--lerning_rate'" in capsys.readouterr().err


# files named _*.yaml are shared bases (``base: _tiny_cpu.yaml``), not recipes of their own
RECIPES = sorted(p for p in (REPO / "configs" / "recipes").glob("*.yaml") if not p.name.startswith("_")) + sorted(
    (TESTS / "recipes").glob("*.yaml")
)


@pytest.mark.parametrize(
    "recipe, override, field, valid",
    [
        (
            "tiny_m3d_lamed_phi3_stage1.yaml",
            ["--vision_tower", "vit3d_bse"],
            "model.vision_tower: unknown encoder 'vit3d_bse'",
            "vit3d_base",
        ),
        (
            "tiny_m3d_lamed_phi3_stage1.yaml",
            ["--projector", "sppp"],
            "model.projector: unknown projector 'sppp'",
            "spp",
        ),
        (
            "tiny_m3d_clip.yaml",
            ["--vision_encoder", "dcformer_tinny"],
            "model.vision_encoder: unknown encoder",
            "dcformer_tiny",
        ),
        (
            "tiny_segvol.yaml",
            ["--variant", "segvl"],
            "model.variant: unknown segmentation variant 'segvl'",
            "segvol_tiny",
        ),
        ("tiny_r1seg3d.yaml", ["--seg_variant", "sgvol"], "model.seg_variant: unknown segmentation variant", "segvol"),
        (
            "tiny_r1seg3d.yaml",
            ["--preprocess_preset", "m3x"],
            "model.preprocess_preset: unknown preprocessing preset",
            "m3d",
        ),
    ],
)
def test_unknown_registry_names_fail_at_check_naming_the_choices(capsys, recipe, override, field, valid):
    """``lamed train RECIPE --check`` refuses names no registry knows (before any model is built), and
    the message names the recipe, the field and the valid choices; the valid name itself parses."""
    from LaMed.cli import main

    path = str(REPO / "configs" / "recipes" / recipe)
    assert main(["train", path, "--check", *override]) == 1
    err = capsys.readouterr().err
    assert recipe in err and field in err and f"'{valid}'" in err and "(known: " in err, err
    assert main(["train", path, "--check", override[0], valid]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_parses(parse, path):
    r = parse(path)
    assert r.task and r.training_args.output_dir


def test_bf16_recipe_parses_on_a_machine_without_gpu(parse, tmp_path):
    from LaMed.train.recipe import RecipeError, _has_accelerator

    text = TINY.read_text(encoding="utf-8").replace(
        "  use_cpu: true\n", "  bf16: true\n"
    )  # a full recipe: bf16, no use_cpu
    full = write(tmp_path, text, "full.yaml")
    r = parse(full)
    assert r.training_args.bf16 is True
    # no GPU: use_cpu is switched on (the Trainer would use the CPU anyway); with a GPU it stays off
    assert r.training_args.use_cpu is (not _has_accelerator())
    if not _has_accelerator():
        with pytest.raises(RecipeError, match="doesn't support bf16/gpu"):
            parse(full, ["--use_cpu", "false"])
