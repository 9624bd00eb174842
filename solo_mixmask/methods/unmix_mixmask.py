"""Un-Mix + MixMask ("both" in the seed): two mixed queries per step.

The Un-Mix branch pairs each image with the reversed batch; the MixMask branch with a random
permutation (so the two branches mix different pairs). :class:`UnmixMaskMixingLogic` is that
recipe for any momentum method; :class:`UnmixMixMaskLogic` puts it on MoCo (METHOD.md
section 4). Cost: two extra query passes per step.
"""

from __future__ import annotations

from typing import Any

import torch

from solo_mixmask.core.mixing import random_partner, reversed_partner
from solo_mixmask.losses.mixed import PairLoss
from solo_mixmask.methods.base import BaseMomentumMethod
from solo_mixmask.methods.mixmask import MASK_DEFAULTS, MaskMixingLogic
from solo_mixmask.methods.mocov2plus import MoCoV2PlusLogic
from solo_mixmask.methods.registry import MethodEntry, SoloName
from solo_mixmask.methods.unmix import UNMIX_DEFAULTS, UnmixMixingLogic


class UnmixMaskMixingLogic(UnmixMixingLogic, MaskMixingLogic):
    """Mixin: an Un-Mix branch and a MixMask branch, for any method."""

    def mixed_losses(
        self, x: torch.Tensor, target: torch.Tensor, pair_loss: PairLoss
    ) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        unmix_loss, unmix_lam = self.unmix_branch(
            x, reversed_partner(n, x.device), target, pair_loss
        )
        permutation = random_partner(n, generator=self.mixing_generator(x.device), device=x.device)
        mask_loss, mask_lam = self.mask_branch(x, permutation, target, pair_loss)
        self.log_dict(
            {"train_unmix_lambda": unmix_lam.mean(), "train_mask_lambda": mask_lam.mean()},
            on_epoch=True,
            sync_dist=True,
        )
        return {"train_unmix_loss": unmix_loss, "train_mask_loss": mask_loss}


class UnmixMixMaskLogic(UnmixMaskMixingLogic, MoCoV2PlusLogic):
    """MoCo + Un-Mix branch + MixMask branch."""

    method_defaults: dict[str, Any] = {
        **MoCoV2PlusLogic.method_defaults,
        **MASK_DEFAULTS,
        **UNMIX_DEFAULTS,
    }


class UnmixMixMask(UnmixMixMaskLogic, BaseMomentumMethod):
    """Un-Mix + MixMask on the standalone engine."""


ENTRY = MethodEntry(
    "unmix_mixmask",
    method=UnmixMixMask,
    logic=UnmixMixMaskLogic,
    solo_base="BaseMomentumMethod",
    solo_names=(SoloName("unmix_mixmask", "UnmixMixMask"),),
)
