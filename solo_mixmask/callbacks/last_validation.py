"""The run's last step is always validated: the summary's k-NN and linear figures are the run's.

With ``check_val_every_n_epoch=10`` and ``max_epochs=25`` Lightning validates after epochs 10
and 20 only, and ``summary.json`` reported epoch 20's k-NN as the run's. With ``max_steps``
reached inside an epoch, Lightning ends the run without validating, and the summary reported
the k-NN of the last epoch validated before; likewise when ``max_time`` (Lightning's
``Timer``) ends it in an epoch that is not validated. With a ``val_check_interval`` of N
batches (or a fraction of the epoch), Lightning validates every N batches, counted over the
whole run when ``check_val_every_n_epoch`` is None, else within each epoch: the run's last
batch only when N divides their number (``check_val_every_n_epoch=null val_check_interval=5``
over 8 steps validated step 5 alone, and the summary reported step 5's accuracies). This
callback validates the end of the run in all these cases, once.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer


class ValidateLastEpoch(Callback):
    """At the start of the last epoch (``max_epochs``), validate after every epoch from then on;
    at the step that reaches ``max_steps``, or after which ``max_time`` is up, validate there
    (mid-epoch if need be) and stop; at the last batch of the last epoch, validate there when
    Lightning's ``val_check_interval`` would not.

    Also at the start of training: a run resumed inside its last epoch continues that epoch
    without an ``on_train_epoch_start``, and its summary had no k-NN or linear figure.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if last:
            _validate_every_epoch(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (
            trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
        ) or _time_is_up(trainer):
            # Lightning validates after a batch that asks to stop, not after the one that
            # reaches max_steps: asking makes this batch end the run with a validation
            _validate_every_epoch(trainer)
            trainer.should_stop = True
        elif _ends_the_last_epoch(trainer) and not _validated_by_lightning(trainer):
            # asking to stop after the run's last batch makes Lightning validate it (once: it
            # validates at most once per batch); the run ends there anyway
            trainer.should_stop = True


def _ends_the_last_epoch(trainer: L.Trainer) -> bool:
    """Whether this batch is the last of the last epoch (``max_epochs``), with validation on."""
    max_epochs = trainer.max_epochs
    if not trainer.enable_validation or max_epochs is None or max_epochs < 1:
        return False
    progress = trainer.fit_loop.epoch_loop.batch_progress
    last_batch = progress.is_last_batch or progress.current.ready == trainer.num_training_batches
    return last_batch and trainer.current_epoch + 1 >= max_epochs


def _validated_by_lightning(trainer: L.Trainer) -> bool:
    """Whether Lightning's own schedule validates after this batch, the last of an epoch that
    is validated (``_validate_every_epoch``): its ``_TrainingEpochLoop._should_check_val_fx``
    (the same in Lightning 2.1 and 2.6) for a ``val_check_interval`` of N batches, N being
    ``trainer.val_check_batch``. A time interval (Lightning >= 2.6) validates when the time is
    up, which may not be now: False."""
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        return False
    every_batches = trainer.val_check_batch
    if every_batches is None or every_batches == float("inf"):
        return True  # no length: Lightning validates after the last batch
    loop = trainer.fit_loop.epoch_loop
    counted = loop.total_batch_idx if trainer.check_val_every_n_epoch is None else loop.batch_idx
    return (counted + 1) % every_batches == 0


def _time_is_up(trainer: L.Trainer) -> bool:
    """Whether the ``Timer`` of ``max_time`` stops the run after this batch. Lightning runs it
    after this callback, and it decides on rank 0's clock: so does this, the same way (it asks
    ``time_remaining`` first; the Timer, a moment later, finds it up too), so that every rank
    validates or none does."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by the connector
    timer = next((cb for cb in callbacks if isinstance(cb, Timer)), None)
    if timer is None:
        return False
    remaining = timer.time_remaining()
    return bool(trainer.strategy.broadcast(remaining is not None and remaining <= 0))


def _validate_every_epoch(trainer: L.Trainer) -> None:
    every = trainer.check_val_every_n_epoch
    if every is not None and every > 1:
        trainer.check_val_every_n_epoch = 1
