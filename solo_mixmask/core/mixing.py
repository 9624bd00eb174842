"""Mixing a batch with its partners, ``x_mix[j] = M[j] * x[j] + (1 - M[j]) * x[partner[j]]``
(lambda[j]: the share of x[j]), and MixMask's mixer (Un-Mix's is ``core.unmix.UnmixMixer``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Protocol

import torch

from solo_mixmask.core.masks import MASK_TYPES, MaskBank, mask_lambdas, target_cells
from solo_mixmask.errors import (
    ConfigError,
    check_argument,
    check_bool_value,
    check_choice_value,
    check_number_value,
    config_warning,
)

__all__ = [
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


def reversed_partner(n: int, device=None) -> torch.Tensor:
    """The seed's partner: the batch reversed, ``[n-1, ..., 0]`` (long, (n,))."""
    check_argument(n >= 1, "n", n, "an integer >= 1")
    return torch.arange(n - 1, -1, -1, device=device)


def random_partner(n: int, *, generator: torch.Generator, device=None) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` (long, (n,)), drawn with ``generator``."""
    check_argument(n >= 1, "n", n, "an integer >= 1")
    device = generator.device if device is None else device
    return torch.randperm(n, generator=generator, device=device)


def draw_partner(rule: PartnerRule, n: int, generator: torch.Generator) -> torch.Tensor:
    """Partners (long (n,)) of a batch of n by ``rule``, on the generator's device."""
    if rule == "reversed":
        return reversed_partner(n, generator.device)
    return random_partner(n, generator=generator)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[j]] = j`` (long, same shape and device as the 1-D ``perm``)."""
    check_argument(perm.dim() == 1, "perm.shape", tuple(perm.shape), "(n,)")
    ids = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return torch.empty_like(perm).scatter_(0, perm, ids)


def check_partner(partner: torch.Tensor, n: int) -> None:
    ok = partner.dim() == 1 and partner.shape[0] == n
    check_argument(ok, "partner.shape", tuple(partner.shape), f"({n},) for a batch of {n}")


def mix_with_masks(
    x: torch.Tensor, masks: torch.Tensor, partner: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_mix = M * x + (1 - M) * x[partner]`` for x (n, C, H, W), masks M (n or 1, 1, H, W)
    (1 = keep x) and partner long (n,): x_mix in x's dtype and lambda = mean(M), float32 (n,)."""
    check_argument(x.dim() == 4, "x.shape", tuple(x.shape), "(n, C, H, W)")
    n, _, height, width = x.shape
    shape, allowed = tuple(masks.shape), ((n, 1, height, width), (1, 1, height, width))
    expected = f"({n} or 1, 1, {height}, {width}) for x of shape {tuple(x.shape)}"
    check_argument(shape in allowed, "masks.shape", shape, expected)
    check_partner(partner, n)
    m = masks.to(dtype=x.dtype, device=x.device)
    x_mix = m * x + (1 - m) * x[partner]
    return x_mix, mask_lambdas(masks).to(x.device).expand(n).contiguous()


class Mixer(Protocol):
    """How a mixed view is made from a batch x (B,3,H,W) and its partners (long (B,)); ``check``
    raises a ConfigError (or warns) for bad ``method_kwargs``, crops of ``smallest_crop`` px."""

    name: ClassVar[str]  # names the logged train_<name>_loss and train_<name>_lambda
    draws_on: ClassVar[Literal["device", "host"]]  # the batch's device generator or the host's
    DEFAULTS: ClassVar[dict[str, Any]]  # its method_kwargs (__init__'s keywords) and defaults

    @classmethod
    def check(cls, kwargs: Mapping[str, Any], smallest_crop: int) -> None: ...
    def mix(
        self, x: torch.Tensor, partner: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...  # x_mix (B,3,H,W) in x's dtype, lambda f32 (B,)
    def saved_streams(self) -> dict[str, Any]: ...  # what is saved with the method's generators


class MaskMixer:
    """MixMask: x filled from its partner through G x G grid masks drawn from a
    :class:`MaskBank`, one per batch (the seed's) or one per image (``per_sample_masks``)."""

    name: ClassVar[str] = "mask"
    draws_on: ClassVar[Literal["device", "host"]] = "device"
    #: The seed's G = 8, ratio 0.5, block masks, one mask per batch.
    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        grid_size=8, mask_ratio=0.5, mask_type="block", per_sample_masks=False
    )

    def __init__(self, grid_size: int, mask_ratio: float, mask_type: str, per_sample_masks: bool):
        self.per_sample_masks = bool(per_sample_masks)
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
            allowed = f"an integer in [{low}, {smallest_crop}] (the crop size in pixels)"
            raise ConfigError("method_kwargs.grid_size", grid, allowed)
        # Block masks set round(ratio * G^2) cells: none or all make lambda always 0 or 1
        # (discrete masks redraw all-on and all-off masks, so their lambda stays inside).
        cells, kept = grid * grid, target_cells(grid, ratio)
        if kind == "block" and kept in (0, cells):
            consequence = (
                f"sets {kept} of {cells} cells of the {grid}x{grid} grid (method_kwargs.grid_size="
                f"{grid}): lambda is always {kept // cells}, the MixMask branch mixes nothing"
            )
            config_warning("method_kwargs.mask_ratio", ratio, consequence)

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
