"""Helpers that work the same with and without torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def gather_no_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``x`` from every rank along ``dim`` (rank order); ``x`` itself when not distributed.

    For keys fed to a queue: no gradient flows through the gather. The ranks may hold different
    sizes along ``dim`` (a batch that lost unreadable images): the sizes are exchanged first
    (one small all-gather and a host sync, under DDP only) and the parts padded to the largest.
    """
    world = world_size()
    if world == 1:
        return x
    size = torch.tensor([x.shape[dim]], dtype=torch.long, device=x.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if x.shape[dim] < longest:
        pad = list(x.shape)
        pad[dim] = longest - x.shape[dim]
        x = torch.cat((x, x.new_zeros(pad)), dim=dim)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, counts)], dim=dim)
