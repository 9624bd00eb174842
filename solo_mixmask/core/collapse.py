"""A collapse measure of embeddings: the spread of L2-normalised outputs.

For outputs z (B, d) normalised to unit length, :func:`embedding_std` is the standard deviation
over the batch of each coordinate, averaged over the d coordinates. Unit vectors spread evenly
over the sphere give about ``1/sqrt(d)`` (:func:`spread_std`); outputs that no longer depend on
the image (a collapse) give 0. Since the coordinates' variances add up to ``1 - |mean z|^2``, a
value ``r / sqrt(d)`` means a mean pairwise cosine of at most about ``1 - r^2``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["COLLAPSE_FRACTION", "embedding_std", "is_collapsed", "spread_std"]

#: A run counts as collapsed when its embedding_std is below this fraction of 1/sqrt(d): the
#: mean pairwise cosine of its outputs is then about 0.99 or more. Runs that learn sit far
#: above it (MoCo v2 on CIFAR-10: see docs/MIXMASK_VS_MOCO.md), as do random networks.
COLLAPSE_FRACTION = 0.1


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over the d coordinates of the batch std of ``normalize(z)``: z (B, d), B >= 2 ->
    float32 scalar in [0, 1] (no gradient)."""
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"z.shape={tuple(z.shape)} is not allowed: expected (B, d) with B >= 2")
    unit = F.normalize(z.detach().float(), dim=1)
    return unit.std(dim=0).mean()


def spread_std(dim: int) -> float:
    """``1/sqrt(dim)``: :func:`embedding_std` of outputs spread evenly over the sphere."""
    if dim < 1:
        raise ValueError(f"dim={dim!r} is not allowed: expected an integer >= 1")
    return 1.0 / math.sqrt(dim)


def is_collapsed(std: float, dim: int) -> bool:
    """Whether an :func:`embedding_std` of ``std`` for d = ``dim`` is a collapse (below
    ``COLLAPSE_FRACTION / sqrt(dim)``)."""
    return std < COLLAPSE_FRACTION * spread_std(dim)
