"""Issue 6, part 3: exact resume after SIGKILL, atomic checkpoint writes, NaN stop.

The end-to-end test starts three real ``solo-mixmask pretrain`` processes at once (2 epochs of
8 steps, a mid-epoch ``last.ckpt`` every 3 steps): an uninterrupted run, a run that is killed
with SIGKILL in the middle of epoch 1 (two steps after its last checkpoint, so trained work is
lost and must be redone identically), and a run whose loss turns NaN. The killed run is then
continued with ``solo-mixmask resume`` and must end with the uninterrupted run's weights,
momentum encoder, queue, optimiser state and k-NN / linear metrics.
"""

from __future__ import annotations

import random
import re
import signal
import sys
import time

import numpy as np
import pytest
import torch

from solo_mixmask.callbacks import capture_rng_state, restore_rng_state
from solo_mixmask.checkpoints.io import atomic_torch_save, safe_load_checkpoint
from solo_mixmask.utils.resumable import ResumableLoader, ResumableSampler, SeededItems, mix_seed
from tests.cli_helpers import (
    TINY,
    assert_same_end_state,
    error_lines,
    final_state,
    finish,
    run,
    start,
)

STALL_STEP = 11  # killed here: epoch 1, after its 3rd batch; last checkpoint at step 9
# validation after epoch 3 only: the last epoch (1, where the kill falls) is validated because
# it is the last (ValidateLastEpoch), also in the resumed process
RUN = [*TINY, "max_epochs=2", "checkpoint.every_n_steps=3", "check_val_every_n_epoch=3"]

# Started as `python stall.py pretrain ...`: the real CLI, with the process parked (sleeping) right
# after optimiser step STALL_STEP so that the test can SIGKILL it at a known point.
STALL_HARNESS = """
import os, sys, time
from pathlib import Path
from solo_mixmask import callbacks
step, mark = int(os.environ["STALL_AT_STEP"]), Path(os.environ["STALL_MARK"])
hook = callbacks.ResumeState.on_train_batch_end
def stalled(self, trainer, *args):
    hook(self, trainer, *args)
    if trainer.global_step == step:
        mark.write_text(str(step))
        time.sleep(600)
callbacks.ResumeState.on_train_batch_end = stalled
from solo_mixmask.cli import main
sys.exit(main(sys.argv[1:]))
"""


