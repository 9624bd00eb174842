"""Loaders that keep their images on the device learn which device (:class:`DataOnDevice`)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class DataOnDevice(Callback):
    """Hands the Trainer's device to loaders that keep their images there (``to_device``, the
    in-memory path), before every fit or validation."""

    def __init__(self) -> None:
        self.loaders: list[Any] = []

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        for loader in self.loaders:
            loader.to_device(trainer.strategy.root_device)
