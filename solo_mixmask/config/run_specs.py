"""What a pretraining run needs from a config outside the engine and the data layer, read once.

:func:`run_spec` is parsed once by :func:`~solo_mixmask.run.pretrain.run_pretrain` and holds the
:class:`FolderSpec` (:mod:`solo_mixmask.run.folder`), the :class:`TrainerSpec`
(:mod:`solo_mixmask.run.trainer`) and the :class:`LoggerSpec` (``name``, ``logging.*``,
``wandb.*``; :func:`~solo_mixmask.run.loggers.build_loggers`). A key absent from the config takes
its :data:`~solo_mixmask.config.schema.BASE_DEFAULTS` value. Pure: no torch, no files read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from solo_mixmask.config.engine_specs import nullable_of, plain, value_of
from solo_mixmask.config.schema import read_bool, to_container, trainer_arg_names


@dataclass(frozen=True)
class WandbSpec:
    """``wandb.*``: ``enabled``, ``offline`` (no network), ``project`` and ``entity`` (None:
    the account's default)."""

    enabled: bool
    offline: bool
    project: Any
    entity: Any


@dataclass(frozen=True)
class LoggerSpec:
    """The run's loggers: ``run_name`` (``name``), ``csv`` (``logs/metrics.csv``),
    ``tensorboard`` and ``wandb`` (:class:`WandbSpec`)."""

    run_name: Any
    csv: bool
    tensorboard: bool
    wandb: WandbSpec


def logger_spec(cfg: DictConfig) -> LoggerSpec:
    """The :class:`LoggerSpec` of ``cfg``."""
    return LoggerSpec(
        run_name=value_of(cfg, "name"),
        csv=bool(value_of(cfg, "logging.csv")),
        tensorboard=bool(value_of(cfg, "logging.tensorboard")),
        wandb=WandbSpec(
            enabled=bool(value_of(cfg, "wandb.enabled")),
            offline=bool(value_of(cfg, "wandb.offline")),
            project=value_of(cfg, "wandb.project"),
            entity=nullable_of(cfg, "wandb.entity"),
        ),
    )


@dataclass(frozen=True)
class CheckpointSpec:
    """``checkpoint.*``: ``enabled``; ``frequency``: epochs between epoch checkpoints (>= 1);
    ``every_n_steps``: optimiser steps between mid-epoch rewrites of last.ckpt (None: off)."""

    enabled: bool
    frequency: int
    every_n_steps: int | None


@dataclass(frozen=True)
class TrainerSpec:
    """What :mod:`solo_mixmask.run.trainer` reads: ``checkpoint``
    (:class:`CheckpointSpec`), ``progress_bar`` (a live bar, else one line per epoch),
    ``model_summary`` (Lightning's table, ``enable_model_summary``) and ``data_on_device``
    (``data.format=memory``: images decoded once and augmented on the device);
    ``loss_check_lag``: steps after which the NaN/inf guard reads a step's loss
    (``performance.loss_check_lag``; 0: before its backward, one host sync per step)."""

    checkpoint: CheckpointSpec
    progress_bar: bool
    model_summary: bool
    data_on_device: bool
    #: the top-level keys that are ``lightning.Trainer`` arguments, passed as solo-learn does
    arguments: dict[str, Any] = field(default_factory=dict)
    loss_check_lag: int = 0


def trainer_spec(cfg: DictConfig) -> TrainerSpec:
    """The :class:`TrainerSpec` of ``cfg``."""
    every = nullable_of(cfg, "checkpoint.every_n_steps")
    return TrainerSpec(
        checkpoint=CheckpointSpec(
            enabled=bool(value_of(cfg, "checkpoint.enabled")),
            frequency=int(value_of(cfg, "checkpoint.frequency")),
            every_n_steps=int(every) if every else None,
        ),
        progress_bar=bool(value_of(cfg, "progress_bar")),
        # a Trainer argument without a BASE_DEFAULTS entry: off unless given
        model_summary=bool(value_of(cfg, "enable_model_summary")),
        data_on_device=value_of(cfg, "data.format") == "memory",
        arguments=trainer_arguments(cfg),
        loss_check_lag=int(value_of(cfg, "performance.loss_check_lag")),
    )


def trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """Top-level config keys that are ``lightning.Trainer`` arguments, as given (``devices: "1"``,
    which solo-learn writes for CPU runs, is the number 1)."""
    names = trainer_arg_names()
    arguments = {k: v for k, v in to_container(cfg).items() if k in names}
    if isinstance(arguments.get("devices"), str) and arguments["devices"].isdigit():
        arguments["devices"] = int(arguments["devices"])
    return arguments


@dataclass(frozen=True)
class FolderSpec:
    """Where a new run writes: ``run_dir`` (``checkpoint.run_dir``, None: a new folder),
    else ``<dir>/<name>-<time stamp>`` (``checkpoint.dir``, ``name``)."""

    name: Any
    dir: Any
    run_dir: Any


def folder_spec(cfg: DictConfig) -> FolderSpec:
    """The :class:`FolderSpec` of ``cfg``."""
    return FolderSpec(
        name=value_of(cfg, "name"),
        dir=value_of(cfg, "checkpoint.dir"),
        run_dir=nullable_of(cfg, "checkpoint.run_dir"),
    )


@dataclass(frozen=True)
class ResumeFacts:
    """What ``resume`` compares between a run's saved config and the one it resumes with, read
    as given (bad values are reported by the start-up checks afterwards): ``method``,
    ``max_epochs`` and ``max_steps`` (None when absent), ``scheduler`` (its name) and ``min_lr``
    (learning rate at the end of a cosine schedule)."""

    method: Any
    max_epochs: Any
    max_steps: Any
    scheduler: Any
    min_lr: Any


def resume_facts(cfg: DictConfig) -> ResumeFacts:
    """The :class:`ResumeFacts` of ``cfg``."""
    return ResumeFacts(
        method=OmegaConf.select(cfg, "method"),
        max_epochs=OmegaConf.select(cfg, "max_epochs"),
        max_steps=OmegaConf.select(cfg, "max_steps"),
        scheduler=value_of(cfg, "scheduler.name"),
        min_lr=value_of(cfg, "scheduler.min_lr"),
    )


@dataclass(frozen=True)
class MonitorFacts:
    """How a finished run's config says its online monitors measured, read as saved (None
    where absent): ``precision`` (the setting; ``auto`` unresolved) and ``accelerator``, which
    decide the features' precision, and ``knn`` (``knn_eval.T``, ``data.knn_train_subset``,
    ``data.val_subset``, ``performance.knn_dtype`` by key), which decide the k-NN's images and
    similarities."""

    precision: Any
    accelerator: Any
    knn: dict[str, Any]


#: The keys of :attr:`MonitorFacts.knn`.
KNN_MONITOR_KEYS = (
    "knn_eval.T",
    "data.knn_train_subset",
    "data.val_subset",
    "performance.knn_dtype",
)


def monitor_facts(cfg: DictConfig | dict[str, Any] | None) -> MonitorFacts:
    """The :class:`MonitorFacts` of a run's saved config (a mapping; None: no config, every
    fact None)."""
    node = OmegaConf.create(cfg or {}) if not isinstance(cfg, DictConfig) else cfg
    return MonitorFacts(
        precision=OmegaConf.select(node, "precision"),
        accelerator=OmegaConf.select(node, "accelerator"),
        knn={key: plain(OmegaConf.select(node, key)) for key in KNN_MONITOR_KEYS},
    )


@dataclass(frozen=True)
class RunSpec:
    """What :mod:`solo_mixmask.run.pretrain` reads: ``method`` and ``backbone`` (names, for the
    summary), ``seed``, ``knn_enabled`` (``knn_eval.enabled``), ``num_classes``
    (``data.num_classes``, None: from the data), ``no_labels`` (``data.no_labels``), and the
    ``folder``, ``trainer`` and ``logger`` specs of the run."""

    method: Any
    backbone: Any
    seed: int
    knn_enabled: bool
    num_classes: Any
    no_labels: bool
    folder: FolderSpec
    trainer: TrainerSpec
    logger: LoggerSpec


def method_of(cfg: DictConfig) -> Any:
    """``method`` as given (None when absent: the defaults are not filled in yet)."""
    return OmegaConf.select(cfg, "method")


def run_spec(cfg: DictConfig) -> RunSpec:
    """The :class:`RunSpec` of ``cfg`` (checked by the start-up checks first)."""
    return RunSpec(
        method=value_of(cfg, "method"),
        backbone=value_of(cfg, "backbone.name"),
        seed=int(value_of(cfg, "seed")),
        knn_enabled=bool(value_of(cfg, "knn_eval.enabled")),
        num_classes=nullable_of(cfg, "data.num_classes"),
        no_labels=read_bool(cfg, "data.no_labels"),
        folder=folder_spec(cfg),
        trainer=trainer_spec(cfg),
        logger=logger_spec(cfg),
    )


def with_a_class_count(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` that builds the model before the data is read: its ``data.num_classes``,
    or 2 where the data will count the classes (the count changes no check the build makes)."""
    probe = cfg.copy()
    if OmegaConf.select(probe, "data.num_classes") is None:
        record(probe, "data.num_classes", 2)
    return probe


def record(cfg: DictConfig, key: str, value: Any) -> None:
    """Write ``value`` at dotted ``key`` of ``cfg`` (what the run decided: the classes found in
    the data, the run folder), so that ``config.yaml`` and the checkpoints hold it."""
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