#: Runs whose loss becomes NaN (optimizer.lr=1e30), by name: their extra overrides.
NAN_RUNS = {
    "nan": ["checkpoint.every_n_steps=1"],
    "nan_lag2_step_checkpoints": ["checkpoint.every_n_steps=1", "performance.loss_check_lag=2"],
    "nan_lag2": ["performance.loss_check_lag=2"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    harness = base / "stall.py"
    harness.write_text(STALL_HARNESS)
    mark = base / "stalled"
    full = start(["pretrain", *RUN, f"checkpoint.run_dir={base / 'full'}"])
    nan = {  # the loss read before each backward, or 2 steps later (with and without a
        # checkpoint after every step, which reads the pending losses first)
        name: start(
            [
                "pretrain",
                *TINY,
                "optimizer.lr=1e30",
                *extra,
                f"checkpoint.run_dir={base / name}",
            ]
        )
        for name, extra in NAN_RUNS.items()
    }
    # One DataLoader worker in the killed run: augmentations must not depend on workers.
    killed = start(
        ["pretrain", *RUN, "data.num_workers=1", f"checkpoint.run_dir={base / 'killed'}"],
        prefix=[sys.executable, str(harness)],
        env={"STALL_AT_STEP": str(STALL_STEP), "STALL_MARK": str(mark)},
    )
    deadline = time.monotonic() + 400
    while not mark.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    stalled = mark.exists()
    at_kill = None
    if stalled:
        killed.send_signal(signal.SIGKILL)
    killed_result = finish(killed, timeout=60)
    if stalled:
        at_kill = safe_load_checkpoint(base / "killed" / "checkpoints" / "last.ckpt")
    started = time.monotonic()
    resumed = run(["resume", str(base / "killed")]) if stalled else None
    resume_seconds = time.monotonic() - started
    return {
        "base": base,
        "full": finish(full, timeout=400),
        **{name: finish(proc, timeout=400) for name, proc in nan.items()},
        "killed": killed_result,
        "at_kill": at_kill,
        "resumed": resumed,
        "resume_seconds": resume_seconds,
    }


def test_killed_mid_epoch(runs):
    assert runs["killed"].returncode == -signal.SIGKILL, runs["killed"].stderr[-3000:]
    at_kill = runs["at_kill"]
    # The newest checkpoint on disk is the mid-epoch one of step 9: epoch 1, 1 batch done.
    assert at_kill["global_step"] == 9
    assert at_kill["callbacks"]["ResumeState"]["loader"]["epoch"] == 1
    assert at_kill["callbacks"]["ResumeState"]["loader"]["batches_done"] == 1
    # the run's training totals so far travel with it: 9 steps of 8 images
    speed = at_kill["callbacks"]["TrainSpeed"]
    assert speed["images"] == 9 * 8 and 0 < speed["seconds"] < speed["wall_seconds"]
    leftovers = list((runs["base"] / "killed" / "checkpoints").glob(".*tmp*"))
    assert leftovers == []


def test_resume_ends_with_the_uninterrupted_state(runs):
    assert runs["full"].returncode == 0, runs["full"].stderr[-3000:]
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-3000:]
    # SIGKILL left the run's lock behind: resume takes it over (its pid is gone), saying so once
    stale = [line for line in runs["resumed"].stderr.splitlines() if "stale lock" in line]
    assert len(stale) == 1 and stale[0].startswith("warning: "), runs["resumed"].stderr[-3000:]
    assert not (runs["base"] / "killed" / "run.lock").exists()
    full, resumed = assert_same_end_state(runs["base"] / "full", runs["base"] / "killed", 16)
    # The parts the issue names, spelled out: queue + pointer, momentum encoder.
    assert torch.equal(resumed["state_dict"]["key_queue.ptr"], full["state_dict"]["key_queue.ptr"])
    torch.testing.assert_close(
        resumed["state_dict"]["key_queue.queue"],
        full["state_dict"]["key_queue.queue"],
        rtol=1e-5,
        atol=1e-6,
    )
    momentum = [k for k in full["state_dict"] if k.startswith("momentum_backbone.")]
    assert len(momentum) > 50
    for state_full, state_resumed in zip(
        full["optimizer_states"][0]["state"].values(),
        resumed["optimizer_states"][0]["state"].values(),
    ):
        torch.testing.assert_close(
            state_resumed["momentum_buffer"], state_full["momentum_buffer"], rtol=1e-5, atol=1e-6
        )
    assert resumed["method_generators"]["device"].equal(full["method_generators"]["device"])
    # the masks drawn ahead (MaskBank) travel with the generators
    assert resumed["method_generators"]["mask_bank.cells"].equal(
        full["method_generators"]["mask_bank.cells"]
    )
    _, resumed_summary = final_state(runs["base"] / "killed")
    assert resumed_summary["resumed_from"].endswith("killed/checkpoints/last.ckpt")
    # speed and time of the whole run, the killed process's share up to its checkpoint included
    speed = resumed["callbacks"]["TrainSpeed"]
    assert speed["images"] == full["callbacks"]["TrainSpeed"]["images"] == 16 * 8
    assert resumed_summary["images_per_sec"] == round(speed["images"] / speed["seconds"], 2)
    before = runs["at_kill"]["callbacks"]["TrainSpeed"]["wall_seconds"]
    assert (
        resumed_summary["wall_seconds"]
        > before + speed["seconds"] - runs["at_kill"]["callbacks"]["TrainSpeed"]["seconds"]
    )
    # the last epoch, resumed in its middle, is validated as in the uninterrupted run
    assert _knn_by_epoch(runs["base"] / "killed") == _knn_by_epoch(runs["base"] / "full")
    assert sorted(_knn_by_epoch(runs["base"] / "full")) == ["0", "1"]  # 0: before training
    assert resumed_summary["knn_acc1"] is not None


def test_the_resumed_epoch_line_times_the_resumed_part(runs):
    """Issue 18: the console's time of the epoch continued after a resume was the machine's
    uptime (10706.7 s for a 3 s epoch): Lightning calls no on_train_epoch_start for it."""
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-3000:]
    lines = [line for line in runs["resumed"].stdout.splitlines() if line.startswith("epoch 2/2")]
    assert len(lines) == 1, runs["resumed"].stdout[-3000:]
    seconds = float(re.search(r", ([0-9.]+) s$", lines[0]).group(1))
    assert 0 < seconds <= runs["resume_seconds"], lines[0]


