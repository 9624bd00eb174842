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


def _validated_by_batches(
    batches: int, epochs: int, interval: int | float, over_run: bool, callbacks: list[Any]
) -> tuple[list[int], bool]:
    """(steps validated, ``trainer.should_stop`` at the end) of a fit of ``epochs`` epochs of
    ``batches`` steps, validated every ``interval`` batches: counted over the whole run with
    ``over_run`` (``check_val_every_n_epoch=None``), else within each epoch (every epoch)."""
    model = Validated()
    trainer = fit_tiny(
        callbacks,
        batches=batches,
        epochs=epochs,
        model=model,
        val_every=None if over_run else 1,
        val_interval=interval,
        val_over_run=over_run,
    )
    return model.validated_steps, trainer.should_stop


@pytest.mark.parametrize(
    ("batches", "epochs", "interval", "expected"),
    [(8, 1, 5, [5, 8]), (8, 1, 3, [3, 6, 8]), (4, 3, 5, [5, 10, 12]), (4, 2, 3, [3, 6, 8])],
)
def test_a_batch_interval_over_the_run_validates_the_last_step(batches, epochs, interval, expected):
    # check_val_every_n_epoch=None: Lightning validates every `interval` batches of the run, so
    # the last step only when the interval divides the run's steps; summary.json reported the
    # k-NN of step 5 of 8 (`+check_val_every_n_epoch=null +val_check_interval=5`)
    alone, _ = _validated_by_batches(batches, epochs, interval, True, [])
    assert alone == [s for s in expected if s % interval == 0]
    validated, _ = _validated_by_batches(batches, epochs, interval, True, [ValidateLastEpoch()])
    assert validated == expected


@pytest.mark.parametrize(
    ("batches", "epochs", "interval", "expected"),
    [(8, 2, 3, [3, 6, 11, 14, 16]), (10, 1, 0.3, [3, 6, 9, 10])],
)
def test_a_batch_interval_inside_epochs_validates_the_last_step(
    batches, epochs, interval, expected
):
    # every epoch, every `interval` batches (or that fraction of them) counted in the epoch:
    # the last batch is validated only when the interval divides the epoch
    alone, _ = _validated_by_batches(batches, epochs, interval, False, [])
    assert alone == expected[:-1]
    validated, _ = _validated_by_batches(batches, epochs, interval, False, [ValidateLastEpoch()])
    assert validated == expected


@pytest.mark.parametrize(
    ("batches", "epochs", "interval", "over_run", "expected"),
    [
        (8, 1, 4, True, [4, 8]),  # the last step on the interval: validated once
        (4, 2, 2, True, [2, 4, 6, 8]),
        (8, 2, 1.0, False, [8, 16]),  # Lightning's defaults
        (8, 2, 0.5, False, [4, 8, 12, 16]),
        (8, 2, 4, False, [4, 8, 12, 16]),
    ],
)
def test_a_last_step_that_lightning_validates_is_left_to_it(
    batches, epochs, interval, over_run, expected
):
    # the callback does not step in (no stop asked: no extra log row at the last step), and the
    # last step is validated once
    for callbacks in ([], [ValidateLastEpoch()]):
        validated, stopped = _validated_by_batches(batches, epochs, interval, over_run, callbacks)
        assert validated == expected and not stopped
