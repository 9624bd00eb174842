"""Run the real ``solo-mixmask`` command in subprocesses, with tiny CPU settings.

Each subprocess pays the import of torch + lightning (seconds on a busy machine), so tests
that need many runs start them together with :func:`run_many`. ``OMP_NUM_THREADS=1`` keeps
each run on one core: on a shared 2-core machine oversubscribed torch threads are 30x slower.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "solo-mixmask"
#: The installed console script (what users run), else ``python -m solo_mixmask.cli``.
CLI: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "solo_mixmask.cli"]

#: Overrides for a seconds-long MixMask run on Fashion-MNIST: 16-pixel crops, a 1/8-width
#: ResNet-18, batch 8, a 20-key queue, 64 training images (8 steps per epoch), no workers.
TINY = [
    "backbone.kwargs.channels=[8,16,32,64]",
    "augmentations.0.crop_size=16",
    "method_kwargs.proj_hidden_dim=32",
    "method_kwargs.proj_output_dim=16",
    "method_kwargs.queue_size=20",
    "data.train_subset=64",
    "data.knn_train_subset=64",
    "data.val_subset=32",
    "data.num_workers=0",
    "optimizer.batch_size=8",
    "knn_eval.k=5",
    "max_epochs=1",
    "accelerator=cpu",
    "devices=1",
    "progress_bar=false",
    "enable_model_summary=false",
]


def custom_data(train: Path | str, val: Path | str | None = None) -> list[str]:
    """Overrides that train on every image of the ImageFolder tree ``train`` (no subsets) and
    validate on ``val`` (default: the same tree)."""
    return [
        "data.dataset=custom",
        f"data.train_path={train}",
        f"data.val_path={val if val is not None else train}",
        "data.train_subset=null",
        "data.knn_train_subset=null",
        "data.val_subset=null",
    ]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def start(
    args: Sequence[str], prefix: Sequence[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``solo-mixmask ARGS`` (or ``PREFIX ARGS``) with captured text output; ``env`` adds
    variables to :func:`cli_env`."""
    return subprocess.Popen(
        [*(prefix or CLI), *args],
        cwd=ROOT,
        env={**cli_env(), **(env or {})},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} did not finish in {timeout}s:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(
    args: Sequence[str],
    prefix: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    return finish(start(args, prefix, env), timeout)


def run_many(
    commands: Sequence[Sequence[str]], timeout: float = 300, parallel: int = 4
) -> list[subprocess.CompletedProcess]:
    """Run several CLI commands, ``parallel`` at a time; results in the order given."""
    results: list[subprocess.CompletedProcess | None] = [None] * len(commands)
    pending = list(enumerate(commands))
    running: list[tuple[int, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < parallel:
            i, args = pending.pop(0)
            running.append((i, start(args)))
        i, proc = running.pop(0)
        results[i] = finish(proc, timeout)
    return results  # type: ignore[return-value]


def error_lines(stderr: str) -> list[str]:
    """Lines of ``stderr`` that start with ``error:``."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def cli_error_line(capsys, runs: Path, args: Sequence[str]) -> str:
    """Run ``solo-mixmask ARGS checkpoint.dir=RUNS`` in this process (``cli.main``, what the
    script calls): its single ``error:`` line, after checking exit status 2, no traceback and no
    run folder under ``runs``. A failure that is not a user error raises out of the call."""
    from solo_mixmask import cli

    code = cli.main([*args, f"checkpoint.dir={runs}"])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert not runs.exists()
    return lines[0]


#: summary.json entries that a resumed run must share with an uninterrupted one.
SUMMARY_KEYS = (
    "knn_acc1",
    "knn_acc5",
    "linear_acc1",
    "linear_acc5",
    "knn_acc1_at_init",
    "steps",
    "epochs",
    "embedding_std",  # the last epoch's training mean: continued across a mid-epoch resume
    "collapsed",
)


def final_state(run_dir: Path) -> tuple[dict, dict]:
    """(last.ckpt loaded safely, summary.json) of a run folder."""
    import json

    from solo_mixmask.checkpoints.io import safe_load_checkpoint

    ckpt = safe_load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return ckpt, json.loads((run_dir / "summary.json").read_text())


def assert_same_end_state(full_dir: Path, other_dir: Path, steps: int) -> tuple[dict, dict]:
    """The run in ``other_dir`` ended as the uninterrupted one in ``full_dir``: ``steps``
    optimiser steps, every state_dict tensor close, the same SUMMARY_KEYS; returns both
    checkpoints (full, other) for further checks."""
    import torch

    full, full_summary = final_state(full_dir)
    other, other_summary = final_state(other_dir)
    assert full["global_step"] == other["global_step"] == steps
    assert full["state_dict"].keys() == other["state_dict"].keys()
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(other["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for key in SUMMARY_KEYS:
        assert other_summary[key] == full_summary[key], key
    return full, other


def assert_killed_run_resumes_as_uninterrupted(tmp_path: Path, args: Sequence[str], steps: int):
    """Train ``pretrain args`` twice at once: uninterrupted in ``tmp_path/full``, and in
    ``tmp_path/killed`` SIGKILLed at the stall harness's step, then resumed; both must end in
    the same state after ``steps`` steps (:func:`assert_same_end_state`)."""
    import signal
    import time

    from tests.run.test_resume import STALL_HARNESS, STALL_STEP

    harness = tmp_path / "stall.py"
    harness.write_text(STALL_HARNESS)
    mark = tmp_path / "stalled"
    full = start(["pretrain", *args, f"checkpoint.run_dir={tmp_path / 'full'}"])
    killed = start(
        ["pretrain", *args, f"checkpoint.run_dir={tmp_path / 'killed'}"],
        prefix=[sys.executable, str(harness)],
        env={"STALL_AT_STEP": str(STALL_STEP), "STALL_MARK": str(mark)},
    )
    deadline = time.monotonic() + 300
    while not mark.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert mark.exists(), finish(killed, timeout=60).stderr[-3000:]
    killed.send_signal(signal.SIGKILL)
    finish(killed, timeout=60)
    resumed = run(["resume", str(tmp_path / "killed")])
    done = finish(full, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_end_state(tmp_path / "full", tmp_path / "killed", steps)