def test_the_resumed_epoch_logs_the_means_of_the_whole_epoch(runs):
    """Lightning keeps no running epoch sums in a checkpoint: the epoch resumed in its middle
    logged the means of its batches after the checkpoint only (train_nce_loss_epoch 2.967151
    for 2.980243), and the summary's embedding_std and the epoch line with them."""
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-3000:]
    full, resumed = (_epoch_means(runs["base"] / name, "1") for name in ("full", "killed"))
    assert {"train_nce_loss_epoch", "train_embedding_std", "train_mask_lambda_epoch"} <= set(full)
    assert resumed.keys() == full.keys()
    for key, value in full.items():
        assert resumed[key] == pytest.approx(value, rel=1e-6), key
    full_summary, resumed_summary = (
        final_state(runs["base"] / name)[1] for name in ("full", "killed")
    )
    assert resumed_summary["embedding_std"] == full_summary["embedding_std"] is not None
    assert resumed_summary["collapsed"] == full_summary["collapsed"]
    assert _epoch_line(runs["resumed"].stdout) == _epoch_line(runs["full"].stdout)


def _epoch_means(run_dir, epoch):
    """``{train_* epoch mean: value}`` of ``epoch``'s (last) training row in metrics.csv."""
    import csv

    with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["epoch"] == epoch and r["train_nce_loss_epoch"]]
    assert rows, f"no training row of epoch {epoch} in {run_dir}"
    return {
        key: float(value)
        for key, value in rows[-1].items()
        if key.startswith("train_") and not key.endswith("_step") and value
    }


def _epoch_line(stdout):
    """The console's line of the last epoch, without its speed and time."""
    lines = [line for line in stdout.splitlines() if line.startswith("epoch 2/2")]
    assert len(lines) == 1, stdout[-3000:]
    return [p for p in lines[0].split(", ") if not p.endswith((" img/s", " s"))]


def _knn_by_epoch(run_dir):
    import csv

    with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
        return {r["epoch"]: r["val_knn_acc1"] for r in csv.DictReader(f) if r.get("val_knn_acc1")}


def _bad_step(result) -> int:
    """The step a stopped run's one error line names."""
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    found = re.search(r"the training loss is (nan|inf|-inf) at step (\d+) \(epoch 0\)", lines[0])
    assert found, lines[0]
    assert "nothing non-finite was saved" in lines[0]
    return int(found.group(2))


