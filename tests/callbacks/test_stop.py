"""A stop request (what GracefulStop makes of SIGTERM / Ctrl-C) ends a real fit after the step
under way, with last.ckpt of that step written once, never on an epoch's last batch."""

from __future__ import annotations

import signal

import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from solo_mixmask.callbacks import StopCheckpoint, stopped_error
from solo_mixmask.callbacks.stop import GracefulStop
from solo_mixmask.checkpoints.callbacks import LastCheckpoint, StepCheckpoint
from solo_mixmask.checkpoints.io import safe_load_checkpoint
from tests.callbacks.helpers import ValidatedTinyModule, fit_tiny


class AskToStop(Callback):
    """Sets Lightning's stop request after optimiser step ``step`` (as GracefulStop's handler
    does); records the global step of every checkpoint written."""

    def __init__(self, step: int):
        self.step = step
        self.saved: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.saved.append(trainer.global_step)


@pytest.mark.parametrize(
    ("stop_at", "saved", "saved_on_stop"),
    [
        (3, [3], 3),  # StopCheckpoint writes the step
        (5, [5], 5),  # StepCheckpoint was due: written once, not twice
        (8, [5], None),  # the epoch's last batch: the step is abandoned, step 5's file kept
    ],
)
def test_stop_request_checkpoints_the_step_once(tmp_path, stop_at, saved, saved_on_stop):
    """8 batches an epoch, StepCheckpoint every 5 steps, a stop asked during step ``stop_at``."""
    ask = AskToStop(stop_at)
    stop_saver = StopCheckpoint(tmp_path)
    with pytest.raises(SIGTERMException):
        fit_tiny([ask, StepCheckpoint(tmp_path, every_n_steps=5), stop_saver])
    assert ask.saved == saved
    assert stop_saver.saved_on_stop == saved_on_stop
    assert safe_load_checkpoint(tmp_path / "last.ckpt")["global_step"] == saved[-1]


class AskToStopInLastValidationBatch(Callback):
    """Sets Lightning's stop request in the last validation batch of the first epoch; keeps
    the trainer."""

    trainer = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        if not trainer.sanity_checking and batch_idx == trainer.num_val_batches[0] - 1:
            trainer._signal_connector.received_sigterm = True
            self.trainer = trainer


def test_a_stop_in_the_last_validation_batch_names_the_epochs_checkpoint(tmp_path):
    """Lightning finishes the epoch (its saves included) before it stops: the error once said
    the step's checkpoint was not written and the steps after the previous one would be trained
    again (and resume, of a last epoch, that the final save had failed)."""
    stop, saver, ask = GracefulStop(), StopCheckpoint(tmp_path), AskToStopInLastValidationBatch()
    stop.signum = signal.SIGTERM
    with pytest.raises(SIGTERMException):
        fit_tiny(
            [ask, LastCheckpoint(tmp_path), saver],
            epochs=2,
            model=ValidatedTinyModule(),
            val_every=1,
        )
    assert ask.trainer.global_step == 8  # epoch 0's 8 steps, then the stop
    assert safe_load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 8
    message = str(stopped_error(stop, saver, ask.trainer, tmp_path))
    assert "last.ckpt holds step 8, the last step trained" in message, message


def test_stopped_error_says_what_was_kept(tmp_path):
    stop, saver = GracefulStop(), StopCheckpoint(tmp_path / "checkpoints")
    stop.signum = signal.SIGINT

    class Trainer:
        global_step = 7

    nothing = stopped_error(stop, saver, Trainer(), tmp_path)
    assert "Ctrl-C (SIGINT)" in str(nothing) and "starts the run again from step 0" in str(nothing)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    previous = stopped_error(stop, saver, Trainer(), tmp_path)
    assert "stopped at step 7" in str(previous) and "previous last.ckpt is kept" in str(previous)
    unsaved = stopped_error(stop, None, Trainer(), tmp_path)  # checkpoint.enabled=false
    assert "starts the run again from step 0" in str(unsaved)
    saver.saved_on_stop = 7
    kept = stopped_error(stop, saver, Trainer(), tmp_path)
    assert "last.ckpt holds step 7" in str(kept) and f"resume {tmp_path}" in str(kept)
