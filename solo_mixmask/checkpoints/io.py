"""Checkpoint files: safe loads and atomic saves.

- :func:`safe_load` is the one way solo-mixmask reads a checkpoint file: ``torch.load`` with
  ``weights_only=True`` on the CPU. A pickle that would build arbitrary Python objects (and so
  could run code) is refused with a :class:`~solo_mixmask.errors.CheckpointError`; it is never
  unpickled with ``weights_only=False``. :func:`safe_load_checkpoint` also requires a dict.
- :func:`atomic_write` (any file: checkpoints, their copies, ``summary.json``),
  :func:`atomic_torch_save` and :class:`SafeAtomicCheckpointIO` (a Lightning ``CheckpointIO``
  plugin) write to a temporary file in the same folder, fsync it and rename it over the target,
  so a kill or a full disk during a save leaves the previous file intact; loads are safe
  whatever Lightning version calls them (2.1 passes no ``weights_only``).
"""

from __future__ import annotations

import errno
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from solo_mixmask.errors import CheckpointError, first_lines

LAST = "last.ckpt"


def _unpickler_reason(err: BaseException) -> str:
    """The useful part of torch's weights-only refusal (e.g. 'Unsupported global: ...')."""
    text = str(err)
    match = re.search(
        r"WeightsUnpickler error:\s*(.*?)\s*(?:\n\s*\n|Check the documentation|$)", text, flags=re.S
    )
    return (match.group(1) if match else text.strip().splitlines()[-1]).strip()


def safe_load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True, map_location='cpu')`` with user-facing errors.

    Raises CheckpointError when the file is missing, is not a checkpoint, or holds pickled
    Python objects beyond tensors and plain containers (unpickling those could run code, so
    they are refused, never executed).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: it is an empty file (0 bytes), cut short "
            "before anything was written into it"
        )
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {str(path)!r}: torch.load(weights_only=True) rejected it "
            f"({_unpickler_reason(err)}). The file holds Python objects other than tensors and "
            "plain containers - unpickling them could run arbitrary code - or it is not a "
            "PyTorch checkpoint. solo-mixmask never unpickles such files; if you trust its "
            "source, re-save just its state_dict with torch.save and load that instead."
        ) from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {first_lines(err)}") from err
    except Exception as err:  # garbage bytes make the unpickler raise anything (KeyError ...)
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: it is not a PyTorch checkpoint "
            f"({type(err).__name__}: {first_lines(err, 1)} while unpickling it)"
        ) from err


def safe_load_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`safe_load` (``torch.load(weights_only=True)`` on the CPU, :class:`CheckpointError`
    for anything unusable) of a file that must hold a checkpoint dict.

    Only tensors, numbers, strings, ``None`` and (nested) dicts, lists and tuples are loaded;
    a file that needs other pickled objects (which could run code while loading) is refused
    and nothing in it runs.
    """
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict"
        )
    return checkpoint


def atomic_write(path: str | Path, write: Callable[[Any], Any], disk_full: str) -> None:
    """Write ``path`` whole or not at all: ``write(f)`` fills a binary file ``f`` that is
    ``<dir>/.<name>.tmp-<pid>``, which is fsynced and renamed over ``path``. A full disk
    (``ENOSPC``, also when the writer reports it as another error, as torch's zip writer does)
    is a CheckpointError with the message ``disk_full``; the previous file stays."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = None
    try:
        try:
            with open(tmp, "wb") as raw:
                writer = _RecordingWriter(raw)
                write(writer)
                raw.flush()
                os.fsync(raw.fileno())
        except (OSError, RuntimeError) as err:
            # torch's zip writer turns a failed write into RuntimeError("unexpected pos ..."):
            # the OSError that the file raised says what happened
            cause = writer.error if writer is not None and writer.error is not None else err
            if getattr(cause, "errno", None) == errno.ENOSPC:
                raise CheckpointError(disk_full) from cause
            raise
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`, then the rename made durable.

    Readers see either the previous complete file or the new complete file, never a part. A
    full disk (``ENOSPC``, however torch reports it) is a CheckpointError saying so; the
    previous file stays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch.save documents "has to implement write and flush"; its stub asks IO[bytes]
    atomic_write(path, lambda f: torch.save(obj, f), _disk_full(path))
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_copy(source: str | Path, path: str | Path) -> None:
    """Copy the file ``source`` to ``path`` through :func:`atomic_write` (CheckpointError for
    a full disk)."""
    import shutil

    def copy(f: Any) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f)

    atomic_write(path, copy, _disk_full(Path(path)))


def _disk_full(path: Path) -> str:
    kept = (
        f"the previous {path.name} is kept"
        if path.exists()
        else f"{path.name} was not written; the checkpoints before it are kept"
    )
    return (
        f"cannot write checkpoint {path}: no space left on device (in {path.parent}); {kept}; "
        "free some space, then continue with solo-mixmask resume"
    )


class _RecordingWriter:
    """A binary file (for ``torch.save`` and others) that remembers the first OSError its
    writes raised."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.raw.write(data)
        except OSError as err:
            if self.error is None:
                self.error = err
            raise

    def flush(self) -> None:
        self.raw.flush()


class SafeAtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoints written atomically and read with ``weights_only=True``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return safe_load_checkpoint(path)  # on the CPU, whatever map_location says
