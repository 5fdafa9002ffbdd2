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


def destroy_process_group() -> None:
    """Tear down the default process group if one exists (avoids exit-time aborts under gloo)."""
    if is_distributed():
        try:
            torch.distributed.barrier()
        except Exception:  # noqa: BLE001 - a peer may already be gone; still destroy ours
            pass
        torch.distributed.destroy_process_group()
