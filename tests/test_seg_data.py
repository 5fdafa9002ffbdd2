"""Segmentation datasets, prompt sampling and the collator."""

from __future__ import annotations

import json

import numpy as np
import pytest

import LaMed  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_mask_to_box_and_points_hand_checked():
    from LaMed.data.seg_dataset import NUM_POINTS, mask_to_box, sample_points

    m = np.zeros((6, 7, 8), bool)
    m[1:3, 2:6, 4] = True
    assert mask_to_box(m).tolist() == [1, 2, 4, 2, 5, 4]  # inclusive maxima
    assert mask_to_box(np.zeros((3, 3, 3))) is None
    counts = set()
    for seed in range(30):
        coords, labels = sample_points(m, np.random.default_rng(seed))
        assert coords.shape == (NUM_POINTS, 3) and labels.shape == (NUM_POINTS,)
        pos, neg = coords[labels == 1].astype(int), coords[labels == 0].astype(int)
        assert 1 <= len(pos) <= 8 and len(neg) <= 10  # 1 + U[0, 10] positives, capped by the 8 mask voxels
        assert m[tuple(pos.T)].all() and not m[tuple(neg.T)].any()
        assert (labels[len(pos) + len(neg) :] == -1).all()
        counts.add((len(pos), len(neg)))
    assert len(counts) > 5  # the numbers really are random
    coords, labels = sample_points(np.zeros((3, 3, 3), bool), np.random.default_rng(0))
    assert (labels == -1).all()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from LaMed.data.prepare import prepare_phantoms

    out = tmp_path_factory.mktemp("seg_phantoms")
    prepare_phantoms(out, n=4, shape=(16, 32, 32), seed=0, val_fraction=0.25, test_fraction=0.0, progress=False)
    return out


