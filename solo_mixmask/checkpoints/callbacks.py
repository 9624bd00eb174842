"""Which checkpoints a run writes, all with Lightning's ``ModelCheckpoint`` into one folder:

- :func:`epoch_checkpoint`: ``epochNNN.ckpt`` every ``checkpoint.frequency`` epochs, all kept;
- :class:`LastCheckpoint`: ``last.ckpt`` at every epoch end, after the epoch's evaluation;
- :class:`StepCheckpoint`: ``last.ckpt`` every ``checkpoint.every_n_steps`` optimiser steps
  inside an epoch (Lightning's ``every_n_train_steps``).

``last.ckpt`` is the one top-k file of the last two (``save_top_k=1`` without a monitor keeps
the newest), not Lightning's ``save_last``, whose meaning changed after 2.1: newer versions
write ``last.ckpt`` only at a step where the same callback wrote another file, so with
``checkpoint.frequency > 1`` not at every epoch end, and once more when training ends.

Epoch files are written at the end of every training epoch, which Lightning runs after that
epoch's validation: by default ``ModelCheckpoint`` saves at validation ends only when
``check_val_every_n_epoch`` is not 1, and epochs without validation got no file at all.

A mid-epoch ``last.ckpt`` is consistent because everything a step changes is changed by the
time Lightning calls the batch's end hooks: the momentum networks move in the method's
``optimizer_step`` and the loader position is recorded by
:class:`~solo_mixmask.callbacks.resume_state.ResumeState` (a plain callback, which Lightning
calls before any checkpoint callback). The last step's ``last.ckpt`` after a SIGTERM or Ctrl-C
is :class:`~solo_mixmask.callbacks.stop.StopCheckpoint`'s. Writes are atomic
(:class:`~solo_mixmask.checkpoints.io.SafeAtomicCheckpointIO`, the Trainer's plugin).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


def ends_a_mid_epoch_step(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether training batch ``batch_idx``, just trained, ends an optimiser step inside its
    epoch: the only place a mid-epoch checkpoint is whole. Not after a batch whose gradients are
    only accumulated (they are not part of a checkpoint), nor after an epoch's last batch (the
    epoch's evaluation and its epoch-end ``last.ckpt`` are still to come)."""
    if batch_idx + 1 >= trainer.num_training_batches:
        return False
    return (batch_idx + 1) % max(int(trainer.accumulate_grad_batches), 1) == 0


def epoch_checkpoint(dirpath: str | Path, every_n_epochs: int) -> ModelCheckpoint:
    """``<dirpath>/epochNNN.ckpt`` (NNN = the epoch index) every ``every_n_epochs`` epochs, after
    the epoch's evaluation; all kept. A run that ``max_steps`` or ``max_time`` stops inside an
    epoch writes that epoch's file at its last step; a resume writes the whole epoch over it
    (never ``epochNNN-v1.ckpt`` beside it)."""
    return ModelCheckpoint(
        dirpath=str(dirpath),
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        every_n_epochs=int(every_n_epochs),
        save_top_k=-1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,  # see the module docstring
    )


class LastCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt`` at every epoch end (after the epoch's evaluation), or every
    ``every_n_train_steps`` optimiser steps when that is given: the newest checkpoint, written
    over the previous one (a subclass, so that its Lightning ``state_key`` differs from
    :func:`epoch_checkpoint`'s)."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None):
        super().__init__(
            dirpath=str(dirpath),
            filename=self.CHECKPOINT_NAME_LAST,
            save_top_k=1,
            every_n_train_steps=every_n_train_steps,
            # shared by LastCheckpoint and StepCheckpoint: never last-v1.ckpt
            enable_version_counter=False,
            save_on_train_epoch_end=True,  # see the module docstring
        )

    def state_dict(self) -> dict[str, Any]:
        """Nothing to keep: the file is always ``<dirpath>/last.ckpt``. (A restored
        ``best_model_path`` would be the previous folder's ``last.ckpt`` in a copied or moved run
        folder, which Lightning 2.1 then deletes: its "is it in this folder" check fails with
        fsspec's ``("file", "local")`` protocol.)"""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""


class StepCheckpoint(LastCheckpoint):
    """``<dirpath>/last.ckpt`` after every ``every_n_steps``-th optimiser step of an epoch
    (Lightning's ``every_n_train_steps`` trigger), with two rules of its own:

    - never on an epoch's last batch: the epoch-end ``last.ckpt`` (after the epoch's evaluation)
      follows right after it, and a checkpoint between the two would resume without that
      evaluation;
    - never after a batch whose gradients are only accumulated: they are not part of a
      checkpoint (Lightning's trigger, keyed to ``global_step``, would save there when the step
      that was due fell on the previous epoch's last batch).
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} is not allowed: expected >= 1")
        super().__init__(dirpath, every_n_train_steps=int(every_n_steps))
        self.every_n_steps = int(every_n_steps)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if ends_a_mid_epoch_step(trainer, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
