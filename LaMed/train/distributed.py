"""Small helpers around ``torch.distributed`` that are safe in a single process."""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (B, ...) from every process along dim 0, keeping the autograd graph.

    Returns (world_size * B, ...), rank order, this process's rows at ``rank * B``. The backward
    of ``torch.distributed.nn.functional.all_gather`` sums the incoming gradients over processes
    and returns each process the slice of its own rows, so a contrastive loss over the gathered
    features (the "gather_loss" setting of M3D-CLIP) trains every process's encoder. Every process
    must call it with the same B. In one process it returns ``tensor`` unchanged.
    """
    if not is_distributed() or torch.distributed.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def destroy_process_group(timeout_s: float = 120.0) -> None:
    """Tear down the default process group, if one exists, in step with the other processes.

    Why a barrier first: a process that destroys its group (or exits) while a peer still has a
    collective or a store request in flight closes the sockets under the peer's gloo / store
    threads, and the peer can die at exit with SIGABRT ("terminate called without an active
    exception"). After the barrier every process has finished its collectives, so each tears down
    only its own idle group. Under gloo a ``monitored_barrier`` with a timeout is used so that a
    peer that already died cannot hang the survivors for the default 30 minutes.
    """
    if not is_distributed():
        return
    import datetime

    try:
        if torch.distributed.get_backend() == "gloo":
            torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
        else:
            torch.distributed.barrier()
    except Exception:  # noqa: BLE001 - a peer may already be gone; still destroy ours
        pass
    torch.distributed.destroy_process_group()
