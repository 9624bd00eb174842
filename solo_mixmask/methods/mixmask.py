"""MixMask: part of each query image is filled with a block-masked patchwork of another image.

The mixed view ``x_mix = M * x + (1 - M) * x[partner]`` must match its own target with weight
lambda = mean(M) and its filler's target with weight 1 - lambda (``losses.mixed.mixed_loss``).
:class:`MaskMixingLogic` is that branch for any momentum method (its config keys, checks, masks
and recipe); :class:`MixMaskLogic` puts it on MoCo: ``L = L(q, k) + lam L(q_mix, k) +
(1 - lam) L(q_mix_partner, k)`` with InfoNCE against the queue (METHOD.md section 2).
Cost: one extra query forward + backward per step.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from solo_mixmask.config import check_bool, check_choice, check_number, config_warning, crop_size
from solo_mixmask.core.masks import MASK_TYPES, MaskBank, target_cells
from solo_mixmask.core.mixing import mix_with_masks, reversed_partner
from solo_mixmask.errors import ConfigError
from solo_mixmask.losses.mixed import PairLoss
from solo_mixmask.methods.base import BaseMomentumMethod
from solo_mixmask.methods.mixed_branch import MixedBranchLogic
from solo_mixmask.methods.mocov2plus import MoCoV2PlusLogic
from solo_mixmask.methods.registry import MethodEntry, SoloName

#: MixMask's ``method_kwargs`` and their defaults (the seed's G = 8, ratio 0.5, block masks).
MASK_DEFAULTS: dict[str, Any] = {
    "grid_size": 8,
    "mask_ratio": 0.5,
    "mask_type": "block",
    "per_sample_masks": False,
}


def check_mask_config(cfg: DictConfig) -> None:
    """Check MixMask's ``method_kwargs`` (defaults already filled); ConfigError or a warning."""
    check_number(cfg, "method_kwargs.mask_ratio", low=0, high=1, low_open=True, high_open=True)
    check_choice(cfg, "method_kwargs.mask_type", MASK_TYPES)
    check_bool(cfg, "method_kwargs.per_sample_masks")
    smallest = (
        min(int(a.get("crop_size", 32)) for a in cfg.augmentations)
        if cfg.augmentations
        else crop_size(cfg)
    )
    low = 2 if cfg.method_kwargs.mask_type == "discrete" else 1
    grid = cfg.method_kwargs.grid_size
    if not isinstance(grid, int) or isinstance(grid, bool) or not low <= grid <= smallest:
        raise ConfigError(
            "method_kwargs.grid_size",
            grid,
            f"an integer in [{low}, {smallest}] (the crop size in pixels)",
        )
    # Block masks set round(ratio * G^2) cells: 0 or all of them make lambda always 0 or 1,
    # so the mixed image is just one of the two images. (Discrete masks redraw all-on and
    # all-off masks, so their lambda stays strictly between 0 and 1.)
    ratio, cells = cfg.method_kwargs.mask_ratio, grid * grid
    if cfg.method_kwargs.mask_type == "block" and target_cells(grid, ratio) in (0, cells):
        config_warning(
            "method_kwargs.mask_ratio",
            ratio,
            f"sets {target_cells(grid, ratio)} of {cells} cells of the {grid}x{grid} grid "
            f"(method_kwargs.grid_size={grid}): lambda is always "
            f"{target_cells(grid, ratio) // cells}, the MixMask branch mixes nothing",
        )


class MaskMixingLogic(MixedBranchLogic):
    """Mixin: the MixMask branch for any method (MoCo, BYOL) that defines ``mixed_output``.

    Reads ``method_kwargs`` grid_size, mask_ratio, mask_type, per_sample_masks (the class's
    ``method_defaults`` must include :data:`MASK_DEFAULTS`); masks come from a ``MaskBank``
    saved with the generators.
    """

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.grid_size = int(kw.grid_size)
        self.mask_ratio = float(kw.mask_ratio)
        self.mask_type = str(kw.mask_type)
        self.per_sample_masks = bool(kw.per_sample_masks)
        # masks are drawn in bulk: one draw costs the same kernel launches for 1 or 4096 masks
        self.mask_bank = MaskBank(self.grid_size, self.mask_ratio, self.mask_type)
        self.generators.attach("mask_bank", self.mask_bank)

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        cfg = super().add_and_assert_specific_cfg(cfg)
        check_mask_config(cfg)
        return cfg

    def mask_mix(self, x: torch.Tensor, partner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MixMask filling of x (B,3,H,W) from ``x[partner]`` with the next masks of the bank
        (one per batch, or one per image with per_sample_masks); returns (x_mix, lambda (B,))."""
        masks = self.mask_bank.sample(
            x.shape[0],
            (x.shape[-2], x.shape[-1]),
            per_sample=self.per_sample_masks,
            generator=self.mixing_generator(x.device),
            device=x.device,
            dtype=x.dtype,
        )
        return mix_with_masks(x, masks, partner)

    def mask_branch(
        self, x: torch.Tensor, partner: torch.Tensor, target: torch.Tensor, pair_loss: PairLoss
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The MixMask branch: :meth:`mixed_branch` with :meth:`mask_mix`; (loss, lambda (B,))."""
        return self.mixed_branch(x, partner, self.mask_mix, target, pair_loss)

    def mixed_losses(
        self, x: torch.Tensor, target: torch.Tensor, pair_loss: PairLoss
    ) -> dict[str, torch.Tensor]:
        """MixMask's recipe: x filled from the reversed batch (the seed's partner)."""
        loss, lam = self.mask_branch(x, reversed_partner(x.shape[0], x.device), target, pair_loss)
        self.log("train_mask_lambda", lam.mean(), on_epoch=True, sync_dist=True)
        return {"train_mask_loss": loss}


class MixMaskLogic(MaskMixingLogic, MoCoV2PlusLogic):
    """MoCo + a MixMask branch (see module docstring)."""

    method_defaults: dict[str, Any] = {**MoCoV2PlusLogic.method_defaults, **MASK_DEFAULTS}


class MixMask(MixMaskLogic, BaseMomentumMethod):
    """MixMask on the standalone engine."""


ENTRY = MethodEntry(
    "mixmask",
    method=MixMask,
    logic=MixMaskLogic,
    solo_base="BaseMomentumMethod",
    solo_names=(SoloName("mixmask", "MixMask"),),
)
