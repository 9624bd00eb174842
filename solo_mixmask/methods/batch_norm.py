"""Single-device BatchNorm fidelity for every momentum method: split BN and shuffled keys.

``method_kwargs.bn_splits`` (int >= 1, default 1): the online and momentum backbones' BatchNorm
layers take their training statistics per group of ``batch_size / bn_splits`` images
(:class:`~solo_mixmask.core.batch_norm.SplitBatchNorm2d`; timm's ``BatchNormAct2d`` keeps its
activation: :data:`~solo_mixmask.backbones.SPLIT_BATCH_NORMS`). A backbone with no BatchNorm
layer (ConvNeXt) or one that cannot be split is refused with ``bn_splits > 1``.
``method_kwargs.shuffle_bn`` (bool, default false): the momentum network sees the key images in
a random order, across all processes under DDP, and its outputs are put back in order
(:func:`~solo_mixmask.core.batch_norm.shuffled_forward`); refused when the momentum network has
no BatchNorm layer or with ``sync_batchnorm`` (statistics of the whole batch of every device do
not depend on its order). Together they are what MoCo's
multi-GPU training gets from per-GPU BatchNorm; under DDP, ``bn_splits: 1`` with
``shuffle_bn: true`` is exactly the authors' setting (per-device BN, keys shuffled across
devices).

The layers are swapped inside the method, after the host (ours or solo-learn's) built its
backbones, so both engines get it; the swapped layers keep BatchNorm's ``state_dict`` keys, so
checkpoints load either way and exports hold ordinary BatchNorm. With ``bn_splits: 1`` they are
swapped too: one group computes what ``BatchNorm2d`` does, and the layers can keep the inputs of
one interleaved call apart (``performance.batch_online_forwards`` of our engine).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from solo_mixmask.backbones import SPLIT_BATCH_NORMS
from solo_mixmask.config.schema import (
    backbone_name_of,
    batch_size_of,
    check_bool,
    check_number,
    fill_defaults,
    seed_of,
    syncs_batch_norm,
    trains_on_one_device,
)
from solo_mixmask.core.batch_norm import (
    shuffled_forward,
    split_batch_norms,
    unsplit_batch_norms,
)
from solo_mixmask.errors import ConfigError, config_warning
from solo_mixmask.methods.contract import LogicBase
from solo_mixmask.utils.distributed import gather_no_grad
from solo_mixmask.utils.generators import SeededGenerators

#: The ``method_kwargs`` of :class:`SplitBNLogic` and their defaults (one BatchNorm, no shuffle).
BN_DEFAULTS: dict[str, Any] = {"bn_splits": 1, "shuffle_bn": False}

#: Added to the seed of the key-shuffling stream, so that it differs from the mixing streams.
SHUFFLE_SEED_OFFSET = 104_729


def check_bn_config(cfg: DictConfig) -> None:
    """``method_kwargs.bn_splits`` divides the per-device batch into groups of >= 2 images;
    ``shuffle_bn`` is a boolean; neither is combined with ``sync_batchnorm``."""
    check_number(cfg, "method_kwargs.bn_splits", low=1, integer=True)
    check_bool(cfg, "method_kwargs.shuffle_bn")
    splits = int(cfg.method_kwargs.bn_splits)
    batch = batch_size_of(cfg)
    if batch % splits or batch // splits < 2:
        raise ConfigError(
            "method_kwargs.bn_splits",
            splits,
            f"a divisor of optimizer.batch_size={batch} (images per device) that leaves groups "
            "of at least 2 images",
        )
    if splits == 1 and cfg.method_kwargs.shuffle_bn and trains_on_one_device(cfg):
        config_warning(
            "method_kwargs.shuffle_bn",
            True,
            "has no effect with method_kwargs.bn_splits=1 on one device (BatchNorm over the "
            "whole batch does not depend on the order): it matters with bn_splits > 1 or under "
            "DDP",
        )
    if splits > 1 and syncs_batch_norm(cfg):
        raise ConfigError(
            "method_kwargs.bn_splits",
            splits,
            "1 with sync_batchnorm=true (statistics synchronised across devices cannot also be "
            "split within one)",
        )
    if cfg.method_kwargs.shuffle_bn and syncs_batch_norm(cfg):
        raise ConfigError(
            "method_kwargs.shuffle_bn",
            True,
            "false with sync_batchnorm=true (statistics of every device's whole batch do not "
            "depend on the order of the keys)",
        )


def check_split(backbones: list[nn.Module], splits: int, name: str) -> None:
    """ConfigError unless, with ``bn_splits > 1``, ``backbones`` hold BatchNorm layers and all
    of them are split (a layer left whole would normalise the whole batch)."""
    if splits == 1:
        return
    norms = [m for b in backbones for m in b.modules() if isinstance(m, _BatchNorm)]
    unsplit = [u for b in backbones for u in unsplit_batch_norms(b)]
    if not norms or unsplit:
        why = (
            f"its BatchNorm layer {unsplit[0]} has no split version and would normalise the "
            "whole batch"
            if unsplit
            else "its backbone has no BatchNorm layer to split"
        )
        raise ConfigError("method_kwargs.bn_splits", splits, f"1 for {name} ({why})")


class SplitBNLogic(LogicBase):
    """Mixin placed before the projector's: split BatchNorm and shuffled momentum forwards."""

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.bn_splits = int(kw.bn_splits)
        self.shuffle_bn = bool(kw.shuffle_bn)
        backbones = [self.backbone, self.momentum_backbone]
        for backbone in backbones:
            split_batch_norms(backbone, self.bn_splits, SPLIT_BATCH_NORMS)
        name = backbone_name_of(cfg)
        check_split(backbones, self.bn_splits, name)
        momentum = [m for _, net in self.momentum_pairs for m in net.modules()]
        if self.shuffle_bn and not any(isinstance(m, _BatchNorm) for m in momentum):
            raise ConfigError(
                "method_kwargs.shuffle_bn",
                True,
                f"false for {name} (no BatchNorm layer in the momentum network: the order of "
                "the keys changes nothing)",
            )
        # one stream for every process (no rank in its seed): all draw the same permutation
        self.shuffle_generators = SeededGenerators(seed_of(cfg) + SHUFFLE_SEED_OFFSET)

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        cfg = super().add_and_assert_specific_cfg(cfg)
        fill_defaults(cfg, {"method_kwargs": BN_DEFAULTS})
        check_bn_config(cfg)
        return cfg

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, Any]:
        if not (self.shuffle_bn and self.training):
            return super().momentum_forward(X)
        trainer = getattr(self, "_trainer", None)
        world = int(trainer.world_size) if trainer is not None else 1
        rank = int(trainer.global_rank) if trainer is not None else 0
        return shuffled_forward(
            super().momentum_forward,
            X,
            self.shuffle_generators.device(X.device),
            gather=gather_no_grad,
            rank=rank,
            world=world,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["shuffle_generators"] = self.shuffle_generators.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "shuffle_generators" in checkpoint:
            self.shuffle_generators.load_state_dict(checkpoint["shuffle_generators"])
