"""gather_with_grad: features from every process, with the gradient routed back to each process."""

from __future__ import annotations

import pytest


def test_gather_with_grad_is_identity_in_one_process():
    import torch

    from LaMed.train.distributed import gather_with_grad, rank, world_size

    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x and world_size() == 1 and rank() == 0


@pytest.mark.multiproc
def test_gather_with_grad_two_processes(tmp_path):
    import torch
    import torch.multiprocessing as mp
    from clip_dist_worker import gather_worker, host_store

    store, port = host_store()  # served by this process, on a port the OS picked (see clip_dist_worker)
    mp.spawn(gather_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    del store
    expected = torch.tensor([[0.0, 1], [10, 11], [1, 2], [11, 12]])  # rank order, each rank's rows together
    w = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    for r in (0, 1):
        res = torch.load(tmp_path / f"rank{r}.pt")
        assert torch.equal(res["gathered"], expected)
        # d/dx_r of sum over both ranks' losses: each rank's loss contributes w[rows of r]
        assert torch.equal(res["grad"], 2 * w[2 * r : 2 * r + 2])
