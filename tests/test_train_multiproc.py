"""Two processes on CPU: DDP through ``accelerate launch``, DeepSpeed ZeRO-2 / ZeRO-3 through torchrun.

Each test launches the toy recipe on 2 processes (gloo), checks that both processes logged the
same losses and hold bit-identical parameters at the end, and reloads the saved model in this
(separate) process. Every rank leaves through ``destroy_process_group`` (a barrier, then the
teardown), which removed the rare exit-time SIGABRT of gloo ("terminate called without an active
exception") that a retry used to hide; the rendezvous ports are picked free by the OS. The first
DeepSpeed run on a fresh machine JIT-compiles an op (~30 s).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TINY = TESTS / "recipes" / "tiny_toy.yaml"
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.multiproc


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    sys.path.insert(0, str(TESTS))
    from train_toy_task import make_phantom_data

    return make_phantom_data(tmp_path_factory.mktemp("phantoms"))


def free_port() -> int:
    """A TCP port the OS reports free right now (no fixed port to collide with another run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(launcher: list, out: Path, phantoms: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1")
    env.pop("LAMED_FAULT_INJECT", None)
    args = [
        str(TINY),
        "--train_manifest",
        str(phantoms / "train.json"),
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--save_steps",
        "3",
        "--dump_rank_summary",
        "true",
        *extra,
    ]
    proc = subprocess.run(
        [*launcher, "-m", "LaMed.train", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=540
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def rank_summaries(out: Path):
    s = [json.loads((out / f"rank{r}_summary.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert [x["rank"] for x in s] == [0, 1] and {x["world_size"] for x in s} == {2}
    assert len(s[0]["losses"]) == 3
    assert s[0]["losses"] == s[1]["losses"]  # the logged (all-reduced) losses agree
    assert s[0]["params"] == s[1]["params"]  # and the replicas ended bit-identical
    assert s[0]["params"]["numel"] == 1924
    return s[0]


def reload_and_fingerprint(out: Path):
    from train_toy_task import ToyOrgansModel, parameter_fingerprint

    model = ToyOrgansModel.from_pretrained(out)
    return model, parameter_fingerprint(model)


def test_ddp_two_processes_accelerate(tmp_path, phantoms):
    cfg = str(REPO / "configs" / "accelerate" / "cpu_ddp.yaml")
    launcher = [str(VENV_BIN / "accelerate"), "launch", "--config_file", cfg, "--main_process_port", str(free_port())]
    launch(launcher, tmp_path / "run", phantoms)
    summary = rank_summaries(tmp_path / "run")
    _, fp = reload_and_fingerprint(tmp_path / "run")
    assert fp == summary["params"]  # the saved fp32 model is exactly what was trained


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_two_processes_torchrun(tmp_path, phantoms, stage):
    import torch

    ds = str(REPO / "configs" / "deepspeed" / f"zero{stage}.json")
    launcher = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]
    launch(launcher, tmp_path / "run", phantoms, "--deepspeed", ds)
    summary = rank_summaries(tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint-3"
    assert (ckpt / "lamed_checkpoint.json").is_file() and (ckpt / "latest").is_file()  # DeepSpeed's own state too
    model, fp = reload_and_fingerprint(tmp_path / "run")
    # ZeRO-3 saved the gathered weights (stage3_gather_16bit_weights_on_model_save); fp32 training
    # keeps them fp32, so the reload is exact for both stages.
    assert next(model.parameters()).dtype == torch.float32
    assert fp == summary["params"]
