"""What the engine (:mod:`solo_mixmask.methods.base`) needs from a config, read once:
:func:`engine_spec`.

``BaseMethod.__init__`` fills the defaults of :data:`~solo_mixmask.config.schema.BASE_DEFAULTS` and runs
the start-up checks (:func:`~solo_mixmask.config.schema.validate_base`), then parses the config into a
frozen :class:`EngineSpec` and reads only that afterwards (the optimiser, the learning-rate
schedule, the momentum schedule, the k-NN monitor). A key absent from the config takes its
:data:`~solo_mixmask.config.schema.BASE_DEFAULTS` value, so a spec parsed from a partial config equals
one parsed from the filled config. Pure: no torch, no files read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from solo_mixmask.config.dataset_facts import num_classes_of
from solo_mixmask.config.schema import (
    BASE_DEFAULTS,
    SOLO_LEARN_LARS_KWARGS,
    STEP_DECAY_EPOCHS,
    STEP_DECAY_RATE,
    crop_size,
    select,
)
from solo_mixmask.errors import ConfigError


def default_of(key: str) -> Any:
    """The :data:`~solo_mixmask.config.schema.BASE_DEFAULTS` value of dotted ``key`` (None when it has
    none)."""
    node: Any = BASE_DEFAULTS
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return copy.deepcopy(node)  # never BASE_DEFAULTS' own dicts


def value_of(cfg: DictConfig, key: str) -> Any:
    """``cfg[key]``; its BASE_DEFAULTS value when absent or null (solo-learn's omegaconf_select)."""
    return select(cfg, key, default_of(key))


def nullable_of(cfg: DictConfig, key: str) -> Any:
    """``cfg[key]``, None when null; its BASE_DEFAULTS value only when absent (keys where null
    means something: all images, no folder given, decided from the rest of the config)."""
    return OmegaConf.select(cfg, key, default=default_of(key))


def plain(value: Any) -> Any:
    """A config node as plain python (dicts and lists, interpolations resolved); other values
    as they are."""
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass(frozen=True)
class BackboneSpec:
    """``backbone.*``: ``name`` (a timm model name), ``kwargs`` (its constructor arguments,
    plain python) and ``cifar_stem`` (3x3 stride-1 stem without max-pool; null in the config:
    true for first crops of at most 64 pixels)."""

    name: Any
    kwargs: Any
    cifar_stem: bool


@dataclass(frozen=True)
class OptimizerSpec:
    """``optimizer.*``: ``name`` (sgd, lars or adamw); ``batch_size``: images per device per
    step; ``lr`` and ``classifier_lr``: learning rates before linear scaling (per 256 images);
    ``weight_decay``: L2 factor of the backbone and heads (the classifier has none); ``kwargs``:
    further arguments of the optimiser, plain python, under its own names (solo-learn's LARS
    names translated); ``exclude_bias_n_norm``: LARS leaves 1-D tensors (biases, norm layers)
    without weight decay and trust ratio, as solo-learn's LARS does."""

    name: str
    batch_size: int
    lr: float
    classifier_lr: float
    weight_decay: float
    kwargs: dict[str, Any]
    exclude_bias_n_norm: bool = False


@dataclass(frozen=True)
class SchedulerSpec:
    """``scheduler.*``: ``name`` (warmup_cosine, cosine, step or none); ``warmup_epochs``
    (epochs, warmup_cosine only); ``warmup_start_lr`` and ``min_lr`` (learning rates);
    ``lr_decay_steps`` (epochs) and ``gamma`` (factor per milestone) of the step schedule."""

    name: str
    warmup_epochs: float
    warmup_start_lr: float
    min_lr: float
    lr_decay_steps: tuple[Any, ...]
    gamma: float


@dataclass(frozen=True)
class MomentumSpec:
    """``momentum.*``: the EMA coefficient tau follows a cosine from ``base_tau`` (first step)
    to ``final_tau`` (last step); both in [0, 1]."""

    base_tau: float
    final_tau: float


@dataclass(frozen=True)
class KnnSpec:
    """The k-NN monitor: ``enabled`` (``knn_eval.enabled``), ``k`` (neighbours voting), ``T``
    (temperature of the vote weights) and ``memory`` (``data.knn_train_subset``: images of the
    training split in its memory, None for all)."""

    enabled: bool
    k: int
    T: float
    memory: Any


@dataclass(frozen=True)
class PerformanceSpec:
    """``performance.*``: ``channels_last`` (NHWC backbones and inputs), ``compile``
    (torch.compile the backbones), ``compile_backend`` (its backend, checked when the method
    is built) and ``compile_mode``; ``optimizer_impl`` (torch's foreach / fused kernels),
    ``ema_foreach_lerp`` (the EMA as one foreach lerp), ``knn_dtype`` (the k-NN matmul) and
    ``batch_online_forwards`` (a step's online inputs through the backbone in one call)."""

    channels_last: bool
    compile: bool
    compile_backend: Any
    compile_mode: str
    optimizer_impl: str
    ema_foreach_lerp: bool
    knn_dtype: str
    batch_online_forwards: bool


@dataclass(frozen=True)
class EngineSpec:
    """Everything :class:`~solo_mixmask.methods.base.BaseMethod` reads from its config;
    ``num_classes``: classes of the online classifier (``data.num_classes``, else the
    dataset's); ``no_labels``: ``data.no_labels`` (no training accuracy to log)."""

    backbone: BackboneSpec
    optimizer: OptimizerSpec
    scheduler: SchedulerSpec
    momentum: MomentumSpec
    knn: KnnSpec
    performance: PerformanceSpec
    num_classes: int
    no_labels: bool = False


def _num_classes(cfg: DictConfig) -> int:
    value = select(cfg, "data.num_classes")
    if value is None:
        value = num_classes_of(value_of(cfg, "data.dataset"))
    if not isinstance(value, int) or value < 1:
        raise ConfigError(
            "data.num_classes", value, "an integer >= 1 (required for custom datasets)"
        )
    return value


def backbone_spec(cfg: DictConfig) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``cfg``."""
    cifar_stem = nullable_of(cfg, "backbone.cifar_stem")
    if cifar_stem is None:
        cifar_stem = crop_size(cfg) <= 64
    return BackboneSpec(
        name=value_of(cfg, "backbone.name"),
        kwargs=plain(value_of(cfg, "backbone.kwargs")),
        cifar_stem=bool(cifar_stem),
    )


def optimizer_spec(cfg: DictConfig) -> OptimizerSpec:
    """The :class:`OptimizerSpec` of ``cfg``."""
    kwargs = dict(plain(nullable_of(cfg, "optimizer.kwargs")) or {})  # null: none
    exclude = bool(kwargs.pop("exclude_bias_n_norm", False))
    kwargs = {SOLO_LEARN_LARS_KWARGS.get(k, k): v for k, v in kwargs.items()}
    return OptimizerSpec(
        name=value_of(cfg, "optimizer.name"),
        batch_size=value_of(cfg, "optimizer.batch_size"),
        lr=value_of(cfg, "optimizer.lr"),
        classifier_lr=value_of(cfg, "optimizer.classifier_lr"),
        weight_decay=value_of(cfg, "optimizer.weight_decay"),
        kwargs=kwargs,
        exclude_bias_n_norm=exclude,
    )


def scheduler_spec(cfg: DictConfig) -> SchedulerSpec:
    """The :class:`SchedulerSpec` of ``cfg``."""
    return SchedulerSpec(
        name=value_of(cfg, "scheduler.name"),
        warmup_epochs=value_of(cfg, "scheduler.warmup_epochs"),
        warmup_start_lr=value_of(cfg, "scheduler.warmup_start_lr"),
        min_lr=value_of(cfg, "scheduler.min_lr"),
        # in any order, as MultiStepLR counts them (timm's bisect needs them sorted)
        lr_decay_steps=tuple(sorted(select(cfg, "scheduler.lr_decay_steps", STEP_DECAY_EPOCHS))),
        gamma=select(cfg, "scheduler.gamma", STEP_DECAY_RATE),
    )


def engine_spec(cfg: DictConfig) -> EngineSpec:
    """The :class:`EngineSpec` of ``cfg`` (ConfigError for a ``data.num_classes`` that is not
    an integer >= 1, or absent for a custom dataset). The other keys are checked by
    :func:`~solo_mixmask.config.schema.validate_base`, which runs first."""
    return EngineSpec(
        backbone=backbone_spec(cfg),
        optimizer=optimizer_spec(cfg),
        scheduler=scheduler_spec(cfg),
        momentum=MomentumSpec(
            base_tau=value_of(cfg, "momentum.base_tau"),
            final_tau=value_of(cfg, "momentum.final_tau"),
        ),
        knn=KnnSpec(
            enabled=bool(value_of(cfg, "knn_eval.enabled")),
            k=value_of(cfg, "knn_eval.k"),
            T=value_of(cfg, "knn_eval.T"),
            memory=select(cfg, "data.knn_train_subset"),
        ),
        performance=PerformanceSpec(
            channels_last=bool(value_of(cfg, "performance.channels_last")),
            compile=bool(value_of(cfg, "performance.compile")),
            compile_backend=value_of(cfg, "performance.compile_backend"),
            compile_mode=str(value_of(cfg, "performance.compile_mode")),
            optimizer_impl=str(value_of(cfg, "performance.optimizer_impl")),
            ema_foreach_lerp=bool(value_of(cfg, "performance.ema_foreach_lerp")),
            knn_dtype=str(value_of(cfg, "performance.knn_dtype")),
            batch_online_forwards=bool(value_of(cfg, "performance.batch_online_forwards")),
        ),
        num_classes=_num_classes(cfg),
        no_labels=bool(select(cfg, "data.no_labels", False)),
    )
