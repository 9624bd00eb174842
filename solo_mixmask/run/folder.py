"""Run folders: made atomically by the run that owns them, locked while a process trains in them.

Rules (see docs/RELIABILITY.md):

- A new run's folder is ``checkpoint.run_dir``, else ``<checkpoint.dir>/<name>-<time stamp>``;
  all processes of a multi-process run agree on it (:func:`new_run_dir`).
- ``pretrain`` writes only into a folder it makes (or an existing folder that holds no run);
  only ``resume`` writes into an existing run. A folder holds a run when it has any of
  :data:`RUN_MARKERS`.
- A new folder is made with ``mkdir`` without ``exist_ok``: two runs started in the same second
  with the same name cannot share one; the second takes the next free ``-1``, ``-2`` ... suffix.
- While a process trains in a run folder it holds :data:`LOCK` there: a JSON file naming its
  pid, host and start time, made with ``O_CREAT | O_EXCL``. A second process refuses to train in
  the folder while the holder lives; a lock whose process is gone (same host, pid dead or
  reused; or a previous incarnation of the same SLURM job after a requeue) is stale and is taken
  over with a warning. The lock is removed when the run ends, also on errors and on SIGTERM /
  Ctrl-C stops; only a SIGKILL (or a crash of the machine) leaves a stale one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from solo_mixmask.config.run_specs import FolderSpec
from solo_mixmask.errors import ConfigError, ConfigWarning
from solo_mixmask.paths import check_output_dir

#: What a run folder holds (see :mod:`solo_mixmask.run.pretrain`): the resolved config, the
#: checkpoints folder, the summary, the k-NN/linear figures before training, the lock.
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
SUMMARY = "summary.json"
INIT_METRICS = "init_metrics.json"
LOCK = "run.lock"
#: The CSV logger's folder and file (``<run>/logs/metrics.csv``).
LOGS = "logs"
METRICS_CSV = "metrics.csv"
#: Entries that make a folder a run folder (what ``pretrain`` writes first).
RUN_MARKERS = (CONFIG, CHECKPOINTS, SUMMARY, LOCK)
#: How long a lock file that cannot be parsed yet (being written) is waited for, in seconds.
_UNREADABLE_WAIT = 2.0


class RunLockedError(ConfigError):
    """Another live process holds the run folder's lock."""

    def __init__(self, run_dir: Path, holder: dict[str, Any], how: str):
        self.run_dir, self.holder = run_dir, holder
        self.key, self.value, self.allowed = "run_dir", str(run_dir), "a run no process holds"
        Exception.__init__(
            self,
            f"{run_dir} is in use: its lock {run_dir / LOCK} is held by {describe_holder(holder)}"
            f", which {how}; wait for that run to end (or stop it) and run the command again",
        )


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h (solo-mixmask resume, since 2026-01-01 12:00:00)``."""
    what = holder.get("command") or "solo-mixmask"
    since = holder.get("since")
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} ({what}"
        f"{', since ' + str(since) if since else ''})"
    )


# --------------------------------------------------------------------------- names


#: Set by the process that launches DDP children so that they all use its run folder.
RUN_DIR_ENV = "SOLO_MIXMASK_RUN_DIR"


def external_launch() -> bool:
    """Whether this process was started by torchrun / Lightning / SLURM as one of several."""
    if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return True  # torchrun, or a child started by Lightning
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and not interactive


def new_run_dir(spec: FolderSpec) -> Path:
    """``checkpoint.run_dir`` if given, else a fresh ``<checkpoint.dir>/<name>-<time stamp>``.

    Processes of one multi-process run must agree on the folder: children started by Lightning
    inherit it from their parent (``SOLO_MIXMASK_RUN_DIR``); under SLURM the job id names it;
    under torchrun ``checkpoint.run_dir`` (or a ``--rdzv-id``) is required.
    """
    if spec.run_dir:
        return Path(spec.run_dir)
    base = Path(spec.dir)
    name = spec.name
    if external_launch():
        if os.environ.get(RUN_DIR_ENV):
            return Path(os.environ[RUN_DIR_ENV])
        if os.environ.get("SLURM_JOB_ID"):
            return base / f"{name}-slurm{os.environ['SLURM_JOB_ID']}"
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if run_id not in ("", "none"):
            return base / f"{name}-{run_id}"
        raise ConfigError(
            "checkpoint.run_dir",
            None,
            "a folder shared by all processes when several are launched from outside "
            "(torchrun without --rdzv-id): pass checkpoint.run_dir=/shared/path",
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = base / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        run_dir = base / f"{name}-{stamp}-{suffix}"
        suffix += 1
    return run_dir


def is_rank_zero_process() -> bool:
    """Whether this process is the run's global rank 0, which makes, locks and (on an early
    user error) removes the run folder; decided before the Trainer exists, from the launcher's
    environment (``RANK`` under torchrun, ``SLURM_PROCID`` under SLURM; a child started by
    Lightning inherits ``SOLO_MIXMASK_RUN_DIR``)."""
    if os.environ.get(RUN_DIR_ENV):
        return False
    if not external_launch():
        return True
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    return int(rank) == 0


def check_run_location(spec: FolderSpec, run_dir: Path, rank_zero: bool) -> str:
    """Before any work: the folder a new run will write to can be made there and holds no run
    (only ``resume`` writes into an existing run). Returns the key that names it
    (``checkpoint.run_dir`` when given, else ``checkpoint.dir``); ConfigError otherwise."""
    if spec.run_dir:
        key = "checkpoint.run_dir"
        check_output_dir(key, run_dir)
    else:
        key = "checkpoint.dir"
        check_output_dir(key, spec.dir)
    # A time-stamped folder chosen here that exists already (another run started in the same
    # second) is not refused: make_run_dir gives this run its own folder, with a suffix.
    if rank_zero and (spec.run_dir or external_launch()):
        refuse_existing_run(key, run_dir)
    return key


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir/checkpoints`` holds a ``.ckpt`` file."""
    folder = run_dir / CHECKPOINTS
    return folder.is_dir() and any(folder.glob("*.ckpt"))


