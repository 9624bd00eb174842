"""BYOL's regression loss between a prediction and a (stop-gradient) target projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["byol_loss"]


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``mean(2 - 2 * cos(p, z))`` over the batch; p, z (n, d); z gets no gradient. Scalar."""
    if p.dim() != 2 or z.shape != p.shape:
        raise ValueError(
            f"p.shape={tuple(p.shape)}, z.shape={tuple(z.shape)} are not allowed: expected "
            "both (n, d)"
        )
    cos = F.cosine_similarity(p, z.detach().to(p.dtype), dim=1)
    return (2.0 - 2.0 * cos).mean()
