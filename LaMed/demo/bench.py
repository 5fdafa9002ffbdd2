"""Run the Bench front ends as a user would: ``python -m Bench.<module> ...`` in a child process.

The library never imports ``Bench`` (it sits on top of ``LaMed``); the demo calls Bench's command
lines and reads the ``summary.json`` they write, so the scores in the demo report are exactly
those a user gets from the same commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


class BenchRunError(RuntimeError):
    """A Bench command failed; the message holds the command and the end of its output."""


def run_bench(module: str, args: Sequence[str], out_dir: str | Path, threads: int = 1) -> dict:
    """Run ``python -m Bench.<module> *args`` and return the ``summary.json`` it wrote in ``out_dir``.

    The child inherits the environment (offline flags) with ``threads`` CPU threads; its output
    goes to ``out_dir/bench.log``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", f"Bench.{module}", *[str(a) for a in args]]
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    log = out / "bench.log"
    with log.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BenchRunError(f"Bench.{module} failed (exit {proc.returncode}); see {log}:\n{tail}")
    summary = out / "summary.json"
    if not summary.is_file():
        raise BenchRunError(f"Bench.{module} wrote no {summary}")
    return json.loads(summary.read_text())