# --------------------------------------------------------------------------- folders


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds a run (any of :data:`RUN_MARKERS`)."""
    return folder.is_dir() and any((folder / m).exists() for m in RUN_MARKERS)


def refuse_existing_run(key: str, folder: Path) -> None:
    """ConfigError naming ``key`` when ``folder`` already holds a run: only ``resume`` may
    write into it."""
    if holds_run(folder):
        raise ConfigError(
            key,
            str(folder),
            "a new or empty folder: it already holds a run, and a new run never writes into "
            f"another one; continue that run with `solo-mixmask resume {folder}`, or choose "
            "another folder",
        )


def _mkdirs(path: Path) -> list[Path]:
    """Make ``path`` and its missing parents; returns the folders made, outermost first.
    ``path`` itself is made without ``exist_ok`` (FileExistsError when it exists)."""
    missing = []
    node = path.parent
    while not node.exists() and node != node.parent:
        missing.append(node)
        node = node.parent
    made = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
            made.append(folder)
        except FileExistsError:
            pass  # made meanwhile by someone else: not ours
    path.mkdir()
    return [*made, path]


def make_run_dir(key: str, path: Path, unique: bool) -> tuple[Path, list[Path]]:
    """Make the run folder ``path`` atomically; returns ``(folder, folders made)``.

    With ``unique`` (a time-stamped name chosen here), a folder that exists already is never
    shared: ``path-1``, ``path-2`` ... are tried until ``mkdir`` succeeds. Else (a folder given
    by the user or shared by the processes of one job) an existing folder is used unless it
    holds a run (ConfigError naming ``key``); it is then not in the list of folders made.
    """
    candidate, suffix = path, 0
    while True:
        try:
            return candidate, _mkdirs(candidate)
        except FileExistsError as err:
            if not unique:
                if not candidate.is_dir():
                    raise ConfigError(
                        key, str(path), "a folder, but it is an existing file"
                    ) from err
                refuse_existing_run(key, candidate)
                return candidate, []
            suffix += 1
            candidate = path.with_name(f"{path.name}-{suffix}")
        except OSError as err:
            raise ConfigError(key, str(path), f"a folder that can be made ({err})") from err


def remove_made(made: list[Path]) -> None:
    """Remove the run folder this process made (the last of ``made``) with everything in it,
    then the parents it made, while they are empty. Folders not in ``made`` are never
    touched."""
    import shutil

    if not made:
        return
    shutil.rmtree(made[-1], ignore_errors=True)
    for folder in reversed(made[:-1]):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break


# --------------------------------------------------------------------------- lock


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), else
    None: with the pid it names a process for good (pids are reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def this_process(command: str) -> dict[str, Any]:
    """What a lock file records about the process holding it."""
    pid = os.getpid()
    record: dict[str, Any] = {
        "pid": pid,
        "host": socket.gethostname(),
        "command": command,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "process_start": _process_start(pid),
    }
    if os.environ.get("SLURM_JOB_ID"):
        record["slurm_job"] = os.environ["SLURM_JOB_ID"]
        record["slurm_restart"] = os.environ.get("SLURM_RESTART_COUNT", "0")
    return record


def holder_alive(holder: dict[str, Any]) -> tuple[bool, str]:
    """(alive, why) for the process a lock names, as far as this process can tell.

    Stale: same host and the pid is gone or now names another process (another start time);
    or a previous run of the same SLURM job (requeued: same job id, another restart count).
    A holder on another host cannot be checked and counts as alive.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("slurm_job") == job:
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        if str(holder.get("slurm_restart", "0")) != restart:
            return False, f"it was taken by an earlier run of SLURM job {job} (requeued since)"
    if holder.get("host") != socket.gethostname():
        return True, (
            "runs on another host, where it cannot be checked from here (if it has ended, "
            "delete the lock file)"
        )
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False, "it names no process"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"process {pid} is no longer running"
    except PermissionError:
        pass  # alive, owned by another user
    start = holder.get("process_start")
    if start is not None and _process_start(pid) not in (None, start):
        return False, f"process {pid} ended (its pid now names another process)"
    return True, "is still running"


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's record; None when it vanished. An unparsable file (being written, or cut by
    a crash) is read again for up to :data:`_UNREADABLE_WAIT` seconds, then counts as a
    record naming no process."""
    deadline = time.monotonic() + _UNREADABLE_WAIT
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            if isinstance(record, dict):
                return record
        except ValueError:
            pass
        if time.monotonic() > deadline:
            return {"pid": None, "host": socket.gethostname(), "unreadable": text[:80]}
        time.sleep(0.1)


class RunLock:
    """The lock on a run folder (:data:`LOCK`), as a context manager; re-entrant within one
    process (a ``resume`` that holds it calls ``run_pretrain``, which asks again).

    ``enabled=False`` (processes other than the one at global rank 0) makes it a no-op.
    """

    _held: dict[str, int] = {}  # lock path -> depth, in this process

    def __init__(self, run_dir: str | Path, command: str, enabled: bool = True):
        self.path = Path(os.path.abspath(run_dir)) / LOCK
        self.command, self.enabled = command, enabled

    def acquire(self) -> None:
        if not self.enabled:
            return
        key = str(self.path)
        if key in RunLock._held:
            RunLock._held[key] += 1
            return
        record = this_process(self.command)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record))
                f.flush()
                os.fsync(f.fileno())
            RunLock._held[key] = 1
            return
        raise ConfigError("run_dir", str(self.path.parent), "a run folder whose lock can be taken")

    def _take_over_if_stale(self) -> None:
        """Remove the lock when its holder is gone (one warning line); RunLockedError when it
        lives."""
        holder = _read_lock(self.path)
        if holder is None:
            return  # released meanwhile: try again
        alive, why = holder_alive(holder)
        if alive:
            raise RunLockedError(self.path.parent, holder, why)
        if _read_lock(self.path) != holder:
            return  # changed hands meanwhile: look again
        warnings.warn(
            f"taking over the stale lock {self.path} of {describe_holder(holder)}: {why}",
            ConfigWarning,
            stacklevel=3,
        )
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def release(self) -> None:
        if not self.enabled:
            return
        key = str(self.path)
        depth = RunLock._held.get(key, 0)
        if depth > 1:
            RunLock._held[key] = depth - 1
            return
        RunLock._held.pop(key, None)
        if depth == 1:
            holder = _read_lock(self.path)
            if holder is not None and holder.get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run folder of a checkpoint at ``<run>/checkpoints/<file>`` (the folder holding
    ``config.yaml``), else None."""
    run = Path(checkpoint).resolve().parent.parent
    return run if (run / CONFIG).is_file() else None


def saved_config(run_dir: Path) -> Any:
    """``run_dir``'s ``config.yaml`` as pretrain saved it (an omegaconf ``DictConfig``), or None
    when the folder has none, or one that cannot be read as a mapping: the facts it would give
    are then "not recorded"."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    try:
        loaded = OmegaConf.load(run_dir / CONFIG)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, DictConfig) else None
