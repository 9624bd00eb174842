"""``resume`` of a run that ``limit_train_batches`` or ``max_time`` ended.

``resume`` counted an epoch as finished when all the loader's batches were done, not the
batches ``limit_train_batches`` lets an epoch run: a finished 2-epoch run with
``limit_train_batches=4`` (of 8) was fit again, trained nothing and rewrote ``summary.json``
with every accuracy null (exit 0), and ``resume RUN max_epochs=2`` was accepted. A run that
``max_time`` ended was fit again too: Lightning's restored Timer stopped it at once and the
summary was rewritten with nulls and one epoch less. Now both are finished runs (nothing
changed, a ``RUN is finished ...`` line), a larger ``max_time`` trains on, and a fit that trains
no step and validates nothing never overwrites a summary.

The commands run in-process (``solo_mixmask.cli.main``); two module fixtures train the runs
that the tests copy before changing anything.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings

import pytest

from solo_mixmask import cli
from solo_mixmask.checkpoints.io import safe_load_checkpoint
from solo_mixmask.run.resume import as_duration, epochs_begun, epochs_trained
from tests.cli_helpers import TINY, assert_same_end_state, error_lines

MAX_TIME = "00:00:00:03"


def _main(capsys, args):
    """``solo-mixmask ARGS`` in-process: (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _summary(run):
    return json.loads((run / "summary.json").read_text())


def _pretrain(base, name, *overrides):
    run = base / name
    code = cli.main(["pretrain", *TINY, *overrides, f"checkpoint.run_dir={run}"])
    assert code == 0, name
    return run


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A finished 2-epoch run of 4 steps per epoch (``limit_train_batches=4`` of 8)."""
    return _pretrain(
        tmp_path_factory.mktemp("limited"), "run", "max_epochs=2", "+limit_train_batches=4"
    )


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """A run that ``max_time`` (3 s of training) ended, far from its ``max_epochs``."""
    return _pretrain(
        tmp_path_factory.mktemp("timed"), "run", "max_epochs=1000", f"+max_time={MAX_TIME}"
    )


def _checkpoint(epoch, done, total=8, **extra):
    return {"callbacks": {"ResumeState": {"loader": {
        "epoch": epoch, "batches_done": done, "num_batches": total}, **extra}}}  # fmt: skip


@pytest.mark.parametrize(
    ("position", "limit", "trained", "begun"),
    [
        ((1, 4), None, 1, 1.5),  # 4 of 8 batches: half of epoch 2
        ((1, 8), None, 2, 2),
        ((1, 4), 4, 2, 2),  # limit_train_batches=4: an epoch is 4 batches
        ((1, 2), 4, 1, 1.5),
        ((1, 4), 0.5, 2, 2),  # a fraction, as Lightning computes it: int(8 * 0.5)
        ((1, 2), 0.25, 2, 2),
        ((1, 1), 0.25, 1, 1.5),
        ((1, 4), 1.0, 1, 1.5),  # 1.0 is every batch, 1 is one batch
        ((1, 1), 1, 2, 2),
        ((1, 4), 20, 1, 1.5),  # more than the loader has: every batch
    ],
)
def test_epochs_count_the_batches_an_epoch_runs(position, limit, trained, begun):
    checkpoint = _checkpoint(*position)
    assert epochs_trained(checkpoint, limit) == trained
    assert epochs_begun(checkpoint, limit) == begun


def test_the_checkpoint_records_the_batches_an_epoch_runs(limited):
    checkpoint = safe_load_checkpoint(limited / "checkpoints" / "last.ckpt")
    state = checkpoint["callbacks"]["ResumeState"]
    assert state["loader"]["num_batches"] == 8 and state["epoch_batches"] == 4
    # the record is what counts (a config edited by hand cannot change it)
    assert epochs_trained(checkpoint) == epochs_trained(checkpoint, 1.0) == 2
    assert epochs_trained(_checkpoint(1, 4, epoch_batches=4)) == 2


def test_resume_of_a_finished_run_with_limit_train_batches_changes_nothing(
    limited, tmp_path, capsys
):
    run = shutil.copytree(limited, tmp_path / "run")
    summary = _summary(run)
    assert summary["steps"] == 8 and summary["epochs"] == 2 and summary["knn_acc1"] is not None
    before = _digest(run)
    code, out, err = _main(capsys, ["resume", run])
    assert code == 0, err[-3000:]
    assert f"{run} is finished (2 of 2 epochs trained); nothing was changed" in out, out
    assert _digest(run) == before

    code, out, err = _main(capsys, ["resume", run, "max_epochs=2"])
    assert code == 2 and len(error_lines(err)) == 1, err[-3000:]
    assert "max_epochs=2 is not allowed: expected more than 2" in error_lines(err)[0]
    assert _digest(run) == before

    code, out, err = _main(capsys, ["resume", run, "max_epochs=3"])
    assert code == 0, err[-3000:]
    longer = _summary(run)
    assert longer["steps"] == 12 and longer["epochs"] == 3 and longer["knn_acc1"] is not None


def _elapsed(run):
    checkpoint = safe_load_checkpoint(run / "checkpoints" / "last.ckpt")
    return checkpoint["callbacks"]["Timer"]["time_elapsed"]["train"]


def test_resume_of_a_run_that_max_time_ended_changes_nothing(timed, tmp_path, capsys):
    run = shutil.copytree(timed, tmp_path / "run")
    summary = _summary(run)
    assert 0 < summary["epochs"] < 1000 and summary["knn_acc1"] is not None
    assert _elapsed(run) >= 3
    before = _digest(run)
    code, out, err = _main(capsys, ["resume", run])
    assert code == 0, err[-3000:]
    assert f"{run} is finished (its max_time={MAX_TIME} is used up" in out, out
    assert "nothing was changed" in out and f"solo-mixmask resume {run} max_time=" in out, out
    assert _digest(run) == before

    # a max_time not above the training time already spent, or a max_epochs alone, would
    # train nothing: refused
    for override in (f"max_time={MAX_TIME}", "max_epochs=2000"):
        code, out, err = _main(capsys, ["resume", run, override])
        assert code == 2 and len(error_lines(err)) == 1, (override, err[-3000:])
        assert error_lines(err)[0].startswith("error: max_time="), error_lines(err)
        assert _digest(run) == before, override


def test_resume_with_a_larger_max_time_trains_on(timed, tmp_path, capsys):
    run = shutil.copytree(timed, tmp_path / "run")
    summary = _summary(run)
    # 2 s more than the training time spent (which a busy machine stretches)
    limit = int(_elapsed(run)) + 2
    longer_time = as_duration(limit)
    code, out, err = _main(capsys, ["resume", run, f"+max_time={longer_time}"])
    assert code == 0, err[-3000:]
    longer = _summary(run)
    assert longer["steps"] > summary["steps"] and longer["epochs"] > summary["epochs"]
    assert longer["knn_acc1"] is not None and longer["linear_acc1"] is not None
    assert f"max_time: {longer_time}" in (run / "config.yaml").read_text()
    assert _elapsed(run) >= limit


def test_a_run_that_max_time_ended_without_summary_is_finished(timed, tmp_path, capsys):
    run = shutil.copytree(timed, tmp_path / "run")
    summary = _summary(run)
    (run / "summary.json").unlink()
    code, out, err = _main(capsys, ["resume", run])
    assert code == 0, err[-3000:]
    said = [line for line in err.splitlines() if "has no summary.json" in line]
    assert len(said) == 1 and f"its max_time={MAX_TIME}" in said[0], err[-3000:]
    again = _summary(run)
    for key in ("steps", "epochs", "knn_acc1", "linear_acc1"):
        assert again[key] == summary[key], key


def test_a_fit_that_trains_nothing_keeps_the_summary(timed, tmp_path):
    """The safety net: the fit of a run whose max_time is used up (resume_run's checks
    bypassed) trains no step and validates nothing; summary.json stays as it was."""
    from omegaconf import OmegaConf

    from solo_mixmask.errors import ConfigWarning
    from solo_mixmask.run.pretrain import run_pretrain

    run = shutil.copytree(timed, tmp_path / "run")
    before = (run / "summary.json").read_bytes()
    cfg = OmegaConf.load(run / "config.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_pretrain(cfg, resume_from=str(run / "checkpoints" / "last.ckpt"))
    said = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
    kept = [line for line in said if "summary.json is kept" in line]
    assert len(kept) == 1 and "trained no step and validated nothing" in kept[0], said
    assert (run / "summary.json").read_bytes() == before
    assert result == json.loads(before)


def test_a_run_resumed_with_its_max_time_lifted_ends_as_an_uninterrupted_one(
    tmp_path, capsys, monkeypatch
):
    """Lightning wrote the last checkpoint of an epoch that max_time stopped part-way with the
    epoch counted as processed: a resume with a larger max_time went on with the next epoch,
    and the rest of the stopped one was never trained. ResumeState reopens that epoch."""
    from solo_mixmask.callbacks import ResumeState

    full = _pretrain(tmp_path, "full", "max_epochs=2")
    hook = ResumeState.on_train_batch_end

    def slow(self, trainer, *args):  # 0.3 s a batch: 2 s of training stop inside the run
        hook(self, trainer, *args)
        time.sleep(0.3)

    with monkeypatch.context() as patch:
        patch.setattr(ResumeState, "on_train_batch_end", slow)
        timed = _pretrain(tmp_path, "timed", "max_epochs=2", "+max_time=00:00:00:02")
    stopped = _summary(timed)["steps"]
    assert 0 < stopped < 16, stopped
    capsys.readouterr()
    code, out, err = _main(capsys, ["resume", timed, "~max_time"])
    assert code == 0, err[-3000:]
    assert_same_end_state(full, timed, 16)
