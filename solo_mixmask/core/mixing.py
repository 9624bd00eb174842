"""Mixing a batch with its partners, and the mixers that the mixed branch of a method holds.

``partner[j]`` is the index of the image that fills the masked part of image j; the mixed batch
is ``x_mix[j] = M[j] * x[j] + (1 - M[j]) * x[partner[j]]`` and lambda[j] is the share of x[j].

A mixer (:class:`Mixer`) is ``mix(x, partner, generator) -> (x_mix, lam)`` plus its own
``method_kwargs`` (``DEFAULTS``), their checks and the state it draws from. MixMask's is
:class:`MaskMixer` below; Un-Mix's is ``solo_mixmask.core.unmix.UnmixMixer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Protocol

import torch

from solo_mixmask.core.masks import MASK_TYPES, MaskBank, mask_lambdas, target_cells
from solo_mixmask.errors import (
    ConfigError,
    check_bool_value,
    check_choice_value,
    check_number_value,
    config_warning,
)

__all__ = [
    "PARTNER_RULES",
    "MaskMixer",
    "Mixer",
    "draw_partner",
    "inverse_permutation",
    "mix_with_masks",
    "random_partner",
    "reversed_partner",
]

#: How a mixer's partners are drawn: the reversed batch (the seed's) or a random permutation.
PartnerRule = Literal["reversed", "random"]
PARTNER_RULES: tuple[PartnerRule, ...] = ("reversed", "random")


def reversed_partner(n: int, device=None) -> torch.Tensor:
    """The seed's partner: the batch reversed, ``[n-1, ..., 0]`` (long, (n,))."""
    if n < 1:
        raise ValueError(f"n={n!r} is not allowed: expected an integer >= 1")
    return torch.arange(n - 1, -1, -1, device=device)


