"""MoCo's FIFO queue of negative keys, one queue per view, any batch size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["KeyQueue"]


class KeyQueue(torch.nn.Module):
    """``num_queues`` FIFO queues of ``size`` L2-normalised keys of ``dim`` features.

    Buffers (saved in checkpoints, moved with ``.to``): ``queue`` float (num_queues, dim, size),
    keys stored as columns, initialised with normalised Gaussian noise; ``ptr`` long (1,), the
    column the next key goes to (shared by all queues).
    """

    queue: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, num_queues: int, dim: int, size: int):
        super().__init__()
        for name, value in (("num_queues", num_queues), ("dim", dim), ("size", size)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name}={value!r} is not allowed: expected an integer >= 1")
        self.num_queues, self.dim, self.size = int(num_queues), int(dim), int(size)
        self.register_buffer("queue", F.normalize(torch.randn(num_queues, dim, size), dim=1))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (num_queues, n, dim) as columns at ``ptr``, wrapping around; any n.

        Key j goes to column ``(ptr + j) % size``; when n >= size only the last ``size`` keys
        survive (as if written one by one). ``ptr`` becomes ``(ptr + n) % size``. Runs on the
        queue's device without a host synchronisation.
        """
        if keys.dim() != 3 or keys.shape[0] != self.num_queues or keys.shape[2] != self.dim:
            raise ValueError(
                f"keys.shape={tuple(keys.shape)} is not allowed: expected "
                f"({self.num_queues}, n, {self.dim})"
            )
        n = keys.shape[1]
        if n == 0:
            return
        keep = min(n, self.size)
        first = n - keep  # index of the first key that survives
        offsets = torch.arange(first, n, device=self.ptr.device)
        cols = (self.ptr + offsets) % self.size
        values = keys[:, first:].detach().to(self.queue.dtype).transpose(1, 2)
        self.queue.index_copy_(2, cols, values)
        self.ptr.copy_((self.ptr + n) % self.size)

    def get(self, i: int, clone: bool = True) -> torch.Tensor:
        """Queue ``i`` as (dim, size). A detached copy by default, so that a loss built from it
        survives a later in-place ``enqueue`` before ``backward``."""
        q = self.queue[i].detach()
        return q.clone() if clone else q

    def extra_repr(self) -> str:
        return f"num_queues={self.num_queues}, dim={self.dim}, size={self.size}"
