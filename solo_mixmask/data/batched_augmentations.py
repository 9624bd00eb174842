"""Batched, device-side version of the PIL pretraining augmentations (``data.format=memory``).

The in-memory data path keeps a whole dataset as one uint8 tensor on the training device; each
batch is augmented there. Every sample gets its own random parameters, drawn with an explicit
``torch.Generator`` (never the global RNG) on the generator's device, fully vectorised.

The distribution follows :func:`~solo_mixmask.data.augmentations.build_crop_transform`:
random resized crop (bicubic) -> colour jitter (random op order) -> grayscale -> Gaussian blur
-> solarize -> horizontal flip -> normalise. Differences from the PIL path: pixels stay float
between ops (no uint8 rounding); the crop is resampled straight from the full image by
``grid_sample`` (bicubic taps may read just outside the box, down-scaling is not antialiased,
and torch's bicubic kernel, a = -0.75, is sharper than PIL's, a = -0.5: on CIFAR-10 the crops
alone measured 6% more mean |Laplacian| than the PIL path's, the whole aug_plus pipeline 3%,
within the noise of 2,000 images); the flip is folded into the crop, which is exact because
every later op commutes with a horizontal flip. Equalization is not supported.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from solo_mixmask.data.augmentations import (
    BLUR_SIGMA,
    BLUR_WINDOW,
    SOLARIZE_THRESHOLD,
    CropSpec,
)
from solo_mixmask.errors import ConfigError

RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3  # codes used in AugmentParams.jitter_order
# Solarize cut on [0, 1] pixels: the PIL path works on uint8, so a float value is inverted when
# it would round to >= 128. On exact k / 255 values this is torchvision's `x >= 128 / 255`;
# it also keeps a resampled 128 / 255 that came out a few ulps low on the inverted side.
_SOLARIZE_CUT = (SOLARIZE_THRESHOLD - 0.5) / 255.0


@dataclass
class AugmentParams:
    """Random parameters of N views, all tensors of shape (N,) unless stated, on one device.

    ``top, left, height, width``: int64 crop box in source pixels. ``flip``: bool, horizontal
    flip. ``jitter``: bool, colour jitter applies. ``brightness, contrast, saturation``: float
    blend factors (1 = unchanged); ``hue``: float shift in turns (0 = unchanged).
    ``jitter_order``: int64 (N, 4), per sample a permutation of the op codes 0 brightness,
    1 contrast, 2 saturation, 3 hue. ``grayscale, blur, solarize``: bool. ``sigma``: float,
    blur standard deviation in output pixels.
    """

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    jitter_order: torch.Tensor
    grayscale: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor


# --------------------------------------------------------------------------- drawing


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """(n,) float32 uniform in [low, high) on the generator's device."""
    u = torch.rand(n, generator=generator, device=generator.device)
    return low + (high - low) * u


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """(n,) bool, each True with probability p (p = 0 never, p = 1 always)."""
    return torch.rand(n, generator=generator, device=generator.device) < p


