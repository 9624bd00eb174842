"""The last epoch is always validated: the summary's k-NN and linear figures are the run's.

With ``check_val_every_n_epoch=10`` and ``max_epochs=25`` Lightning validates after epochs 10
and 20 only, and ``summary.json`` reported epoch 20's k-NN as the run's. This callback makes
the last epoch a validation epoch too.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class ValidateLastEpoch(Callback):
    """At the start of the last epoch (``max_epochs``), validate after every epoch from then on.

    Also at the start of training: a run resumed inside its last epoch continues that epoch
    without an ``on_train_epoch_start``, and its summary had no k-NN or linear figure.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        every = trainer.check_val_every_n_epoch
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if last and every is not None and every > 1:
            trainer.check_val_every_n_epoch = 1
