"""Exponential moving average of the online network into the momentum (key) network."""

from __future__ import annotations

import math
from collections.abc import Iterable

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


@torch.no_grad()
def ema_update_pairs(
    pairs: Iterable[tuple[nn.Module, nn.Module]], tau: float, foreach_lerp: bool = True
) -> None:
    """:func:`ema_update` of every (online, momentum) pair in ``pairs``.

    ``foreach_lerp``: one ``torch._foreach_lerp_(momentum, online, 1 - tau)`` over the
    parameters of all pairs together (``m + (1 - tau) * (o - m)``: the same average, rounded
    once per element instead of twice; a single fused kernel launch per group of tensors
    instead of two per pair). False: :func:`ema_update` pair by pair (the former path).
    """
    pairs = list(pairs)
    if not foreach_lerp:
        for online, momentum in pairs:
            ema_update(online, momentum, tau)
        return
    mom: list[torch.Tensor] = []
    onl: list[torch.Tensor] = []
    for online, momentum in pairs:
        mom += [p.data for p in momentum.parameters()]
        onl += [p.data for p in online.parameters()]
    if mom:
        torch._foreach_lerp_(mom, onl, 1.0 - tau)
