"""gather_with_grad: features from every process, with the gradient routed back to each process."""

from __future__ import annotations

import os

import pytest


def test_gather_with_grad_is_identity_in_one_process():
    import torch

    from LaMed.train.distributed import gather_with_grad, rank, world_size

    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x and world_size() == 1 and rank() == 0


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from LaMed.train.distributed import destroy_process_group, gather_with_grad

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # rank r holds rows [[r, r+1], [r+10, r+11]] (B = 2, C = 2)
        x = torch.tensor([[rank, rank + 1.0], [rank + 10.0, rank + 11.0]], requires_grad=True)
        g = gather_with_grad(x)
        w = torch.arange(g.numel(), dtype=torch.float32).reshape(g.shape)  # the same weights on every rank
        (g * w).sum().backward()
        torch.save({"gathered": g.detach(), "grad": x.grad}, f"{out}/rank{rank}.pt")
    finally:
        destroy_process_group()


@pytest.mark.multiproc
def test_gather_with_grad_two_processes(tmp_path):
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, 29641, str(tmp_path)), nprocs=2, join=True)
    expected = torch.tensor([[0.0, 1], [10, 11], [1, 2], [11, 12]])  # rank order, each rank's rows together
    w = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    for r in (0, 1):
        res = torch.load(tmp_path / f"rank{r}.pt")
        assert torch.equal(res["gathered"], expected)
        # d/dx_r of sum over both ranks' losses: each rank's loss contributes w[rows of r]
        assert torch.equal(res["grad"], 2 * w[2 * r:2 * r + 2])
