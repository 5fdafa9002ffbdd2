"""``lamed train`` with bad data, damaged checkpoints and interrupted runs.

Resume after ``kill -9`` must give the weights of an uninterrupted run, bitwise, also for the
segmentation recipes whose box / point prompts are random; a damaged checkpoint must be refused,
not resumed; bad samples are refused with their reason; a run that stops on too many bad samples
ends with a one-screen report and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
RECIPES = REPO / "configs" / "recipes"


@pytest.fixture(scope="module")
def seg_phantoms(tmp_path_factory) -> Path:
    """4 training phantoms at the tiny recipes' 32x64x64 (+ referring texts for RefSAM3D)."""
    from LaMed.data.prepare import prepare_phantoms

    out = tmp_path_factory.mktemp("seg_phantoms")
    prepare_phantoms(out, n=4, shape=(32, 64, 64), seed=5, val_fraction=0.0, test_fraction=0.0, progress=False)
    return out


def _train(recipe: Path, out: Path, manifest: Path, fault: str | None = None, *extra: str):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    env.pop("LAMED_FAULT_INJECT", None)
    if fault:
        env["LAMED_FAULT_INJECT"] = fault
    # 4 items, batch 2: 2 steps an epoch; a checkpoint at step 3 is in the middle of epoch 1.
    cmd = [sys.executable, "-m", "LaMed.train", str(recipe), "--train_manifest", str(manifest),
           "--output_dir", str(out), "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3",
           "--save_total_limit", "1", "--per_device_train_batch_size", "2", *extra]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def _weights(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _assert_bitwise_equal(a, b):
    import torch

    assert a.keys() == b.keys()
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diffs, f"{len(diffs)} tensors differ, max {max(diffs.values())}: {sorted(diffs)[:5]}"


# Every tiny recipe whose training draws random box / point prompts (or random referring texts).
RANDOM_PROMPT_RECIPES = ["tiny_segvol", "tiny_r1seg3d_step1_sam"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RANDOM_PROMPT_RECIPES)
def test_resume_after_sigkill_is_bitwise_for_random_prompts(recipe, seg_phantoms, tmp_path):
    manifest = seg_phantoms / "train.json"
    ref = _train(RECIPES / f"{recipe}.yaml", tmp_path / "ref", manifest)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _train(RECIPES / f"{recipe}.yaml", tmp_path / "run", manifest, "kill_after_step:5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _train(RECIPES / f"{recipe}.yaml", tmp_path / "run", manifest)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-3" in resumed.stderr
    _assert_bitwise_equal(_weights(tmp_path / "run"), _weights(tmp_path / "ref"))