def _fallback_box(height: int, width: int) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box when no attempt fits: (top, left, h, w)."""
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        w, h = width, int(round(width / RRC_RATIO[0]))
    elif in_ratio > RRC_RATIO[1]:
        h, w = height, int(round(height * RRC_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _random_resized_boxes(
    n: int, scale: tuple[float, float], height: int, width: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """(top, left, h, w), each int64 (n,): RandomResizedCrop.get_params for n samples at once.

    All RRC_ATTEMPTS attempts are drawn for every sample; the first one that fits wins.
    """
    dev = generator.device
    u = torch.rand(n, RRC_ATTEMPTS, 4, generator=generator, device=dev)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * ratio)).long()
    h = torch.round(torch.sqrt(area / ratio)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # uniform integers in [0, H - h] and [0, W - w]; meaningless (but harmless) where not fits
    top = torch.minimum((u[..., 2] * (height - h + 1)).long(), height - h).clamp_(min=0)
    left = torch.minimum((u[..., 3] * (width - w + 1)).long(), width - w).clamp_(min=0)
    attempt = torch.arange(RRC_ATTEMPTS, device=dev).expand(n, RRC_ATTEMPTS)
    first = torch.where(fits, attempt, RRC_ATTEMPTS).amin(dim=1)  # RRC_ATTEMPTS: none fits
    found = first < RRC_ATTEMPTS
    index = first.clamp(max=RRC_ATTEMPTS - 1).unsqueeze(1)
    fallback = _fallback_box(height, width)
    return tuple(
        torch.where(
            found, v.gather(1, index).squeeze(1), torch.full_like(found, f, dtype=torch.long)
        )
        for v, f in zip((top, left, h, w), fallback)
    )


def _jitter_factor(n: int, amount: float, generator: torch.Generator) -> torch.Tensor:
    """(n,) blend factors U[max(0, 1 - amount), 1 + amount]; all 1 when amount is 0."""
    u = _uniform(n, max(0.0, 1.0 - amount), 1.0 + amount, generator)
    return u if amount > 0 else torch.ones_like(u)


def draw_params(
    n: int, spec: CropSpec, height: int, width: int, generator: torch.Generator
) -> AugmentParams:
    """Per-sample parameters for n views of (height x width) images, drawn with ``generator``
    on ``generator.device``; no host synchronisation, shapes independent of the draws."""
    if spec.rrc:
        top, left, h, w = _random_resized_boxes(
            n, (spec.crop_min_scale, spec.crop_max_scale), height, width, generator
        )
    else:  # Resize(crop) + CenterCrop(crop) = the central square, resized
        side = min(height, width)
        dev = generator.device

        def full(v: int) -> torch.Tensor:
            return torch.full((n,), v, dtype=torch.long, device=dev)

        top, left, h, w = (
            full((height - side) // 2),
            full((width - side) // 2),
            full(side),
            full(side),
        )
    flip = _coin(n, spec.horizontal_flip_prob, generator)
    jitter = _coin(n, spec.color_jitter_prob, generator)
    brightness = _jitter_factor(n, spec.brightness, generator)
    contrast = _jitter_factor(n, spec.contrast, generator)
    saturation = _jitter_factor(n, spec.saturation, generator)
    hue = (
        _uniform(n, -spec.hue, spec.hue, generator)
        if spec.hue > 0
        else torch.zeros(n, device=generator.device)
    )
    order = torch.rand(n, 4, generator=generator, device=generator.device).argsort(dim=1)
    grayscale = _coin(n, spec.grayscale_prob, generator)
    blur = _coin(n, spec.gaussian_prob, generator)
    sigma = _uniform(n, BLUR_SIGMA[0], BLUR_SIGMA[1], generator)
    solarize = _coin(n, spec.solarization_prob, generator)
    return AugmentParams(
        top=top,
        left=left,
        height=h,
        width=w,
        flip=flip,
        jitter=jitter,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue=hue,
        jitter_order=order,
        grayscale=grayscale,
        blur=blur,
        sigma=sigma,
        solarize=solarize,
    )


# --------------------------------------------------------------------------- pixel ops
# All take float images (N, 3, H, W) in [0, 1] and per-sample factors of shape (N,).


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, 1) for broadcasting against images."""
    return v.view(-1, 1, 1, 1)


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W), C in {1, 3} -> float32 in [0, 1], same shape."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    return images.to(torch.float32).div_(255.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (N, 1, H, W) of RGB images (N, 3, H, W)."""
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (N,): RGB -> HSV, h += shift (mod 1), HSV -> RGB.

    Saturation and value are kept, so v * s = chroma (max - min) and only the hue is computed.
    """
    r, g, b = x.unbind(dim=1)
    value = x.amax(dim=1)
    chroma = value - x.amin(dim=1)
    # hue in sixths of a turn, from the channel holding the maximum (red, then green first);
    # 0 for grey pixels (chroma 0)
    numerator = torch.where(
        value == r, g - b, torch.where(value == g, (b - r) + 2.0 * chroma, (r - g) + 4.0 * chroma)
    )
    hue6 = numerator / torch.where(chroma > 0, chroma, 1.0) + 6.0 * shift.view(-1, 1, 1)
    # HSV -> RGB: channel n (5 red, 3 green, 1 blue) = v - v s clamp(min(k, 4 - k), 0, 1),
    # k = (n + 6 h) mod 6; arange makes [5, 3, 1] on the device (no host -> device copy)
    phase = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(phase + hue6.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (value.unsqueeze(1) - chroma.unsqueeze(1) * ramp).clamp_(0.0, 1.0)


def _blend(x: torch.Tensor, slot: torch.Tensor, p: AugmentParams, spec: CropSpec) -> torch.Tensor:
    """One jitter position on the whole batch: each sample blended by the op code in ``slot``
    (N,), ``clamp(f * x + (1 - f) * target, 0, 1)`` with target 0 (brightness), the mean luma
    of the image (contrast) or its luma image (saturation) as torchvision's tensor ops; factor
    1, an exact identity, where ``slot`` is -1, hue, or an op whose amount is 0."""
    amounts = (spec.brightness, spec.contrast, spec.saturation)
    factors = (p.brightness, p.contrast, p.saturation)
    factor = torch.ones_like(p.brightness)
    for op in (BRIGHTNESS, CONTRAST, SATURATION):
        if amounts[op] > 0:
            factor = torch.where(slot == op, factors[op], factor)
    target: torch.Tensor | float = 0.0
    if amounts[CONTRAST] > 0 or amounts[SATURATION] > 0:
        gray = _gray(x)
        if amounts[CONTRAST] > 0:
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)
            target = torch.where(_per_sample(slot == CONTRAST), mean, 0.0)
        if amounts[SATURATION] > 0:
            target = torch.where(_per_sample(slot == SATURATION), gray, target)
    f = _per_sample(factor)
    return (f * x + (1.0 - f) * target).clamp_(0.0, 1.0)


def _color_jitter(x: torch.Tensor, p: AugmentParams, spec: CropSpec) -> torch.Tensor:
    """ColorJitter with a per-sample op order; samples without jitter pass unchanged.

    Without hue: 4 positions, each one :func:`_blend` of the whole batch. With hue, which every
    jittered sample takes exactly once (at its own position k), the HSV round trip runs once on
    the whole batch: 3 blend positions before it (sample i's j-th op where j < k_i, else an
    identity), hue (kept where jitter applies: the round trip is not an exact identity), then 3
    after it (op k_i + 1 + j where that is <= 3). Each sample sees its ops in its order, as in
    torchvision; every op is per sample, so the images are those of running the 4 positions
    with a hue round trip at each (what this did before: 4x the hue work and kernels).
    """
    amounts = (spec.brightness, spec.contrast, spec.saturation, spec.hue)
    if spec.color_jitter_prob <= 0 or not any(a > 0 for a in amounts):
        return x
    blends = any(a > 0 for a in amounts[:HUE])
    order = p.jitter_order
    no_op = torch.full_like(order[:, 0], -1)
    if amounts[HUE] <= 0:  # hue is an identity slot like any disabled op
        for position in range(4):
            x = _blend(x, torch.where(p.jitter, order[:, position], no_op), p, spec)
        return x
    hue_at = (order == HUE).long().argmax(dim=1)  # (N,) k: where each sample's hue runs
    if blends:
        for j in range(3):  # the ops before hue
            x = _blend(x, torch.where(p.jitter & (j < hue_at), order[:, j], no_op), p, spec)
    x = torch.where(_per_sample(p.jitter), _adjust_hue(x, p.hue), x)
    if blends:
        for j in range(3):  # the ops after hue
            after = hue_at + 1 + j  # (N,) the position of the sample's j-th op after hue
            op = order.gather(1, after.clamp(max=3).unsqueeze(1)).squeeze(1)
            x = _blend(x, torch.where(p.jitter & (after <= 3), op, no_op), p, spec)
    return x


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image (N, C, H, W) with its own sigma (N,), reflect padding, odd kernel."""
    n, c, h, w = x.shape
    half = (kernel_size - 1) / 2
    taps = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps.unsqueeze(0) / sigma.unsqueeze(1)) ** 2)  # (N, k)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, h, w)


