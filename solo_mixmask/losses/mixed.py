"""The MixMask / Un-Mix lambda-weighted MoCo loss for mixed queries."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from solo_mixmask.losses.moco import _check_temperature

__all__ = ["mixed_moco_loss"]


def mixed_moco_loss(
    q_mix: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    lam: torch.Tensor | float,
    partner: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Lambda-weighted InfoNCE of mixed queries against both source keys. Scalar (float32).

    q_mix (n, d): queries of the mixed images, image j being ``lam[j]`` of x[j] filled with
    x[partner[j]]; k (n, d): keys of the unmixed images (no gradient); queue (d, K): negatives
    (normalised, no gradient); lam: float or (n,) float; partner: long (n,). With
    ``l(q, k') = -log(exp(q.k'/T) / (exp(q.k'/T) + sum_m exp(q.queue_m/T)))``:

        loss = 1/n sum_j [ lam[j] l(q_mix[j], k[j]) + (1 - lam[j]) l(q_mix[j], k[partner[j]]) ]

    This is the paper's ``lam L(q_mix, k) + (1 - lam) L(q_mix_partner, k)``: with
    ``inv = inverse_permutation(partner)``, the mixed image whose filler was image i is
    ``j = inv[i]``, so the partner term ``1/n sum_i (1 - lam[inv[i]]) l(q_mix[inv[i]], k[i])``
    becomes, substituting the bijection j = inv[i] (i = partner[j]),
    ``1/n sum_j (1 - lam[j]) l(q_mix[j], k[partner[j]])``. For the reversed batch
    ``inv = partner`` and q_mix_partner is q_mix reversed. Both terms share the negatives
    ``q_mix @ queue``, computed once.
    """
    _check_temperature(temperature)
    n = q_mix.shape[0]
    if q_mix.dim() != 2 or k.shape != q_mix.shape:
        raise ValueError(
            f"q_mix.shape={tuple(q_mix.shape)}, k.shape={tuple(k.shape)} are not allowed: "
            "expected both (n, d)"
        )
    if queue.dim() != 2 or queue.shape[0] != q_mix.shape[1]:
        raise ValueError(
            f"queue.shape={tuple(queue.shape)} is not allowed: expected ({q_mix.shape[1]}, K)"
        )
    if partner.dim() != 1 or partner.shape[0] != n:
        raise ValueError(f"partner.shape={tuple(partner.shape)} is not allowed: expected ({n},)")
    if isinstance(lam, torch.Tensor):
        lam = lam.detach().to(device=q_mix.device, dtype=torch.float32)
    else:  # a fill kernel, not a host-to-device copy
        lam = torch.full((), float(lam), dtype=torch.float32, device=q_mix.device)
    if lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] != n):
        raise ValueError(
            f"lam.shape={tuple(lam.shape)} is not allowed: expected a float, () or ({n},)"
        )
    q = F.normalize(q_mix, dim=1)
    keys = F.normalize(k.detach().to(q.dtype), dim=1)
    pos_own = (q * keys).sum(dim=1).float() / temperature
    pos_partner = (q * keys[partner]).sum(dim=1).float() / temperature
    neg = (q @ queue.detach().to(q.dtype)).float() / temperature
    lse_neg = torch.logsumexp(neg, dim=1)
    loss_own = torch.logaddexp(pos_own, lse_neg) - pos_own
    loss_partner = torch.logaddexp(pos_partner, lse_neg) - pos_partner
    return (lam * loss_own + (1.0 - lam) * loss_partner).mean()
