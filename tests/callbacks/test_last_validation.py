"""ValidateLastEpoch: the run's last step is validated whatever check_val_every_n_epoch says,
also when max_steps or max_time ends the run inside an epoch."""

from __future__ import annotations

import time
from typing import Any

import pytest

from solo_mixmask.callbacks import ValidateLastEpoch
from tests.callbacks.helpers import TinyModule, fit_tiny


class Validated(TinyModule):
    """The tiny model, recording the epochs (1-based) and the optimiser steps after which it
    was validated."""

    def __init__(self) -> None:
        super().__init__()
        self.validated: list[int] = []
        self.validated_steps: list[int] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.validated.append(self.current_epoch + 1)
            self.validated_steps.append(self.trainer.global_step)


def _validated_epochs(epochs: int, every: int, callbacks: list[Any]) -> list[int]:
    model = Validated()
    fit_tiny(callbacks, batches=2, epochs=epochs, model=model, val_every=every)
    return model.validated


def _validated_steps(max_steps: int, every: int, callbacks: list[Any]) -> list[int]:
    """Steps validated in a fit of 5 epochs of 4 steps each, ended at ``max_steps``."""
    model = Validated()
    fit_tiny(callbacks, batches=4, epochs=5, model=model, val_every=every, max_steps=max_steps)
    return model.validated_steps


@pytest.mark.parametrize(("epochs", "every", "expected"), [(5, 2, [2, 4, 5]), (4, 2, [2, 4])])
def test_the_last_epoch_is_validated(epochs, every, expected):
    # Lightning alone validates after epochs 2 and 4 of 5: summary.json's k-NN was epoch 4's
    assert _validated_epochs(epochs, every, []) == [e for e in expected if e % every == 0]
    assert _validated_epochs(epochs, every, [ValidateLastEpoch()]) == expected


@pytest.mark.parametrize(
    ("max_steps", "every", "expected"),
    [(10, 1, [4, 8, 10]), (10, 2, [8, 10]), (8, 2, [8]), (6, 4, [6])],
)
def test_max_steps_inside_an_epoch_validates_the_last_step(max_steps, every, expected):
    # Lightning alone stops at max_steps without validating the part-epoch: summary.json's k-NN
    # was that of the last full epoch validated (step 8 of 10; none at all for step 6 of 4-epoch)
    alone = [s for s in expected if s % (4 * every) == 0]
    assert _validated_steps(max_steps, every, []) == alone
    assert _validated_steps(max_steps, every, [ValidateLastEpoch()]) == expected


class SlowValidated(Validated):
    """:class:`Validated` whose training steps take at least 0.25 s each."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        time.sleep(0.25)
        return super().training_step(batch, batch_idx)


def test_max_time_inside_an_unvalidated_epoch_validates_the_last_step():
    # max_time of 1 s stops the run after step 4 at the latest (0.25 s per step), before the
    # first validation (every 2 epochs of 4 steps). Alone, Lightning stops there without
    # validating, and summary.json had no k-NN, or, later in a run, that of older weights
    def fit(callbacks: list[Any]) -> tuple[int, list[int]]:
        model = SlowValidated()
        trainer = fit_tiny(
            callbacks, batches=4, epochs=5, model=model, val_every=2, max_time={"seconds": 1}
        )
        return trainer.global_step, model.validated_steps

    steps, validated = fit([])
    assert 0 < steps < 8 and validated == []
    steps, validated = fit([ValidateLastEpoch()])
    assert 0 < steps < 8 and validated == [steps]
