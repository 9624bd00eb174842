"""Pretraining (multi-crop) and evaluation transforms built from the crop specs.

``augmentations`` is parsed at start-up into :class:`~solo_mixmask.config.augmentation_specs.CropSpec` s
(see that module for the keys and defaults; :attr:`~solo_mixmask.config.data_specs.DataSpec.crops`);
the pretraining transform returns all views in pipeline order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from solo_mixmask.config.augmentation_specs import (  # DEFAULT_PIPELINE: re-exported
    DEFAULT_PIPELINE,  # noqa: F401
    CropSpec,
)

BLUR_SIGMA = (0.1, 2.0)
#: Taps of the Gaussian blur's window: +-3 of the largest sigma whatever the crop, as MoCo v2's
#: and solo-learn's ``PIL GaussianBlur(radius=sigma)`` (crops are >= 8 px, so its reflect padding
#: of 6 fits). A window of 10% of the crop (3 taps at 32 px) stopped the blur from growing above
#: sigma 1: sigma 2 left 3.4x the sharpness PIL's blur leaves on CIFAR-10 images.
BLUR_WINDOW = 2 * math.ceil(3 * BLUR_SIGMA[1]) + 1
SOLARIZE_THRESHOLD = 128


# --------------------------------------------------------------------------- transforms


def build_crop_transform(spec: CropSpec) -> Callable[[Image.Image], torch.Tensor]:
    """One view: PIL RGB image -> float tensor (3, crop_size, crop_size), normalised."""
    size = spec.crop_size
    bicubic = T.InterpolationMode.BICUBIC
    if spec.rrc:
        ops: list[Callable] = [
            T.RandomResizedCrop(
                size, scale=(spec.crop_min_scale, spec.crop_max_scale), interpolation=bicubic
            )
        ]
    else:
        ops = [T.Resize(size, interpolation=bicubic), T.CenterCrop(size)]
    if spec.color_jitter_prob > 0:
        jitter = T.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue)
        ops.append(T.RandomApply([jitter], p=spec.color_jitter_prob))
    if spec.grayscale_prob > 0:
        ops.append(T.RandomGrayscale(p=spec.grayscale_prob))
    if spec.gaussian_prob > 0:
        blur = T.GaussianBlur(BLUR_WINDOW, sigma=BLUR_SIGMA)
        ops.append(T.RandomApply([blur], p=spec.gaussian_prob))
    if spec.solarization_prob > 0:
        ops.append(T.RandomSolarize(SOLARIZE_THRESHOLD, p=spec.solarization_prob))
    if spec.equalization_prob > 0:
        ops.append(T.RandomEqualize(p=spec.equalization_prob))
    if spec.horizontal_flip_prob > 0:
        ops.append(T.RandomHorizontalFlip(p=spec.horizontal_flip_prob))
    ops += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(ops)


class MultiCropTransform:
    """PIL image -> list of ``num_views`` tensors, pipeline by pipeline, each pipeline
    applied ``num_crops`` times (independent random draws)."""

    def __init__(self, pipelines: list[tuple[Callable, int]]):
        self.pipelines = pipelines
        self.num_views = sum(n for _, n in pipelines)

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [t(img) for t, n in self.pipelines for _ in range(n)]

    def __repr__(self) -> str:
        return "\n".join(f"{n} x {t}" for t, n in self.pipelines)


def build_pretrain_transform(crops: Sequence[CropSpec]) -> MultiCropTransform:
    """Callable(PIL RGB image) -> list of sum(num_crops) float tensors (3, crop, crop), one
    pipeline of ``crops`` after the other."""
    return MultiCropTransform([(build_crop_transform(s), s.num_crops) for s in crops])


def build_eval_transform(spec: CropSpec) -> Callable[[Image.Image], torch.Tensor]:
    """Callable(PIL RGB image) -> float tensor (3, crop, crop), normalised with ``spec``'s
    mean/std, no randomness (callers pass the first pipeline).

    ``crop`` is ``spec.crop_size`` (pixels). For crop >= 64 the short side is resized to
    round(crop / 0.875) (224 -> 256) then centre-cropped; smaller crops (CIFAR, Fashion-MNIST)
    resize the short side straight to crop (28 -> 32) and centre-crop non-square images.
    """
    crop = spec.crop_size
    resize = round(crop / 0.875) if crop >= 64 else crop
    return T.Compose(
        [T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    )
