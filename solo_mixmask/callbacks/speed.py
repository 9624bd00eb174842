"""Training speed of a run (:class:`TrainSpeed`), for its summary."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class TrainSpeed(Callback):
    """Images per second over training batches only (validation and checkpointing excluded):
    ``images_per_sec`` over the whole run (the summary's figure), ``epoch_images_per_sec`` over
    the epoch under way or just ended (the epoch lines).

    A batch's time runs from its ``on_train_batch_start`` to its ``on_train_batch_end``: on the
    host's clock on a CPU; on CUDA on the device's, between two CUDA events recorded at those
    hooks. The host leaves a step before the device has run it (the backward, the optimiser and
    the EMA are queued), so on the host's clock the device's work that overlaps the time between
    batches (the next batch's loading, Lightning's loop) would count for nothing; more so when no
    host sync holds the step back (``performance.loss_check_lag``). The events are read once
    they have run (``query``: no wait), and all of them before a figure is read (one wait per
    epoch). :attr:`clock` says which clock timed the run's batches: ``"host"``, ``"cuda events"``,
    ``"mixed"`` (a resumed run whose processes used different ones) or None (no batch yet).

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
        self._start_event: torch.cuda.Event | None = None
        #: (start, end) CUDA events of batches whose time is not yet added
        self._batch_events: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()
        self.clock: str | None = None
        #: Wall seconds of earlier processes of this run (None: a new run).
        self.wall_seconds_before: float | None = None
        self._clock_start = time.perf_counter()

    def start_clock(self, at: float, before: float | None = None) -> None:
        """This process's wall time counts from ``at`` (``time.perf_counter()``), after
        ``before`` seconds of earlier processes (a checkpoint's state replaces it)."""
        self._clock_start, self.wall_seconds_before = at, before

    def state_dict(self) -> dict[str, Any]:
        """The run's totals up to this checkpoint: training seconds and images, wall seconds."""
        self._settle(wait=True)
        wall = (self.wall_seconds_before or 0.0) + time.perf_counter() - self._clock_start
        return {
            "seconds": self.seconds,
            "images": self.images,
            "wall_seconds": wall,
            "clock": self.clock,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = float(state_dict["seconds"])
        self.images = int(state_dict["images"])
        self.wall_seconds_before = float(state_dict["wall_seconds"])
        # checkpoints written before the clock was kept were all timed on the host
        self.clock = state_dict.get("clock", "host" if self.images else None)

    def _timed_by(self, clock: str) -> None:
        self.clock = clock if self.clock in (None, clock) else "mixed"

    def _new_epoch(self) -> None:
        self._settle(wait=True)  # the last epoch's batches count in that epoch
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
        self._start_event = None
        if pl_module.device.type == "cuda":
            self._start_event = torch.cuda.Event(enable_timing=True)
            self._start_event.record()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        seconds = time.perf_counter() - self._start
        images = int(batch[0].shape[0]) * trainer.world_size
        self.images += images
        self.epoch_images += images
        if self._start_event is None:
            self._timed_by("host")
            self._add(seconds)
            return
        self._timed_by("cuda events")
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._batch_events.append((self._start_event, end))
        self._settle(wait=False)

    def _add(self, seconds: float) -> None:
        self.seconds += seconds
        self.epoch_seconds += seconds

    def _settle(self, wait: bool) -> None:
        """Add the device time of the batches whose end event has run; with ``wait``, of every
        batch (waiting for the device)."""
        while self._batch_events:
            start, end = self._batch_events[0]
            if wait:
                end.synchronize()
            elif not end.query():
                return
            self._add(start.elapsed_time(end) / 1000)  # ms
            self._batch_events.popleft()

    @property
    def images_per_sec(self) -> float:
        self._settle(wait=True)
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def epoch_images_per_sec(self) -> float:
        self._settle(wait=True)
        return self.epoch_images / self.epoch_seconds if self.epoch_seconds else 0.0
