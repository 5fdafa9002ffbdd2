"""Encoder speed / memory benchmark: ViT3D-B against MONAI's ViT, DCFormer-small, on CPU (or CUDA).

    python -m Bench.perf.encoders                       # ViT3D vs MONAI, fp32 + bf16, then DCFormer-small
    python -m Bench.perf.encoders --dtypes fp32 --reps 3 --models vit3d monai

What is measured, per model and dtype, each in a fresh subprocess (so one model's allocations do
not pollute the other's peak):
  * time of one training step (forward + backward of ``out.float().square().mean()``) at batch 1,
    best of ``--reps`` after one warm-up step; bf16 means ``torch.autocast(dtype=bfloat16)`` over
    fp32 weights (mixed-precision training);
  * peak memory: process peak RSS (``VmHWM``, reset after the model is built so building and
    weight mapping do not count; weights, gradients and activations do) on CPU,
    ``max_memory_allocated`` on CUDA; both ViT workers import MONAI so their baselines match;
  * achieved FLOP/s = model FLOPs / step time, where model FLOPs are counted analytically for the
    ViTs (matmuls only, backward = 2x forward except the patch embedding, which needs no input
    gradient) and with ``torch.utils.flop_counter`` for DCFormer; divided by the FLOP/s of a large
    matrix product (``--matmul-size``) in the same process and dtype: the fraction of this
    machine's attainable peak.
MONAI's ViT gets exactly our weights (its extra ``norm_cross_attn`` LayerNorms are unused). A further
subprocess holds both models, checks that they give the same output (max |diff|, target 1e-4) and
times them with interleaved steps, so a busy shared machine slows both alike; the speed-up is
printed from the separate processes and from the interleaved ones.
Targets (issue "Model zoo core"): >= 1.5x faster than MONAI, <= 70 % of its peak memory, fp32 >= 0.85
and bf16 >= 0.70 of the matmul rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VIT_INPUT = (1, 1, 32, 256, 256)
DCFORMER_INPUT = (1, 1, 128, 256, 256)


# ---- FLOP counting ---------------------------------------------------------------------------------
def vit_train_flops(cfg) -> float:
    """Matmul FLOPs of one forward + backward of ViT3D with config ``cfg`` at batch 1."""
    import math

    n = math.prod(i // p for i, p in zip(cfg.img_size, cfg.patch_size)) + (1 if cfg.cls_token else 0)
    c, m = cfg.hidden_size, cfg.mlp_dim
    patch_dim = cfg.in_channels * math.prod(cfg.patch_size)
    per_block = 2 * n * c * (3 * c + c + 2 * m) + 2 * 2 * n * n * c  # qkv, out_proj, mlp; QK^T and PV
    linear_fwd = cfg.num_layers * per_block
    patch_fwd = 2 * (n - (1 if cfg.cls_token else 0)) * patch_dim * c
    return 3 * linear_fwd + 2 * patch_fwd


def counted_train_flops(model, x) -> float:
    """FLOPs of forward + backward counted by torch's FLOP counter (convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = model(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        out.float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


