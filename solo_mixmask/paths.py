"""Checks on where a command will write, made before it does any work.

Each check raises :class:`~solo_mixmask.errors.ConfigError` naming the key or option (``--out``,
``checkpoint.dir``, ...), the path and what is wrong with it, so a run or an evaluation never
computes for minutes and then fails on its output path. Nothing is created here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from solo_mixmask.errors import ConfigError

#: Kernel pseudo file systems: nothing a run writes can be kept there.
PSEUDO_FILE_SYSTEMS = (Path("/proc"), Path("/sys"))


def _pseudo_root(path: Path) -> Path | None:
    """The pseudo file system (``/proc``, ``/sys``) that ``path`` (absolute) is under, else
    None."""
    for root in PSEUDO_FILE_SYSTEMS:
        if path == root or root in path.parents:
            return root
    return None


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``path`` absolute)."""
    node = path
    while not node.exists() and node != node.parent:
        node = node.parent
    return node


def _writable_location(key: str, path: Path, what: str, folder: Path) -> None:
    """Refuse ``path`` (absolute) when it lies on a pseudo file system, or when ``folder`` (the
    folder that will hold it: ``path`` itself for a folder, its parent for a file) has a file
    for an ancestor or cannot be written (its closest existing ancestor, when it is not made
    yet)."""
    root = _pseudo_root(path)
    if root is not None:
        raise ConfigError(
            key, str(path), f"{what} on a real file system, not under {root} (a kernel file system)"
        )
    ancestor = _nearest_existing(folder)
    if not ancestor.is_dir():
        raise ConfigError(
            key, str(path), f"{what} under a folder, but {ancestor} is a file, not a folder"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(key, str(path), f"{what} in a writable place; {ancestor} is not writable")


def check_output_dir(key: str, path: str | Path) -> Path:
    """``path`` can be a folder that a command creates or writes into: not an existing file,
    not on /proc or /sys, itself (or its closest existing ancestor) a writable folder. Returns
    it absolute."""
    resolved = Path(os.path.abspath(Path(path).expanduser()))
    if resolved.exists() and not resolved.is_dir():
        raise ConfigError(key, str(path), "a folder, but it is an existing file")
    _writable_location(key, resolved, "a folder", resolved)
    return resolved


def check_output_file(
    key: str,
    path: str | Path,
    suffixes: Sequence[str] = (),
    overwrite: bool = True,
    force_flag: str = "--force",
) -> Path:
    """``path`` can be written as a file: not an existing folder, not on /proc or /sys, in a
    writable folder, ending in one of ``suffixes`` when given; an existing file only with
    ``overwrite`` (else the message names ``force_flag``). Returns it absolute."""
    resolved = Path(os.path.abspath(Path(path).expanduser()))
    if resolved.is_dir():
        raise ConfigError(key, str(path), "a file name, but it is an existing folder")
    if suffixes and resolved.suffix.lower() not in suffixes:
        raise ConfigError(key, str(path), f"a file name ending in {' or '.join(suffixes)}")
    _writable_location(key, resolved, "a file", resolved.parent)
    if resolved.exists():
        if not overwrite:
            raise ConfigError(
                key,
                str(path),
                f"a file that does not exist yet: it exists and is kept; pass {force_flag} to "
                "overwrite it",
            )
        if not os.access(resolved, os.W_OK):
            raise ConfigError(key, str(path), "a writable file; it is not writable")
    return resolved
