"""Stopping a run on request: SIGTERM (what SLURM and Kubernetes send) and Ctrl-C.

- :class:`GracefulStop` turns the signal into Lightning's own stop request, so the step under
  way is finished;
- :class:`StopCheckpoint` writes ``last.ckpt`` after that step, right before Lightning stops the
  loop (:class:`GracefulStop` makes the decision to stop the same on every rank first);
- :func:`stopped_error` is the :class:`~solo_mixmask.errors.RunStopped` the run ends with (exit
  status 143 or 130): what was saved and how to continue.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Checkpoint

from solo_mixmask.checkpoints.callbacks import ends_a_mid_epoch_step
from solo_mixmask.checkpoints.io import LAST
from solo_mixmask.errors import RunStopped, StopRequested


def signal_name(signum: int) -> str:
    """``Ctrl-C (SIGINT)`` or the signal's name (``SIGTERM``)."""
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


class GracefulStop(Callback):
    """SIGTERM and a first Ctrl-C (SIGINT) stop the run at a safe point; a second Ctrl-C stops it
    at once.

    Inside Lightning's loops the signal only sets Lightning's own stop request
    (``trainer.received_sigterm``, which Lightning's SIGTERM handler sets too): the training step
    under way finishes, :class:`StopCheckpoint` writes ``last.ckpt`` after it (not after an
    epoch's last batch or during validation: then the step is abandoned and the previous
    checkpoint kept) and Lightning raises ``SIGTERMException`` at the end of the step. Outside
    the loops (building the data, between passes) the handler raises :class:`StopRequested`
    at once: nothing was trained there. :func:`solo_mixmask.run.pretrain.run_pretrain` turns both
    into :class:`RunStopped` (:func:`stopped_error`).

    Under DDP the ranks agree after every training batch: a stop requested on any rank stops them
    all (Lightning 2.1 does not share a SIGTERM between ranks), so no rank is left waiting in a
    collective (a checkpoint save, a gradient all-reduce) that the others never reach.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_loop = False
        self._trainer: Any = None
        self._previous: dict[int, Any] = {}

    # the handlers
    def install(self) -> None:
        """Handle SIGTERM and SIGINT from now on (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.signum is None:
            self.signum = signum
        if not self.in_loop:
            raise StopRequested(signal_name(signum))
        self._request(self._trainer)

    def _request(self, trainer: Any) -> None:
        """Set Lightning's stop request (reset by Lightning whenever a new pass starts)."""
        connector = getattr(trainer, "_signal_connector", None)
        if self.signum is not None and connector is not None:
            connector.received_sigterm = True

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop was requested (between Lightning passes)."""
        if self.signum is not None:
            raise StopRequested(signal_name(self.signum))

    # the hooks
    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        self._trainer, self.in_loop = trainer, True

    def teardown(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        self.in_loop = False

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._request(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._request(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._request(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if int(getattr(trainer, "world_size", 1) or 1) < 2:
            return
        # every rank calls this after every batch, so the collective is matched
        stopping = bool(getattr(trainer, "received_sigterm", False))
        if trainer.strategy.reduce_boolean_decision(stopping, all=False) and not stopping:
            connector = getattr(trainer, "_signal_connector", None)
            if connector is not None:
                connector.received_sigterm = True


class StopCheckpoint(Checkpoint):
    """Writes ``<dirpath>/last.ckpt`` after the training step during which a stop was requested
    (``trainer.received_sigterm``: :class:`GracefulStop`, or Lightning's own SIGTERM handler),
    right before Lightning stops the loop; ``saved_on_stop`` is then that step.

    Not after a batch whose gradients are only accumulated, nor after an epoch's last batch (the
    epoch's evaluation would be missing): the step is then abandoned and the previous checkpoint
    kept. A checkpoint of the same step written just before (a due
    :class:`~solo_mixmask.checkpoints.callbacks.StepCheckpoint`, which Lightning calls first
    when it comes first in the callbacks) is not written again.
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        #: global step of the checkpoint written because a stop was requested, else None
        self.saved_on_stop: int | None = None
        #: global step of the newest checkpoint written (by any checkpoint callback), else None
        self.newest_save: int | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not getattr(trainer, "received_sigterm", False) or step == 0:
            return
        if not ends_a_mid_epoch_step(trainer, batch_idx):
            return  # the step is abandoned; the previous checkpoint is kept
        if self.newest_save != step:
            trainer.save_checkpoint(self.dirpath / LAST)
        self.saved_on_stop = step

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]
    ) -> None:
        self.newest_save = trainer.global_step


def stopped_error(
    stop: GracefulStop, saver: StopCheckpoint | None, trainer: L.Trainer, run_dir: Path
) -> RunStopped:
    """The :class:`RunStopped` error for a run in ``run_dir`` that a signal stopped (what was
    saved, how to continue); ``saver`` is None when the run writes no checkpoints."""
    signum = stop.signum if stop.signum is not None else signal.SIGTERM
    # a stop during an epoch's last validation batch comes after the epoch-end saves
    saved = saver.saved_on_stop if saver is not None else None
    if saver is not None and saved is None and saver.newest_save == trainer.global_step:
        saved = saver.newest_save if (saver.dirpath / LAST).exists() else None
    if saved is not None:
        kept = f"last.ckpt holds step {saved}, the last step trained"
    elif saver is not None and (saver.dirpath / LAST).exists():
        kept = (
            f"stopped at step {trainer.global_step} before the step's checkpoint could be "
            "written; the previous last.ckpt is kept and the steps after it are trained again"
        )
    else:
        kept = "no checkpoint had been written yet: resume starts the run again from step 0"
    return RunStopped(
        signum,
        f"stopped by {signal_name(signum)}; {kept}; continue with `solo-mixmask resume {run_dir}`",
    )
