"""Callbacks that make runs recoverable: exact resume, mid-epoch checkpoints, NaN stop, signals.

Checkpoint files themselves (safe loads, atomic saves) are :mod:`solo_mixmask.checkpoint_io`.
- :class:`ResumeState` saves and restores the global RNG states (torch CPU/CUDA, numpy, python)
  and the training loader's position (epoch, batches trained) so a resumed run continues with
  exactly the batches it would have seen.
- :class:`StepCheckpoint` writes ``last.ckpt`` every ``checkpoint.every_n_steps`` optimiser
  steps (mid-epoch checkpoints).
- :class:`NonFiniteLossGuard` stops training with :class:`NonFiniteLossError` before a NaN/inf
  loss is back-propagated, so neither the weights in memory nor any checkpoint see it.
- :class:`GracefulStop` turns SIGTERM (what SLURM and Kubernetes send) and a first Ctrl-C into
  Lightning's stop request: the step under way is finished, :class:`StepCheckpoint` writes
  ``last.ckpt`` and the run ends with :class:`RunStopped` (exit status 143 or 130).
"""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

from solo_mixmask.checkpoint_io import LAST
from solo_mixmask.errors import NonFiniteLossError, StopRequested
from solo_mixmask.utils.resumable import ResumableLoader

# --------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states as weights_only-loadable values (tensors, ints, lists, strings)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (missing parts are left as they are)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        np_state = state["numpy"]
        keys = np_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (
                np_state["kind"],
                keys,
                np_state["pos"],
                np_state["has_gauss"],
                np_state["cached_gaussian"],
            )
        )
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- callbacks


class ResumeState(Callback):
    """Saves/restores RNG states and the training loader's position in every checkpoint.

    The position is applied as soon as Lightning hands the callback its state (before it builds
    the first training iterator), so the resumed epoch skips exactly the batches already trained.
    Under DDP only rank 0 writes the file, so the per-rank streams (global RNGs and the method's
    ``generators``, seeded per rank) of every rank are gathered into ``per_rank`` when saving and
    each rank takes its own back when loading (same world size), overriding the rank-0 copy the
    method restores from ``checkpoint["method_generators"]``.
    """

    def __init__(self, loader: ResumableLoader | None):
        self.loader = loader
        self._trainer: Any = None
        self._module: Any = None

    @property
    def state_key(self) -> str:
        return "ResumeState"

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        self._trainer, self._module = trainer, pl_module

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.loader is not None:
            self.loader.batches_done = batch_idx + 1

    def _rank_streams(self) -> dict[str, Any]:
        generators = getattr(self._module, "generators", None)
        return {
            "rng": capture_rng_state(),
            "generators": generators.state_dict() if generators is not None else {},
        }

    def state_dict(self) -> dict[str, Any]:
        streams = self._rank_streams()
        state: dict[str, Any] = {"rng": streams["rng"]}
        if self.loader is not None:
            state["loader"] = self.loader.state_dict()
        world = int(getattr(self._trainer, "world_size", 1) or 1)
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * world
            # every rank runs dump_checkpoint for every save, so this collective is matched
            torch.distributed.all_gather_object(gathered, streams)
            state["per_rank"] = gathered
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank = int(getattr(self._trainer, "global_rank", 0) or 0)
        world = int(getattr(self._trainer, "world_size", 1) or 1)
        per_rank = state_dict.get("per_rank")
        if per_rank is not None and len(per_rank) == world:
            mine = per_rank[rank]
            restore_rng_state(mine["rng"])
            generators = getattr(self._module, "generators", None)
            if generators is not None and mine.get("generators"):
                generators.load_state_dict(mine["generators"])
        elif "rng" in state_dict:
            restore_rng_state(state_dict["rng"])
        if self.loader is not None and "loader" in state_dict:
            self.loader.load_state_dict(state_dict["loader"])


