"""MoCo's InfoNCE loss: one positive key against a queue of negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["moco_logits", "moco_loss"]

REDUCTIONS = ("mean", "none")


def _check_temperature(temperature: float) -> None:
    if not float(temperature) > 0.0:
        raise ValueError(f"temperature={temperature!r} is not allowed: expected a float > 0")


def moco_logits(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Logits (n, 1 + K): column 0 is ``q.k``, columns 1.. are ``q @ queue``, all / temperature.

    q, k: (n, d), L2-normalised here; k is a target and gets no gradient. queue: (d, K) of keys
    assumed already normalised, detached. Computed in q's dtype.
    """
    _check_temperature(temperature)
    if q.dim() != 2 or k.shape != q.shape:
        raise ValueError(
            f"q.shape={tuple(q.shape)}, k.shape={tuple(k.shape)} are not allowed: expected "
            "both (n, d)"
        )
    if queue.dim() != 2 or queue.shape[0] != q.shape[1]:
        raise ValueError(
            f"queue.shape={tuple(queue.shape)} is not allowed: expected ({q.shape[1]}, K)"
        )
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach().to(q.dtype), dim=1)
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.detach().to(q.dtype)
    return torch.cat([pos, neg], dim=1) / temperature


def moco_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``moco_logits`` with target 0 (in float32).

    Returns a scalar for ``reduction='mean'`` or per-sample losses (n,) for ``'none'``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not allowed: expected one of {REDUCTIONS}")
    logits = moco_logits(q, k, queue, temperature).float()
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction=reduction)
