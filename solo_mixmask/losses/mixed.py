"""The MixMask / Un-Mix lambda-weighted loss of mixed views, for any per-pair loss.

A mixed image ``x_mix[j] = lam[j]`` of ``x[j]`` filled from ``x[partner[j]]`` must match its own
target with weight ``lam[j]`` and its filler's target with weight ``1 - lam[j]``. The idea does
not depend on the loss: :func:`mixed_loss` takes the method's own per-pair loss;
:func:`mixed_moco_loss` (InfoNCE against a queue) and :func:`mixed_byol_loss` (BYOL's
normalised regression) are that function with MoCo's and BYOL's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from solo_mixmask.losses.byol import byol_loss
from solo_mixmask.losses.moco import _check_temperature, moco_loss

__all__ = ["PairLoss", "mixed_byol_loss", "mixed_loss", "mixed_moco_loss"]

#: A method's loss of one prediction against one target, per sample:
#: ``(pred (n, d), target (n, d)) -> (n,)``; the target is a stop-gradient quantity.
PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _lambdas(lam: torch.Tensor | float, n: int, device: torch.device) -> torch.Tensor:
    """lam as float32 () or (n,) on ``device``, without gradient."""
    if isinstance(lam, torch.Tensor):
        lam = lam.detach().to(device=device, dtype=torch.float32)
    else:  # a fill kernel, not a host-to-device copy
        lam = torch.full((), float(lam), dtype=torch.float32, device=device)
    if lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] != n):
        raise ValueError(
            f"lam.shape={tuple(lam.shape)} is not allowed: expected a float, () or ({n},)"
        )
    return lam


def mixed_loss(
    pair_loss: PairLoss,
    pred: torch.Tensor,
    target: torch.Tensor,
    lam: torch.Tensor | float,
    partner: torch.Tensor,
) -> torch.Tensor:
    """Lambda-weighted ``pair_loss`` of mixed-view predictions against both sources' targets.

    pred (n, d): the online network's outputs for the mixed images, image j being ``lam[j]`` of
    x[j] filled with x[partner[j]]; target (n, d): the targets of the unmixed images (detached
    here: no gradient); lam: float, () or (n,) (detached); partner: long (n,), any permutation;
    pair_loss: the method's per-sample loss ``(pred, target) -> (n,)``. Returns a float32 scalar:

        loss = 1/n sum_j [ lam[j] l(pred[j], target[j]) + (1 - lam[j]) l(pred[j], target[partner[j]]) ]

    This is the paper's ``lam L(q_mix, k) + (1 - lam) L(q_mix_partner, k)``: with
    ``inv = inverse_permutation(partner)``, the mixed image whose filler was image i is
    ``j = inv[i]``, so the partner term ``1/n sum_i (1 - lam[inv[i]]) l(pred[inv[i]], target[i])``
    becomes, substituting the bijection j = inv[i] (i = partner[j]),
    ``1/n sum_j (1 - lam[j]) l(pred[j], target[partner[j]])``. For the reversed batch
    ``inv = partner`` and q_mix_partner is q_mix reversed.
    """
    n = pred.shape[0]
    if pred.dim() != 2 or target.shape != pred.shape:
        raise ValueError(
            f"pred.shape={tuple(pred.shape)}, target.shape={tuple(target.shape)} are not "
            "allowed: expected both (n, d)"
        )
    if partner.dim() != 1 or partner.shape[0] != n:
        raise ValueError(f"partner.shape={tuple(partner.shape)} is not allowed: expected ({n},)")
    lam = _lambdas(lam, n, pred.device)
    target = target.detach()
    own = pair_loss(pred, target)
    filler = pair_loss(pred, target[partner])
    if own.shape != (n,) or filler.shape != (n,):
        raise ValueError(
            f"pair_loss returned shape {tuple(own.shape)}: expected per-sample losses ({n},) "
            "(reduction='none')"
        )
    return (lam * own.float() + (1.0 - lam) * filler.float()).mean()


def mixed_moco_loss(
    q_mix: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    lam: torch.Tensor | float,
    partner: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """:func:`mixed_loss` with MoCo's InfoNCE: float32 scalar.

    q_mix (n, d): queries of the mixed images; k (n, d): keys of the unmixed images (no
    gradient); queue (d, K): negatives (normalised, no gradient); lam: float or (n,); partner:
    long (n,). The per-pair loss is
    ``l(q, k') = -log(exp(q.k'/T) / (exp(q.k'/T) + sum_m exp(q.queue_m/T)))`` (``moco_loss``
    with ``reduction='none'``); both terms share the same queue and temperature.
    """
    _check_temperature(temperature)
    if queue.dim() != 2 or queue.shape[0] != q_mix.shape[-1]:
        raise ValueError(
            f"queue.shape={tuple(queue.shape)} is not allowed: expected ({q_mix.shape[-1]}, K)"
        )
    info_nce = partial(moco_loss, queue=queue, temperature=temperature, reduction="none")
    return mixed_loss(info_nce, q_mix, k, lam, partner)


def mixed_byol_loss(
    p_mix: torch.Tensor, z: torch.Tensor, lam: torch.Tensor | float, partner: torch.Tensor
) -> torch.Tensor:
    """:func:`mixed_loss` with BYOL's loss: float32 scalar.

    p_mix (n, d): predictor outputs of the mixed images; z (n, d): momentum projections of the
    unmixed images (the targets, no gradient); lam: float or (n,); partner: long (n,). The
    per-pair loss is ``2 - 2 cos(p, z')`` (``byol_loss`` with ``reduction='none'``).
    """
    return mixed_loss(partial(byol_loss, reduction="none"), p_mix, z, lam, partner)
