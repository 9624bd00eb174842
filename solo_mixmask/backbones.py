"""Backbones by name, through timm (torchvision's ResNet names are the same as timm's), the
width of what they output, and the split version of timm's BatchNorm + activation layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from solo_mixmask.config.schema import config_warning, suggest
from solo_mixmask.core.batch_norm import SplitBatchNorm2d
from solo_mixmask.errors import ConfigError

#: Stages of timm's ResNet family (resnet*, resnext*, wide_resnet*, seresnet* ...): one width
#: each in ``backbone.kwargs.channels``.
RESNET_STAGES = 4


def is_timm_resnet(name: str) -> bool:
    """Whether timm builds ``name`` with its ``ResNet`` class (module ``timm.models.resnet``)."""
    from timm.models import model_entrypoint

    return model_entrypoint(name).__module__ == "timm.models.resnet"


#: timm's name, and torchvision's, for "each residual block's last BatchNorm starts at weight 0"
#: (the block starts as its shortcut). timm's ResNets default to true, torchvision's to false.
ZERO_INIT_KEYS = ("zero_init_last", "zero_init_residual")


def residual_init_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for timm's ``name`` with the residual blocks initialised as torchvision does.

    solo-learn trains torchvision's ResNets, whose last BatchNorm of each block starts at weight
    1 (``zero_init_residual=False``); timm's start at 0 (``zero_init_last=True``). A timm ResNet
    is built here with ``zero_init_last=False`` unless ``kwargs`` sets it, under timm's name or
    under torchvision's ``zero_init_residual`` (the key a solo-learn config passes), so a config
    trains the same network here and inside solo-learn. Another model is built as timm builds
    it, without torchvision's ResNet key (a warning line, once per process).

    Raises:
        ConfigError: a value that is not a boolean, or the two names set to different values.
    """
    timm_key, tv_key = ZERO_INIT_KEYS
    if not is_timm_resnet(name):
        if kwargs.get(tv_key) is not None:  # e.g. a CIFAR config's, with another backbone
            config_warning(
                f"backbone.kwargs.{tv_key}",
                kwargs[tv_key],
                f"is a ResNet setting: {name} is built without it",
            )
        return {k: v for k, v in kwargs.items() if k != tv_key}
    kwargs = dict(kwargs)
    given = {k: kwargs.pop(k) for k in ZERO_INIT_KEYS if kwargs.get(k) is not None}
    for key, value in given.items():
        if not isinstance(value, bool):
            raise ConfigError(f"backbone.kwargs.{key}", value, "true or false")
    if len(set(given.values())) > 1:
        raise ConfigError(
            f"backbone.kwargs.{tv_key}",
            given[tv_key],
            f"{str(given[timm_key]).lower()} (the value of backbone.kwargs.{timm_key}: the two "
            "keys name one setting), or one of the two keys only",
        )
    kwargs[timm_key] = next(iter(given.values()), False)
    return kwargs


#: Padding (pixels) of the 3x3 CIFAR-stem conv in this package's backbones.
CIFAR_STEM_PADDING = 1


def build_backbone(
    name: str,
    kwargs: dict[str, Any] | None = None,
    cifar_stem: bool = False,
    stem_padding: int = CIFAR_STEM_PADDING,
) -> tuple[nn.Module, int]:
    """A feature extractor with its classifier removed, and its feature width.

    Args:
        name: a timm model name (``resnet18``, ``resnet50``, ``resnet18d`` ...).
        kwargs: extra constructor arguments, e.g. ``{"channels": [32, 64, 128, 256]}`` for a
            half-width ResNet-18 (timm's ResNet takes ``channels``; its plain 7x7 stem stays 64 wide).
            A ResNet's blocks start as torchvision's unless ``zero_init_last`` (or torchvision's
            ``zero_init_residual``) is true: :func:`residual_init_kwargs`.
        cifar_stem: replace the 7x7 stride-2 conv + max-pool stem by a 3x3 stride-1 conv and no
            pool, for 32-pixel images.
        stem_padding: zero padding of that 3x3 conv in pixels: 1 (this package's runs, the
            usual CIFAR ResNet), or 2 to rebuild a backbone trained by solo-learn, whose CIFAR stem
            pads by 2 (32 -> 34 px feature maps).

    Returns:
        ``(module, features_dim)``: ``module(x)`` maps ``(B, 3, H, W)`` to ``(B, features_dim)``
        (:func:`output_width`).
    """
    if not timm.is_model(name):
        names = timm.list_models()
        raise ConfigError(
            "backbone.name", name, f"a timm/torchvision model name{suggest(name, names)}"
        )
    kwargs = dict(kwargs or {})
    for key in ("channels",):
        if key in kwargs and kwargs[key] is not None:
            value = kwargs[key]
            stages = RESNET_STAGES if is_timm_resnet(name) else None
            listed = isinstance(value, Sequence) and not isinstance(value, str)
            ok = listed and all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in value
            )
            if not ok or (stages is not None and len(value) != stages):
                allowed = "a list of positive integers"
                if stages is not None:  # fewer fail deep inside timm, more are ignored by it
                    allowed = f"a list of {stages} positive integers, one width per stage of {name}"
                raise ConfigError(
                    f"backbone.kwargs.{key}", list(value) if listed else value, allowed
                )
            kwargs[key] = tuple(value)
    kwargs = residual_init_kwargs(name, kwargs)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as err:
        raise ConfigError(
            "backbone.kwargs", kwargs, f"arguments accepted by timm's {name}: {err}"
        ) from err
    if "stem_width" in kwargs and isinstance(getattr(model, "conv1", None), nn.Conv2d):
        config_warning(  # timm reads it for a deep stem only (stem_type deep or deep_tiered)
            "backbone.kwargs.stem_width",
            kwargs["stem_width"],
            f"has no effect on {name}'s plain 7x7 stem, which stays 64 wide (it sets the width "
            "of a deep stem: backbone.kwargs.stem_type=deep)",
        )
    if cifar_stem:
        conv1 = getattr(model, "conv1", None)
        if not isinstance(conv1, nn.Conv2d):
            raise ConfigError(
                "backbone.cifar_stem", True, f"false for {name} (no plain conv1 stem to replace)"
            )
        model.conv1 = nn.Conv2d(
            conv1.in_channels, conv1.out_channels, 3, 1, stem_padding, bias=False
        )
        if hasattr(model, "maxpool"):
            model.maxpool = nn.Identity()
    empty = next((n for n, p in model.named_parameters() if p.numel() == 0), None)
    if empty is not None:  # a layer of width 0 builds, and fails at the first forward pass
        raise ConfigError(
            "backbone.kwargs",
            kwargs,
            f"arguments that leave every layer of {name} at least one channel ({empty} is empty)",
        )
    return model, output_width(model, name, kwargs)


