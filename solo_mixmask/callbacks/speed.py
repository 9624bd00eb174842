"""Training speed of a run (:class:`TrainSpeed`), for its summary."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class TrainSpeed(Callback):
    """Images per second over training batches only (validation and checkpointing excluded):
    ``images_per_sec`` over the whole run (the summary's figure), ``epoch_images_per_sec`` over
    the epoch under way or just ended (the epoch lines).

    The run's totals travel in its checkpoints, with :attr:`wall_seconds_before` (the wall time
    of the processes that trained it before, up to their last checkpoint), so that a resumed
    run's summary covers the whole run and not only its last process.

    Not Lightning's ``ThroughputMonitor``: that one is not in Lightning 2.1, logs windowed rates
    to the loggers instead of keeping the run's average, and counts the time between batches
    (data loading, checkpoint writes) as training time.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0
        self.epoch_seconds = 0.0
        self.epoch_images = 0
        self._start = 0.0
        #: Wall seconds of earlier processes of this run (None: a new run).
        self.wall_seconds_before: float | None = None
        self._clock_start = time.perf_counter()

    def start_clock(self, at: float, before: float | None = None) -> None:
        """This process's wall time counts from ``at`` (``time.perf_counter()``), after
        ``before`` seconds of earlier processes (a checkpoint's state replaces it)."""
        self._clock_start, self.wall_seconds_before = at, before

    def state_dict(self) -> dict[str, Any]:
        """The run's totals up to this checkpoint: training seconds and images, wall seconds."""
        wall = (self.wall_seconds_before or 0.0) + time.perf_counter() - self._clock_start
        return {"seconds": self.seconds, "images": self.images, "wall_seconds": wall}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = float(state_dict["seconds"])
        self.images = int(state_dict["images"])
        self.wall_seconds_before = float(state_dict["wall_seconds"])

    def _new_epoch(self) -> None:
        self.epoch_seconds, self.epoch_images = 0.0, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        # a resumed epoch starts here: Lightning does not call on_train_epoch_start for an epoch
        # it continues from a mid-epoch checkpoint
        self._new_epoch()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._new_epoch()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        seconds = time.perf_counter() - self._start
        images = int(batch[0].shape[0]) * trainer.world_size
        self.seconds += seconds
        self.images += images
        self.epoch_seconds += seconds
        self.epoch_images += images

    @property
    def images_per_sec(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def epoch_images_per_sec(self) -> float:
        return self.epoch_images / self.epoch_seconds if self.epoch_seconds else 0.0
