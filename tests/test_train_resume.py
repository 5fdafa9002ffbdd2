"""Kill-and-resume: a run SIGKILLed mid-training or mid-save resumes to the same weights, bitwise.

Each run is a separate ``python -m LaMed.train`` process (CPU, fp32); the crash is injected with
``LAMED_FAULT_INJECT`` (a real SIGKILL of the process, at a chosen step or in the middle of
writing a checkpoint: after the weights, before the optimizer state and the completion marker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TINY = TESTS / "recipes" / "tiny_toy.yaml"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    sys.path.insert(0, str(TESTS))
    from train_toy_task import make_phantom_data

    return make_phantom_data(tmp_path_factory.mktemp("phantoms"))


def run_train(out: Path, phantoms: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1")
    env.pop("LAMED_FAULT_INJECT", None)
    if fault:
        env["LAMED_FAULT_INJECT"] = fault
    # 10 train items, batch 2: 5 steps an epoch. Checkpoints every 3 steps, so resuming from
    # step 3 or 6 starts in the middle of an epoch (data order and RNG must be restored).
    cmd = [
        sys.executable,
        "-m",
        "LaMed.train",
        str(TINY),
        "--train_manifest",
        str(phantoms / "train.json"),
        "--output_dir",
        str(out),
        "--max_steps",
        "8",
        "--save_steps",
        "3",
        "--save_total_limit",
        "1",
    ]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def weights(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, phantoms):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = run_train(out, phantoms)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return weights(out)


def assert_bitwise_equal(a, b):
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: max diff {(a[k] - b[k]).abs().max().item()}"


@pytest.mark.slow
def test_sigkill_mid_training_then_resume(tmp_path, phantoms, reference):
    from LaMed.train.checkpoint import last_complete_checkpoint

    killed = run_train(tmp_path, phantoms, fault="kill_after_step:5")
    assert killed.returncode == -signal.SIGKILL
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-3"
    assert not (tmp_path / "model.safetensors").exists()
    resumed = run_train(tmp_path, phantoms)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-3" in resumed.stderr
    assert_bitwise_equal(weights(tmp_path), reference)


@pytest.mark.slow
def test_sigkill_mid_save_then_resume(tmp_path, phantoms, reference):
    from LaMed.train.checkpoint import COMPLETE_MARKER, is_complete, last_complete_checkpoint

    killed = run_train(tmp_path, phantoms, fault="kill_in_save:6")
    assert killed.returncode == -signal.SIGKILL
    half = tmp_path / "checkpoint-6"
    # The weights of checkpoint 6 were written, the optimizer state and the marker were not:
    assert (half / "model.safetensors").is_file() and not (half / "optimizer.pt").exists()
    assert not (half / COMPLETE_MARKER).exists() and not is_complete(half)
    # ... and checkpoint 3 was not rotated away in favour of the half-written one.
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-3"
    resumed = run_train(tmp_path, phantoms)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removing incomplete checkpoint" in resumed.stderr
    assert_bitwise_equal(weights(tmp_path), reference)
    # Rotation (save_total_limit 1) kept only the newest complete checkpoint (the final step).
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-8"]
    assert is_complete(tmp_path / "checkpoint-8")
