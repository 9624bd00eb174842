"""Un-Mix's mixer: the batch mixed with its partners by mixup (probability p) or CutMix.

lambda ~ Beta(alpha, alpha), recomputed from the clipped CutMix box; one draw per batch, on the
host. :class:`UnmixMixer` is the :class:`~solo_mixmask.core.mixing.Mixer` the mixed branch holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from solo_mixmask.core.mixing import check_partner
from solo_mixmask.errors import check_number_value

__all__ = ["UnmixMixer", "UnmixParams", "sample_unmix_params", "unmix"]

UNMIX_KINDS = ("mixup", "cutmix")


@dataclass(frozen=True)
class UnmixParams:
    """One Un-Mix draw for a batch: ``kind`` 'mixup' or 'cutmix', lambda (share of x), and for
    CutMix the pasted box ``(y0, y1, x0, x1)`` in pixels (half-open), else None."""

    kind: str
    lam: float
    box: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in UNMIX_KINDS:
            raise ValueError(f"kind={self.kind!r} is not allowed: expected one of {UNMIX_KINDS}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam={self.lam!r} is not allowed: expected a float in [0, 1]")
        if (self.kind == "cutmix") != (self.box is not None):
            raise ValueError(
                f"box={self.box!r} is not allowed for kind={self.kind!r}: expected a box "
                "(y0, y1, x0, x1) for 'cutmix' and None for 'mixup'"
            )
        if self.box is not None:
            y0, y1, x0, x1 = self.box
            if not (0 <= y0 <= y1 and 0 <= x0 <= x1):
                raise ValueError(
                    f"box={self.box!r} is not allowed: expected 0 <= y0 <= y1 and 0 <= x0 <= x1"
                )


def sample_unmix_params(
    alpha: float, prob: float, height: int, width: int, *, generator: torch.Generator
) -> UnmixParams:
    """Draw one Un-Mix operation for a batch of (height, width) images, on the host.

    lambda ~ Beta(alpha, alpha); with probability ``prob`` global mixup, otherwise CutMix with a
    box of sides ``round(sqrt(1 - lambda) * H)`` x ``round(sqrt(1 - lambda) * W)``, integer centre
    uniform over the image, clipped to it; CutMix's lambda is then ``1 - box_area / (H * W)``.
    Reproducible from the CPU ``generator``: one int64 seed is drawn from it and feeds a NumPy
    ``default_rng`` (exact Beta sampling). No device tensor is touched.
    """
    if not float(alpha) > 0.0:
        raise ValueError(f"alpha={alpha!r} is not allowed: expected a float > 0")
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"prob={prob!r} is not allowed: expected a float in [0, 1]")
    if height < 1 or width < 1:
        raise ValueError(
            f"(height, width)=({height!r}, {width!r}) is not allowed: expected positive integers"
        )
    if generator.device.type != "cpu":
        raise ValueError(
            f"generator on {str(generator.device)!r} is not allowed: expected a CPU generator"
        )
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    lam = float(rng.beta(alpha, alpha))
    if float(rng.random()) < prob:
        return UnmixParams(kind="mixup", lam=lam)
    side = math.sqrt(1.0 - lam)
    cut_h, cut_w = round(side * height), round(side * width)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, x0 = cy - cut_h // 2, cx - cut_w // 2
    y0c, y1c = min(max(y0, 0), height), min(max(y0 + cut_h, 0), height)
    x0c, x1c = min(max(x0, 0), width), min(max(x0 + cut_w, 0), width)
    area = (y1c - y0c) * (x1c - x0c)
    return UnmixParams(kind="cutmix", lam=1.0 - area / (height * width), box=(y0c, y1c, x0c, x1c))


def unmix(
    x: torch.Tensor, partner: torch.Tensor, params: UnmixParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one Un-Mix draw to x (n, C, H, W) with partner (n,).

    mixup: ``lam * x + (1 - lam) * x[partner]``; cutmix: a copy of x with ``params.box`` pasted
    from ``x[partner]``, lambda being the kept share ``1 - box_area / (H * W)`` (equal to
    ``params.lam`` when the params were drawn for this H, W). Returns x_mix in x's dtype and
    lambda, float32 (n,) on x's device.
    """
    if x.dim() != 4:
        raise ValueError(f"x.shape={tuple(x.shape)} is not allowed: expected (n, C, H, W)")
    n, _, height, width = x.shape
    check_partner(partner, n)
    if params.kind == "mixup":
        lam = params.lam
        x_mix = lam * x + (1.0 - lam) * x[partner]
    else:
        assert params.box is not None, "a CutMix UnmixParams carries its box"
        y0, y1, x0, x1 = params.box
        if y1 > height or x1 > width:
            raise ValueError(
                f"box={params.box!r} is not allowed for images of {height}x{width}: expected "
                f"y1 <= {height} and x1 <= {width}"
            )
        x_mix = x.clone()
        x_mix[:, :, y0:y1, x0:x1] = x[partner, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return x_mix, torch.full((n,), lam, dtype=torch.float32, device=x.device)


class UnmixMixer:
    """Un-Mix: one mixup / CutMix draw per batch (:func:`sample_unmix_params`, :func:`unmix`)."""

    name: ClassVar[str] = "unmix"
    draws_on: ClassVar[Literal["device", "host"]] = "host"
    #: lambda ~ Beta(1, 1), mixup half the time (the seed's).
    DEFAULTS: ClassVar[dict[str, Any]] = {"unmix_alpha": 1.0, "unmix_prob": 0.5}

    def __init__(self, unmix_alpha: float, unmix_prob: float):
        self.alpha, self.prob = float(unmix_alpha), float(unmix_prob)

    @classmethod
    def check(cls, kwargs: Mapping[str, Any], smallest_crop: int) -> None:
        check_number_value("method_kwargs.unmix_alpha", kwargs["unmix_alpha"], low=0, low_open=True)
        check_number_value("method_kwargs.unmix_prob", kwargs["unmix_prob"], low=0, high=1)

    def mix(
        self, x: torch.Tensor, partner: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        params = sample_unmix_params(
            self.alpha, self.prob, x.shape[-2], x.shape[-1], generator=generator
        )
        return unmix(x, partner, params)

    def saved_streams(self) -> dict[str, Any]:
        return {}
