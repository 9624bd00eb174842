"""Issue 12: run folders through the real CLI - made atomically, never shared by two runs,
refused when they already hold a run or cannot be written, locked while a process trains in
them, removed again when a run fails on a user error before it trained anything; and resume's
refusals and fall-backs (another method, other tensor shapes, a lost last.ckpt, an empty
checkpoint, a full disk).

Most commands run in-process (``solo_mixmask.cli.main``); one module fixture trains two tiny
runs (MixMask and MoCo V2+) that the tests copy before changing anything. The same-second test
starts two real processes.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

from solo_mixmask import cli
from solo_mixmask.run.folder import (
    CONFIG,
    LOCK,
    RunLock,
    holder_alive,
    saved_config,
    this_process,
)
from tests.cli_helpers import TINY, custom_data, error_lines, finish, start


def _main(capsys, args):
    """``solo-mixmask ARGS`` in-process: (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error(code, err, status=2):
    assert code == status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _warnings(err):
    return [line for line in err.splitlines() if line.startswith("warning:")]


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished 1-epoch runs (8 steps each): ``mixmask`` and ``mocov2plus``."""
    base = tmp_path_factory.mktemp("run_folder")
    for name in ("mixmask", "mocov2plus"):
        code = cli.main(
            [
                "pretrain",
                "--config-name",
                name,
                *TINY,
                "knn_eval.enabled=false",
                f"checkpoint.run_dir={base / name}",
            ]
        )
        assert code == 0, name
    return base


def _copy(runs, tmp_path, name="mixmask"):
    return shutil.copytree(runs / name, tmp_path / name)


# --------------------------------------------------------------------------- making folders

# `python same_second.py pretrain ...`: the real CLI with the clock's time stamp fixed, started
# once a `go` file appears, so that two processes pick the same folder name at the same time.
SAME_SECOND = """
import os, sys, time
from pathlib import Path
time.strftime = lambda fmt, *args: "20250101-120000"
Path(os.environ["READY"]).write_text("ready")
while not Path(os.environ["GO"]).exists():
    time.sleep(0.01)
from solo_mixmask.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    harness = tmp_path / "same_second.py"
    harness.write_text(SAME_SECOND)
    go = tmp_path / "go"
    args = ["pretrain", *TINY, "knn_eval.enabled=false", f"checkpoint.dir={tmp_path / 'runs'}"]
    procs = [
        start(
            args,
            prefix=[sys.executable, str(harness)],
            env={"READY": str(tmp_path / f"ready{i}"), "GO": str(go)},
        )
        for i in (0, 1)
    ]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(
        (tmp_path / f"ready{i}").exists() for i in (0, 1)
    ):
        time.sleep(0.05)
    go.write_text("go")
    results = [finish(p, timeout=300) for p in procs]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    name = "mixmask-fashion_mnist-20250101-120000"
    assert folders == [name, f"{name}-1"], folders
    for folder in folders:  # each run wrote its own complete run, and released its lock
        run = tmp_path / "runs" / folder
        summary = json.loads((run / "summary.json").read_text())
        assert summary["run_dir"] == str(run) and summary["steps"] == 8
        assert not (run / LOCK).exists()


def test_pretrain_into_an_existing_run_is_refused(runs, capsys):
    before = _digest(runs / "mixmask")
    code, _, err = _main(capsys, ["pretrain", *TINY, f"checkpoint.run_dir={runs / 'mixmask'}"])
    line = _one_error(code, err)
    assert line.startswith(f"error: checkpoint.run_dir='{runs / 'mixmask'}'"), line
    assert f"`solo-mixmask resume {runs / 'mixmask'}`" in line, line
    assert _digest(runs / "mixmask") == before


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ""])
def test_a_name_that_is_not_a_folder_name_is_refused(tmp_path, capsys, name):
    runs = tmp_path / "runs"
    code, _, err = _main(capsys, ["pretrain", *TINY, f"name={name}", f"checkpoint.dir={runs}"])
    line = _one_error(code, err)
    assert line.startswith(f"error: name={name!r} is not allowed"), line
    assert not runs.exists()
    assert not list(tmp_path.parent.glob("x-*"))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("checkpoint.dir=/proc/solo-mixmask-runs", "not under /proc"),
        ("checkpoint.run_dir=/proc/self/solo-mixmask-run", "not under /proc"),
        ("checkpoint.run_dir={file}", "it is an existing file"),
        ("checkpoint.dir={file}", "it is an existing file"),
        ("checkpoint.dir={file}/runs", "is a file, not a folder"),
    ],
)
def test_unusable_output_folders_are_refused_before_any_work(tmp_path, capsys, override, fragment):
    """One error line naming the key, nothing made, and before the data is opened (the missing
    data folder would be the error otherwise)."""
    file = tmp_path / "a_file"
    file.write_text("keep me")
    override = override.format(file=file)
    missing_data = ["data.dataset=custom", f"data.train_path={tmp_path / 'no_data'}"]
    code, _, err = _main(capsys, ["pretrain", *TINY, *missing_data, override])
    line = _one_error(code, err)
    key = override.split("=")[0]
    assert line.startswith(f"error: {key}="), line
    assert fragment in line, line
    assert file.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    assert not os.path.exists("/proc/solo-mixmask-runs")