#: Side of the square image :func:`output_width` sends through a model that records no input size.
DEFAULT_INPUT_SIZE = 224


@torch.no_grad()
def output_width(model: nn.Module, name: str, kwargs: Mapping[str, Any]) -> int:
    """D of the (B, D) features ``model`` (timm's ``name`` built with ``kwargs``) outputs.

    Measured, not read: timm's ``num_features`` is the width before a head's own layers
    (mobilenetv3_small_050: 288, its output 1024) or a wider pooling (``catavgmax``: twice it).
    One image at the model's default input size goes through it in eval mode on the meta device
    (shapes only: no memory or computation; its weights, device and train mode are untouched).

    Raises:
        ConfigError: the output is not one vector per image (``global_pool=''``: a feature map).
    """
    tensors = {
        k: torch.empty_like(t, device="meta")
        for k, t in chain(model.named_parameters(), model.named_buffers())
    }
    input_size = getattr(model, "pretrained_cfg", {}).get("input_size")
    side = input_size[-1] if input_size else DEFAULT_INPUT_SIZE
    image = torch.empty(1, 3, side, side, device="meta")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        out = torch.func.functional_call(model, tensors, (image,))
    finally:
        for m, training in modes.items():
            m.training = training
    if out.dim() != 2:
        key, value = "backbone.name", name
        if "global_pool" in kwargs:
            key, value = "backbone.kwargs.global_pool", kwargs["global_pool"]
        raise ConfigError(
            key,
            value,
            "a model that outputs one feature vector per image (timm's global_pool 'avg', "
            f"'max', 'avgmax' or 'catavgmax'): {name} maps (1, 3, {side}, {side}) to "
            f"{tuple(out.shape)}",
        )
    return int(out.shape[1])


class SplitBatchNormAct2d(SplitBatchNorm2d, BatchNormAct2d):
    """timm's ``BatchNormAct2d`` (BatchNorm, then its ``drop`` and ``act`` modules: RegNet,
    EfficientNet, MobileNet ...) with split statistics; still a ``BatchNormAct2d``, with its
    ``state_dict`` keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


#: The split class of each BatchNorm class that timm's models hold.
SPLIT_BATCH_NORMS: Mapping[type[nn.BatchNorm2d], type[SplitBatchNorm2d]] = {
    nn.BatchNorm2d: SplitBatchNorm2d,
    BatchNormAct2d: SplitBatchNormAct2d,
}


#: A 1x1, stride > 1 convolution with fewer input channels than this is trained wrongly in
#: channels_last by oneDNN's AVX2 kernel on the CPU: its weight gradient writes past its
#: workspace (uxlfoundation/oneDNN#6035; with torch 2.14.1 here: heap corruption, the process
#: aborts; elsewhere a hang or wrong weight gradients). 8 channels and more train correctly.
CPU_CHANNELS_LAST_MIN_CHANNELS = 8


def cpu_channels_last_hazard(model: nn.Module, device: torch.device | str) -> str | None:
    """Why ``model`` must not be trained in channels_last on ``device``: its first trained 1x1,
    stride > 1 ``Conv2d`` with fewer than :data:`CPU_CHANNELS_LAST_MIN_CHANNELS` input channels
    (a narrow ResNet's downsampling shortcut) when ``device`` is the CPU; None otherwise."""
    if torch.device(device).type != "cpu":
        return None
    for name, m in model.named_modules():
        narrow = isinstance(m, nn.Conv2d) and m.in_channels < CPU_CHANNELS_LAST_MIN_CHANNELS
        if narrow and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.weight.requires_grad:
            return (
                "performance.channels_last=true is not used to train on the CPU: "
                f"{name} is a 1x1, stride-{max(m.stride)} convolution of {m.in_channels} input "
                f"channels (fewer than {CPU_CHANNELS_LAST_MIN_CHANNELS}), whose weight gradient "
                "oneDNN computes wrongly in channels_last (memory corruption, a hang or wrong "
                "gradients: uxlfoundation/oneDNN#6035); training in NCHW, with the same results"
            )
    return None


@torch.no_grad()
def momentum_copy(online: nn.Module, momentum: nn.Module) -> None:
    """Initialise ``momentum`` as a copy of ``online`` and freeze it (no gradients)."""
    momentum.load_state_dict(online.state_dict())
    for p in momentum.parameters():
        p.requires_grad = False
