"""Checkpoints: complete-or-ignored marker, resume discovery, rotation, trainable-only weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fake_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    from LaMed.train.checkpoint import mark_complete

    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"x" * (100 + step))
    (d / "optimizer.pt").write_bytes(b"y" * 50)
    if complete:
        mark_complete(d, step, world_size=1)
    return d


def test_marker_lists_files_and_detects_truncation(tmp_path):
    from LaMed.train.checkpoint import COMPLETE_MARKER, is_complete

    d = fake_checkpoint(tmp_path, 3)
    record = json.loads((d / COMPLETE_MARKER).read_text(encoding="utf-8"))
    assert record["step"] == 3 and record["files"] == {"model.safetensors": 103, "optimizer.pt": 50}
    assert is_complete(d)
    (d / "optimizer.pt").write_bytes(b"y" * 10)  # truncated later (disk full, partial copy)
    assert not is_complete(d)
    (d / COMPLETE_MARKER).write_text("{not json", encoding="utf-8")
    assert not is_complete(d)
    assert not is_complete(fake_checkpoint(tmp_path, 4, complete=False))


def test_resume_discovery_skips_incomplete_and_cleanup(tmp_path):
    from LaMed.train.checkpoint import last_complete_checkpoint, list_checkpoints, remove_incomplete

    assert last_complete_checkpoint(tmp_path / "absent") is None
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 12, complete=False)  # crashed while saving
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10", "checkpoint-12"]
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-10"  # numeric order, not text order
    assert [p.name for p in remove_incomplete(tmp_path)] == ["checkpoint-12"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]


def test_rotation_keeps_newest_complete_and_best(tmp_path):
    from LaMed.train.checkpoint import list_checkpoints, rotate_checkpoints

    for s in (1, 2, 3, 4):
        fake_checkpoint(tmp_path, s)
    fake_checkpoint(tmp_path, 5, complete=False)
    rotate_checkpoints(tmp_path, 2, keep=[tmp_path / "checkpoint-1"])
    # the two newest complete ones, the protected best one; the incomplete 5 is newer than
    # the newest complete checkpoint, so it is left for remove_incomplete / the next save.
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-1",
        "checkpoint-3",
        "checkpoint-4",
        "checkpoint-5",
    ]
    assert rotate_checkpoints(tmp_path, None) == []


def test_atomic_write_text_replaces_whole_file(tmp_path):
    from LaMed.train.checkpoint import atomic_write_text

    p = tmp_path / "a.json"
    atomic_write_text(p, "old")
    atomic_write_text(p, "new contents")
    assert p.read_text(encoding="utf-8") == "new contents"
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_save_and_load_trainable_only(tmp_path):
    import torch
    from train_toy_task import ToyOrgansConfig, ToyOrgansModel

    from LaMed.train.args import StageArguments
    from LaMed.train.checkpoint import TRAINABLE_MANIFEST, load_trainable, save_trainable
    from LaMed.train.stages import apply_stage

    torch.manual_seed(0)
    cfg = ToyOrgansConfig()
    model = apply_stage(ToyOrgansModel(cfg), StageArguments(freeze=["*"], trainable=["head"]))
    with torch.no_grad():
        model.head.weight.add_(1.0)
    save_trainable(model, tmp_path, base_checkpoints={"stem": "hub:org/base", "body": "hub:org/base"})
    manifest = json.loads((tmp_path / TRAINABLE_MANIFEST).read_text(encoding="utf-8"))
    assert manifest["trainable"] == ["head.weight", "head.bias"]
    assert manifest["num_trainable"] == 16 * 4 + 4
    assert manifest["base_checkpoints"]["stem"] == "hub:org/base"
    assert set(manifest["frozen"]) == {"stem.weight", "stem.bias", "body.weight", "body.bias"}

    torch.manual_seed(0)
    fresh = ToyOrgansModel(cfg)  # the frozen base, rebuilt the same way
    load_trainable(fresh, tmp_path)
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n

    other = ToyOrgansModel(ToyOrgansConfig(hidden=8))
    with pytest.raises(ValueError, match="shape mismatch: \\['head.weight: saved \\(4, 16\\) vs model \\(4, 8\\)"):
        load_trainable(other, tmp_path)
    with pytest.raises(FileNotFoundError, match="not a save_trainable_only checkpoint"):
        load_trainable(fresh, tmp_path / "nothing")
