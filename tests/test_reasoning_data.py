"""Reasoning-segmentation data: questions / answers / masks from prepared phantoms, the collator, recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from LaMed.data.prepare import prepare_phantoms

    out = tmp_path_factory.mktemp("reason_data")
    prepare_phantoms(out, n=6, shape=(32, 64, 64), seed=3, val_fraction=0.0, test_fraction=0.0, progress=False)
    return out / "train.json"


@pytest.fixture(scope="module")
def processor(phantoms):
    from LaMed.data.tokenizer import phantom_corpus, train_tokenizer
    from LaMed.models.mllm import LaMedProcessor

    return LaMedProcessor(train_tokenizer(phantom_corpus([phantoms]), vocab_size=500), num_image_tokens=16)


def test_display_names():
    from LaMed.data.reasoning_dataset import display_name

    assert display_name("kidney_right") == "right kidney" and display_name("lung_left") == "left lung"
    assert display_name("liver") == "liver" and display_name("liver_lesion_1") == "liver lesion 1"


def test_refer_samples_follow_the_manifest(phantoms, processor):
    import json

    from LaMed.data.prepared import load_masks
    from LaMed.data.reasoning_dataset import ReasonSegDataset

    items = json.loads(phantoms.read_text())["items"]
    ds = ReasonSegDataset(phantoms, processor, task="refer", train=False)
    want = [(it["id"], r["target"], r["text"]) for it in items for r in it["refer"] if r["target"] in it["masks"]]
    got = [(ds.record(i)["id"], ds.record(i)["targets"][0], ds.record(i)["text"]) for i in range(len(ds))]
    assert got == want
    for i in range(len(ds)):
        rec = ds.record(i)
        assert rec["answer"].count("[SEG]") == 1
        if rec["text"].endswith((".", "?", "!")):
            assert rec["question"] == rec["text"]  # a full reasoning question is asked as it is
        else:
            assert rec["text"] in rec["question"]
    # an implicit reference ("the organ that stores bile") is answered with the target's name
    implicit = [ds.record(i) for i in range(len(ds)) if "bile" in ds.record(i)["text"]]
    assert implicit and all(("liver" in r["answer"]) == (r["targets"] == ["liver"]) for r in implicit)
    sample = ds[0]
    item = next(it for it in items if it["id"] == ds.record(0)["id"])
    gt = load_masks(phantoms, item, [ds.record(0)["targets"][0]])[ds.record(0)["targets"][0]][0]
    assert sample["seg_masks"].shape == (1, 32, 64, 64) and torch.equal(
        sample["seg_masks"][0], torch.from_numpy(np.array(gt))
    )
    assert sample["input_ids"].count(processor.token_ids["seg_token_id"]) == 1
    # the answer (with [SEG]) is supervised, the question is not
    labels = np.array(sample["labels"])
    seg_pos = sample["input_ids"].index(processor.token_ids["seg_token_id"])
    assert labels[seg_pos] == processor.token_ids["seg_token_id"] and (labels[:16] == -100).all()


def test_seg_task_multi_targets_and_negatives(phantoms, processor):
    from LaMed.data.reasoning_dataset import ReasonSegCollator, ReasonSegDataset

    ds = ReasonSegDataset(
        phantoms,
        processor,
        task="seg",
        train=True,
        classes=["liver", "spleen", "gallbladder", "kidney_left"],
        negatives=True,
        multi_target=1.0,
        answer_style="named",
    )
    kinds = {s.kind for s in ds.samples}
    assert "multi" in kinds and "seg" not in kinds  # every item with >= 2 classes asks for two
    multi = next(i for i, s in enumerate(ds.samples) if s.kind == "multi")
    rec = ds.record(multi)
    a, b = rec["targets"]
    from LaMed.data.reasoning_dataset import display_name

    assert rec["answer"].index(display_name(a)) < rec["answer"].index(display_name(b))  # [SEG] k <-> target k
    item = ds[multi]
    assert item["seg_masks"].shape[0] == 2 and not torch.equal(item["seg_masks"][0], item["seg_masks"][1])
    negatives = [i for i, s in enumerate(ds.samples) if s.kind == "negative"]
    for i in negatives:  # absent structures: no [SEG], no mask
        s = ds.samples[i]
        assert s.text not in ds.items[s.item]["masks"] and "[SEG]" not in ds.record(i)["answer"]
        assert ds[i]["seg_masks"].shape[0] == 0
    rows = [ds[multi], ds[negatives[0]]] if negatives else [ds[multi], ds[0]]
    batch = ReasonSegCollator(processor.pad_token_id)(rows + [{k: v for k, v in ds[0].items() if k != "seg_masks"}])
    assert batch["seg_masks"].shape == (3, 2, 32, 64, 64) and batch["seg_masks"].dtype == torch.uint8
    assert batch["seg_valid"][0].tolist() == [True, True] and batch["seg_valid"][2].tolist() == [False, False]
    torch.testing.assert_close(batch["seg_masks"][0], rows[0]["seg_masks"])


def test_errors_name_the_problem(phantoms, processor):
    from LaMed.data.reasoning_dataset import ReasonSegDataset

    with pytest.raises(ValueError, match="task must be one of"):
        ReasonSegDataset(phantoms, processor, task="caption")
    with pytest.raises(ValueError, match="no sample for task 'refer'"):
        ReasonSegDataset(phantoms, processor, task="refer", classes=["pancreas"])
    from LaMed.models.mllm import LaMedProcessor

    full = ReasonSegDataset(phantoms, processor, task="refer", train=False)
    n_prompt = len(processor.encode_prompt(full.record(0)["question"]))
    short = LaMedProcessor(processor.tokenizer, 16, max_length=n_prompt + 2)  # cuts the answer before its [SEG]
    ds = ReasonSegDataset(phantoms, short, task="refer", train=False)
    with pytest.raises(ValueError, match=r"keeps 0 of 1 \[SEG\]"):
        ds[0]


RECIPES = [
    "m3d_lamed_seg_phi3",
    "r1seg3d_step1_sam",
    "r1seg3d_phi3_step2",
    "r1seg3d_phi3_step3",
    "r1seg3d_phi3_step4",
    "r1seg3d_llama3_step2",
    "r1seg3d_llama3_step3",
    "r1seg3d_llama3_step4",
]


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_parse_with_tiny_twins_and_launchers(name):
    from LaMed.train.recipe import parse_recipe

    recipe = parse_recipe(str(REPO / "configs" / "recipes" / f"{name}.yaml"), ["--output_dir", "/tmp/unused"])
    assert recipe.task in ("reasoning_seg", "seg")
    script = REPO / "scripts" / f"{name}.sh"
    assert script.is_file() and f"configs/recipes/{name}.yaml" in script.read_text()
    if name.startswith("r1seg3d_phi3") or name == "m3d_lamed_seg_phi3" or name == "r1seg3d_step1_sam":
        twin = parse_recipe(str(REPO / "configs" / "recipes" / f"tiny_{name}.yaml"), ["--output_dir", "/tmp/unused"])
        assert twin.task == recipe.task
        assert (REPO / "scripts" / f"tiny_{name}.sh").is_file()
    if recipe.task == "reasoning_seg":
        m = recipe.model_args
        assert m.shared_encoder == name.startswith("r1seg3d")
        if "llama3" in name and "step2" not in name:
            assert "q_proj" in recipe.stage_args.lora_target_modules


def test_absent_probes_train_the_decoder_only(phantoms, processor):
    from LaMed.data.reasoning_dataset import SEG, ReasonSegCollator, ReasonSegDataset
    from LaMed.models.mllm.processing import IGNORE_INDEX

    classes = ["liver", "spleen", "gallbladder", "kidney_left", "kidney_right"]
    kw = dict(task="seg", classes=classes, negatives=True, answer_style="named", negative_repeat=2)
    plain = ReasonSegDataset(phantoms, processor, train=True, **kw)
    ds = ReasonSegDataset(phantoms, processor, train=True, absent_probes=3, **kw)
    negatives = [s for s in ds.samples if s.kind == "negative"]
    probes = [i for i, s in enumerate(ds.samples) if s.kind == "probe"]
    assert negatives, "the phantoms of this fixture lack no class: the test would prove nothing"
    # three probes per absent-structure question (asked twice: negative_repeat), nothing else changes
    assert len(negatives) == sum(s.kind == "negative" for s in plain.samples)
    assert len(probes) == 3 * len(negatives) // 2
    assert len(ds) == len(plain) + len(probes)
    for i in probes:
        s, rec, item = ds.samples[i], ds.record(i), ds[i]
        assert s.text not in ds.items[s.item]["masks"]
        assert rec["answer"].count(SEG) == 1 and item["input_ids"].count(processor.token_ids["seg_token_id"]) == 1
        # no LM loss on the answer: only the closing end-of-sequence token is a label
        labels = item["labels"]
        assert all(v == IGNORE_INDEX for v in labels[:-1]) and labels[-1] == processor.tokenizer.eos_token_id
        assert item["seg_masks"].shape == (1, 32, 64, 64) and int(item["seg_masks"].sum()) == 0
    batch = ReasonSegCollator(processor.pad_token_id)([ds[probes[0]], ds[0]])
    assert batch["seg_valid"][0].tolist() == [True]  # the empty target is a target
    # evaluation asks the real question only
    evaluation = ReasonSegDataset(phantoms, processor, train=False, absent_probes=3, **kw)
    assert not any(s.kind == "probe" for s in evaluation.samples)
    with pytest.raises(ValueError, match="absent_probes must be 0 or more"):
        ReasonSegDataset(phantoms, processor, train=True, absent_probes=-1, **kw)


def test_presence_gate_empties_absent_masks_by_the_decoder_rule():
    from types import SimpleNamespace

    from LaMed.inference.reasoning import ABSENT_LOGIT, Answer, _gate

    model = SimpleNamespace(
        seg_module=SimpleNamespace(config=SimpleNamespace(threshold=0.5, presence_calibration=None))
    )
    logits = torch.full((3, 2, 4, 4), -3.0)
    logits[1, 0, 0, 0] = 2.0  # one voxel above 0.5: present under the uncalibrated rule
    logits[2, 1, 1, 1] = -0.1  # largest logit below 0: nothing above 0.5, absent
    ans = _gate(model, Answer("a [SEG] b [SEG] c [SEG]", logits.clone(), torch.zeros(3, 8)))
    assert ans.present == [False, True, False]
    assert ans.presence == pytest.approx([1 / (1 + np.exp(3.0)), 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(0.1))])
    assert torch.all(ans.logits[0] == ABSENT_LOGIT) and torch.all(ans.logits[2] == ABSENT_LOGIT)
    assert torch.equal(ans.logits[1], logits[1])
    # a calibrated rule (a, b) moves the decision: sigmoid(a * score + b)
    model.seg_module.config.presence_calibration = {"a": 1.0, "b": 5.0}
    ans = _gate(model, Answer("x", logits.clone(), torch.zeros(3, 8)))
    assert ans.present == [True, True, True]


def test_absent_stage_recipe_continues_a_saved_model():
    from LaMed.train.recipe import parse_recipe

    recipe = parse_recipe(str(REPO / "configs" / "recipes" / "tiny_r1seg3d_absent.yaml"), ["--output_dir", "/tmp/x"])
    m, d = recipe.model_args, recipe.data_args
    assert recipe.task == "reasoning_seg" and m.presence_gate and m.tokenizer == "" and m.pretrained_model == ""
    assert m.seg_overrides["presence_weight"] > 0 and m.seg_overrides["presence_on"] == "absent"
    assert d.absent_probes >= 1 and d.negative_repeat == 1 and d.negatives
    assert "configs/recipes/tiny_r1seg3d_absent.yaml" in (REPO / "scripts" / "tiny_r1seg3d_absent.sh").read_text()
