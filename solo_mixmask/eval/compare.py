"""``solo-mixmask compare``: one Markdown table and two plots for several pretraining runs.

Reads each run folder's ``summary.json``, ``logs/metrics.csv``, ``init_metrics.json`` and, when
present, ``linear.json`` (written by ``solo-mixmask linear``). Writes into the output folder:

- ``report.md``: a table (run, method, epochs, k-NN top-1, online linear top-1, offline linear
  top-1, images/s, wall time) followed by the two plots;
- ``knn.png``: online k-NN top-1 against epoch (epoch 0 = before training, when the run
  measured it);
- ``loss.png``: two panels against epoch. Left: the contrastive term L(q, k) that every
  MoCo-family method logs as ``train_nce_loss_epoch`` (``train_byol_loss_epoch`` for BYOL), the
  only loss that means the same thing across MoCo v2, MixMask and Un-Mix. Right: the whole
  self-supervised loss, the sum of every ``train_*_loss_epoch`` column except the online
  classifier's ``train_class_loss_epoch`` (for MixMask: nce + mask term).
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from solo_mixmask.checkpoints.io import LAST
from solo_mixmask.errors import ConfigWarning, DataError
from solo_mixmask.paths import check_output_dir
from solo_mixmask.run.folder import CHECKPOINTS, INIT_METRICS, LOGS, METRICS_CSV, SUMMARY

CLASSIFIER_LOSS = "train_class_loss_epoch"
CONTRASTIVE_LOSSES = ("train_nce_loss_epoch", "train_byol_loss_epoch")


@dataclass
class RunRecord:
    """What the report shows of one run; curves map epoch -> value."""

    name: str
    method: str
    epochs: int | float | None  # fractional when max_steps ended the run inside an epoch
    knn_acc1: float | None
    linear_acc1: float | None
    offline_linear_acc1: float | None
    images_per_sec: float | None
    wall_seconds: float | None
    #: The collapse measure of the last epoch, its spread value 1/sqrt(d), and the verdict.
    embedding_std: float | None = None
    embedding_std_spread: float | None = None
    collapsed: bool | None = None
    knn_curve: dict[int, float] = field(default_factory=dict)
    contrastive_curve: dict[int, float] = field(default_factory=dict)
    total_loss_curve: dict[int, float] = field(default_factory=dict)


def _float(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def epoch_curves(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """Every value a run logged in ``logs/metrics.csv`` with an epoch, as
    ``{column: {epochs trained: value}}`` (losses, accuracies, ``embedding_std``; per-step
    learning-rate rows carry no epoch and are left out).

    A row logged in epoch e (0-based) counts as e + 1 epochs trained. When the run measured its
    untrained model (``init_metrics.json`` holds ``knn_acc1_at_init``), the first row with a
    ``val_*`` value is that measurement and counts as epoch 0. (Its step is 0, but so is the
    step of epoch 1's validation when an epoch is one optimiser step: the step cannot tell them
    apart.) A column logged twice for one epoch keeps the later value. No file: ``{}``.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOGS / METRICS_CSV
    if not path.is_file():
        return {}
    init_file = run_dir / INIT_METRICS
    init = json.loads(init_file.read_text()) if init_file.is_file() else {}
    init_pending = init.get("knn_acc1_at_init") is not None
    curves: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = _float(row.get("epoch"))
            if epoch is None:
                continue
            parsed = {k: _float(v) for k, v in row.items() if k not in ("epoch", "step")}
            values = {k: v for k, v in parsed.items() if v is not None}
            done = int(epoch) + 1
            if init_pending and any(k.startswith("val_") for k in values):
                done, init_pending = 0, False
            for key, value in values.items():
                curves.setdefault(key, {})[done] = value
    return curves


def ssl_loss_curves(curves: dict[str, dict[int, float]]) -> tuple[dict, dict]:
    """(contrastive loss, total self-supervised loss) ``{epochs trained: value}`` of
    :func:`epoch_curves`: the first of ``CONTRASTIVE_LOSSES`` logged, and the sum of every
    ``train_*_loss_epoch`` but the online classifier's."""
    contrastive = next((curves[key] for key in CONTRASTIVE_LOSSES if key in curves), {})
    total: dict[int, float] = {}
    for key, curve in curves.items():
        if key.startswith("train_") and key.endswith("_loss_epoch") and key != CLASSIFIER_LOSS:
            for done, value in curve.items():
                total[done] = total.get(done, 0.0) + value
    return contrastive, total


def offline_linear_acc1(run_dir: Path, summary: dict[str, Any]) -> float | None:
    """Top-1 of ``run_dir/linear.json`` when it measured the run's final weights: the
    checkpoint it names is ``checkpoints/last.ckpt`` and it is newer than that file (a probe of
    ``epoch000.ckpt``, or one made before a ``resume`` trained further, is not this row's), and
    not another run's that still exists (a ``linear.json`` written with ``--out`` into this
    folder, or copied with it); else None, with a
    :class:`~solo_mixmask.errors.ConfigWarning` (a ``warning:`` line)."""
    linear_file = run_dir / "linear.json"
    if not linear_file.is_file():
        return None
    linear = json.loads(linear_file.read_text())
    probed = Path(str(linear.get("checkpoint", "")))
    # absolute path of what was probed (results before 2026-12-07: the path, if typed whole)
    where = Path(str(linear.get("checkpoint_resolved") or probed))
    last = run_dir / CHECKPOINTS / LAST
    # the path as typed: relative to where the probe ran (bare "last.ckpt" in checkpoints/)
    if probed.name != LAST or probed.parent.name not in (CHECKPOINTS, ""):
        why = f"it probed {probed}, not the run's final {CHECKPOINTS}/{LAST}"
    elif where.is_absolute() and where.exists() and not _same_file(where, last):
        # a moved run's old path no longer exists: then the name is all there is to go by
        why = f"it probed {where}, another run's {CHECKPOINTS}/{LAST}"
    elif last.exists() and linear_file.stat().st_mtime < last.stat().st_mtime:
        why = f"{last} was written after it (the run trained on)"
    else:
        return linear.get("acc1")
    warnings.warn(
        f"{linear_file}: offline linear not shown for {summary.get('epochs')} epochs: {why}; "
        f"run solo-mixmask linear {last}",
        ConfigWarning,
        stacklevel=2,
    )
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # b is missing
        return False


