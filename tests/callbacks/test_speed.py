"""TrainSpeed: the run's and each epoch's training images/s, and the epoch line that prints it."""

from __future__ import annotations

import re
import time

import pytest
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


class FakeDeviceEvent:
    """A CUDA event on a simulated device that runs each batch for ``BATCH_S`` after the host
    has queued it: ``record`` stamps the device's time, ``query`` says whether the device has
    reached it (``done``), ``synchronize`` waits for it."""

    BATCH_S = 0.25
    device_clock = 0.0
    recorded: list[FakeDeviceEvent] = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at, self.done = None, False

    def record(self) -> None:
        cls = FakeDeviceEvent
        self.at = cls.device_clock
        cls.device_clock += cls.BATCH_S if len(cls.recorded) % 2 == 0 else 0.01  # start: batch
        cls.recorded.append(self)

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True

    def elapsed_time(self, end: FakeDeviceEvent) -> float:
        return 1000 * (end.at - self.at)  # ms


def test_on_cuda_a_batch_counts_the_device_time_between_its_events(monkeypatch):
    # the host leaves each batch at once (no sync): its own clock would give ~0 s and a huge
    # img/s; the events give the device's 0.25 s per batch
    from types import SimpleNamespace

    import torch

    monkeypatch.setattr(torch.cuda, "Event", FakeDeviceEvent)
    monkeypatch.setattr(FakeDeviceEvent, "recorded", [])
    speed = TrainSpeed()
    trainer = SimpleNamespace(world_size=2)
    module = SimpleNamespace(device=torch.device("cuda", 0))
    batch = [torch.zeros(8, 1)]
    speed.on_train_epoch_start(trainer, module)
    for i in range(3):
        speed.on_train_batch_start(trainer, module, batch, i)
        speed.on_train_batch_end(trainer, module, None, batch, i)
    assert speed.images == 48 and speed.seconds == 0.0  # no event has run: nothing added yet
    FakeDeviceEvent.recorded[1].done = True  # the first batch's end event has run
    speed.on_train_batch_start(trainer, module, batch, 3)
    speed.on_train_batch_end(trainer, module, None, batch, 3)
    assert speed.seconds == pytest.approx(0.25)  # read without waiting
    assert speed.epoch_images_per_sec == pytest.approx(64 / 1.0)  # waits for the other three
    assert speed.images_per_sec == pytest.approx(64 / 1.0)
    assert speed.state_dict()["seconds"] == pytest.approx(1.0)
    assert speed.clock == speed.state_dict()["clock"] == "cuda events"


def test_on_a_cpu_no_device_event_is_made(monkeypatch):
    import torch

    def no_events(*args, **kwargs):
        raise AssertionError("a CUDA event on the CPU")

    monkeypatch.setattr(torch.cuda, "Event", no_events)
    speed = TrainSpeed()
    fit_tiny([speed], batches=4, epochs=1)
    assert speed.images == 8 and speed.seconds > 0 and speed.clock == "host"


def test_the_clock_travels_in_checkpoints_and_a_resume_on_another_is_mixed():
    speed = TrainSpeed()
    assert speed.clock is None  # no batch timed yet
    speed.load_state_dict({"seconds": 2.0, "images": 64, "wall_seconds": 3.0})  # before clocks
    assert speed.clock == "host"
    speed.load_state_dict({"seconds": 2.0, "images": 64, "wall_seconds": 3.0, "clock": "host"})
    speed._timed_by("cuda events")  # a GPU process resumed a run a CPU process began
    assert speed.clock == "mixed"
