"""Run a benchmark script in a child process (as a user would) and read its JSON result."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import CIFAR10_ENV, SHARED_CIFAR10  # noqa: E402

#: Where the CIFAR-10 benchmarks read the JPEG tars (as ``common.cifar10_source`` looks).
CIFAR10_SOURCE = Path(os.environ.get(CIFAR10_ENV) or SHARED_CIFAR10)
needs_cifar = pytest.mark.skipif(
    not ((CIFAR10_SOURCE / "train.tar.gz").is_file() or (CIFAR10_SOURCE / "train").is_dir()),
    reason=f"CIFAR-10 JPEG tars absent from {CIFAR10_SOURCE} (set ${CIFAR10_ENV})",
)
#: What the lent GPU machines hand back from $OUT (/work/.library/device/README.md, "Limits"):
#: at most 8 files, 16 MiB each, 64 MiB together, no deeper than $OUT/a/b/file, plain names.
DEVICE_FILES, DEVICE_FILE_MIB, DEVICE_TOTAL_MIB, DEVICE_FOLDERS = 8, 16, 64, 2


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


def run_gpu_script(
    script: str,
    *args: str,
    out: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    status: int = 0,
) -> subprocess.CompletedProcess:
    """``bash benchmarks/<script> args...`` (a prepared GPU script, run tiny on the CPU) with
    ``$OUT=out``, this interpreter as ``$PYTHON`` and ``env`` added; fails the test with the
    script's output unless it exits with ``status``, then checks that everything it left in
    ``$OUT`` would come back from a lent GPU machine (:func:`assert_device_returns`)."""
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        env={
            **os.environ,
            "OUT": str(out),
            "OMP_NUM_THREADS": "1",
            "PYTHON": sys.executable,
            "PYTHONWARNINGS": "ignore",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == status, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_device_returns(out)
    return proc


def assert_device_returns(out: Path) -> None:
    """Every file under ``out`` comes back from a lent GPU machine (:data:`DEVICE_FILES` and
    the other limits): none is silently left behind there."""
    files = [p for p in out.rglob("*") if not p.is_dir()]
    assert len(files) <= DEVICE_FILES, sorted(str(p.relative_to(out)) for p in files)
    for p in files:
        rel = p.relative_to(out)
        assert p.is_file() and not p.is_symlink(), rel
        assert len(rel.parts) - 1 <= DEVICE_FOLDERS, rel
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
        assert p.stat().st_size <= DEVICE_FILE_MIB << 20, rel
    assert sum(p.stat().st_size for p in files) <= DEVICE_TOTAL_MIB << 20


def load(path: Path) -> dict[str, Any]:
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text())


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
