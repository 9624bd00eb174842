"""A tiny real Lightning fit (a linear model, CPU, no logger) for the callback tests."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset


class TinyModule(L.LightningModule):
    """``y = w . x`` trained by SGD on a squared output; 4 inputs, one output."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class ValidatedTinyModule(TinyModule):
    """:class:`TinyModule` with a validation step (it logs ``val_loss``)."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.layer(batch[0]).pow(2).mean())


def quiet_trainer(**settings: Any) -> L.Trainer:
    """A one-CPU Trainer without logger, checkpoints, progress bar or model summary (each can
    be set again in ``settings``, with any other Trainer argument)."""
    quiet = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**quiet, **settings})


def fit_tiny(
    callbacks: list[Any],
    batches: int = 8,
    epochs: int = 2,
    accumulate: int = 1,
    ckpt_path: str | None = None,
    model: L.LightningModule | None = None,
    val_every: int | None = None,
    max_steps: int = -1,
    max_time: dict[str, int] | None = None,
    val_interval: int | float | None = None,
    val_over_run: bool = False,
) -> L.Trainer:
    """``epochs`` epochs of ``batches`` batches (2 samples each) with ``callbacks``, resumed
    from ``ckpt_path`` when given; ``model`` (default :class:`TinyModule`) is validated on the
    same batches every ``val_every`` epochs when that is given, and within them at Lightning's
    ``val_check_interval`` ``val_interval``; with ``val_over_run`` instead every ``val_interval``
    training batches counted over the whole run (``check_val_every_n_epoch=None``).
    ``max_steps`` (optimiser steps, -1: none) and ``max_time`` (Lightning's, e.g.
    ``{"seconds": 0}``) end the fit earlier when reached."""
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(2 * batches, 4)), batch_size=2)
    trainer = quiet_trainer(
        max_epochs=epochs,
        max_steps=max_steps,
        max_time=max_time,
        accumulate_grad_batches=accumulate,
        callbacks=callbacks,
        # no checkpoints/ in the working folder unless a test brings its own checkpointing
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        check_val_every_n_epoch=None if val_over_run else val_every or 1,
        val_check_interval=val_interval,
        num_sanity_val_steps=0,
    )
    val = data if val_every or val_over_run else None
    trainer.fit(model or TinyModule(), data, val, ckpt_path=ckpt_path)
    return trainer
