"""The checkpoint files of a run, the same with every Lightning version: epochNNN.ckpt every
``checkpoint.frequency`` epochs, last.ckpt after every epoch and every N steps inside one."""

from __future__ import annotations

import shutil

from lightning.pytorch.callbacks import Callback

from solo_mixmask.checkpoints.callbacks import LastCheckpoint, StepCheckpoint, epoch_checkpoint
from solo_mixmask.checkpoints.io import safe_load_checkpoint
from tests.callbacks.helpers import ValidatedTinyModule, fit_tiny


def test_last_ckpt_follows_every_epoch_whatever_the_frequency(tmp_path):
    """4 epochs of 8 steps, epoch files every 2 epochs, last.ckpt every 3 steps too (newer
    Lightning's save_last would skip last.ckpt at the epochs without an epoch file)."""
    at_start = []

    class Peek(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            last = tmp_path / "last.ckpt"
            at_start.append(safe_load_checkpoint(last)["global_step"] if last.exists() else None)

    callbacks = [
        epoch_checkpoint(tmp_path, 2),
        LastCheckpoint(tmp_path),
        StepCheckpoint(tmp_path, 3),
    ]
    fit_tiny([*callbacks, Peek()], epochs=4)
    assert at_start == [None, 8, 16, 24]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch001.ckpt",
        "epoch003.ckpt",
        "last.ckpt",
    ]
    assert safe_load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 32
    assert safe_load_checkpoint(tmp_path / "epoch001.ckpt")["global_step"] == 16


def test_epochs_without_validation_still_write_their_checkpoints(tmp_path):
    """check_val_every_n_epoch=2 (Lightning's ModelCheckpoint then saves at validation ends
    only): epoch000.ckpt and epoch 0's last.ckpt were never written. Every epoch's files come,
    and after the epoch's validation where it has one."""
    events = []

    class Peek(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            last = tmp_path / "last.ckpt"
            events.append(
                ("start", safe_load_checkpoint(last)["global_step"] if last.exists() else None)
            )

        def on_validation_end(self, trainer, pl_module):
            events.append(("validated", trainer.current_epoch))

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            events.append(("saved", trainer.current_epoch))

    fit_tiny(
        [epoch_checkpoint(tmp_path, 1), LastCheckpoint(tmp_path), Peek()],
        epochs=3,
        model=ValidatedTinyModule(),
        val_every=2,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch000.ckpt",
        "epoch001.ckpt",
        "epoch002.ckpt",
        "last.ckpt",
    ]
    assert events == [
        ("start", None),
        ("saved", 0),
        ("saved", 0),
        ("start", 8),
        ("validated", 1),
        ("saved", 1),
        ("saved", 1),
        ("start", 16),
        ("saved", 2),
        ("saved", 2),
    ]


def test_a_copied_run_folder_leaves_the_original_last_ckpt_alone(tmp_path):
    """Resuming a copy of a run folder must not delete the original's last.ckpt (Lightning 2.1
    deletes a top-k file it restored from another folder)."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    fit_tiny([LastCheckpoint(original)], epochs=1)
    shutil.copytree(original, copy)
    fit_tiny([LastCheckpoint(copy)], epochs=2, ckpt_path=str(copy / "last.ckpt"))
    assert safe_load_checkpoint(original / "last.ckpt")["global_step"] == 8
    assert safe_load_checkpoint(copy / "last.ckpt")["global_step"] == 16


def test_an_epochs_file_is_written_over_never_beside(tmp_path):
    """A run stopped mid-epoch (max_steps, max_time) writes that epoch's file at its last step.
    Resumed from a copied or moved folder (the restored checkpoint state names another folder),
    the whole epoch once went to epoch000-v1.ckpt while epoch000.ckpt kept the half-epoch
    weights, exit 0. Here a fresh callback meets the partial file."""
    fit_tiny([epoch_checkpoint(tmp_path, 1)], epochs=1, max_steps=4)
    assert safe_load_checkpoint(tmp_path / "epoch000.ckpt")["global_step"] == 4
    fit_tiny([epoch_checkpoint(tmp_path, 1)], epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch000.ckpt"]
    assert safe_load_checkpoint(tmp_path / "epoch000.ckpt")["global_step"] == 8
