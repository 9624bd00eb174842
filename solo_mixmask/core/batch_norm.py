"""BatchNorm as MoCo trains it on one device: split statistics and shuffled keys.

With one BatchNorm over the whole device batch, the batch statistics tell the network which
images share a batch, and a contrastive loss whose positives share the batch and whose
negatives (the queue) do not can be lowered through them instead of through the images
(MoCo, "Shuffling BN"). Multi-GPU MoCo avoids it with per-GPU BatchNorm and keys shuffled across
GPUs; on one device the same is had by

- :class:`SplitBatchNorm2d`: training statistics per group of ``B / num_splits`` images,
  running statistics averaged over the groups; in eval mode an ordinary ``BatchNorm2d``. Its parameters and buffers are those of
  ``nn.BatchNorm2d`` (same ``state_dict`` keys and shapes), so checkpoints and exports see an
  ordinary BatchNorm;
- :func:`shuffled_forward`: the key images go through the momentum network in a random order
  (across every process's batch under DDP), so that a query and its key fall into different
  groups, and the outputs are put back in the original order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from solo_mixmask.core.mixing import inverse_permutation

__all__ = ["SplitBatchNorm2d", "shuffled_forward", "split_batch_norms"]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are taken over ``num_splits`` groups of images.

    Input (B, C, H, W) with B divisible by s = ``num_splits`` (a batch that is not, such as one
    that lost unreadable images, uses gcd(B, s) groups); group j holds the images
    ``j, j + s, j + 2s, ...`` (so that the reshape to (B/s, s*C, H, W) is free for contiguous
    inputs). Each group is normalised with its own mean and biased variance, then scaled by the
    shared ``weight`` and ``bias`` (one ``F.batch_norm`` call over all groups). The running mean
    and unbiased variance move towards the groups' averages with ``momentum``, as one
    ``BatchNorm2d`` call per group followed by averaging would. Eval mode (or
    ``num_splits == 1``) is ``BatchNorm2d``. The output keeps the input's memory format.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs: Any):
        super().__init__(num_features, **kwargs)
        if not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f"num_splits={num_splits!r} is not allowed: expected an int >= 1")
        self.num_splits = num_splits

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d, num_splits: int) -> SplitBatchNorm2d:
        """A split copy of ``bn`` with its settings, sharing (not copying) its tensors."""
        split = cls(
            bn.num_features,
            num_splits,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
        )
        for name, tensor in [*bn.named_parameters(recurse=False), *bn.named_buffers(recurse=False)]:
            setattr(split, name, tensor)
        split.train(bn.training)
        return split

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"input shape {tuple(x.shape)} is not allowed: expected (B, C, H, W)")
        n, c = x.shape[0], x.shape[1]
        # a batch that lost unreadable images may not divide: gcd(B, num_splits) groups then
        s = math.gcd(n, self.num_splits)
        if s == 1:
            return super().forward(x)
        running_mean, running_var = self.running_mean, self.running_var
        mean = var = None
        factor = 0.0
        if self.track_running_stats and running_mean is not None and running_var is not None:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            # momentum None: cumulative moving average, as BatchNorm2d
            factor = (
                1.0 / float(self.num_batches_tracked)
                if self.momentum is None
                else float(self.momentum)
            )
            mean, var = running_mean.repeat(s), running_var.repeat(s)
        y = F.batch_norm(
            x.reshape(n // s, s * c, *x.shape[2:]),
            mean,
            var,
            self.weight.repeat(s) if self.affine else None,
            self.bias.repeat(s) if self.affine else None,
            True,
            factor,
            self.eps,
        ).reshape(x.shape)
        if running_mean is not None and running_var is not None and mean is not None:
            with torch.no_grad():
                running_mean.copy_(mean.view(s, c).mean(dim=0))
                running_var.copy_(var.view(s, c).mean(dim=0))  # type: ignore[union-attr]
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last)
        return y


def split_batch_norms(module: nn.Module, num_splits: int) -> int:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by a :class:`SplitBatchNorm2d` that
    shares its tensors (so an optimiser or EMA built before still sees them); returns how many
    were replaced. ``num_splits == 1`` changes nothing."""
    if num_splits == 1:
        return 0
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(parent, name, SplitBatchNorm2d.from_batch_norm(child, num_splits))
                replaced += 1
    return replaced


def shuffled_forward(
    forward: Callable[[torch.Tensor], dict[str, Any]],
    x: torch.Tensor,
    generator: torch.Generator,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """``forward`` of the images x (B, ...) taken in a random order, outputs in x's order.

    Every tensor of ``forward``'s dict whose first dimension is the batch is un-shuffled;
    other values pass through. Single process (``world == 1``): x is permuted with
    ``generator``. Under DDP: ``gather(t)`` concatenates every process's t along dim 0 in rank
    order (the processes may hold different B); ``generator`` must draw the same permutation on
    every process; each process forwards as many images of the shuffled global batch as it
    holds, and gets its own images' outputs back.
    """
    n = x.shape[0]
    if world == 1:
        perm = torch.randperm(n, device=x.device, generator=generator)
        inverse = inverse_permutation(perm)
        out = forward(x[perm])
        return {k: v[inverse] if _batched(v, n) else v for k, v in out.items()}
    if gather is None:
        raise ValueError(f"world={world} needs a gather function")
    owners = gather(torch.full((n,), rank, device=x.device, dtype=torch.long))
    start = int((owners < rank).sum())  # where this process's images sit in the global batch
    perm = torch.randperm(owners.numel(), device=x.device, generator=generator)
    mine = slice(start, start + n)
    out = forward(gather(x)[perm[mine]])
    inverse = inverse_permutation(perm)
    return {k: gather(v)[inverse[mine]] if _batched(v, n) else v for k, v in out.items()}


def _batched(value: Any, n: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n
