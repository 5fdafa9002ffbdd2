"""Training data for absent structures: seg prompts with an empty target, reasoning questions
answered without [SEG]."""

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from LaMed.data.prepare import prepare_phantoms

    out = tmp_path_factory.mktemp("absent_phantoms")
    prepare_phantoms(out, n=3, shape=(16, 32, 32), seed=0, val_fraction=0.0, test_fraction=0.0, progress=False)
    return out


def test_seg_dataset_adds_absent_prompts_with_empty_targets(phantoms):
    from LaMed.data.prepared import load_manifest, load_masks
    from LaMed.data.seg_dataset import PreparedSegDataset

    man = load_manifest(phantoms / "train.json")
    # the phantoms have no pancreas: with absent="missing" every item is asked for it, target empty
    plain = PreparedSegDataset(phantoms / "train.json", classes=["liver", "pancreas"], max_classes=2)
    assert all(name == "liver" for i in range(len(plain)) for name in plain[i]["names"])
    ds = PreparedSegDataset(phantoms / "train.json", classes=["liver", "pancreas"], max_classes=2, absent="missing")
    assert len(ds) == len(man["items"])
    for i in range(len(ds)):
        item = ds[i]
        assert item["names"] == ["liver", "pancreas"] and item["prompts"] == ["liver", "pancreas"]
        liver = load_masks(phantoms / "train.json", man["items"][i], ["liver"])["liver"][0]
        assert np.array_equal(item["labels"][0].numpy(), liver)
        assert item["labels"][1].sum() == 0 and item["boxes"][1].abs().sum() == 0
        assert (item["point_labels"][1] == -1).all()  # no point prompt drawn on an empty target
    # "listed": only the items that say so
    data = json.loads((phantoms / "train.json").read_text())
    data["items"][0]["absent"] = ["pancreas"]
    listed_path = phantoms / "listed.json"
    listed_path.write_text(json.dumps(data))
    listed = PreparedSegDataset(listed_path, classes=["liver", "pancreas"], max_classes=2, absent="listed")
    assert [listed[i]["names"] for i in range(len(listed))] == [["liver", "pancreas"]] + [["liver"]] * (len(listed) - 1)


def test_seg_dataset_refuses_bad_absent_options(phantoms):
    from LaMed.data.seg_dataset import PreparedSegDataset

    with pytest.raises(ValueError, match="absent must be"):
        PreparedSegDataset(phantoms / "train.json", classes=["liver"], absent="sometimes")
    with pytest.raises(ValueError, match="needs the list of classes"):
        PreparedSegDataset(phantoms / "train.json", absent="missing")
    with pytest.raises(ValueError, match="referring expressions"):
        PreparedSegDataset(phantoms / "train.json", refer=True, absent="listed")


def test_reasoning_negatives_ask_about_absent_organs_without_seg(phantoms):
    from LaMed.data.prepared import load_manifest
    from LaMed.data.reasoning_dataset import SEG, ReasonSegDataset

    classes = ["liver", "pancreas"]  # no phantom has a pancreas: one negative question per item
    n = len(load_manifest(phantoms / "train.json")["items"])
    ds = ReasonSegDataset(phantoms / "train.json", None, task="seg", train=False, classes=classes, negatives=True)
    neg = [i for i, s in enumerate(ds.samples) if s.kind == "negative"]
    assert len(neg) == n
    for i in neg:
        rec = ds.record(i)
        assert rec["targets"] == [] and SEG not in rec["answer"] and "pancreas" in rec["question"]
    rep = ReasonSegDataset(
        phantoms / "train.json", None, task="seg", train=True, classes=classes, negatives=True, negative_repeat=3
    )
    assert sum(s.kind == "negative" for s in rep.samples) == 3 * n
    assert sum(s.kind != "negative" for s in rep.samples) == len(ds.samples) - n
    with pytest.raises(ValueError, match="negative_repeat"):
        ReasonSegDataset(phantoms / "train.json", None, task="seg", negatives=True, negative_repeat=0)
