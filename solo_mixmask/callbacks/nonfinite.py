"""Stop on a NaN/inf loss (:class:`NonFiniteLossGuard`, reading each step's loss through
:class:`LossCheck`) and refuse to save non-finite weights."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from solo_mixmask.checkpoints.io import LAST
from solo_mixmask.errors import NonFiniteLossError


@dataclass(frozen=True)
class BadLoss:
    """A step whose loss was not finite: ``step`` (optimiser steps before it), ``epoch``,
    ``local`` (this process's loss) and ``anywhere`` (the sum over processes: not finite when
    any process's loss is not)."""

    step: int
    epoch: int
    local: float
    anywhere: float


class LossCheck:
    """Whether each step's loss is finite, read ``lag`` steps after the step.

    ``lag=0``: read at once, one device-to-host sync per step (the host waits for the forward
    pass). ``lag=N``: the loss is copied into a host ring of N + 1 slots without waiting
    (pinned memory and an event on CUDA); the step N steps back is read when a new one is
    pushed, and on CUDA the host waits only if the device is more than N steps behind it.
    :meth:`drain` reads every pending step. ``all_reduce`` (in place, sum; the default process
    group's under DDP) makes every process see any process's bad loss at the same step.
    """

    def __init__(self, lag: int = 0):
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.lag = lag
        self._pending: deque[tuple[int, int, int]] = deque()  # (step, epoch, slot)
        self._ring: torch.Tensor | None = None  # (lag + 1, values) on the host
        self._events: list[torch.cuda.Event] = []  # CUDA: each slot's copy done
        self._slot = 0

    def push(
        self,
        loss: torch.Tensor,
        step: int,
        epoch: int,
        all_reduce: Callable[[torch.Tensor], Any] | None = None,
    ) -> BadLoss | None:
        """Record the loss of ``step``; the first non-finite step now due (``lag`` steps old,
        earlier ones included), else None. Once one is returned, nothing else is pending."""
        values = loss.detach().float()
        values = (values.sum() if values.numel() != 1 else values).reshape(1)
        if all_reduce is not None:
            reduced = values.clone()
            all_reduce(reduced)
            values = torch.cat([values, reduced])
        if self.lag == 0:  # read now: the host waits for the device
            return self._bad(step, epoch, [float(values)] if len(values) == 1 else values.tolist())
        cuda = values.is_cuda
        if self._ring is None:  # as wide as every push's values: one process count per run
            self._ring = torch.empty((self.lag + 1, values.numel()), pin_memory=cuda)
            self._events = [torch.cuda.Event() for _ in range(self.lag + 1)] if cuda else []
        slot = self._slot
        self._slot = (slot + 1) % (self.lag + 1)  # read (popped) before it comes round again
        self._ring[slot].copy_(values, non_blocking=cuda)
        if cuda:
            self._events[slot].record(torch.cuda.current_stream(values.device))
        self._pending.append((step, epoch, slot))
        return self._due(self.lag)

    def drain(self) -> BadLoss | None:
        """Read every pending step: the first non-finite one, else None."""
        return self._due(0)

    def _due(self, keep: int) -> BadLoss | None:
        assert self._ring is not None or not self._pending
        while len(self._pending) > keep:
            step, epoch, slot = self._pending.popleft()
            if self._events:  # this step's copy only, not the work queued after it
                self._events[slot].synchronize()
            bad = self._bad(step, epoch, self._ring[slot].tolist())  # type: ignore[index]
            if bad is not None:
                self._pending.clear()
                return bad
        return None

    @staticmethod
    def _bad(step: int, epoch: int, values: list[float]) -> BadLoss | None:
        """``values``: [this process's loss] or [it, the sum over processes]."""
        local, anywhere = values[0], values[-1]
        if math.isfinite(local) and math.isfinite(anywhere):
            return None
        return BadLoss(step, epoch, local, anywhere)


def _sum_over_processes(trainer: L.Trainer) -> Callable[[torch.Tensor], Any] | None:
    """An in-place sum over the run's processes (not the Lightning strategy's ``reduce``: it
    waits at a barrier first), or None for one process."""
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        return dist.all_reduce
    return None


class NonFiniteLossGuard(Callback):
    """Raises :class:`NonFiniteLossError` naming the step whose loss was NaN or inf.

    ``loss_check_lag`` (``performance.loss_check_lag``, :class:`LossCheck`): 0 stops before
    the bad loss is back-propagated, at one device-to-host sync per step; N > 0 reads each
    loss N steps later without waiting for the device, so up to N more steps train before the
    stop. Every pending step is read before a validation, at the end of an epoch or of training
    and before a checkpoint is written, and a checkpoint whose weights hold NaN/inf is refused
    (the old file stays): either way nothing non-finite is saved. Under DDP every process stops
    at the same step (a bad loss on any one stops them all), so none is left waiting in a
    gradient all-reduce.
    """

    def __init__(self, checkpoint_dir: str | Path | None, loss_check_lag: int = 0):
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.check = LossCheck(loss_check_lag)

    def _last(self) -> str | None:
        last = self.checkpoint_dir / LAST if self.checkpoint_dir else None
        return str(last) if last is not None and last.exists() else None

    def _stop(self, bad: BadLoss | None, trainer: L.Trainer) -> None:
        if bad is None:
            return
        if not math.isfinite(bad.local):
            what = f"the training loss is {bad.local}"
        else:
            what = "the training loss is not finite on another rank"
        raise NonFiniteLossError(what, bad.step, bad.epoch, self._last(), _precision(trainer))

    def on_before_backward(self, trainer: L.Trainer, pl_module: Any, loss: torch.Tensor) -> None:
        step, epoch = trainer.global_step, trainer.current_epoch
        self._stop(self.check.push(loss, step, epoch, _sum_over_processes(trainer)), trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._stop(self.check.drain(), trainer)  # no k-NN of weights a bad loss has reached

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._stop(self.check.drain(), trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._stop(self.check.drain(), trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse to write a checkpoint after a non-finite loss or whose weights hold NaN/inf
        (the old file stays)."""
        self._stop(self.check.drain(), trainer)
        bad = first_non_finite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise NonFiniteLossError(
                f"weight {bad} is not finite",
                trainer.global_step,
                trainer.current_epoch,
                self._last(),
                _precision(trainer),
            )


def _precision(trainer: L.Trainer) -> str | None:
    """The run's precision as Lightning names it (``32-true``, ``bf16-mixed``), if known."""
    precision = getattr(trainer, "precision", None)
    return None if precision is None else str(precision)


def first_non_finite(tensors: dict[str, Any]) -> str | None:
    """The first name in ``tensors`` whose floating-point tensor holds NaN/inf, or None.

    One device-to-host sync per device holding tensors (not one per tensor: a ResNet-18
    method's state_dict has several hundred)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            by_device.setdefault(tensor.device, []).append((name, tensor))
    bad: list[str] = []
    for named in by_device.values():
        finite = torch.stack([torch.isfinite(t).all() for _, t in named])
        if not bool(finite.all()):
            bad += [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
    return min(bad, key=list(tensors).index) if bad else None
