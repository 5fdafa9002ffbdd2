"""Training-step throughput of a tiny recipe on 1 process and on 2 processes (DDP), CPU or GPU.

    python Bench/perf/train_step.py [--steps 40] [--batch 4] [--shape 32 64 64] [--workers 1]

Runs the toy task of the test-suite (tests/train_toy_task.py: a 2-conv 3D net on prepared
phantoms read memory-mapped) through ``python -m LaMed.train`` and ``torchrun --nproc_per_node 2``,
and prints one line a figure: steps/s and samples/s (global) for each, the scaling efficiency
(samples/s on 2 processes / (2 x samples/s on 1)), and the data-loader wait fraction (time the
optimizer steps spent waiting for batches / wall time; target < 0.05). On a CPU machine both
processes share the same cores, so the efficiency measures overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
RECIPE = TESTS / "recipes" / "tiny_toy.yaml"


def run(nproc: int, data: Path, out: Path, args) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(TESTS),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="offline",
        OMP_NUM_THREADS=str(args.threads),
    )
    bin_dir = Path(sys.executable).parent
    launcher = (
        [sys.executable]
        if nproc == 1
        else [str(bin_dir / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", "29731"]
    )
    cmd = [
        *launcher,
        "-m",
        "LaMed.train",
        str(RECIPE),
        "--train_manifest",
        str(data / "train_bench.json"),
        "--output_dir",
        str(out),
        "--max_steps",
        str(args.steps),
        "--per_device_train_batch_size",
        str(args.batch),
        "--save_strategy",
        "no",
        "--logging_steps",
        str(args.steps),
        "--resume",
        "never",
        "--dataloader_num_workers",
        str(args.workers),
        "--channels",
        str(args.channels),
        "--hidden",
        str(2 * args.channels),
    ]
    if args.workers > 0:
        cmd += ["--dataloader_persistent_workers", "true"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training with {nproc} process(es) failed:\n{proc.stderr[-3000:]}")
    state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
    final = next(h for h in reversed(state["log_history"]) if "train_runtime" in h)
    return final


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=4, help="per process")
    p.add_argument("--shape", type=int, nargs=3, default=(32, 64, 64))
    p.add_argument("--n", type=int, default=32, help="phantoms to prepare")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes per training process")
    p.add_argument("--channels", type=int, default=16, help="width of the toy net (hidden = 2 x channels)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (torchrun's default of 1 for both runs, so that 2 processes "
        "use 2 cores and 1 process 1 core)",
    )
    args = p.parse_args()

    sys.path.insert(0, str(TESTS))
    from train_toy_task import make_phantom_data

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_phantom_data(tmp / "data", n=args.n, shape=tuple(args.shape))
        # One epoch longer than the run (items listed several times, files read from the page cache
        # like any hot data set): the figures are then steady state, without epoch restarts, whose
        # first batch cannot be prefetched and which real data sets see once in thousands of steps.
        manifest = json.loads((data / "train.json").read_text(encoding="utf-8"))
        base = manifest["items"]
        need = 2 * args.steps * args.batch
        manifest["items"] = [dict(base[i % len(base)], id=f"{base[i % len(base)]['id']}_{i}") for i in range(need)]
        (data / "train_bench.json").write_text(json.dumps(manifest), encoding="utf-8")
        one = run(1, data, tmp / "one", args)
        two = run(2, data, tmp / "two", args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"config: toy 3D conv net ({args.channels}/{2 * args.channels} channels), volumes {tuple(args.shape)}, batch {args.batch}/process, {args.steps} steps, "
        f"{args.workers} loader worker(s) and {args.threads} thread(s)/process, {os.cpu_count()} CPUs, "
        f"load average {load:.1f}"
    )
    rates = {}
    for name, nproc, r in (("1 process", 1, one), ("2 processes DDP", 2, two)):
        steps = r["train_steady_steps_per_second"]  # step to step, without start-up
        rates[nproc] = steps * args.batch * nproc
        print(f"{name}: steps/s {steps:.2f}")
        print(f"{name}: samples/s {rates[nproc]:.2f}")
        print(f"{name}: data-loader wait fraction {r['train_data_wait_fraction']:.4f}")
    print(f"scaling efficiency 2 vs 1 process: {rates[2] / (2 * rates[1]):.2f}")


if __name__ == "__main__":
    main()