def random_partner(n: int, *, generator: torch.Generator, device=None) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` (long, (n,)), drawn with ``generator``."""
    if n < 1:
        raise ValueError(f"n={n!r} is not allowed: expected an integer >= 1")
    device = generator.device if device is None else device
    return torch.randperm(n, generator=generator, device=device)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[j]] = j`` (long, same shape and device as the 1-D ``perm``)."""
    if perm.dim() != 1:
        raise ValueError(f"perm.shape={tuple(perm.shape)} is not allowed: expected (n,)")
    ids = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return torch.empty_like(perm).scatter_(0, perm, ids)


def check_partner(partner: torch.Tensor, n: int) -> None:
    if partner.dim() != 1 or partner.shape[0] != n:
        raise ValueError(
            f"partner.shape={tuple(partner.shape)} is not allowed: expected ({n},) for a batch "
            f"of {n}"
        )


def mix_with_masks(
    x: torch.Tensor, masks: torch.Tensor, partner: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixMask filling: ``x_mix = M * x + (1 - M) * x[partner]``.

    x: (n, C, H, W), any float dtype; masks: (n or 1, 1, H, W) with 1 = keep x (cast to x's
    dtype); partner: long (n,). Returns ``x_mix`` (n, C, H, W) in x's dtype and lambda,
    float32 (n,), the mean of each sample's mask.
    """
    if x.dim() != 4:
        raise ValueError(f"x.shape={tuple(x.shape)} is not allowed: expected (n, C, H, W)")
    n, _, height, width = x.shape
    if (
        masks.dim() != 4
        or masks.shape[0] not in (1, n)
        or masks.shape[1] != 1
        or tuple(masks.shape[2:]) != (height, width)
    ):
        raise ValueError(
            f"masks.shape={tuple(masks.shape)} is not allowed: expected ({n} or 1, 1, "
            f"{height}, {width}) for x of shape {tuple(x.shape)}"
        )
    check_partner(partner, n)
    m = masks.to(dtype=x.dtype, device=x.device)
    x_mix = m * x + (1 - m) * x[partner]
    lam = mask_lambdas(masks).to(x.device).expand(n).contiguous()
    return x_mix, lam


def draw_partner(rule: PartnerRule, n: int, generator: torch.Generator) -> torch.Tensor:
    """Partners (long (n,)) of a batch of n by ``rule``, on the generator's device."""
    if rule == "reversed":
        return reversed_partner(n, generator.device)
    return random_partner(n, generator=generator)


class Mixer(Protocol):
    """How a mixed view is made from a batch and its partners."""

    #: Names the logged terms ``train_<name>_loss`` and ``train_<name>_lambda``.
    name: ClassVar[str]
    #: The stream it draws from: the batch's device generator or the host (CPU) one.
    draws_on: ClassVar[Literal["device", "host"]]
    #: Its ``method_kwargs`` and their defaults (the keyword arguments of ``__init__``).
    DEFAULTS: ClassVar[dict[str, Any]]

    @classmethod
    def check(cls, kwargs: Mapping[str, Any], smallest_crop: int) -> None:
        """ConfigError (or a warning) for bad ``method_kwargs``; crops of ``smallest_crop`` px."""

    def mix(
        self, x: torch.Tensor, partner: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,3,H,W) mixed with ``x[partner]`` (partner long (B,)) -> (x_mix (B,3,H,W) in
        x's dtype, lambda float32 (B,), the share of each image's own pixels)."""

    def saved_streams(self) -> dict[str, Any]:
        """Objects with ``state_dict`` / ``load_state_dict`` saved with the method's generators."""


class MaskMixer:
    """MixMask: each image is filled from its partner through a G x G grid mask.

    ``x_mix = M * x + (1 - M) * x[partner]`` with M from a :class:`MaskBank` (one mask for the
    batch, as the seed, or one per image with ``per_sample_masks``); lambda = mean(M).
    """

    name: ClassVar[str] = "mask"
    draws_on: ClassVar[Literal["device", "host"]] = "device"
    #: The seed's G = 8, ratio 0.5, block masks, one mask per batch.
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "grid_size": 8,
        "mask_ratio": 0.5,
        "mask_type": "block",
        "per_sample_masks": False,
    }

    def __init__(
        self,
        grid_size: int = 8,
        mask_ratio: float = 0.5,
        mask_type: str = "block",
        per_sample_masks: bool = False,
    ):
        self.per_sample_masks = bool(per_sample_masks)
        # drawn in bulk: one draw costs the same kernel launches for 1 or 4096 masks
        self.bank = MaskBank(int(grid_size), float(mask_ratio), str(mask_type))

    @classmethod
    def check(cls, kwargs: Mapping[str, Any], smallest_crop: int) -> None:
        ratio, kind, grid = kwargs["mask_ratio"], kwargs["mask_type"], kwargs["grid_size"]
        check_number_value(
            "method_kwargs.mask_ratio", ratio, low=0, high=1, low_open=True, high_open=True
        )
        check_choice_value("method_kwargs.mask_type", kind, MASK_TYPES)
        check_bool_value("method_kwargs.per_sample_masks", kwargs["per_sample_masks"])
        low = 2 if kind == "discrete" else 1
        if not isinstance(grid, int) or isinstance(grid, bool) or not low <= grid <= smallest_crop:
            raise ConfigError(
                "method_kwargs.grid_size",
                grid,
                f"an integer in [{low}, {smallest_crop}] (the crop size in pixels)",
            )
        # Block masks set round(ratio * G^2) cells: none or all of them make lambda always 0 or
        # 1 (discrete masks redraw all-on and all-off masks, so their lambda stays inside).
        cells, kept = grid * grid, target_cells(grid, ratio)
        if kind == "block" and kept in (0, cells):
            config_warning(
                "method_kwargs.mask_ratio",
                ratio,
                f"sets {kept} of {cells} cells of the {grid}x{grid} grid "
                f"(method_kwargs.grid_size={grid}): lambda is always {kept // cells}, the "
                "MixMask branch mixes nothing",
            )

    def mix(
        self, x: torch.Tensor, partner: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks = self.bank.sample(
            x.shape[0],
            (x.shape[-2], x.shape[-1]),
            per_sample=self.per_sample_masks,
            generator=generator,
            device=x.device,
            dtype=x.dtype,
        )
        return mix_with_masks(x, masks, partner)

    def saved_streams(self) -> dict[str, Any]:
        return {"mask_bank": self.bank}