@pytest.mark.parametrize("name", ["nan", "nan_lag2_step_checkpoints"])
def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(runs, name):
    step = _bad_step(runs[name])
    assert "last.ckpt" in error_lines(runs[name].stderr)[0]
    ckpt = safe_load_checkpoint(runs["base"] / name / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == step  # written right before the bad step
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
    assert not (runs["base"] / name / "summary.json").exists()
    assert not (runs["base"] / name / "run.lock").exists()  # released on exit 3 too


def test_a_lagged_loss_check_names_the_same_bad_step(runs):
    # performance.loss_check_lag=2 trains 2 more steps before it reads the bad loss, and names
    # the step the loss went bad, as the check before each backward does
    step = _bad_step(runs["nan"])
    assert _bad_step(runs["nan_lag2"]) == step
    assert "no checkpoint had been written yet" in error_lines(runs["nan_lag2"].stderr)[0]
    assert not (runs["base"] / "nan_lag2" / "checkpoints" / "last.ckpt").exists()


# --------------------------------------------------------------------------- in-process units


def test_sampler_splits_each_epoch_between_ranks():
    data = list(range(21))
    ranks = [ResumableSampler(data, batch_size=2, seed=3, rank=r, world_size=2) for r in (0, 1)]
    epoch0 = [s.indices(0) for s in ranks]
    assert [len(i) for i in epoch0] == [10, 10]  # 21 // 2 each, the 21st image dropped
    assert set(epoch0[0]).isdisjoint(epoch0[1])
    assert ranks[0].indices(1) != epoch0[0]  # a new order every epoch
    # The order depends on (seed, epoch) only: a new sampler gives the same epoch 0.
    assert ResumableSampler(data, 2, seed=3, rank=0, world_size=2).indices(0) == epoch0[0]
    assert ResumableSampler(data, 2, seed=4, rank=0, world_size=2).indices(0) != epoch0[0]


def test_sampler_skip_applies_once_to_its_epoch():
    sampler = ResumableSampler(list(range(12)), batch_size=3, seed=0)
    full = [i for i, _ in sampler]
    sampler.skip(epoch=0, batches=2)
    assert [i for i, _ in sampler] == full[6:]
    assert [i for i, _ in sampler] == full  # the next pass starts at the beginning again
    pairs = list(sampler)
    assert all(seed == mix_seed(0, 0, i) for i, seed in pairs)


def test_loader_state_moves_to_the_next_epoch_after_a_finished_one():
    loader = ResumableLoader(list(range(16)), batch_size=4, seed=1)
    loader.load_state_dict(
        {"epoch": 2, "batches_done": 4, "batch_size": 4, "world_size": 1, "seed": 1}
    )
    assert loader.sampler.epoch == 3 and loader.batches_done == 0
    loader.load_state_dict(
        {"epoch": 2, "batches_done": 1, "batch_size": 4, "world_size": 1, "seed": 1}
    )
    assert loader.sampler.epoch == 2
    assert [b.tolist() for b in loader] == [
        torch.tensor(ResumableSampler(list(range(16)), 4, 1).indices(2)[4 * k : 4 * k + 4]).tolist()
        for k in (1, 2, 3)
    ]


class _Noisy(torch.utils.data.Dataset):
    """Item i: a random vector drawn from the global torch / numpy / python RNGs."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.rand(3) + float(np.random.rand()) + random.random() + i


def test_seeded_items_depend_on_the_seed_only_and_keep_the_caller_rng():
    items = SeededItems(_Noisy())
    before = torch.get_rng_state()
    a = items[(4, 123)]
    torch.rand(5), np.random.rand(), random.random()  # move every global stream on
    assert torch.equal(items[(4, 123)], a)
    assert not torch.equal(items[(4, 124)], a)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    items[(1, 9)]
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(before, state)


def test_rng_state_round_trip_is_weights_only_loadable(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(2), np.random.rand(), random.random())
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    torch.rand(7), np.random.rand(3), random.random()
    restore_rng_state(loaded)
    assert torch.equal(torch.rand(2), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]


def test_atomic_save_names_a_full_disk_however_torch_reports_it(tmp_path, monkeypatch):
    """A file that fails with ENOSPC mid-write: torch's zip writer turns the error into
    RuntimeError("unexpected pos ..."); the save still says 'no space left on device'."""
    import builtins
    import errno

    from solo_mixmask.checkpoints import io as checkpoint_io
    from solo_mixmask.errors import CheckpointError

    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 512:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(
        checkpoint_io, "open", lambda p, mode: FullDisk(builtins.open(p, mode)), raising=False
    )
    with pytest.raises(
        CheckpointError, match="no space left on device.*previous last.ckpt is kept"
    ):
        atomic_torch_save({"weights": torch.zeros(10_000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_atomic_save_keeps_the_old_file_when_the_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left
    atomic_torch_save({"step": torch.tensor(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 3


def test_each_rank_takes_its_own_streams_back():
    from types import SimpleNamespace

    from solo_mixmask.callbacks import ResumeState
    from solo_mixmask.utils.generators import SeededGenerators

    streams = []
    for rank in (0, 1):
        gens = SeededGenerators(5)
        gens.rank = rank
        torch.rand(3, generator=gens.device("cpu"))
        streams.append({"rng": capture_rng_state(), "generators": gens.state_dict()})
    state = {"rng": streams[0]["rng"], "per_rank": streams}
    module = SimpleNamespace(generators=SeededGenerators(5))
    callback = ResumeState(None)
    callback.setup(SimpleNamespace(global_rank=1, world_size=2), module, "fit")
    callback.load_state_dict(state)
    expected = torch.Generator().set_state(streams[1]["generators"]["device"])
    assert torch.equal(
        torch.rand(4, generator=module.generators.device("cpu")), torch.rand(4, generator=expected)
    )


def test_step_checkpoint_saves_only_whole_steps_inside_an_epoch(tmp_path):
    """A real fit: 2 epochs of 8 batches, an optimiser step after every 2nd (4 steps an epoch),
    last.ckpt every 2 steps through Lightning's every_n_train_steps."""
    from lightning.pytorch.callbacks import Callback

    from solo_mixmask.checkpoints.callbacks import StepCheckpoint
    from tests.callbacks.helpers import fit_tiny

    saved = []

    class Record(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            saved.append((trainer.current_epoch, trainer.global_step, done))

    fit_tiny([StepCheckpoint(tmp_path, every_n_steps=2), Record()], accumulate=2)
    # steps 2 and 6 are saved after the 4th batch of their epoch; steps 4 and 8 fall on an
    # epoch's last batch (the epoch-end save follows), and the 1st batch of epoch 1 (step 4
    # again, mid-accumulation) is not saved either
    assert saved == [(0, 2, 4), (1, 6, 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert safe_load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 6
    with pytest.raises(ValueError, match="every_n_steps=0"):
        StepCheckpoint(tmp_path, 0)


@pytest.mark.parametrize("completes_on_restart", [True, False])
def test_mid_epoch_save_counts_its_batch_for_lightning_2_1(monkeypatch, completes_on_restart):
    """Lightning 2.1 restarts from `completed` batches: a checkpoint saved in
    on_train_batch_end (its batch processed but not yet completed) gets it counted completed by
    ResumeState; newer Lightning completes it on restart itself, so the checkpoint is left as it
    is. A checkpoint saved between batches is never touched."""
    from solo_mixmask.callbacks import resume_state

    monkeypatch.setattr(resume_state, "LIGHTNING_COMPLETES_BATCH_ON_RESTART", completes_on_restart)

    def progress(completed):
        counts = {"ready": 11, "started": 11, "processed": 11, "completed": completed}
        return {
            "total": dict(counts),
            "current": {k: v - 8 for k, v in counts.items()},
            "is_last_batch": False,
        }

    callback = resume_state.ResumeState(None)
    saved = []
    for completed in (10, 11):  # in the batch's end hooks, then between batches
        checkpoint = {"loops": {"fit_loop": {"epoch_loop.batch_progress": progress(completed)}}}
        callback.on_save_checkpoint(None, None, checkpoint)
        saved.append(checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"])
    completed = (11, 3) if not completes_on_restart else (10, 2)
    assert (saved[0]["total"]["completed"], saved[0]["current"]["completed"]) == completed
    assert saved[1] == progress(11)


def test_mid_epoch_checkpoint_of_this_lightning_restarts_after_its_batch(tmp_path):
    """The installed Lightning, for real: a last.ckpt written by every_n_train_steps with
    ResumeState in the callbacks resumes after the saved batch (2.1 through the completed count
    ResumeState writes, newer versions by completing the batch on restart)."""
    from lightning.pytorch.callbacks import Callback

    from solo_mixmask.callbacks import ResumeState
    from solo_mixmask.callbacks.resume_state import LIGHTNING_COMPLETES_BATCH_ON_RESTART
    from solo_mixmask.checkpoints.callbacks import StepCheckpoint
    from tests.callbacks.helpers import TinyModule, fit_tiny

    fit_tiny([StepCheckpoint(tmp_path, every_n_steps=3), ResumeState(None)], epochs=1)
    checkpoint = safe_load_checkpoint(tmp_path / "last.ckpt")
    assert checkpoint["global_step"] == 6  # steps 3 and 6 are mid-epoch
    current = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert current["processed"] == 6
    assert current["completed"] == (5 if LIGHTNING_COMPLETES_BATCH_ON_RESTART else 6)

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    seen = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch_idx)

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[Record()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=2)
    trainer.fit(TinyModule(), train_dataloaders=data, ckpt_path=str(tmp_path / "last.ckpt"))
    assert seen == [6, 7] and trainer.global_step == 8


def test_resumed_run_keeps_every_column_of_metrics_csv(tmp_path):
    """A resumed run that first logs keys the file lacks (and lacks keys the file has) appends
    to metrics.csv instead of failing on the rewrite of its header."""
    from lightning.pytorch.loggers import CSVLogger

    from solo_mixmask.run.loggers import continue_csv as _continue_csv

    path = tmp_path / "logs" / "metrics.csv"
    path.parent.mkdir()
    path.write_text("epoch,step,val_knn_acc1\n0,7,37.5\n")
    logger = CSVLogger(save_dir=str(tmp_path), name="logs", version="")
    _continue_csv(logger, path)
    logger.log_metrics({"train_loss": 2.5}, step=9)
    logger.save()
    lines = path.read_text().splitlines()
    assert set(lines[0].split(",")) == {"epoch", "step", "val_knn_acc1", "train_loss"}
    rows = list(__import__("csv").DictReader(path.open()))
    assert rows[0]["val_knn_acc1"] == "37.5" and rows[1]["train_loss"] == "2.5"


def test_resumed_metrics_csv_keeps_one_kind_of_line_end(tmp_path):
    """The rows before a resume keep the csv writer's "\\r\\n" ends, as the rows appended after
    it have them: continue_csv puts the file back byte for byte."""
    from lightning.pytorch.loggers import CSVLogger

    from solo_mixmask.run.loggers import continue_csv as _continue_csv

    path = tmp_path / "logs" / "metrics.csv"
    path.parent.mkdir()
    path.write_bytes(b"epoch,step,train_loss\r\n0,7,3.0\r\n")
    logger = CSVLogger(save_dir=str(tmp_path), name="logs", version="")
    _continue_csv(logger, path)
    logger.log_metrics({"train_loss": 2.5, "epoch": 1}, step=9)
    logger.save()
    data = path.read_bytes()
    assert data.startswith(b"epoch,step,train_loss\r\n0,7,3.0\r\n")
    assert data.count(b"\n") == data.count(b"\r\n") == 3


def test_two_runs_of_one_config_agree_bit_for_bit(tmp_path):
    """The README's promise (issue 18): a seeded run gives the same figures on every run of one
    version with the same number of torch threads (cli_env sets OMP_NUM_THREADS=1), whatever
    data.num_workers is: same weights bit for bit, same summary figures."""
    from tests.cli_helpers import SUMMARY_KEYS, run_many

    args = ["pretrain", *TINY, "data.train_subset=32", "data.val_subset=16"]
    results = run_many(
        [
            [*args, "data.num_workers=0", f"checkpoint.run_dir={tmp_path / 'a'}"],
            [*args, "data.num_workers=2", f"checkpoint.run_dir={tmp_path / 'b'}"],
        ],
        parallel=2,
    )
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    (a, a_summary), (b, b_summary) = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), key
    for key in SUMMARY_KEYS:
        assert a_summary[key] == b_summary[key], key


def test_wall_time_of_a_run_resumed_from_a_checkpoint_without_speed_state(tmp_path):
    """A checkpoint written before TrainSpeed kept the run's wall time: the run's summary.json
    holds it. Resumed twice, the second resume still counts it (its checkpoint now carries it)."""
    import json
    import shutil

    from omegaconf import OmegaConf

    from tests.cli_helpers import ROOT

    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    shutil.copy(ROOT / "tests" / "fixtures" / "legacy" / "byol_unmix_mixmask.ckpt", last)
    saved = safe_load_checkpoint(last)
    assert "TrainSpeed" not in saved.get("callbacks", {})
    cfg = OmegaConf.create(saved["hyper_parameters"]["cfg"])
    cfg.checkpoint.run_dir = str(tmp_path)
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    (tmp_path / "summary.json").write_text(json.dumps({"wall_seconds": 100.0}))
    walls = []
    for epochs in (2, 3):
        done = run(["resume", str(tmp_path), f"max_epochs={epochs}"])
        assert done.returncode == 0, done.stderr[-3000:]
        walls.append(json.loads((tmp_path / "summary.json").read_text())["wall_seconds"])
    assert 100 < walls[0] < walls[1] < 200, walls
