"""Backbones by name, through timm (torchvision's ResNet names are the same as timm's)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

from solo_mixmask.config.schema import suggest
from solo_mixmask.errors import ConfigError

#: Stages of timm's ResNet family (resnet*, resnext*, wide_resnet*, seresnet* ...): one width
#: each in ``backbone.kwargs.channels``.
RESNET_STAGES = 4


def is_timm_resnet(name: str) -> bool:
    """Whether timm builds ``name`` with its ``ResNet`` class (module ``timm.models.resnet``)."""
    from timm.models import model_entrypoint

    return model_entrypoint(name).__module__ == "timm.models.resnet"


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
        cifar_stem: replace the 7x7 stride-2 conv + max-pool stem by a 3x3 stride-1 conv and no
            pool, for 32-pixel images.
        stem_padding: zero padding of that 3x3 conv in pixels: 1 (this package's runs, the
            usual CIFAR ResNet), or 2 to rebuild a backbone trained by solo-learn, whose CIFAR stem
            pads by 2 (32 -> 34 px feature maps).

    Returns:
        ``(module, features_dim)``: ``module(x)`` maps ``(B, 3, H, W)`` to ``(B, features_dim)``.
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
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as err:
        raise ConfigError(
            "backbone.kwargs", kwargs, f"arguments accepted by timm's {name}: {err}"
        ) from err
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
    features = model.num_features  # timm models name their output width
    assert isinstance(features, int)
    return model, features


@torch.no_grad()
def momentum_copy(online: nn.Module, momentum: nn.Module) -> None:
    """Initialise ``momentum`` as a copy of ``online`` and freeze it (no gradients)."""
    momentum.load_state_dict(online.state_dict())
    for p in momentum.parameters():
        p.requires_grad = False
