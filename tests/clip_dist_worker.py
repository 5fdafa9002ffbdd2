"""Workers and process-group helpers of the multi-process tests (a module of its own so that each
spawned process imports only torch and the modules under test, not the test module's imports).

``LaMed.models.clip.losses`` and ``LaMed.train.distributed`` are loaded from their files: importing
them as package members would run ``LaMed/models/clip/__init__.py``, which imports transformers
(seconds per process) for the Auto registration that these tests do not need.

Why the store lives in the test process (``host_store``): with ``init_method="tcp://..."`` rank 0
hosts the rendezvous store, so when rank 0 finishes first and exits, rank 1's store client loses
its server in the middle of its own teardown, and a gloo rank could die at exit with SIGABRT
("terminate called without an active exception"). A store hosted by the parent outlives every
rank; binding it to port 0 also lets the OS pick a free port atomically (no race between picking a
"free" port and binding it, no fixed port shared with a concurrent run). Each rank then leaves
through ``LaMed.train.distributed.destroy_process_group`` (barrier, then destroy).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F

_LAMED = Path(__file__).resolve().parents[1] / "LaMed"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_losses():
    return _load("lamed_clip_losses_standalone", _LAMED / "models" / "clip" / "losses.py")


def load_distributed():
    return _load("lamed_train_distributed_standalone", _LAMED / "train" / "distributed.py")


def host_store():
    """A rendezvous store served by the calling (parent) process on a free port: ``(store, port)``.

    Keep the returned store referenced until the spawned ranks have joined.
    """
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    return store, store.port


def join_group(rank: int, world: int, port: int) -> None:
    """Join the gloo group of ``world`` ranks whose store the parent serves on ``port``."""
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=False)
    torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=world)


def leave_group() -> None:
    """Barrier, then destroy this rank's group (the library's own teardown)."""
    load_distributed().destroy_process_group()


def features(n: int, p: int, seed: int):
    """The same L2-normalised float64 pairs as ``test_clip_losses.features``."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, p, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(n, p, generator=g, dtype=torch.float64), dim=-1)
    return x, y


def two_rank_worker(rank: int, port: int, out_dir: str, b: int, p: int, seed: int, world: int = 2) -> None:
    """Rank ``rank`` holds rows ``[rank*b, (rank+1)*b)``; saves ``{name: (loss, d loss/d img, d loss/d txt)}``."""
    losses = load_losses()
    join_group(rank, world, port)
    try:
        x_all, y_all = features(b * world, p, seed)
        s_nce, s_sig = torch.tensor(6.0, dtype=torch.float64), torch.tensor(8.0, dtype=torch.float64)
        bias = torch.tensor(-2.0, dtype=torch.float64)
        cases = {
            "infonce_global": lambda x, y: losses.infonce_loss(x, y, s_nce)[0],
            "infonce_local": lambda x, y: losses.infonce_loss(x, y, s_nce, local_loss=True)[0],
            "siglip_global": lambda x, y: losses.siglip_loss(x, y, s_sig, bias, symmetric=True)[0],
            "siglip_local": lambda x, y: losses.siglip_loss(x, y, s_sig, bias, local_loss=True)[0],
        }
        results = {}
        for name, fn in cases.items():
            x = x_all[rank * b : (rank + 1) * b].clone().requires_grad_()
            y = y_all[rank * b : (rank + 1) * b].clone().requires_grad_()
            loss = fn(x, y)
            loss.backward()
            results[name] = (loss.detach(), x.grad, y.grad)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        leave_group()


def gather_worker(rank: int, world: int, port: int, out: str) -> None:
    """``test_train_distributed``'s worker: rank r holds rows [[r, r+1], [r+10, r+11]] (B = 2, C = 2)."""
    distributed = load_distributed()
    join_group(rank, world, port)
    try:
        x = torch.tensor([[rank, rank + 1.0], [rank + 10.0, rank + 11.0]], requires_grad=True)
        g = distributed.gather_with_grad(x)
        w = torch.arange(g.numel(), dtype=torch.float32).reshape(g.shape)  # the same weights on every rank
        (g * w).sum().backward()
        torch.save({"gathered": g.detach(), "grad": x.grad}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        distributed.destroy_process_group()
