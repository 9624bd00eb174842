"""Bookkeeping of unreadable images: every process appends the files its image-folder datasets
skip to one report in the run folder (:data:`BAD_FILES`), which the run's summary counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The report in the run folder: one skipped image path a line, from any process.
BAD_FILES = "bad_files.txt"


def _base_datasets(loader: Any) -> list[Any]:
    """Datasets inside ``loader`` (following ``.dataset`` through wrappers and subsets)."""
    found, node, seen = [], getattr(loader, "dataset", None), 0
    while node is not None and seen < 10:
        found.append(node)
        node, seen = getattr(node, "dataset", None), seen + 1
    return found


def watch_bad_files(loaders: list[Any], report: Path) -> list[Any]:
    """Make every image-folder dataset of ``loaders`` append skipped files to ``report``."""
    watched = []
    for loader in loaders:
        for ds in _base_datasets(loader):
            if hasattr(ds, "bad_files") and hasattr(ds, "report_file"):
                ds.report_file = str(report)
                watched.append(ds)
    return watched


def count_bad_files(watched: list[Any], report: Path) -> list[str]:
    """Distinct skipped image paths: the report file (all processes) + this process's lists."""
    paths: set[str] = set()
    if report.exists():
        paths.update(line for line in report.read_text(encoding="utf-8").splitlines() if line)
    for ds in watched:
        paths.update(ds.bad_files)
    return sorted(paths)