def _crop_resize_flip(x: torch.Tensor, p: AugmentParams, size: int) -> torch.Tensor:
    """Resample the boxes of x (N, C, H, W) to (N, C, size, size), bicubic, flipped where
    p.flip, clamped to [0, 1]. Same sampling positions as crop-then-resize (align_corners
    False); taps outside the image repeat the border."""
    n, c, height, width = x.shape
    w, h = p.width.to(x.dtype), p.height.to(x.dtype)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = torch.where(p.flip, -w, w) / width
    theta[:, 0, 2] = (2 * p.left.to(x.dtype) + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * p.top.to(x.dtype) + h) / height - 1
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=64)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (1, C, 1, 1) tensors on ``device``, made once: a host -> device copy
    per batch would synchronise."""
    m = torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1).to(device)
    s = torch.tensor(std, dtype=dtype).view(1, -1, 1, 1).to(device)
    return m, s


def _normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m, s = _channel_stats(tuple(mean), tuple(std), x.device, x.dtype)
    return (x - m) / s


def apply_params(images: torch.Tensor, params: AugmentParams, spec: CropSpec) -> torch.Tensor:
    """Augment uint8 images (N, C, H, W), C in {1, 3}, with ``params`` (drawn for N views)
    -> float32 (N, 3, S, S) normalised with spec.mean / spec.std, S = spec.crop_size."""
    return _normalise(_augment_pixels(images, params, spec), spec.mean, spec.std)


def _augment_pixels(images: torch.Tensor, params: AugmentParams, spec: CropSpec) -> torch.Tensor:
    """:func:`apply_params` before the normalisation: float32 (N, 3, S, S) in [0, 1] (what
    ``performance.compile_augmentations`` compiles)."""
    x = _crop_resize_flip(_to_float(images), params, spec.crop_size)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    x = _color_jitter(x, params, spec)
    if spec.grayscale_prob > 0:
        x = torch.where(_per_sample(params.grayscale), _gray(x).expand_as(x), x)
    if spec.gaussian_prob > 0:
        blurred = _gaussian_blur(x, params.sigma, BLUR_WINDOW)
        x = torch.where(_per_sample(params.blur), blurred, x)
    if spec.solarization_prob > 0:
        solarized = torch.where(x >= _SOLARIZE_CUT, 1.0 - x, x)
        x = torch.where(_per_sample(params.solarize), solarized, x)
    return x


def check_batchable(spec: CropSpec, where: str = "augmentations[0]") -> None:
    """ConfigError (key ``{where}.equalization.prob``) when ``spec`` asks for equalization,
    which has no batched implementation."""
    if spec.equalization_prob > 0:
        raise ConfigError(
            f"{where}.equalization.prob",
            spec.equalization_prob,
            "0 (equalization is not supported with data.format=memory)",
        )


class BatchAugment:
    """One crop pipeline on batches: uint8 (N, C, H, W) -> float (N, 3, S, S), every sample with
    its own random parameters from the given generator.

    Raises ConfigError as :func:`check_batchable`. ``compile_backend``: run the pixel ops
    (not the draws, whose generators dynamo does not trace, nor the normalisation) through
    ``torch.compile`` with that backend (fused kernels, one compilation per batch shape; no
    CUDA graphs, whose outputs the next batch would overwrite), None to run them eagerly.
    """

    def __init__(
        self, spec: CropSpec, where: str = "augmentations[0]", compile_backend: str | None = None
    ):
        check_batchable(spec, where)
        self.spec = spec
        self.where = where
        self.pixels = (
            _augment_pixels
            if compile_backend is None
            else torch.compile(_augment_pixels, backend=compile_backend, dynamic=False)
        )

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = images.shape
        params = draw_params(n, self.spec, height, width, generator)
        return _normalise(self.pixels(images, params, self.spec), self.spec.mean, self.spec.std)

    def __repr__(self) -> str:
        return f"BatchAugment({self.spec})"


def eval_view(
    images: torch.Tensor, crop_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Evaluation view of uint8 images (N, C, H, W) -> float32 (N, 3, crop, crop), normalised.

    As :func:`~solo_mixmask.data.augmentations.build_eval_transform`: short side resized to
    round(crop / 0.875) for crop >= 64, else to crop (bilinear, antialiased), then centre crop.
    Images whose short side is already that size are not resampled (crop x crop images for
    crop < 64); a 96 x 96 image with crop 96 is resized to 110 x 110 and centre-cropped, as the
    PIL path does.
    """
    x = _to_float(images)
    height, width = x.shape[-2:]
    short = round(crop_size / 0.875) if crop_size >= 64 else crop_size
    if height <= width:
        new_h, new_w = short, int(short * width / height)
    else:
        new_h, new_w = int(short * height / width), short
    if (new_h, new_w) != (height, width):
        x = F.interpolate(
            x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
    top = int(round((new_h - crop_size) / 2.0))
    left = int(round((new_w - crop_size) / 2.0))
    x = x[..., top : top + crop_size, left : left + crop_size]
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return _normalise(x, mean, std)
