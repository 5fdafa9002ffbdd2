"""Prepared-data dataset and bad-sample handling: skip, count, report, stop over the threshold."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
TINY = TESTS / "recipes" / "tiny_toy.yaml"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from train_toy_task import make_phantom_data

    return make_phantom_data(tmp_path_factory.mktemp("phantoms"))


def test_prepared_dataset_reads_memory_mapped_volumes(phantoms):
    import torch

    from LaMed.train.datasets import PreparedDataset

    ds = PreparedDataset(phantoms / "train.json", fields=("image", "labels", "text", "masks"))
    manifest = json.loads((phantoms / "train.json").read_text(encoding="utf-8"))
    assert len(ds) == len(manifest["items"]) == 10
    item = ds[3]
    ref = np.load(phantoms / manifest["items"][3]["image"])
    assert item["id"] == manifest["items"][3]["id"]
    assert item["image"].dtype == torch.float32 and tuple(item["image"].shape) == (1, 16, 32, 32)
    assert torch.equal(item["image"], torch.from_numpy(ref.astype(np.float32)))
    assert item["labels"] == manifest["items"][3]["labels"] and item["text"] == manifest["items"][3]["text"]
    liver = item["masks"]["liver"]
    assert liver.dtype == torch.uint8 and tuple(liver.shape) == (1, 16, 32, 32) and int(liver.sum()) > 0
    assert ds.sample_path(3) == str(phantoms / manifest["items"][3]["image"])


def test_prepared_dataset_refuses_bad_manifests(tmp_path, phantoms):
    from LaMed.train.datasets import PreparedDataset

    with pytest.raises(FileNotFoundError, match="manifest not found"):
        PreparedDataset(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other/1", "items": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="field 'format' must be 'lamed.prepared/1', got 'other/1'"):
        PreparedDataset(bad)
    with pytest.raises(ValueError, match="unknown field"):
        PreparedDataset(phantoms / "train.json", fields=("image", "pixels"))
    with pytest.raises(ValueError, match="field 'reports' is missing in 10 item"):
        PreparedDataset(phantoms / "train.json", require=("reports",))


def make_bad_copy(src: Path, dst: Path, n_missing: int, n_corrupt: int, n_wrong: int) -> list:
    """Copy a prepared set and break some items; return the paths of the broken image files."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "train.json").read_text(encoding="utf-8"))
    items = manifest["items"]
    broken = []
    k = 0
    for _ in range(n_missing):
        (dst / items[k]["image"]).unlink()
        broken.append(str(dst / items[k]["image"]))
        k += 1
    for _ in range(n_corrupt):  # truncated file: the header survives, the data does not
        p = dst / items[k]["image"]
        p.write_bytes(p.read_bytes()[:200])
        broken.append(str(p))
        k += 1
    for _ in range(n_wrong):  # wrong dtype and values out of [0, 1]
        p = dst / items[k]["image"]
        np.save(p, (np.load(p).astype(np.float32) * 1000.0))
        broken.append(str(p))
        k += 1
    return broken


def test_sample_errors_name_the_file(tmp_path, phantoms):
    from LaMed.train.data import SampleError
    from LaMed.train.datasets import load_volume_npy

    broken = make_bad_copy(phantoms, tmp_path / "d", 1, 1, 1)
    for path, msg in zip(broken, ("file not found", "unreadable .npy", "expected dtype float16, got float32")):
        with pytest.raises(SampleError, match=msg) as err:
            load_volume_npy(Path(path))
        assert err.value.path == path
    p = tmp_path / "range.npy"
    np.save(p, np.full((1, 2, 2, 2), 1.5, np.float16))
    with pytest.raises(SampleError, match=r"values must lie in \[0.0, 1.0\], found \[1.5, 1.5\]"):
        load_volume_npy(p)
    np.save(p, np.zeros((2, 2, 2), np.float16))
    with pytest.raises(SampleError, match=r"expected shape \(1, D, H, W\), got \(2, 2, 2\)"):
        load_volume_npy(p)


def test_skip_collate_and_tracker_units():
    import torch

    from LaMed.train.data import (
        BAD_KEY,
        COUNT_KEY,
        BadSample,
        BadSampleTracker,
        SampleError,
        SkipBadCollator,
        SkipBadSamples,
        TooManyBadSamples,
    )

    class DS:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 1:
                raise SampleError("/data/one.npy", "unreadable")
            if i == 2:
                raise KeyError("image")
            return {"x": torch.tensor([float(i)])}

    ds = SkipBadSamples(DS())
    items = [ds[i] for i in range(4)]
    assert items[1] == BadSample(1, "/data/one.npy", "unreadable")
    assert items[2] == BadSample(2, "index 2", "KeyError: 'image'")
    batch = SkipBadCollator()(items)
    assert torch.equal(batch["x"], torch.tensor([[0.0], [3.0]]))  # the good ones only, in order
    assert batch[COUNT_KEY] == 4 and [b.index for b in batch[BAD_KEY]] == [1, 2]
    assert set(SkipBadCollator()([items[1]])) == {BAD_KEY, COUNT_KEY}

    t = BadSampleTracker("train", dataset_size=100, max_fraction=0.02, world_size=1)
    t.update(batch[BAD_KEY], 4)
    t.update([items[1]], 1)  # the same sample again (next epoch) is not a new bad sample
    assert len(t.bad) == 2 and t.skipped == 3 and t.seen == 5
    with pytest.raises(TooManyBadSamples, match=r"3 bad train samples .* exceed max_bad_sample_fraction=0.02"):
        t.update([BadSample(7, "/data/seven.npy", "file not found")], 1)


def run_toy(out: Path, manifest: Path, *extra: str):
    from LaMed.train.main import run_training

    return run_training(
        str(TINY),
        [
            "--train_manifest",
            str(manifest),
            "--output_dir",
            str(out),
            "--max_steps",
            "5",
            "--save_strategy",
            "no",
            *extra,
        ],
    )


def test_training_skips_and_reports_bad_samples(tmp_path, phantoms, caplog):
    broken = make_bad_copy(phantoms, tmp_path / "d", n_missing=1, n_corrupt=1, n_wrong=1)
    # 10 items, 3 bad: allowed at fraction 0.3; 5 steps x 2 = every item seen once.
    run = run_toy(
        tmp_path / "run",
        tmp_path / "d" / "train.json",
        "--max_bad_sample_fraction",
        "0.3",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "5",
    )
    tracker = run.trainer.bad_samples["train"]
    assert sorted(b.path for b in tracker.bad.values()) == sorted(broken)
    assert tracker.seen == 10
    report = json.loads((tmp_path / "run" / "bad_samples_train_rank0.json").read_text(encoding="utf-8"))
    assert sorted(b["path"] for b in report["bad"]) == sorted(broken)
    assert {b["error"].split(" (")[0] for b in report["bad"]} >= {"file not found", "unreadable .npy"}
    logged = [h for h in run.trainer.state.log_history if "loss" in h]
    assert len(logged) == 5 and logged[-1]["bad_samples_train"] == 3
    assert any(p in caplog.text for p in broken)  # each bad file logged with its path


def test_training_stops_over_the_bad_fraction(tmp_path, phantoms):
    from LaMed.train.data import TooManyBadSamples

    make_bad_copy(phantoms, tmp_path / "d", n_missing=2, n_corrupt=0, n_wrong=0)
    with pytest.raises(TooManyBadSamples, match=r"2 bad train samples .* exceed max_bad_sample_fraction=0.1"):
        run_toy(tmp_path / "run", tmp_path / "d" / "train.json", "--max_bad_sample_fraction", "0.1")