def test_prepared_dataset_entries_and_collator(phantoms):
    from LaMed.data.prepared import load_manifest, load_masks
    from LaMed.data.seg_dataset import PreparedSegDataset, SegCollator
    from LaMed.models.checkpoint_files import resolve_tokenizer

    man = load_manifest(phantoms / "train.json")
    ds = PreparedSegDataset(phantoms / "train.json", classes=["liver", "spleen", "kidney_left"], max_classes=2)
    per_image = [sum(n in it["masks"] for n in ("liver", "spleen", "kidney_left")) for it in man["items"]]
    assert len(ds) == sum((k + 1) // 2 for k in per_image)
    item = ds[0]
    first = man["items"][0]
    masks = load_masks(phantoms / "train.json", first, item["names"])
    for i, n in enumerate(item["names"]):
        assert np.array_equal(item["labels"][i].numpy(), masks[n][0])
        box = item["boxes"][i].numpy()
        nz = np.argwhere(masks[n][0])
        assert box.tolist() == nz.min(0).tolist() + nz.max(0).tolist()
    assert item["volume"].shape == (1, 16, 32, 32)
    per_class = PreparedSegDataset(phantoms / "train.json", entries="class")
    assert len(per_class) == sum(len(it["masks"]) for it in man["items"])

    tok = resolve_tokenizer("minilm")
    collate = SegCollator(tok, lambda t: f"A computerized tomography of a {t}.")
    batch = collate([ds[0], per_class[0]])
    k = len(ds[0]["names"])
    assert batch["labels"].shape == (2, k, 16, 32, 32)
    assert batch["label_mask"].tolist() == [[True] * k, [True] + [False] * (k - 1)]
    assert batch["input_ids"].shape[:2] == (2, k)
    text = tok.decode(batch["input_ids"][0, 0], skip_special_tokens=True)
    assert text == f"a computerized tomography of a {ds[0]['names'][0]}.".replace("_", " ")


def test_refseg_dataset_uses_referring_expressions(phantoms):
    from LaMed.data.prepared import load_manifest
    from LaMed.data.seg_dataset import PreparedSegDataset

    man = load_manifest(phantoms / "train.json")
    ds = PreparedSegDataset(phantoms / "train.json", refer=True, entries="class")
    refs = [(r["text"], r["target"]) for it in man["items"] for r in it.get("refer", []) if r["target"] in it["masks"]]
    assert len(ds) == len(refs)
    item = ds[0]
    assert (item["prompts"][0], item["names"][0]) == refs[0]


def test_templates_and_errors(phantoms):
    from LaMed.data.seg_dataset import PreparedSegDataset

    ds = PreparedSegDataset(
        phantoms / "train.json", classes=["liver"], templates=["Segment the {}.", "Where is the {}?"]
    )
    seen = {ds[i]["prompts"][0] for i in range(len(ds))} | {ds[0]["prompts"][0]}
    assert seen <= {"Segment the liver.", "Where is the liver?"}
    with pytest.raises(ValueError, match="no item has masks"):
        PreparedSegDataset(phantoms / "train.json", classes=["pancreas_tail"])


def test_label_map_dataset_on_totalsegmentator(totalseg_dir):
    from LaMed.data.io import load_mask, load_volume
    from LaMed.data.seg_dataset import LabelMapSegDataset

    names = json.loads((totalseg_dir / "labels.json").read_text(encoding="utf-8"))["total"]
    pairs = [(str(totalseg_dir / "ct_abdomen.nii.gz"), str(totalseg_dir / "ct_abdomen_seg.nii.gz"))]
    ds = LabelMapSegDataset(pairs, names, classes=["liver", "spleen"], img_size=(32, 64, 64), repeat=3)
    assert len(ds) == 3
    item = ds[0]
    assert item["names"] == ["liver", "spleen"] and item["labels"].shape == (2, 32, 64, 64)
    vol = load_volume(pairs[0][0])
    liver = load_mask(pairs[0][1], like=vol).array == 5
    # the liver keeps its place: more of it on the patient's right (canonical W = patient left increasing)
    w = np.argwhere(item["labels"][0].numpy())[:, 2].mean() / 64
    w_src = np.argwhere(liver)[:, 2].mean() / liver.shape[2]
    assert abs(w - w_src) < 0.1 and w < 0.5
    with pytest.raises(ValueError, match="not in label_names"):
        LabelMapSegDataset(pairs, names, classes=["livr"])


def test_biomedsegfm_npz_dataset(tmp_path):
    from LaMed.data.seg_dataset import BiomedSegFMDataset

    d = tmp_path / "CT" / "AbdTest"
    d.mkdir(parents=True)
    gts = np.zeros((8, 20, 20), np.uint8)
    gts[2:5, 3:9, 3:9] = 1
    gts[5:7, 10:15, 10:16] = 3
    np.savez(
        d / "case1.npz",
        imgs=np.random.default_rng(0).integers(0, 255, (8, 20, 20)).astype(np.uint8),
        gts=gts,
        spacing=np.array([1.0, 1.0, 2.0]),
    )
    prompts = {"AbdTest": {"1": ["liver", "hepatic parenchyma"], "3": ["right kidney"], "instance_label": 0}}
    ds = BiomedSegFMDataset([d / "case1.npz"], prompts, img_size=(8, 20, 20))
    assert [e[1] for e in ds.entries] == [1, 3]
    it = ds[1]
    assert it["prompts"] == ["right kidney"] and np.array_equal(it["labels"][0].numpy(), gts == 3)
    assert float(it["volume"].min()) == 0.0 and float(it["volume"].max()) == 1.0
    inst = BiomedSegFMDataset(
        [d / "case1.npz"], {"AbdTest": {"1": ["lesions"], "instance_label": 1}}, img_size=(8, 20, 20)
    )
    assert len(inst) == 1 and np.array_equal(inst[0]["labels"][0].numpy(), gts > 0)
    with pytest.raises(ValueError, match="no entry in the prompt JSON"):
        BiomedSegFMDataset([d / "case1.npz"], {"Other": {}})
