"""Stopping and restarting runs through the real CLI: SIGTERM (pre-emption by SLURM or
Kubernetes) and Ctrl-C stop after the step under way with a checkpoint and a non-zero exit
status; ``resume`` continues them to the uninterrupted run's state; ``resume`` of a finished run
changes nothing, extends it with a larger ``max_epochs`` and refuses a smaller one.

One module fixture starts the runs together (each start pays the torch + lightning import):
an uninterrupted 2-epoch run, a run sent SIGTERM in the middle of epoch 1 (no
``checkpoint.every_n_steps``: the only mid-epoch checkpoint is the one written on SIGTERM), a
run sent SIGINT in epoch 0, and a run sent SIGTERM during the start-up k-NN pass.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import sys
import time

import pytest

from solo_mixmask.checkpoints.io import safe_load_checkpoint
from tests.cli_helpers import (
    TINY,
    assert_same_end_state,
    error_lines,
    final_state,
    finish,
    run_many,
    start,
)

RUN = [*TINY, "max_epochs=2"]
TERM_STEP = 11  # epoch 1, after its 3rd batch
INT_STEP = 5  # epoch 0

# `python stall.py pretrain ...`: the real CLI, parked after optimiser step STALL_AT (or in the
# first batch of the start-up k-NN pass with STALL_AT=validate) until a signal has been handled.
STALL_HARNESS = """
import os, sys, time
from pathlib import Path
from lightning.pytorch.callbacks import Callback
from solo_mixmask import callbacks
where, mark = os.environ["STALL_AT"], Path(os.environ["STALL_MARK"])

def park(trainer):
    mark.write_text(where)
    deadline = time.monotonic() + 600
    while not getattr(trainer, "received_sigterm", False) and time.monotonic() < deadline:
        time.sleep(0.05)

hook = callbacks.ResumeState.on_train_batch_end
def stalled(self, trainer, *args):
    hook(self, trainer, *args)
    if where != "validate" and trainer.global_step == int(where):
        park(trainer)
callbacks.ResumeState.on_train_batch_end = stalled

def in_validation(self, trainer, *args):
    if where == "validate" and trainer.global_step == 0 and not mark.exists():
        park(trainer)
Callback.on_validation_batch_end = in_validation
from solo_mixmask.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _stalled(base, name, where, signum):
    """Start a run parked at ``where``; send ``signum`` once it is parked."""
    harness = base / "stall.py"
    harness.write_text(STALL_HARNESS)
    mark = base / f"{name}.parked"
    proc = start(
        ["pretrain", *RUN, f"checkpoint.run_dir={base / name}"],
        prefix=[sys.executable, str(harness)],
        env={"STALL_AT": where, "STALL_MARK": str(mark)},
    )
    return proc, mark, signum


def _wait_and_signal(stalled, timeout=400, while_parked=None):
    """Wait until the run is parked, call ``while_parked()`` (its result is returned too), then
    send the signal."""
    proc, mark, signum = stalled
    deadline = time.monotonic() + timeout
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = None
    if mark.exists():
        if while_parked is not None:
            seen = while_parked()
        proc.send_signal(signum)
    return finish(proc, timeout=120), seen


def _cli_in_process(args):
    """``solo-mixmask ARGS`` in this process: (exit status, stderr)."""
    import contextlib
    import io

    from solo_mixmask.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    return code, err.getvalue()


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("preemption")
    full = start(["pretrain", *RUN, f"checkpoint.run_dir={base / 'full'}"])
    termed = _stalled(base, "termed", str(TERM_STEP), signal.SIGTERM)
    interrupted = _stalled(base, "interrupted", str(INT_STEP), signal.SIGINT)
    startup = _stalled(base, "startup", "validate", signal.SIGTERM)
    out = {"base": base, "termed_pid": termed[0].pid}
    # while the SIGTERM run trains, a second process tries to resume it
    second = {"termed": lambda: _cli_in_process(["resume", base / "termed"])}
    for name, stalled in (("termed", termed), ("interrupted", interrupted), ("startup", startup)):
        out[name], out[f"{name}_second"] = _wait_and_signal(stalled, while_parked=second.get(name))
    out["full"] = finish(full, timeout=400)
    out["termed_ckpt"] = _step_of(base / "termed")
    out["interrupted_ckpt"] = _step_of(base / "interrupted")
    for name in ("termed", "interrupted", "startup"):
        out[f"{name}_files"] = sorted(
            str(p.relative_to(base / name)) for p in (base / name).rglob("*") if p.is_file()
        )
    shutil.copytree(base / "full", base / "extended")
    out["full_digest"] = _digest(base / "full")
    names = ["termed_resumed", "startup_resumed", "finished", "lower", "extended_resumed"]
    done = run_many(
        [
            ["resume", str(base / "termed")],
            ["resume", str(base / "startup")],
            ["resume", str(base / "full")],
            ["resume", str(base / "full"), "max_epochs=1"],
            ["resume", str(base / "extended"), "max_epochs=3"],
        ],
        timeout=400,
        parallel=3,
    )
    out.update(zip(names, done))
    return out


