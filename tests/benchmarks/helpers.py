"""Run a benchmark script in a child process (as a user would) and read its JSON result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> args...`` from the repository root; fails the test with the
    script's output when it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("OUT", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def run_gpu_script(script: str, *args: str, out: Path, timeout: float) -> str:
    """``bash benchmarks/<script> args...`` (a prepared GPU script, run tiny on the CPU) with
    ``$OUT=out`` and this interpreter as ``$PYTHON``; fails the test with the script's output
    when it exits non-zero, else returns its stdout."""
    env = {
        **os.environ,
        "OUT": str(out),
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def load(path: Path) -> dict[str, Any]:
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text())


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
