"""Un-Mix: the query is mixed with the reversed batch by mixup (probability p) or CutMix.

lambda ~ Beta(alpha, alpha), recomputed from the clipped CutMix box; the same lambda-weighted loss
as MixMask. Cost: one extra query forward + backward per step.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from solo_mixmask.config import check_number
from solo_mixmask.core.mixing import reversed_partner, sample_unmix_params, unmix
from solo_mixmask.losses.mixed import mixed_moco_loss
from solo_mixmask.methods.base import BaseMomentumMethod
from solo_mixmask.methods.mocov2plus import MoCoV2PlusLogic


class UnmixLogic(MoCoV2PlusLogic):
    """MoCo + an Un-Mix branch (see module docstring)."""

    method_defaults: dict[str, Any] = {
        **MoCoV2PlusLogic.method_defaults,
        "unmix_alpha": 1.0,
        "unmix_prob": 0.5,
    }

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.unmix_alpha = float(cfg.method_kwargs.unmix_alpha)
        self.unmix_prob = float(cfg.method_kwargs.unmix_prob)

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        cfg = super().add_and_assert_specific_cfg(cfg)
        check_number(cfg, "method_kwargs.unmix_alpha", low=0, low_open=True)
        check_number(cfg, "method_kwargs.unmix_prob", low=0, high=1)
        return cfg

    def unmix_branch(
        self, x: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, partner: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        """Un-Mix loss of images ``x`` (B,3,H,W) mixed with ``x[partner]``; returns (loss, lambda)."""
        params = sample_unmix_params(
            self.unmix_alpha,
            self.unmix_prob,
            x.shape[-2],
            x.shape[-1],
            generator=self.ranked_generators().host(),
        )
        x_mix, lam = unmix(x, partner, params)
        q_mix = self.forward(x_mix)["z"]
        return mixed_moco_loss(q_mix, k, queue, lam, partner, self.temperature), params.lam

    def mixed_losses(
        self, batch: list[Any], out: dict[str, Any], queue: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        x = batch[1][0]
        loss, lam = self.unmix_branch(
            x, out["momentum_z"][-1], queue[-1], reversed_partner(x.shape[0], x.device)
        )
        self.log("train_unmix_lambda", lam, on_epoch=True, sync_dist=True)  # type: ignore[attr-defined]
        return {"train_unmix_loss": loss}


class Unmix(UnmixLogic, BaseMomentumMethod):
    """Un-Mix on the standalone engine."""