# ---- workers (run in a subprocess) ------------------------------------------------------------------
def _proc_status_gb(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak(device) -> float:
    """Forget the peak so far (model building, weight mapping) and return the resident size now."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**30
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:  # "5" resets the peak RSS (VmHWM), Linux >= 4.0
        f.write("5")
    return _proc_status_gb("VmRSS")


def _peak_memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return _proc_status_gb("VmHWM")


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype, device, size: int, reps: int = 3) -> float:
    """Best FLOP/s of a ``size x size @ size x size`` product in ``dtype``."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def build(name: str, device):
    """``(model, input shape, analytic FLOPs or None)`` for a benchmark entry."""
    import torch

    from LaMed.models.encoders import create_encoder

    torch.manual_seed(0)
    if name == "dcformer":
        return create_encoder("dcformer_small").to(device), DCFORMER_INPUT, None
    ours = create_encoder("vit3d_base_segvol")  # no CLS: the geometry MONAI's ViT builds without a head
    if name == "vit3d":
        return ours.to(device), VIT_INPUT, vit_train_flops(ours.config)
    from monai.networks.nets import ViT

    cfg = ours.config
    ref = ViT(
        in_channels=cfg.in_channels,
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.hidden_size,
        mlp_dim=cfg.mlp_dim,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        proj_type="perceptron",
        classification=False,
        qkv_bias=cfg.qkv_bias,
    )
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("norm_cross_attn" in k for k in missing), (missing, unexpected)
    del ours
    return ref.to(device), VIT_INPUT, vit_train_flops(cfg)


def train_step(model, x, dtype_name: str, device) -> float:
    """Seconds of one forward + backward (bf16: autocast over fp32 weights)."""
    import torch

    _sync(device)
    t = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype_name == "bf16"):
        out = model(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
    out.float().square().mean().backward()
    _sync(device)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def worker(name: str, dtype_name: str, reps: int, device_name: str, matmul_size: int) -> dict:
    """One model alone in this process: step time, peak memory, fraction of the matmul rate."""
    import torch

    device = torch.device(device_name)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    rate = matmul_rate(dtype, device, matmul_size)
    if name != "dcformer":
        import monai.networks.nets  # noqa: F401  (both ViT workers carry MONAI's import footprint)
    model, shape, flops = build(name, device)
    model.train()
    x = torch.rand(shape, device=device)
    if flops is None:
        flops = counted_train_flops(model, x)
    base = _reset_peak(device)
    times = [train_step(model, x, dtype_name, device) for _ in range(reps + 1)][1:]
    best = min(times)
    return {
        "model": name,
        "dtype": dtype_name,
        "device": device_name,
        "threads": torch.get_num_threads(),
        "step_s": best,
        "steps_s": times,
        "peak_gb": _peak_memory_gb(device),
        "base_gb": base,
        "train_flops": flops,
        "achieved_flops": flops / best,
        "matmul_flops": rate,
        "fraction_of_matmul": flops / best / rate,
    }


def paired(dtypes: list, reps: int, device_name: str) -> dict:
    """ViT3D and MONAI in one process with identical weights: fp32 output difference, then
    interleaved training steps (ours, MONAI, ours, ...) so that both see the same machine load;
    best step time of each per dtype."""
    import torch

    device = torch.device(device_name)
    ours, shape, _ = build("vit3d", device)
    ref, _, _ = build("monai", device)
    x = torch.rand(shape, device=device, generator=torch.Generator(device).manual_seed(1))
    with torch.no_grad():
        result = {"max_abs_diff": (ours.eval()(x) - ref.eval()(x)[0]).abs().max().item()}
    ours.train(), ref.train()
    for dtype_name in dtypes:
        train_step(ours, x, dtype_name, device), train_step(ref, x, dtype_name, device)  # warm-up
        t_ours, t_ref = [], []
        for _ in range(reps):
            t_ours.append(train_step(ours, x, dtype_name, device))
            t_ref.append(train_step(ref, x, dtype_name, device))
        result[dtype_name] = {
            "vit3d_s": min(t_ours),
            "monai_s": min(t_ref),
            "vit3d_steps": t_ours,
            "monai_steps": t_ref,
        }
    return result


# ---- driver --------------------------------------------------------------------------------------
def run_subprocess(args: list) -> dict:
    cmd = [sys.executable, "-m", "Bench.perf.encoders", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models", nargs="+", default=["vit3d", "monai", "dcformer"], choices=["vit3d", "monai", "dcformer"]
    )
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--reps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--no-paired", action="store_true", help="skip the interleaved ViT3D/MONAI process (output check)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        print(json.dumps(worker(a.worker, a.dtypes[0], a.reps, a.device, a.matmul_size)))
        return 0
    if a.paired:
        print(json.dumps(paired(a.dtypes, a.reps, a.device)))
        return 0

    models = list(a.models)
    if "dcformer" in models:
        from LaMed.models.encoders import list_encoders

        if "dcformer_small" not in list_encoders():
            print("dcformer_small is not registered yet: skipping DCFormer")
            models.remove("dcformer")
    results = {}
    print(f"separate processes (peak memory, fraction of the matmul rate); batch 1, {a.device}")
    for dtype in a.dtypes:
        for name in models:
            r = run_subprocess(
                [
                    "--worker",
                    name,
                    "--dtypes",
                    dtype,
                    "--reps",
                    str(a.reps),
                    "--device",
                    a.device,
                    "--matmul-size",
                    str(a.matmul_size),
                ]
            )
            results[name, dtype] = r
            print(
                f"  {name:9s} {dtype}: step {r['step_s']:.2f} s  peak {r['peak_gb']:.2f} GiB (before step "
                f"{r['base_gb']:.2f})  {r['achieved_flops'] / 1e9:.0f} GFLOP/s = {r['fraction_of_matmul']:.2f} of "
                f"matmul ({r['matmul_flops'] / 1e9:.0f} GFLOP/s, {r['threads']} threads)",
                flush=True,
            )
    pair = None
    if not a.no_paired and {"vit3d", "monai"} <= set(models):
        pair = run_subprocess(["--paired", "--dtypes", *a.dtypes, "--reps", str(a.reps), "--device", a.device])
        ok = "ok" if pair["max_abs_diff"] <= 1e-4 else "MISSED"
        print(
            f"one process, steps interleaved: ViT3D vs MONAI output max |diff| (fp32) {pair['max_abs_diff']:.2e} "
            f"[target <= 1e-4: {ok}]"
        )
        for dtype in a.dtypes:
            t = pair[dtype]
            print(f"  {dtype}: ViT3D {t['vit3d_s']:.2f} s, MONAI {t['monai_s']:.2f} s per step")

    print(
        "\nsummary (targets: >= 1.5x faster than MONAI, <= 0.70 of its peak memory, fp32 >= 0.85 / bf16 >= 0.70 of matmul)"
    )
    for dtype in a.dtypes:
        ours, ref = results.get(("vit3d", dtype)), results.get(("monai", dtype))
        if ours and ref:
            sep = ref["step_s"] / ours["step_s"]
            inter = f", interleaved {pair[dtype]['monai_s'] / pair[dtype]['vit3d_s']:.2f}x" if pair else ""
            print(
                f"  ViT3D-B {dtype}: {sep:.2f}x faster than MONAI (separate processes{inter}), "
                f"{ours['peak_gb'] / ref['peak_gb']:.2f} of its peak memory, "
                f"{ours['fraction_of_matmul']:.2f} of the matmul rate (MONAI {ref['fraction_of_matmul']:.2f})"
            )
        if ("dcformer", dtype) in results:
            d = results["dcformer", dtype]
            print(
                f"  DCFormer-small {dtype} at {DCFORMER_INPUT}: {d['step_s']:.2f} s/step, {d['peak_gb']:.2f} GiB, "
                f"{d['fraction_of_matmul']:.2f} of the matmul rate"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
