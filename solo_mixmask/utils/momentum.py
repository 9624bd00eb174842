"""Exponential moving average of the online network into the momentum (key) network."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_tau(step: int, max_steps: int, base_tau: float, final_tau: float) -> float:
    """EMA coefficient at ``step`` of ``max_steps``: ``base_tau`` at 0, ``final_tau`` at the end."""
    if max_steps <= 0:
        return final_tau
    progress = min(max(step / max_steps, 0.0), 1.0)
    return final_tau - (final_tau - base_tau) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(online: nn.Module, momentum: nn.Module, tau: float) -> None:
    """``momentum_param = tau * momentum_param + (1 - tau) * online_param`` for every parameter."""
    mom = [p.data for p in momentum.parameters()]
    onl = [p.data for p in online.parameters()]
    torch._foreach_mul_(mom, tau)
    torch._foreach_add_(mom, onl, alpha=1 - tau)