def load_run(run_dir: str | Path) -> RunRecord:
    """Read one run folder (DataError when it has no ``summary.json``)."""
    run_dir = Path(run_dir)
    summary_file = run_dir / SUMMARY
    if not summary_file.is_file():
        raise DataError(f"{str(run_dir)!r} is not a finished run folder: {summary_file} is missing")
    summary: dict[str, Any] = json.loads(summary_file.read_text())
    offline = offline_linear_acc1(run_dir, summary)
    curves = epoch_curves(run_dir)
    contrastive, total = ssl_loss_curves(curves)
    return RunRecord(
        name=run_dir.name,
        method=str(summary.get("method", "?")),
        epochs=summary.get("epochs"),
        knn_acc1=summary.get("knn_acc1"),
        linear_acc1=summary.get("linear_acc1"),
        offline_linear_acc1=offline,
        images_per_sec=summary.get("images_per_sec"),
        wall_seconds=summary.get("wall_seconds"),
        embedding_std=summary.get("embedding_std"),
        embedding_std_spread=summary.get("embedding_std_spread"),
        collapsed=summary.get("collapsed"),
        knn_curve=curves.get("val_knn_acc1", {}),
        contrastive_curve=contrastive,
        total_loss_curve=total,
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def markdown_table(records: Sequence[RunRecord]) -> str:
    """One header row, one separator and one row per run (accuracies in %)."""
    header = (
        "run",
        "method",
        "epochs",
        "k-NN top-1",
        "online linear top-1",
        "offline linear top-1",
        "embedding_std (of spread)",
        "images/s",
        "wall time",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in records:
        cells = (
            r.name,
            r.method,
            "-" if r.epochs is None else str(r.epochs),
            _pct(r.knn_acc1),
            _pct(r.linear_acc1),
            _pct(r.offline_linear_acc1),
            embedding_std_cell(r.embedding_std, r.embedding_std_spread, r.collapsed),
            "-" if r.images_per_sec is None else f"{r.images_per_sec:.1f}",
            _duration(r.wall_seconds),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def embedding_std_cell(std: float | None, spread: float | None, collapsed: bool | None) -> str:
    """``0.0612 (69.2%)``, with ``**collapsed**`` after a collapsed run's; ``-`` if unmeasured."""
    if std is None:
        return "-"
    cell = f"{std:.4f}" + (f" ({std / spread:.1%})" if spread else "")
    return cell + (" **collapsed**" if collapsed else "")


def _label(r: RunRecord) -> str:
    return f"{r.method} ({r.name})"


def _plot_curves(ax: Any, records: Sequence[RunRecord], attr: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    for r in records:
        curve = getattr(r, attr)
        if curve:
            xs = sorted(curve)
            ax.plot(xs, [curve[x] for x in xs], marker="o", label=_label(r))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if any(getattr(r, attr) for r in records):
        ax.legend(fontsize=8)


def plot_knn(records: Sequence[RunRecord], path: Path) -> Path:
    """k-NN top-1 (%) against epoch for every run, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    _plot_curves(ax, records, "knn_curve", "online k-NN top-1 (%)")
    ax.set_title("k-NN accuracy")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_loss(records: Sequence[RunRecord], path: Path) -> Path:
    """Contrastive loss L(q, k) and total SSL loss against epoch, as a two-panel PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    _plot_curves(left, records, "contrastive_curve", "L(q, k) (train_nce / byol loss)")
    left.set_title("contrastive loss")
    _plot_curves(right, records, "total_loss_curve", "sum of train_*_loss (no classifier)")
    right.set_title("total self-supervised loss")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Each folder's name, or the shortest tail of its path that no other folder shares
    (``runs_a/mixmask-s1`` and ``runs_b/mixmask-s1``), so that rows and legends tell them
    apart."""
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in paths):
            return names
        depth += 1


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Write report.md, knn.png and loss.png for ``run_dirs`` into ``out_dir``.

    Returns ``{"table": markdown, "report", "knn_plot", "loss_plot": paths}``.
    """
    if not run_dirs:
        raise ValueError("run_dirs=[] is not allowed: expected one or more run folders")
    check_output_dir("--out", out_dir)  # before the runs are read
    names = unique_names([Path(d).resolve() for d in run_dirs])
    records = [replace(load_run(d), name=n) for d, n in zip(run_dirs, names)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(records)
    knn_png = plot_knn(records, out / "knn.png")
    loss_png = plot_loss(records, out / "loss.png")
    report = out / "report.md"
    report.write_text(
        "# Run comparison\n\n" + table + "\n\n"
        "Accuracies in %: k-NN and online linear are the runs' last online values "
        "(summary.json); offline linear comes from linear.json when `solo-mixmask linear` "
        "was run. images/s counts training batches only.\n\n"
        "![k-NN accuracy](knn.png)\n\n![loss](loss.png)\n\n"
        "Left loss panel: the contrastive term L(q, k) (train_nce_loss / train_byol_loss), "
        "comparable across methods. Right: the sum of all self-supervised loss terms.\n"
    )
    return {
        "table": table,
        "report": str(report),
        "knn_plot": str(knn_png),
        "loss_plot": str(loss_png),
    }
