"""Un-Mix: the query is mixed with the reversed batch by mixup (probability p) or CutMix.

lambda ~ Beta(alpha, alpha), recomputed from the clipped CutMix box; the same lambda-weighted loss
as MixMask. :class:`UnmixMixingLogic` is that branch for any momentum method; :class:`UnmixLogic`
puts it on MoCo. Cost: one extra query forward + backward per step.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from solo_mixmask.config import check_number
from solo_mixmask.core.mixing import reversed_partner, sample_unmix_params, unmix
from solo_mixmask.losses.mixed import PairLoss
from solo_mixmask.methods.base import BaseMomentumMethod
from solo_mixmask.methods.mixed_branch import MixedBranchLogic
from solo_mixmask.methods.mocov2plus import MoCoV2PlusLogic
from solo_mixmask.methods.registry import MethodEntry, SoloName

#: Un-Mix's ``method_kwargs`` and their defaults (lambda ~ Beta(1, 1), mixup half the time).
UNMIX_DEFAULTS: dict[str, Any] = {"unmix_alpha": 1.0, "unmix_prob": 0.5}


class UnmixMixingLogic(MixedBranchLogic):
    """Mixin: the Un-Mix branch for any method that defines ``mixed_output``.

    Reads ``method_kwargs`` unmix_alpha and unmix_prob (the class's ``method_defaults`` must
    include :data:`UNMIX_DEFAULTS`); one mixup / CutMix draw per batch from the host generator.
    """

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

    def unmix_mix(
        self, x: torch.Tensor, partner: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One Un-Mix draw applied to x (B,3,H,W) and ``x[partner]``; (x_mix, lambda (B,))."""
        params = sample_unmix_params(
            self.unmix_alpha,
            self.unmix_prob,
            x.shape[-2],
            x.shape[-1],
            generator=self.ranked_generators().host(),
        )
        return unmix(x, partner, params)

    def unmix_branch(
        self, x: torch.Tensor, partner: torch.Tensor, target: torch.Tensor, pair_loss: PairLoss
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Un-Mix branch: :meth:`mixed_branch` with :meth:`unmix_mix`; (loss, lambda (B,))."""
        return self.mixed_branch(x, partner, self.unmix_mix, target, pair_loss)

    def mixed_losses(
        self, x: torch.Tensor, target: torch.Tensor, pair_loss: PairLoss
    ) -> dict[str, torch.Tensor]:
        """Un-Mix's recipe: x mixed with the reversed batch."""
        loss, lam = self.unmix_branch(x, reversed_partner(x.shape[0], x.device), target, pair_loss)
        self.log("train_unmix_lambda", lam.mean(), on_epoch=True, sync_dist=True)
        return {"train_unmix_loss": loss}


class UnmixLogic(UnmixMixingLogic, MoCoV2PlusLogic):
    """MoCo + an Un-Mix branch (see module docstring)."""

    method_defaults: dict[str, Any] = {**MoCoV2PlusLogic.method_defaults, **UNMIX_DEFAULTS}


class Unmix(UnmixLogic, BaseMomentumMethod):
    """Un-Mix on the standalone engine."""


ENTRY = MethodEntry(
    "unmix",
    method=Unmix,
    logic=UnmixLogic,
    solo_base="BaseMomentumMethod",
    solo_names=(SoloName("unmix", "Unmix"),),
)
