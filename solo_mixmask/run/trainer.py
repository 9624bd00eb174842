"""The Lightning Trainer of a pretraining run: its arguments from the config, its callbacks
and its plugins."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, RichProgressBar

from solo_mixmask.callbacks import (
    DataOnDevice,
    GracefulStop,
    NonFiniteLossGuard,
    ResumeState,
    StopCheckpoint,
    TrainSpeed,
    ValidateLastEpoch,
)
from solo_mixmask.checkpoints.callbacks import LastCheckpoint, StepCheckpoint, epoch_checkpoint
from solo_mixmask.checkpoints.io import SafeAtomicCheckpointIO
from solo_mixmask.config.run_specs import LoggerSpec, TrainerSpec
from solo_mixmask.run.console import EpochLine, ModelLine, quiet_third_party
from solo_mixmask.run.folder import CHECKPOINTS
from solo_mixmask.run.loggers import build_loggers
from solo_mixmask.utils.sync_batch_norm import TimmSyncBatchNorm


def trainer_kwargs(spec: TrainerSpec) -> dict[str, Any]:
    """The config's ``lightning.Trainer`` arguments, with ``precision: auto`` resolved."""
    kwargs = dict(spec.arguments)
    if kwargs.get("precision") in (None, "auto"):
        # "auto": bf16 autocast on CUDA (fp16 with loss scaling where bf16 is unsupported),
        # full fp32 on CPU, where autocast would only slow the step down.
        accelerator = str(kwargs.get("accelerator") or "auto")
        on_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        if on_cuda:
            kwargs["precision"] = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            kwargs["precision"] = "32-true"
    return kwargs


def build_callbacks(spec: TrainerSpec, run_dir: Path) -> list[Callback]:
    """Speed meter, LR monitor, progress bar or epoch lines, NaN guard, resume state, stop
    handling and (with ``checkpoint.enabled``) the checkpointers of :mod:`solo_mixmask.callbacks`.

    The loaders of :class:`ResumeState` and :class:`DataOnDevice` are attached once they exist.
    """
    ckpt_dir = run_dir / CHECKPOINTS
    enabled = spec.checkpoint.enabled
    callbacks: list[Callback] = [
        TrainSpeed(),
        LearningRateMonitor(logging_interval="epoch"),
        NonFiniteLossGuard(ckpt_dir if enabled else None, spec.loss_check_lag),
        ResumeState(None),  # the training loader is attached once it exists
        DataOnDevice(),  # likewise, the loaders that hold their images on the device
        GracefulStop(),  # SIGTERM / Ctrl-C: stop after the step, with a checkpoint
        ValidateLastEpoch(),  # the summary's accuracies are the last epoch's
    ]
    if spec.progress_bar:
        callbacks.append(RichProgressBar())
    else:
        callbacks.append(EpochLine())  # CI logs, nohup: one line per epoch
    if not spec.model_summary:
        callbacks.append(ModelLine())  # Lightning's table with enable_model_summary=true
    if enabled:
        callbacks.append(epoch_checkpoint(ckpt_dir, spec.checkpoint.frequency))
        callbacks.append(LastCheckpoint(ckpt_dir))
        every = spec.checkpoint.every_n_steps
        if every:
            callbacks.append(StepCheckpoint(ckpt_dir, every))
        # after StepCheckpoint: a step that it saved is not saved twice
        callbacks.append(StopCheckpoint(ckpt_dir))
    return callbacks


def build_trainer(
    spec: TrainerSpec, logger: LoggerSpec, run_dir: Path, callbacks: list[Callback]
) -> L.Trainer:
    """The run's ``lightning.Trainer``: :func:`trainer_kwargs`, ``callbacks``, the loggers
    (:func:`~solo_mixmask.run.loggers.build_loggers`) and atomic, weights-only checkpoint files
    (:class:`~solo_mixmask.checkpoints.io.SafeAtomicCheckpointIO`); output under ``run_dir``."""
    kwargs = trainer_kwargs(spec)
    kwargs.setdefault("num_sanity_val_steps", 0)
    kwargs.setdefault("log_every_n_steps", 10)
    kwargs.setdefault("enable_model_summary", False)  # ModelLine prints one line instead
    quiet_third_party()  # before the Trainer logs its tips
    if spec.data_on_device:
        # the images are decoded once and augmented on the device: workers would not help
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    if torch.cuda.is_available():
        # fp32 matrix products (outside autocast) on TF32 tensor cores, as Lightning advises
        torch.set_float32_matmul_precision("high")
    plugins = kwargs.pop("plugins", None) or []
    plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if kwargs.get("sync_batchnorm"):  # Lightning's own conversion drops timm's activations
        plugins.append(TimmSyncBatchNorm())
    return L.Trainer(
        **kwargs,
        callbacks=callbacks,
        plugins=[*plugins, SafeAtomicCheckpointIO()],
        logger=build_loggers(logger, run_dir) or False,
        default_root_dir=str(run_dir),
        enable_progress_bar=spec.progress_bar,
        enable_checkpointing=spec.checkpoint.enabled,
    )