def _step_of(run_dir):
    last = run_dir / "checkpoints" / "last.ckpt"
    return safe_load_checkpoint(last)["global_step"] if last.exists() else None


def _one_error(result, status):
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def _same_end_state(runs, name):
    assert_same_end_state(runs["base"] / "full", runs["base"] / name, 16)


def test_sigterm_mid_epoch_checkpoints_the_step_and_exits_143(runs):
    line = _one_error(runs["termed"], 143)
    assert "SIGTERM" in line and f"last.ckpt holds step {TERM_STEP}" in line, line
    assert f"`solo-mixmask resume {runs['base'] / 'termed'}`" in line, line
    assert runs["termed_ckpt"] == TERM_STEP
    assert "summary.json" not in runs["termed_files"]
    assert "run.lock" not in runs["termed_files"]  # released on the way out
    assert not [f for f in runs["termed_files"] if "tmp" in f]


def test_resume_after_sigterm_ends_with_the_uninterrupted_state(runs):
    assert runs["full"].returncode == 0, runs["full"].stderr[-3000:]
    assert runs["termed_resumed"].returncode == 0, runs["termed_resumed"].stderr[-3000:]
    _same_end_state(runs, "termed")


def test_ctrl_c_during_training_checkpoints_the_step_and_exits_130(runs):
    line = _one_error(runs["interrupted"], 130)
    assert "Ctrl-C" in line and f"last.ckpt holds step {INT_STEP}" in line, line
    assert f"`solo-mixmask resume {runs['base'] / 'interrupted'}`" in line, line
    assert runs["interrupted_ckpt"] == INT_STEP
    assert "run.lock" not in runs["interrupted_files"]


def test_a_second_resume_of_a_training_run_is_refused(runs):
    """The run folder is locked while a process trains in it: `resume` of that run from another
    process stops with one error line naming the process, and changes nothing (the SIGTERM run
    that it tried to resume ends as the uninterrupted one, see above)."""
    code, err = runs["termed_second"]
    lines = error_lines(err)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert f"{runs['base'] / 'termed'} is in use" in lines[0], lines[0]
    assert f"pid {runs['termed_pid']} on host" in lines[0], lines[0]
    assert "solo-mixmask pretrain" in lines[0] and "is still running" in lines[0], lines[0]


def test_sigterm_in_the_start_up_knn_pass_leaves_a_resumable_folder(runs):
    line = _one_error(runs["startup"], 143)
    assert "no checkpoint had been written yet" in line, line
    assert "run.lock" not in runs["startup_files"]
    assert not any(f.startswith("checkpoints/") for f in runs["startup_files"])
    assert "summary.json" not in runs["startup_files"]
    resumed = runs["startup_resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "starts again from step 0" in resumed.stderr
    _same_end_state(runs, "startup")


def test_resume_of_a_finished_run_changes_nothing(runs):
    result = runs["finished"]
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(said) == 1 and "is finished (2 of 2 epochs trained)" in said[0], said
    # stderr: nothing of ours (third-party import notices, e.g. lightning 2.1's
    # pkg_resources deprecation, are not the run's output)
    ours = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("error:", "warning:", "Traceback", "Epoch", "{"))
    ]
    assert ours == [], ours
    assert _digest(runs["base"] / "full") == runs["full_digest"]


def test_resume_with_fewer_epochs_than_trained_is_refused(runs):
    line = _one_error(runs["lower"], 2)
    assert "max_epochs=1" in line and "already trained 2 epochs" in line, line
    assert _digest(runs["base"] / "full") == runs["full_digest"]


def test_resume_with_more_epochs_extends_the_run(runs):
    result = runs["extended_resumed"]
    assert result.returncode == 0, result.stderr[-3000:]
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("max_epochs changes from 2 to 3" in line for line in warning), result.stderr
    ckpt, summary = final_state(runs["base"] / "extended")
    assert ckpt["global_step"] == summary["steps"] == 24 and summary["epochs"] == 3
    assert summary["knn_acc1"] is not None and summary["images_per_sec"] > 0
    assert "max_epochs: 3" in (runs["base"] / "extended" / "config.yaml").read_text()
