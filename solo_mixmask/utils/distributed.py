"""Helpers that work the same with and without torch.distributed."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def evaluation_share(size: int, rank: int, world_size: int) -> range:
    """The items of ``range(size)`` that rank ``rank`` of ``world_size`` evaluates: a contiguous
    block, the blocks of ranks 0, 1, ... following each other, so every item is in exactly one
    share and the rank-ordered gather of the shares is the one-process order. Shares differ by
    at most one item; none is empty when ``size >= world_size``."""
    return range(rank * size // world_size, (rank + 1) * size // world_size)


class UnpaddedDistributedSampler(DistributedSampler):
    """This rank's :func:`evaluation_share` of ``dataset``, in order, not padded.

    ``DistributedSampler`` pads the shares to equal lengths with repeated items, and a repeated
    k-NN memory image votes twice. Being a ``DistributedSampler``, Lightning (2.1 to 2.6) leaves
    it in place instead of injecting its padding one into an evaluation loader under DDP; the
    ranks then run different numbers of batches (at most one apart).
    """

    def __init__(self, dataset: Dataset, rank: int, world_size: int):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        self.share = evaluation_share(len(dataset), rank, world_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(self.share)

    def __len__(self) -> int:
        return len(self.share)


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
