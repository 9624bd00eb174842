"""The run's last step is always validated: the summary's k-NN and linear figures are the run's.

With ``check_val_every_n_epoch=10`` and ``max_epochs=25`` Lightning validates after epochs 10
and 20 only, and ``summary.json`` reported epoch 20's k-NN as the run's. With ``max_steps``
reached inside an epoch, Lightning ends the run without validating, and the summary reported
the k-NN of the last epoch validated before; likewise when ``max_time`` (Lightning's
``Timer``) ends it in an epoch that is not validated. This callback validates the end of the
run in all three cases.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer


class ValidateLastEpoch(Callback):
    """At the start of the last epoch (``max_epochs``), validate after every epoch from then on;
    at the step that reaches ``max_steps``, or after which ``max_time`` is up, validate there
    (mid-epoch if need be) and stop.

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