def _bad_image_tree(root):
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            (root / cls / f"{i}.png").write_bytes(b"" if i % 2 else b"not a png")
    return root


def test_a_run_whose_images_are_all_bad_leaves_no_folder(tmp_path, capsys):
    bad = _bad_image_tree(tmp_path / "bad")
    data = custom_data(bad)
    code, _, err = _main(capsys, ["pretrain", *TINY, *data, f"checkpoint.dir={tmp_path / 'runs'}"])
    line = _one_error(code, err)
    assert "can be decoded" in line, line
    assert not (tmp_path / "runs").exists()  # the run folder and the checkpoint.dir it made
    # a folder the run did not make is never removed (here: made by the user beforehand)
    given = tmp_path / "given"
    given.mkdir()
    code, _, err = _main(capsys, ["pretrain", *TINY, *data, f"checkpoint.run_dir={given}"])
    assert "can be decoded" in _one_error(code, err)
    assert given.is_dir() and not (given / LOCK).exists()


# --------------------------------------------------------------------------- the lock


def _write_lock(run, **fields):
    record = {**this_process("solo-mixmask resume"), **fields}
    (run / LOCK).write_text(json.dumps(record))
    return record


def test_resume_of_a_run_that_a_live_process_holds_is_refused(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from solo_mixmask.run.folder import _process_start

        record = _write_lock(run, pid=sleeper.pid, process_start=_process_start(sleeper.pid))
        before = _digest(run)
        code, _, err = _main(capsys, ["resume", run, "max_epochs=2"])
        line = _one_error(code, err)
        assert f"{run} is in use" in line and f"pid {sleeper.pid}" in line, line
        assert f"host {socket.gethostname()}" in line, line
        assert _digest(run) == before  # the lock (and everything else) left as it was
        assert json.loads((run / LOCK).read_text()) == record
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_held_on_another_host_is_refused(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    _write_lock(run, pid=1, host="some-other-node")
    code, _, err = _main(capsys, ["resume", run])
    line = _one_error(code, err)
    assert "host some-other-node" in line and "cannot be checked" in line, line
    assert (run / LOCK).exists()


def test_a_stale_lock_is_taken_over_with_a_warning(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(run, pid=gone.pid, process_start="1")
    before = _digest(run)
    code, out, err = _main(capsys, ["resume", run])
    assert code == 0, err[-3000:]
    warned = _warnings(err)
    assert len(warned) == 1 and "stale lock" in warned[0], err[-3000:]
    assert f"pid {gone.pid}" in warned[0], warned
    assert "is finished (1 of 1 epochs trained)" in out
    assert not (run / LOCK).exists()  # taken over, then released
    del before[LOCK]
    assert _digest(run) == before


def test_lock_is_reentrant_and_released_only_by_its_holder(tmp_path):
    lock = RunLock(tmp_path, "test")
    with lock:
        with RunLock(tmp_path, "test"):  # resume -> run_pretrain: the same process asks again
            pass
        assert (tmp_path / LOCK).exists()
        alive, _ = holder_alive(json.loads((tmp_path / LOCK).read_text()))
        assert alive
    assert not (tmp_path / LOCK).exists()


# --------------------------------------------------------------------------- resume


def test_resume_of_a_config_whose_tensors_differ_from_the_checkpoint(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    config = run / "config.yaml"
    config.write_text(
        config.read_text().replace(
            "- 8\n    - 16\n    - 32\n    - 64\n", "- 16\n    - 32\n    - 64\n    - 128\n"
        )
    )
    before = _digest(run)
    code, _, err = _main(capsys, ["resume", run, "max_epochs=2"])
    line = _one_error(code, err)
    assert "does not fit the model this config builds" in line, line
    assert "backbone.kwargs.channels: [8, 16, 32, 64] in the checkpoint, [16, 32, 64, 128]" in line
    assert "have another shape (backbone." in line, line
    assert _digest(run) == before and not (run / LOCK).exists()


def test_resume_with_another_method_in_its_config(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("method: mixmask", "method: mocov2plus"))
    code, _, err = _main(capsys, ["resume", run, "max_epochs=2"])
    line = _one_error(code, err)
    assert "written by method 'mixmask'" in line and "method='mocov2plus'" in line, line


@pytest.mark.parametrize(
    "override",
    [
        "optimizer.lr=0.5",
        "checkpoint.dir=/tmp/elsewhere",
        "data.train_subset=128",
        "seed=6",
        "method=mocov2plus",
        "backbone.kwargs.channels=[16,32,64,128]",
        "+optimizer.kwargs.nesterov=true",
        "~data.val_subset",
    ],
)
def test_resume_refuses_overrides_it_would_record_without_applying(
    runs, tmp_path, capsys, override
):
    """Issue 18: `resume RUN optimizer.lr=0.5` exited 0, wrote lr 0.5 into config.yaml and
    trained on with the checkpoint's lr (the same weights as the lr 0.06 run); checkpoint.dir
    was ignored the same way and data.train_subset changed the data mid-epoch unannounced."""
    run = _copy(runs, tmp_path)
    before = _digest(run)
    code, _, err = _main(capsys, ["resume", run, "max_epochs=2", override])
    line = _one_error(code, err)
    key = override.lstrip("+~").split("=")[0]
    assert line.startswith(f"error: {key}="), line
    assert "is not allowed: expected a key that resume may change (max_epochs, " in line, line
    assert "start a new run" in line, line
    assert _digest(run) == before and not (run / LOCK).exists()


def test_resume_applies_the_keys_it_allows(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    allowed = ["max_epochs=2", "data.num_workers=1", "checkpoint.every_n_steps=5", "devices=1"]
    code, _, err = _main(capsys, ["resume", run, *allowed])
    assert code == 0, err[-3000:]
    config = (run / "config.yaml").read_text()
    assert "max_epochs: 2" in config and "num_workers: 1" in config, config
    assert "every_n_steps: 5" in config, config
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 16 and summary["epochs"] == 2


def test_resume_of_a_broken_config_is_one_error_line(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    (run / "config.yaml").write_text("method: [mixmask\nseed: 5\n")
    code, _, err = _main(capsys, ["resume", run])
    line = _one_error(code, err)
    assert f"{run / 'config.yaml'} cannot be read" in line and "valid YAML" in line, line
    assert not (run / LOCK).exists()


def test_resume_with_max_epochs_not_above_the_epochs_trained_is_refused(runs, tmp_path, capsys):
    """docs/RELIABILITY.md: `resume ... max_epochs=N` with N not above the epochs already
    trained is exit 2; `max_epochs=1` on a finished 1-epoch run said "finished", exit 0."""
    run = _copy(runs, tmp_path)
    before = _digest(run)
    code, _, err = _main(capsys, ["resume", run, "max_epochs=1"])
    line = _one_error(code, err)
    assert "max_epochs=1 is not allowed: expected more than 1" in line, line
    assert _digest(run) == before


def test_resume_from_a_checkpoint_of_another_method(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    shutil.copy(runs / "mocov2plus" / "checkpoints" / "last.ckpt", run / "checkpoints")
    code, _, err = _main(capsys, ["resume", run, "max_epochs=2"])
    line = _one_error(code, err)
    assert "written by method 'mocov2plus'" in line and "method='mixmask'" in line, line


def test_resume_of_an_empty_checkpoint_says_so(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    code, _, err = _main(capsys, ["resume", run, "max_epochs=2"])
    line = _one_error(code, err)
    assert "last.ckpt" in line and "it is an empty file (0 bytes)" in line, line
    assert "epoch000.ckpt" in line, line  # what is left to resume from


def test_resume_without_last_ckpt_uses_the_newest_epoch_checkpoint(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    (run / "checkpoints" / "last.ckpt").unlink()
    code, _, err = _main(capsys, ["resume", run, "max_epochs=2"])
    assert code == 0, err[-3000:]
    said = [line for line in _warnings(err) if "no checkpoints/last.ckpt" in line]
    assert len(said) == 1 and "resuming from epoch000.ckpt" in said[0], err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == str(run / "checkpoints" / "epoch000.ckpt")
    assert summary["steps"] == 16 and summary["epochs"] == 2
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_a_full_disk_keeps_the_previous_checkpoint(runs, tmp_path, capsys, monkeypatch):
    run = _copy(runs, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    # a mid-epoch last.ckpt (step 10) is the first save of the resumed epoch
    code, _, err = _main(capsys, ["resume", run, "max_epochs=2", "checkpoint.every_n_steps=2"])
    line = _one_error(code, err)
    assert "no space left on device" in line and "the previous last.ckpt is kept" in line, line
    assert last.read_bytes() == before
    assert not [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]
    assert not (run / LOCK).exists()


def test_a_finished_run_without_summary_keeps_its_collapse_verdict(runs, tmp_path, capsys):
    """A run that trained all its epochs but has no summary.json is finished by resume from its
    checkpoint: the collapse verdict is the last epoch's, read from metrics.csv (it was null and
    "collapsed": false whatever the run did), and the evaluation adds no row to metrics.csv."""
    run = tmp_path / "no_summary"
    shutil.copytree(runs / "mixmask", run)
    original = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    logged = (run / "logs" / "metrics.csv").read_text()
    code, _, err = _main(capsys, ["resume", run])
    assert code == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert original["embedding_std"] is not None
    for key in ("knn_acc1", "linear_acc1", "embedding_std", "embedding_std_spread", "collapsed"):
        assert summary[key] == original[key], key
    assert (run / "logs" / "metrics.csv").read_text() == logged


def test_a_run_whose_final_save_found_the_disk_full_is_finished_by_resume(
    runs, tmp_path, capsys, monkeypatch
):
    """Issue 18: the final last.ckpt save failed (disk full: exit 2, epoch000.ckpt kept, no
    last.ckpt, no summary.json); after space was freed `resume` said the run was finished and
    changed nothing, so summary.json never appeared and `compare` refused the folder. Resume
    now evaluates the checkpoint that ends the run and writes its summary: the figures of the
    same run whose save succeeded."""
    from pathlib import Path

    from solo_mixmask.checkpoints import io as checkpoint_io
    from solo_mixmask.errors import CheckpointError

    save = checkpoint_io.atomic_torch_save

    def disk_full_for_last(obj, path):
        if Path(path).name == "last.ckpt":
            raise CheckpointError(checkpoint_io._disk_full(Path(path)))
        save(obj, path)

    monkeypatch.setattr(checkpoint_io, "atomic_torch_save", disk_full_for_last)
    run = tmp_path / "full_disk"
    args = ["pretrain", "--config-name", "mixmask", *TINY, "knn_eval.enabled=false"]
    code, _, err = _main(capsys, [*args, f"checkpoint.run_dir={run}"])
    assert "no space left on device" in _one_error(code, err)
    monkeypatch.undo()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch000.ckpt"]
    assert not (run / "summary.json").exists()

    logged = (run / "logs" / "metrics.csv").read_text()
    code, out, err = _main(capsys, ["resume", run])
    assert code == 0, err[-3000:]
    said = [line for line in _warnings(err) if "has no summary.json" in line]
    assert len(said) == 1 and "finishing it from epoch000.ckpt" in said[0], err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    original = json.loads((runs / "mixmask" / "summary.json").read_text())
    for key in ("steps", "epochs", "linear_acc1", "linear_acc5", "knn_acc1"):
        assert summary[key] == original[key], key
    # the failed save also lost the epoch's training row of metrics.csv: the collapse verdict
    # is unknown, and said so (it was "collapsed": false); the speed and the time are those the
    # checkpoint carries (once 0.0 img/s and the evaluation's 0.1 s, then null)
    assert "train_embedding_std" not in logged
    assert summary["embedding_std"] is None and summary["collapsed"] is None
    state = torch.load(run / "checkpoints" / "epoch000.ckpt", weights_only=True)["callbacks"]
    speed = state["TrainSpeed"]
    assert summary["images_per_sec"] == round(speed["images"] / speed["seconds"], 2)
    assert summary["wall_seconds"] == round(speed["wall_seconds"], 1) > 0
    # the evaluation is not a row of metrics.csv (it was logged as epoch 0, step 0, which
    # compare read as epoch 1's accuracy)
    assert (run / "logs" / "metrics.csv").read_text() == logged
    assert summary["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8
    assert not (run / LOCK).exists()

    code, out, err = _main(capsys, ["resume", run])
    assert code == 0 and "is finished (1 of 1 epochs trained)" in out, err[-3000:]
    code, _, err = _main(capsys, ["compare", run, runs / "mixmask", "--out", tmp_path / "cmp"])
    assert code == 0, err[-3000:]


def test_max_steps_inside_an_epoch_is_validated_counted_and_finished(tmp_path, capsys):
    """max_steps=12 ends a 2-epoch run of 8 steps per epoch halfway through epoch 2. The summary
    had epoch 1's k-NN (Lightning does not validate a part-epoch) and "epochs": 2; resume of the
    finished run trained nothing and rewrote summary.json with null accuracies and 1.5 epochs."""
    run = tmp_path / "steps"
    args = ["pretrain", "--config-name", "mixmask", *TINY, "max_epochs=2", "+max_steps=12"]
    code, _, err = _main(capsys, [*args, f"checkpoint.run_dir={run}"])
    assert code == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["epochs"] == 1.5
    with (run / "logs" / "metrics.csv").open() as f:
        knn_rows = [r for r in csv.DictReader(f) if r.get("val_knn_acc1")]
    # at initialisation (step 0), after epoch 1 (step index 7) and at the last step (index 11)
    assert [int(r["step"]) for r in knn_rows] == [0, 7, 11]
    assert summary["knn_acc1"] == pytest.approx(float(knn_rows[-1]["val_knn_acc1"]))

    before = _digest(run)
    code, out, err = _main(capsys, ["resume", run])
    assert code == 0, err[-3000:]
    assert f"{run} is finished (12 steps trained, its max_steps=12)" in out, out
    assert _digest(run) == before

    # the final save failed (no summary.json): resume evaluates the run's end and writes it
    (run / "summary.json").unlink()
    code, out, err = _main(capsys, ["resume", run])
    assert code == 0, err[-3000:]
    said = [line for line in _warnings(err) if "has no summary.json" in line]
    assert len(said) == 1 and "has trained its 12 steps (max_steps)" in said[0], err[-3000:]
    again = json.loads((run / "summary.json").read_text())
    for key in ("steps", "epochs", "knn_acc1", "linear_acc1"):
        assert again[key] == summary[key], key
    # the speed and time up to the checkpoint (once null: the lost summary held them)
    assert again["images_per_sec"] == summary["images_per_sec"]
    assert again["images_per_sec_clock"] == summary["images_per_sec_clock"] == "host"
    assert 0 < again["wall_seconds"] <= summary["wall_seconds"]

    # a kill between the last save and the last row's write: the embedding_std of the run's
    # end is unknown, never the previous epoch's (once epoch 1's stood for the run's end)
    (run / "summary.json").unlink()
    log = run / "logs" / "metrics.csv"
    with log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0])
    for row in rows:
        if row["step"] == "11":
            row["train_embedding_std"] = ""
    with log.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    assert any(row["train_embedding_std"] for row in rows)  # epoch 1's row is there
    code, out, err = _main(capsys, ["resume", run])
    assert code == 0, err[-3000:]
    lost = json.loads((run / "summary.json").read_text())
    assert lost["embedding_std"] is None and lost["collapsed"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("method: mixmask\nknn_eval: {k: 20}\n", {"method": "mixmask", "knn_eval": {"k": 20}}),
        ("- a list\n", None),  # not a mapping
        ("method: [unclosed\n", None),  # not YAML
        ("!!python/object:os.system {}\n", None),  # a python tag
        (None, None),  # no config.yaml
    ],
)
def test_saved_config_reads_a_mapping_or_records_nothing(tmp_path, text, expected):
    """The run facts that compare and knn show come from saved_config: a config.yaml that is
    missing or unreadable gives None ("not recorded"), never a traceback."""
    if text is not None:
        (tmp_path / CONFIG).write_text(text)
    loaded = saved_config(tmp_path)
    assert (None if loaded is None else dict(loaded)) == expected
