"""A non-editable install (``pip install .``) works: the wheel carries the configs, and the
installed ``solo-mixmask`` composes them from any directory.

The wheel is built, without build isolation (offline), from a copy of the clone's files (what
``git ls-files`` lists, tracked or not ignored: no stale ``build/`` can leak in), and installed into a fresh venv without
its dependencies; the venv sees this environment's packages through a ``.pth`` line, which
adds the directory to ``sys.path`` without running its ``.pth`` files, so the editable
install of the clone stays out of the way.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.cli_helpers import ROOT, cli_env


def _pip(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def _copy_of_clone(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git clone of solo-mixmask (the wheel is built from its files)")
    source = _copy_of_clone(tmp_path_factory.mktemp("clone"))
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(source))
    (path,) = out.glob("solo_mixmask-*.whl")
    return path


def test_the_wheel_carries_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        "solo_mixmask/configs/" + p.relative_to(ROOT / "configs").as_posix()
        for p in (ROOT / "configs").rglob("*.yaml")
        if not p.name.startswith(".")
    }
    assert shipped and shipped <= names
    assert "solo_mixmask/cli.py" in names


def test_the_wheel_carries_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "solo_mixmask").rglob("*.py")}
    assert modules and sorted(modules - names) == []  # a new subpackage missing from setup.cfg


def test_installed_wheel_runs_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # This environment's site-packages, and any it borrows through a .pth of its own (.ci/run's
    # Lightning 2.1.2 venv borrows PyTorch from .venv), in this environment's order.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    assert sysconfig.get_paths()["purelib"] in deps
    Path(site, "solo_mixmask_test_deps.pth").write_text("\n".join(deps) + "\n")
    _pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**cli_env(), "PYTHONPATH": ""}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / "solo-mixmask"), *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    where = subprocess.run(
        [str(python), "-c", "import solo_mixmask; print(solo_mixmask.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(site), where  # the installed copy, not the clone
    help_text = cli("pretrain", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert str(Path(site, "solo_mixmask", "configs", "pretrain")) in help_text.stdout
    job = cli("pretrain", "--cfg", "job", "--config-name", "cifar/mocov2plus", "max_epochs=1")
    assert job.returncode == 0, job.stderr
    assert "method: mocov2plus" in job.stdout and "max_epochs: 1" in job.stdout
    assert not (work / "runs").exists()


def test_the_demo_and_the_tests_share_one_set_up(tmp_path: Path) -> None:
    """scripts/test.sh then scripts/demo.sh on one venv: the second installs nothing (the
    README's two commands are idempotent; a different extras list made each reinstall). The
    venv is a stand-in whose python and solo-mixmask only log their arguments."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    for name in ("python", "solo-mixmask"):
        tool = venv / "bin" / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 0\n')
        tool.chmod(0o755)
    env = {
        key: value
        for key, value in cli_env().items()
        if not key.startswith("SOLO_MIXMASK_") and key != "VIRTUAL_ENV"
    }
    env["SOLO_MIXMASK_VENV"] = str(venv)

    def run(script: str) -> str:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    assert "[setup] installing" in run("test.sh")  # a new venv: the first script installs
    installs = log.read_text().count("-m pip install -q -e")
    assert "[setup] installing" not in run("demo.sh")
    assert log.read_text().count("-m pip install -q -e") == installs
    assert "solo-mixmask pretrain" in log.read_text()  # the demo did run, on the same venv
