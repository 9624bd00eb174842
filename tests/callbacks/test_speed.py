"""TrainSpeed: the run's and each epoch's training images/s, and the epoch line that prints it."""

from __future__ import annotations

import re
import time

from lightning.pytorch.callbacks import Callback

from solo_mixmask.callbacks import TrainSpeed
from solo_mixmask.run.console import EpochLine
from tests.callbacks.helpers import fit_tiny


class SlowSecondEpoch(Callback):
    """Sleeps 50 ms at the start of every batch of epoch 2 (inside TrainSpeed's timing, which
    starts first), and keeps what ``speed`` reports at each epoch's end."""

    def __init__(self, speed: TrainSpeed) -> None:
        self.speed = speed
        self.seen: list[tuple[float, float]] = []  # (epoch img/s, run img/s) per epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 1:
            time.sleep(0.05)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seen.append((self.speed.epoch_images_per_sec, self.speed.images_per_sec))


def test_each_epoch_line_shows_that_epochs_speed_not_the_runs_average(capsys):
    speed = TrainSpeed()
    slow = SlowSecondEpoch(speed)
    fit_tiny([speed, slow, EpochLine()], batches=8, epochs=2)
    (fast_epoch, run_after_1), (slow_epoch, run_after_2) = slow.seen
    assert fast_epoch == run_after_1  # one epoch: the run so far is that epoch
    assert slow_epoch < 2 / 0.05  # 2 images per batch, each batch >= 50 ms
    assert slow_epoch < fast_epoch / 2 and slow_epoch < run_after_2 < fast_epoch
    assert speed.images == 32 and speed.epoch_images == 16
    printed = re.findall(r"^epoch (\d)/2: .*?(\d+) img/s", capsys.readouterr().out, re.M)
    assert printed == [("1", f"{fast_epoch:.0f}"), ("2", f"{slow_epoch:.0f}")]


def test_checkpointed_wall_time_counts_from_the_runs_clock_and_the_earlier_processes():
    """The wall time a checkpoint carries starts where the run's clock does (before the k-NN
    pass at initialisation, not at fit start) and adds the earlier processes' time; a
    checkpoint's state replaces what the run folder's summary said."""
    import time

    speed = TrainSpeed()
    speed.start_clock(time.perf_counter() - 5.0, before=10.0)
    state = speed.state_dict()
    assert 15.0 <= state["wall_seconds"] < 16.0
    later = TrainSpeed()
    later.start_clock(time.perf_counter(), before=999.0)  # summary.json of an older layout
    later.load_state_dict(state)
    assert later.wall_seconds_before == state["wall_seconds"]
    assert (later.seconds, later.images) == (state["seconds"], state["images"])
