"""Un-Mix + MixMask ("both" in the seed): two mixed queries per step.

The Un-Mix branch pairs each image with the reversed batch; the MixMask branch with a random
permutation (so the two branches mix different pairs). Cost: two extra query passes per step.
"""

from __future__ import annotations

from typing import Any

import torch

from solo_mixmask.core.mixing import random_partner, reversed_partner
from solo_mixmask.methods.base import BaseMomentumMethod
from solo_mixmask.methods.mixmask import MixMaskLogic
from solo_mixmask.methods.unmix import UnmixLogic


class UnmixMixMaskLogic(UnmixLogic, MixMaskLogic):
    """MoCo + Un-Mix branch + MixMask branch."""

    method_defaults: dict[str, Any] = {**MixMaskLogic.method_defaults, **UnmixLogic.method_defaults}

    def mixed_losses(
        self, batch: list[Any], out: dict[str, Any], queue: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        x = batch[1][0]
        n, k, k_queue = x.shape[0], out["momentum_z"][-1], queue[-1]
        unmix_loss, unmix_lam = self.unmix_branch(x, k, k_queue, reversed_partner(n, x.device))
        permutation = random_partner(n, generator=self.mixing_generator(x.device), device=x.device)
        mask_loss, mask_lam = self.mask_branch(x, k, k_queue, permutation)
        self.log_dict(
            {"train_unmix_lambda": unmix_lam, "train_mask_lambda": mask_lam},
            on_epoch=True,
            sync_dist=True,
        )  # type: ignore[attr-defined]
        return {"train_unmix_loss": unmix_loss, "train_mask_loss": mask_loss}


class UnmixMixMask(UnmixMixMaskLogic, BaseMomentumMethod):
    """Un-Mix + MixMask on the standalone engine."""