class StepCheckpoint(Checkpoint):
    """Writes ``<dirpath>/last.ckpt`` after every ``every_n_steps``-th optimiser step (never with
    ``None``), and after the step during which a stop (SIGTERM, Ctrl-C: see :class:`GracefulStop`)
    was requested, right before Lightning stops the loop.

    The file is written after the LightningModule's own ``on_train_batch_end`` (where
    ``BaseMomentumMethod`` applies the step's EMA update), not in this callback's hook: Lightning
    calls callbacks first, so a checkpoint written there would hold the momentum encoder of the
    previous step and the resumed run would differ. To get there, :meth:`setup` wraps the
    module's hook for the duration of ``fit``. Skipped on an epoch's last batch: the epoch-end
    checkpoint follows right after it.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int | None):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} is not allowed: expected >= 1")
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps) if every_n_steps is not None else None
        self._saving_mid_epoch = False  # True while after_train_batch saves
        #: global step of the checkpoint written because a stop was requested, else None
        self.saved_on_stop: int | None = None

    @property
    def state_key(self) -> str:
        return "StepCheckpoint"

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        if stage != "fit" or "on_train_batch_end" in vars(pl_module):
            return
        module_hook = pl_module.on_train_batch_end

        def on_train_batch_end(outputs: Any, batch: Any, batch_idx: int) -> None:
            module_hook(outputs, batch, batch_idx)
            self.after_train_batch(trainer, batch_idx)

        on_train_batch_end.__wrapped_by_step_checkpoint__ = True  # type: ignore[attr-defined]
        pl_module.on_train_batch_end = on_train_batch_end

    def teardown(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        hook = vars(pl_module).get("on_train_batch_end")
        if getattr(hook, "__wrapped_by_step_checkpoint__", False):
            del pl_module.on_train_batch_end

    def after_train_batch(self, trainer: L.Trainer, batch_idx: int) -> None:
        """Save if this optimiser step is due (and not the epoch's last batch)."""
        step = trainer.global_step
        stopping = bool(getattr(trainer, "received_sigterm", False))
        if int(getattr(trainer, "world_size", 1) or 1) > 1:
            # every rank takes the same decision (the save below is collective); Lightning 2.1
            # does not share a SIGTERM between ranks, so a stop on any rank stops them all
            stopping = bool(trainer.strategy.reduce_boolean_decision(stopping, all=False))
            connector = getattr(trainer, "_signal_connector", None)
            if stopping and connector is not None:
                connector.received_sigterm = True
        due = bool(self.every_n_steps) and step % self.every_n_steps == 0  # type: ignore[operator]
        if step == 0 or not (due or stopping) or trainer.sanity_checking:
            return
        if (batch_idx + 1) % max(int(trainer.accumulate_grad_batches), 1):
            return  # gradients are being accumulated: they are not part of a checkpoint
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        self._saving_mid_epoch = True
        try:
            trainer.save_checkpoint(self.dirpath / LAST)
        finally:
            self._saving_mid_epoch = False
        if stopping:
            self.saved_on_stop = step

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]
    ) -> None:
        if self._saving_mid_epoch and not LIGHTNING_COMPLETES_BATCH_ON_RESTART:
            mark_batch_completed(checkpoint)


#: Newer Lightning recognises a checkpoint saved in ``on_train_batch_end`` (its batch counted
#: as processed but not yet completed) and completes the batch when it restarts; 2.1 does not.
LIGHTNING_COMPLETES_BATCH_ON_RESTART = hasattr(_TrainingEpochLoop, "restarted_on_train_batch_end")


def mark_batch_completed(checkpoint: dict[str, Any]) -> None:
    """Count the batch being saved in ``on_train_batch_end`` as completed in ``checkpoint``.

    Lightning 2.1 restarts from ``completed`` batches, one short of what was trained: the
    resumed epoch's batch indices then end one early and its end-of-epoch validation is skipped.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not progress:
        return
    for part in ("total", "current"):
        if part in progress:
            progress[part]["completed"] = progress[part]["processed"]


class NonFiniteLossGuard(Callback):
    """Raises :class:`NonFiniteLossError` when the loss about to be back-propagated is not finite.

    Under DDP every rank takes the same decision (any rank's bad loss stops them all), so no
    rank is left waiting in a gradient all-reduce. Costs one device-to-host sync per step.
    """

    def __init__(self, checkpoint_dir: str | Path | None):
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None

    def _last(self) -> str | None:
        last = self.checkpoint_dir / LAST if self.checkpoint_dir else None
        return str(last) if last is not None and last.exists() else None

    def on_before_backward(self, trainer: L.Trainer, pl_module: Any, loss: torch.Tensor) -> None:
        local_bad = not bool(torch.isfinite(loss.detach()).all())
        bad = local_bad
        if trainer.world_size > 1:
            bad = bool(trainer.strategy.reduce_boolean_decision(local_bad, all=False))
        if not bad:
            return
        if local_bad and loss.numel() == 1:
            what = f"the training loss is {float(loss.detach().float().cpu())}"
        else:
            what = "the training loss is not finite on another rank"
        raise NonFiniteLossError(what, trainer.global_step, trainer.current_epoch, self._last())

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse to write a checkpoint whose weights hold NaN/inf (the old file stays)."""
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if torch.is_tensor(tensor) and tensor.is_floating_point():
                if not bool(torch.isfinite(tensor).all()):
                    raise NonFiniteLossError(
                        f"weight {name} is not finite",
                        trainer.global_step,
                        trainer.current_epoch,
                        self._last(),
                    )


# --------------------------------------------------------------------------- stop requests


def signal_name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


class GracefulStop(Callback):
    """SIGTERM and a first Ctrl-C (SIGINT) stop the run at a safe point; a second Ctrl-C stops it
    at once.

    Inside Lightning's loops the signal only sets Lightning's own stop request
    (``trainer.received_sigterm``, which Lightning's SIGTERM handler sets too): the training step
    under way finishes, :class:`StepCheckpoint` writes ``last.ckpt`` after it (not after an
    epoch's last batch or during validation: then the step is abandoned and the previous
    checkpoint kept) and Lightning raises ``SIGTERMException`` at the end of the step. Outside
    the loops (building the data, between passes) the handler raises :class:`StopRequested`
    at once: nothing was trained there. :func:`solo_mixmask.pretrain.run_pretrain` turns both
    into :class:`RunStopped`.
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
