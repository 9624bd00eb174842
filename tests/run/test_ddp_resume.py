"""``resume`` on another number of processes, and what a DDP run prints.

``resume RUN devices=2`` of a run trained on one device (or ``devices=1`` of a 2-process run)
went on with exit 0 and a wrong run: Lightning restores the optimiser and its schedule as the
old world size computed them (learning rate scaled for it, the cosine over its step count),
while the momentum tau schedule is recomputed over the new one (1 -> 2: tau stuck at 1, the
momentum encoder frozen; 2 -> 1: a learning rate of 0 for half the resumed steps). Now such a
resume is one ``error:`` line (exit 2) naming both world sizes, and the run folder is left as it
was. Every DDP rank also printed its own summary and ``Run folder:`` line (rank 1's figures
differing from ``summary.json``): only global rank 0 prints now.

The resumes run in subprocesses: a resume that started DDP from inside pytest would re-run
pytest in its child processes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from solo_mixmask import cli
from solo_mixmask.errors import CheckpointError
from tests.cli_helpers import TINY, error_lines, run

BATCH = 8  # per device: the 64 images give a 2-process run 4 steps per epoch


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(run_dir: Path, *overrides: str, trained: int, asked: int) -> None:
    """``resume RUN_DIR OVERRIDES`` exits 2 with one error line naming both world sizes, and
    leaves every file of the run as it was."""
    before = _digest(run_dir)
    result = run(["resume", str(run_dir), *overrides], timeout=400)
    assert result.returncode == 2, result.stderr[-4000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    line = lines[0]
    assert f"trained on {trained} process" in line and f"would run on {asked}" in line, line
    assert "devices" in line and "num_nodes" in line and "solo-mixmask pretrain" in line, line
    assert _digest(run_dir) == before
    assert not (run_dir / "run.lock").exists()


def test_resume_of_a_one_device_run_on_two_processes_is_refused(tmp_path):
    """A 2-epoch run cut back to its first epoch's checkpoint (a run to resume), resumed with
    ``devices=2`` (Lightning's DDP on CPU): refused before any process is started."""
    run_dir = tmp_path / "run"
    code = cli.main(
        [
            "pretrain",
            *TINY,
            "max_epochs=2",
            "checkpoint.frequency=1",
            f"checkpoint.run_dir={run_dir}",
        ]
    )
    assert code == 0
    checkpoints = run_dir / "checkpoints"
    shutil.copyfile(checkpoints / "epoch000.ckpt", checkpoints / "last.ckpt")
    _refused(run_dir, "devices=2", trained=1, asked=2)


def test_a_ddp_run_prints_once_and_resumes_only_on_two_processes(tmp_path):
    """A 2-process run prints one summary (``summary.json``'s) and one ``Run folder:`` line;
    ``resume RUN max_epochs=2 devices=1`` is refused, ``resume RUN max_epochs=2 ~max_time``
    trains (rank 1 once failed to delete the ``max_time`` rank 0 had already removed)."""
    run_dir = tmp_path / "run"
    result = run(
        [
            "pretrain",
            *TINY,
            "devices=2",
            "strategy=ddp",
            "max_time=00:01:00:00",  # an hour: the epochs end the run
            f"optimizer.batch_size={BATCH}",
            f"checkpoint.run_dir={run_dir}",
        ],
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    assert out.count("Run folder:") == 1, out
    assert out.count('"run_dir"') == 1, out
    start = out.index("{\n")
    printed = json.loads(out[start : out.index("\n}\n", start) + 2])
    assert printed == json.loads((run_dir / "summary.json").read_text())
    _refused(run_dir, "max_epochs=2", "devices=1", trained=2, asked=1)
    # on 2 processes it resumes, and prints its summary once
    result = run(["resume", str(run_dir), "max_epochs=2", "~max_time"], timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count('"run_dir"') == 1, result.stdout
    assert "max_time" not in (run_dir / "config.yaml").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["epochs"], summary["steps"]) == (2, 2 * 64 // (2 * BATCH))


def test_the_world_size_check_compares_process_counts_only():
    """The same number of processes passes, whichever devices they are; a checkpoint that
    recorded no world size is not checked; another number is a CheckpointError."""
    from solo_mixmask.run.pretrain import check_same_world_size

    check_same_world_size(2, 2, "last.ckpt", devices=[1, 3], num_nodes=1)
    check_same_world_size(None, 4, "last.ckpt", devices=4, num_nodes=1)
    with pytest.raises(CheckpointError, match=r"trained on 4 processes .* would run on 8"):
        check_same_world_size(4, 8, "last.ckpt", devices=4, num_nodes=2)
