"""BYOL's regression loss between a prediction and a (stop-gradient) target projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["byol_loss"]

REDUCTIONS = ("mean", "none")


def byol_loss(p: torch.Tensor, z: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``2 - 2 * cos(p, z)`` per sample (the squared distance of the L2-normalised vectors).

    p, z: (n, d); z is a target and gets no gradient. Computed in p's dtype. Returns the mean
    over the batch (a scalar) for ``reduction='mean'`` or per-sample losses (n,) for ``'none'``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not allowed: expected one of {REDUCTIONS}")
    if p.dim() != 2 or z.shape != p.shape:
        raise ValueError(
            f"p.shape={tuple(p.shape)}, z.shape={tuple(z.shape)} are not allowed: expected "
            "both (n, d)"
        )
    cos = F.cosine_similarity(p, z.detach().to(p.dtype), dim=1)
    loss = 2.0 - 2.0 * cos
    return loss.mean() if reduction == "mean" else loss
