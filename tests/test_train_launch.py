"""scripts/_launch.sh: the command it builds with and without GPUs, and a real CPU run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
LAUNCH = REPO / "scripts" / "_launch.sh"
TINY = "tests/recipes/tiny_toy.yaml"


def dry_run(gpus: int, *args: str, **env) -> str:
    e = dict(os.environ, LAMED_GPUS=str(gpus), LAMED_LAUNCH_DRY_RUN="1", MASTER_PORT="29555", **env)
    proc = subprocess.run(["bash", str(LAUNCH), *args], env=e, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_cpu_machine_uses_torchrun_with_use_cpu():
    assert dry_run(0, TINY, "2", "--max_steps", "2") == (
        f"torchrun --nproc_per_node 2 --master_port 29555 -m LaMed.train {TINY} --use_cpu true --max_steps 2"
    )
    # no count given: one process on CPU
    assert dry_run(0, TINY).startswith("torchrun --nproc_per_node 1 ")


def test_gpu_machine_uses_accelerate_with_default_config():
    assert dry_run(8, TINY, "--learning_rate", "1e-4") == (
        f"accelerate launch --config_file {REPO}/default_config.yaml --num_processes 8 --main_process_port 29555 "
        f"-m LaMed.train {TINY} --learning_rate 1e-4"
    )
    out = dry_run(8, TINY, "4", ACCELERATE_CONFIG="configs/accelerate/deepspeed_zero3.yaml")
    assert "--config_file configs/accelerate/deepspeed_zero3.yaml --num_processes 4" in out


def test_bad_launcher_and_missing_recipe():
    e = dict(os.environ, LAMED_GPUS="0")
    proc = subprocess.run(["bash", str(LAUNCH), "nothere.yaml"], env=e, capture_output=True, text=True)
    assert proc.returncode == 2 and "recipe nothere.yaml not found" in proc.stderr
    e["LAMED_LAUNCHER"] = "mpirun"
    proc = subprocess.run(["bash", str(LAUNCH), TINY], env=e, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown LAMED_LAUNCHER=mpirun" in proc.stderr


@pytest.mark.multiproc
def test_launcher_trains_tiny_recipe_on_cpu(tmp_path):
    sys.path.insert(0, str(TESTS))
    from train_toy_task import make_phantom_data

    data = make_phantom_data(tmp_path / "data")
    env = dict(
        os.environ,
        PYTHONPATH=str(TESTS),
        LAMED_GPUS="0",
        MASTER_PORT="29557",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    proc = subprocess.run(
        [
            "bash",
            str(LAUNCH),
            TINY,
            "1",
            "--train_manifest",
            str(data / "train.json"),
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "2",
            "--save_strategy",
            "no",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[lamed] torchrun, 1 process(es), CPU" in proc.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()
