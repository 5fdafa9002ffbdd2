"""Memory and time to load a LaMed report model: fp32 vs bf16 weights, against their byte size.

    python -m Bench.perf.load                   # Phi-3-mini geometry cut to 4 LLM layers (+ M3D ViT-B, spp)
    python -m Bench.perf.load --layers 2 --keep /tmp/lamed_load_model

A model of Phi-3-mini geometry (width 3072, vocab 32015) with its LLM cut to ``--layers`` layers,
the M3D ViT-B tower and the spatial-pooling projector is saved once with random weights (fp32
safetensors). Each measurement is a fresh process: ``LaMed.load(folder, dtype=...)``, then its peak
resident memory (``VmHWM``) and the load time. The memory of a process that only imports
torch / transformers / LaMed is measured in the same run and subtracted, so the figure is what
loading costs. Targets: peak <= 1.15 x the bytes of the weights in that dtype, and the bf16 peak
<= 0.55 x the fp32 peak (bf16 weights are loaded as bf16, never as an fp32 copy then cast).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Peak memory from /proc/self/status VmHWM: it belongs to the process image and starts afresh at exec,
# whereas ru_maxrss survives exec and would report the parent's peak (the parent built a 3 GB model).
_CHILD = r"""
import json, sys, time
import torch

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

import LaMed
from LaMed.inference.api import load
import LaMed.models.mllm  # noqa
folder, dtype = sys.argv[1], sys.argv[2]
before = hwm_kb()
t = time.perf_counter()
if dtype.startswith("transformers_"):  # the stock loader, for comparison (memory-maps the fp32 file)
    from LaMed.models.mllm import LaMedForCausalLM
    class _Wrap: pass
    model = _Wrap()
    model.model = LaMedForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype.split("_")[1]))
if dtype != "none":
    if not dtype.startswith("transformers_"):
        model = load(folder, dtype=dtype)
    n_bytes = sum(p.numel() * p.element_size() for p in model.model.parameters())
    n_bytes += sum(b.numel() * b.element_size() for b in model.model.buffers())
    dtypes = sorted({str(p.dtype) for p in model.model.parameters()})
    # touch every weight, as a forward pass would: memory-mapped weights only count once read
    checksum = sum(float(p.float().sum()) if p.numel() < 2 ** 24 else float(p[:1].float().sum())
                   for p in model.model.parameters())
    checksum += sum(float(p.view(-1)[i:i + 2 ** 22].float().sum()) for p in model.model.parameters()
                    if p.numel() >= 2 ** 24 for i in range(0, p.numel(), 2 ** 22))
else:
    n_bytes, dtypes = 0, []
seconds = time.perf_counter() - t
peak = hwm_kb()
print(json.dumps({"peak_kb": peak, "before_kb": before, "seconds": seconds, "bytes": n_bytes, "dtypes": dtypes}))
"""


def save_model(folder: Path, layers: int) -> int:
    """Build and save the benchmark model (fp32, random weights); returns its parameter count."""
    import torch

    from Bench.perf.generate import build
    from LaMed.data.tokenizer import train_tokenizer
    from LaMed.models.mllm import LaMedProcessor

    torch.manual_seed(0)
    model, _ = build("phi3", layers=layers)
    model.save_pretrained(folder)
    tok = train_tokenizer(["the liver is enlarged", "no focal lesion"] * 10, vocab_size=120)
    LaMedProcessor(tok, model.num_image_tokens).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def measure(folder: Path, dtype: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), dtype], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"load {dtype} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4, help="LLM layers of the Phi-3-mini geometry (of 32)")
    p.add_argument("--keep", default="", help="save the model here (and reuse it if present) instead of a temp dir")
    a = p.parse_args(argv)
    print(
        f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (2 cores; figures taken at load > 2 are noisy)"
    )
    folder = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="lamed_load_"))
    try:
        if not (folder / "config.json").is_file():
            t = time.perf_counter()
            n = save_model(folder, a.layers)
            print(
                f"saved {n / 1e6:.0f} M parameters ({a.layers} LLM layers) in {time.perf_counter() - t:.1f} s to {folder}"
            )
        base = measure(folder, "none")
        base_gb = base["peak_kb"] / 2**20
        print(f"baseline (imports only): peak RSS {base_gb:.2f} GB")
        results = {}
        for dtype in ("fp32", "bf16"):
            r = measure(folder, dtype)
            cost = (r["peak_kb"] - base["peak_kb"]) * 1024
            results[dtype] = cost
            print(
                f"{dtype}: weights {r['bytes'] / 2**30:.2f} GB ({', '.join(r['dtypes'])}), load {r['seconds']:.1f} s, "
                f"peak RSS {r['peak_kb'] / 2**20:.2f} GB, minus baseline {cost / 2**30:.2f} GB = "
                f"{cost / r['bytes']:.2f} x weight bytes (target <= 1.15)"
            )
        print(f"bf16 peak / fp32 peak (minus baseline): {results['bf16'] / results['fp32']:.2f} (target <= 0.55)")
        r = measure(folder, "transformers_bfloat16")
        cost = (r["peak_kb"] - base["peak_kb"]) * 1024
        print(
            f"for comparison, transformers' from_pretrained(dtype=bfloat16) of the same fp32 file: peak minus "
            f"baseline {cost / 2**30:.2f} GB = {cost / r['bytes']:.2f} x weight bytes, load {r['seconds']:.1f} s"
        )
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
