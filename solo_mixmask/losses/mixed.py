"""The MixMask / Un-Mix loss: a mixed image, ``lam`` of its own image filled from a partner,
matches its own target with weight ``lam`` and its filler's with ``1 - lam``, under any per-pair
loss (MoCo's InfoNCE against the queue, BYOL's normalised regression)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from solo_mixmask.core.mixing import check_partner
from solo_mixmask.errors import check_argument

__all__ = ["PairLoss", "mixed_loss"]

#: A method's loss of one prediction against one target, per sample:
#: ``(pred (n, d), target (n, d)) -> (n,)``; the target is a stop-gradient quantity.
PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mixed_loss(
    pair_loss: PairLoss,
    pred: torch.Tensor,
    target: torch.Tensor,
    lam: torch.Tensor | float,
    partner: torch.Tensor,
) -> torch.Tensor:
    """Float32 scalar ``1/n sum_j [lam[j] l(pred[j], target[j]) + (1 - lam[j]) l(pred[j],
    target[partner[j]])]`` for pred, target (n, d) (target detached), lam float, () or (n,),
    partner long (n,) and ``l = pair_loss`` per sample: the paper's ``lam L(q_mix, k) + (1 - lam)
    L(q_mix_partner, k)``, summed over the mixed images j rather than the keys i = partner[j]."""
    n = pred.shape[0]
    if pred.dim() != 2 or target.shape != pred.shape:
        raise ValueError(
            f"pred.shape={tuple(pred.shape)}, target.shape={tuple(target.shape)} are not "
            "allowed: expected both (n, d)"
        )
    check_partner(partner, n)
    if isinstance(lam, torch.Tensor):
        lam = lam.detach().to(device=pred.device, dtype=torch.float32)
    else:  # a fill kernel, not a host-to-device copy
        lam = torch.full((), float(lam), dtype=torch.float32, device=pred.device)
    ok = lam.dim() == 0 or tuple(lam.shape) == (n,)
    check_argument(ok, "lam.shape", tuple(lam.shape), f"a float, () or ({n},)")
    target = target.detach()
    own, filler = pair_loss(pred, target), pair_loss(pred, target[partner])
    if own.shape != (n,) or filler.shape != (n,):
        raise ValueError(
            f"pair_loss returned shape {tuple(own.shape)}: expected per-sample losses ({n},) "
            "(reduction='none')"
        )
    return (lam * own.float() + (1.0 - lam) * filler.float()).mean()
