"""Worker of ``test_clip_losses.py``'s two-process test (a module of its own so that each spawned
process imports only torch and the loss module, not the test module's imports).

``LaMed.models.clip.losses`` is loaded from its file: importing it as a package member would run
``LaMed/models/clip/__init__.py``, which imports transformers (seconds per process) for the Auto
registration that this test does not need.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import torch
import torch.nn.functional as F

_LOSSES = Path(__file__).resolve().parents[1] / "LaMed" / "models" / "clip" / "losses.py"


def load_losses():
    spec = importlib.util.spec_from_file_location("lamed_clip_losses_standalone", _LOSSES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def features(n: int, p: int, seed: int):
    """The same L2-normalised float64 pairs as ``test_clip_losses.features``."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, p, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(n, p, generator=g, dtype=torch.float64), dim=-1)
    return x, y


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_rank_worker(rank: int, port: int, out_dir: str, b: int, p: int, seed: int, world: int = 2) -> None:
    """Rank ``rank`` holds rows ``[rank*b, (rank+1)*b)``; saves ``{name: (loss, d loss/d img, d loss/d txt)}``."""
    losses = load_losses()
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
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
            x = x_all[rank * b:(rank + 1) * b].clone().requires_grad_()
            y = y_all[rank * b:(rank + 1) * b].clone().requires_grad_()
            loss = fn(x, y)
            loss.backward()
            results[name] = (loss.detach(), x.grad, y.grad)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()
