"""``solo-mixmask compare``: one Markdown table and two plots for several pretraining runs.

Reads each run folder's ``summary.json``, ``logs/metrics.csv``, ``init_metrics.json`` and, when
present, ``linear.json`` (written by ``solo-mixmask linear``). Writes into the output folder:

- ``report.md``: a table (run, method, backbone, epochs, k-NN top-1, online linear top-1,
  offline linear top-1, images/s, wall time) followed by the two plots. An accuracy measured
  with other settings than another row's (the backbone or its kwargs, for every accuracy; for
  k-NN: k, T, images, precision; for the offline probe: its preset, epochs, learning rate,
  image counts ...) is marked ``†``, named in a ``warning:`` line and under the table: such
  figures do not rank the methods alone. Every accuracy of a collapsed run (summary.json's
  ``collapsed``) is marked ``(collapsed)`` and the run named in a ``warning:`` line and under
  the table;
- ``compare.json``: each row's figures, its backbone, the settings they were measured with,
  its collapse measure, and the warnings;
- ``knn.png``: online k-NN top-1 against epoch (epoch 0 = before training, when the run
  measured it; a last epoch the run stopped inside at its fractional epochs, e.g. 1.5);
- ``loss.png``: two panels against epoch. Left: the contrastive term, the one loss that means
  the same thing across MoCo v2, MixMask and Un-Mix: InfoNCE L(q, k) in nats, logged as
  ``train_nce_loss_epoch``; BYOL-hosted methods log 2 - 2cos(p, z) as ``train_byol_loss_epoch``,
  which does not compare with it. Right: the whole self-supervised loss, the sum of every
  ``train_*_loss_epoch`` column except the online classifier's ``train_class_loss_epoch`` (for
  MixMask: nce + mask term). Runs of both kinds: one row of the two panels per kind.
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
from solo_mixmask.run.folder import (
    CHECKPOINTS,
    INIT_METRICS,
    LOGS,
    METRICS_CSV,
    SUMMARY,
    saved_config,
)

CLASSIFIER_LOSS = "train_class_loss_epoch"
#: The contrastive loss column of each kind of method: (kind, what its value is). Curves of
#: two kinds are never drawn on one axis.
LOSS_KINDS = {
    "train_nce_loss_epoch": ("InfoNCE", "L(q, k), nats"),
    "train_byol_loss_epoch": ("BYOL", "2 - 2cos(p, z), both views"),
}


@dataclass
class RunRecord:
    """What the report shows of one run; curves map epoch -> value."""

    name: str
    method: str
    #: summary.json's ``backbone`` and ``backbone_kwargs`` (None: not recorded, older runs).
    backbone: str | None
    backbone_kwargs: dict[str, Any] | None
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
    #: How the figures of the k-NN, online and offline linear columns were measured, by setting
    #: (:func:`knn_recipe`, :func:`online_linear_recipe`, :func:`probe_recipe`); None where the
    #: row shows no figure.
    knn_settings: dict[str, Any] | None = None
    online_linear_settings: dict[str, Any] | None = None
    offline_linear_settings: dict[str, Any] | None = None
    #: Per column, the settings in which this row's figure differs from another row's
    #: (filled by :func:`mark_differences`); its cell carries :data:`DIFFERS`.
    differs: dict[str, list[str]] = field(default_factory=dict)
    knn_curve: dict[float, float] = field(default_factory=dict)
    #: The :data:`LOSS_KINDS` column of ``contrastive_curve`` (None: neither was logged).
    loss_kind: str | None = None
    contrastive_curve: dict[float, float] = field(default_factory=dict)
    total_loss_curve: dict[float, float] = field(default_factory=dict)


def _float(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def epoch_curves(run_dir: str | Path, epochs: float | None = None) -> dict[str, dict[float, float]]:
    """Every value a run logged in ``logs/metrics.csv`` with an epoch, as
    ``{column: {epochs trained: value}}`` (losses, accuracies, ``embedding_std``; per-step
    learning-rate rows carry no epoch and are left out).

    A row logged at step s (0-based: Lightning logs a measurement at the step it followed)
    counts as (s + 1) / S epochs trained, S the steps of one epoch: a k-NN measured after 5 of 8
    steps sits at 0.625, and a run that stopped inside its last epoch (``max_steps``, a stop)
    ends at its fraction. S is read from the last end-of-epoch row (``train_*_epoch``) of a
    whole epoch: one under ``epochs`` (the epochs the run trained, summary.json's), or, without
    them, one before the last epoch logged. When no whole epoch was logged, a row of epoch e
    (0-based) counts as e + 1 epochs, or as ``epochs`` in the epoch the run stopped inside.
    When the run measured its untrained model (``init_metrics.json`` holds
    ``knn_acc1_at_init``), the first row with a ``val_*`` value is that measurement and counts
    as epoch 0. (Its step is 0, but so is the step of epoch 1's validation when an epoch is one
    optimiser step: the step cannot tell them apart.) A column logged twice at one point keeps
    the later value. No file: ``{}``.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOGS / METRICS_CSV
    if not path.is_file():
        return {}
    init_file = run_dir / INIT_METRICS
    init = json.loads(init_file.read_text()) if init_file.is_file() else {}
    init_pending = init.get("knn_acc1_at_init") is not None
    partial = epochs if epochs is not None and epochs != int(epochs) else None
    rows = []  # (epoch, step, {column: value})
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = _float(row.get("epoch"))
            if epoch is None:
                continue
            parsed = {k: _float(v) for k, v in row.items() if k not in ("epoch", "step")}
            values = {k: v for k, v in parsed.items() if v is not None}
            rows.append((int(epoch), _float(row.get("step")), values))
    per_epoch = _steps_per_epoch(rows, epochs)
    curves: dict[str, dict[float, float]] = {}
    for epoch, step, values in rows:
        done: float = epoch + 1
        if per_epoch is not None and step is not None:
            done = (step + 1) / per_epoch
        elif partial is not None and epoch == int(partial):
            done = partial  # the epoch the run stopped inside
        if init_pending and any(k.startswith("val_") for k in values):
            done, init_pending = 0, False
        for key, value in values.items():
            curves.setdefault(key, {})[done] = value
    return curves


def _steps_per_epoch(
    rows: Sequence[tuple[int, float | None, dict[str, float]]], epochs: float | None
) -> float | None:
    """The optimiser steps of one epoch, from the last end-of-epoch row of a whole epoch in
    ``rows`` (see :func:`epoch_curves`; the last: an epoch that ``max_time`` stopped part-way
    logs an end too, and a resume ends it again); None when no whole epoch's end was logged."""
    if not rows:
        return None
    whole = int(epochs) if epochs is not None else max(epoch for epoch, _, _ in rows)
    per_epoch = None
    for epoch, step, values in rows:
        ends_epoch = any(k.startswith("train_") and k.endswith("_epoch") for k in values)
        if ends_epoch and epoch < whole and step is not None:
            per_epoch = (step + 1) / (epoch + 1)
    return per_epoch


def loss_kind(curves: dict[str, dict[float, float]]) -> str | None:
    """The first of :data:`LOSS_KINDS` that :func:`epoch_curves` holds, else None."""
    return next((key for key in LOSS_KINDS if key in curves), None)


def ssl_loss_curves(curves: dict[str, dict[float, float]]) -> tuple[dict, dict]:
    """(contrastive loss, total self-supervised loss) ``{epochs trained: value}`` of
    :func:`epoch_curves`: the :func:`loss_kind` column, and the sum of every
    ``train_*_loss_epoch`` but the online classifier's."""
    kind = loss_kind(curves)
    contrastive = {} if kind is None else curves[kind]
    total: dict[float, float] = {}
    for key, curve in curves.items():
        if key.startswith("train_") and key.endswith("_loss_epoch") and key != CLASSIFIER_LOSS:
            for done, value in curve.items():
                total[done] = total.get(done, 0.0) + value
    return contrastive, total


def offline_linear_result(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    """``run_dir/linear.json`` when it measured the run's final weights: the checkpoint it
    names is ``checkpoints/last.ckpt`` and it is newer than that file (a probe of
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
        return linear
    warnings.warn(
        f"{linear_file}: offline linear not shown for {summary.get('epochs')} epochs: {why}; "
        f"run solo-mixmask linear {last}",
        ConfigWarning,
        stacklevel=2,
    )
    return None


def probe_recipe(linear: dict[str, Any]) -> dict[str, Any]:
    """What decides a ``linear.json``'s figure besides the weights, by name: the preset, every
    ``linear.*`` setting, cached features or augmented crops, the dataset and the image counts;
    with subsets, the seed that picked them. A setting the file does not record (results of
    older versions) is None."""
    settings = linear.get("settings") or {}
    recipe: dict[str, Any] = {
        "dataset": linear.get("dataset"),
        "preset": linear.get("preset"),
        "cached_features": linear.get("cached_features"),
        "train_images": linear.get("train_images"),
        "val_images": linear.get("val_images"),
    }
    recipe.update({f"linear.{key}": value for key, value in sorted(settings.items())})
    subsets = settings.get("train_subset") is not None or settings.get("val_subset") is not None
    if subsets and linear.get("seed") is not None:
        recipe["seed"] = linear["seed"]  # picks the subsets' images
    return recipe


def _subset_seed(saved: Any, *subsets: Any) -> dict[str, Any]:
    """``{"seed": the run's seed}`` when any of ``subsets`` is set (the seed picked their
    images), else nothing; ``saved``: the run's config (None: not recorded)."""
    if all(size is None for size in subsets):
        return {}
    return {"seed": (saved or {}).get("seed")}


def knn_recipe(run_dir: Path, summary: dict[str, Any], saved: Any) -> dict[str, Any]:
    """What decides a run's online k-NN figure besides the weights: the k it voted with
    (``knn_k``, clamped to its memory), ``knn_eval.T``, the images (``data.knn_train_subset``
    memory, ``data.val_subset`` queries, the dataset; with subsets, the seed that picked them),
    the similarity dtype and the precision its features were extracted in (resolved as the run
    did; None when not recorded). ``saved``: the run's config (:func:`saved_config`)."""
    from solo_mixmask.config.run_specs import monitor_facts
    from solo_mixmask.eval.offline_knn import run_precision

    knn = monitor_facts(saved).knn
    return {
        "dataset": summary.get("dataset"),
        "knn_k": summary.get("knn_k"),
        **knn,
        "precision": run_precision(saved, summary, run_dir / CHECKPOINTS / LAST),
        **_subset_seed(saved, knn["data.knn_train_subset"], knn["data.val_subset"]),
    }


def online_linear_recipe(summary: dict[str, Any], saved: Any) -> dict[str, Any]:
    """The images a run's online linear figure was measured on: the dataset and
    ``data.val_subset``, with a subset the seed that picked it (the classifier's training is
    the run's recipe, not checked). ``saved``: the run's config (:func:`saved_config`)."""
    from solo_mixmask.config.run_specs import monitor_facts

    subset = monitor_facts(saved).knn["data.val_subset"]
    return {
        "dataset": summary.get("dataset"),
        "data.val_subset": subset,
        **_subset_seed(saved, subset),
    }


#: The marker of a cell whose figure was measured with other settings than another row's.
DIFFERS = "†"
#: Columns whose figures :func:`mark_differences` checks: column -> (figure, the record's
#: settings of that figure besides the backbone, None: the backbone alone).
CHECKED_COLUMNS = {
    "k-NN top-1": ("knn_acc1", "knn_settings"),
    "online linear top-1": ("linear_acc1", "online_linear_settings"),
    "offline linear top-1": ("offline_linear_acc1", "offline_linear_settings"),
}
#: The prefix of a backbone kwarg's setting (the config's key).
BACKBONE_KWARG = "backbone.kwargs."


def backbone_settings(record: RunRecord) -> dict[str, Any]:
    """``backbone`` (the name) and ``backbone.kwargs.<name>`` for each kwarg of ``record``; a
    run that records no kwargs (older versions) has ``backbone_kwargs: None`` instead."""
    if record.backbone_kwargs is None:
        return {"backbone": record.backbone, "backbone_kwargs": None}
    kwargs = sorted(record.backbone_kwargs.items())
    return {"backbone": record.backbone, **{BACKBONE_KWARG + k: v for k, v in kwargs}}


def figure_settings(record: RunRecord, column: str) -> dict[str, Any]:
    """The settings ``record``'s figure in ``column`` (of :data:`CHECKED_COLUMNS`) was measured
    with: its :func:`backbone_settings`, then the column's own."""
    attribute = CHECKED_COLUMNS[column][1]
    own = (getattr(record, attribute) if attribute else None) or {}
    return {**backbone_settings(record), **own}


def _shown(settings: dict[str, Any], key: str) -> str:
    """``settings[key]`` in words: ``default`` for a backbone kwarg a run that records its
    kwargs did not set, ``not recorded`` for a setting it does not record."""
    if key not in settings and key.startswith(BACKBONE_KWARG) and "backbone_kwargs" not in settings:
        return "default"
    value = settings.get(key)
    return "not recorded" if value is None else str(value)


def mark_differences(records: Sequence[RunRecord]) -> list[str]:
    """For each of :data:`CHECKED_COLUMNS`, the settings (:func:`figure_settings`) in which the
    rows that show a figure differ (a setting one row does not record counts as different when
    another does): set in each such record's ``differs``, and one ``warning:`` line per column
    naming them with every row's value. Returns the lines."""
    lines = []
    for column, (figure, _) in CHECKED_COLUMNS.items():
        shown = [r for r in records if getattr(r, figure) is not None]
        if len(shown) < 2:
            continue
        settings = [figure_settings(r, column) for r in shown]
        keys = dict.fromkeys(k for values in settings for k in values)
        differing = [
            k
            for k in keys
            if len({json.dumps(values.get(k), sort_keys=True) for values in settings}) > 1
        ]
        if not differing:
            continue
        for r in shown:
            r.differs[column] = differing
        per_key = "; ".join(
            f"{k} " + ", ".join(f"{_shown(v, k)} ({r.name})" for r, v in zip(shown, settings))
            for k in differing
        )
        line = (
            f"{column} ({DIFFERS}) of {', '.join(r.name for r in shown)} measured with "
            f"different settings: {per_key}; these figures do not rank the methods alone"
        )
        warnings.warn(line, ConfigWarning, stacklevel=2)
        lines.append(line)
    return lines


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
    linear = offline_linear_result(run_dir, summary)
    offline = None if linear is None else linear.get("acc1")
    curves = epoch_curves(run_dir, summary.get("epochs"))
    contrastive, total = ssl_loss_curves(curves)
    saved = saved_config(run_dir)  # read once for both monitors' settings
    return RunRecord(
        name=run_dir.name,
        method=str(summary.get("method", "?")),
        backbone=summary.get("backbone"),
        backbone_kwargs=summary.get("backbone_kwargs"),
        epochs=summary.get("epochs"),
        knn_acc1=summary.get("knn_acc1"),
        linear_acc1=summary.get("linear_acc1"),
        offline_linear_acc1=offline,
        images_per_sec=summary.get("images_per_sec"),
        wall_seconds=summary.get("wall_seconds"),
        embedding_std=summary.get("embedding_std"),
        embedding_std_spread=summary.get("embedding_std_spread"),
        collapsed=summary.get("collapsed"),
        knn_settings=None
        if summary.get("knn_acc1") is None
        else knn_recipe(run_dir, summary, saved),
        online_linear_settings=None
        if summary.get("linear_acc1") is None
        else online_linear_recipe(summary, saved),
        offline_linear_settings=None if offline is None else probe_recipe(linear or {}),
        knn_curve=curves.get("val_knn_acc1", {}),
        loss_kind=loss_kind(curves),
        contrastive_curve=contrastive,
        total_loss_curve=total,
    )


#: The words after each accuracy of a collapsed run (summary.json's ``collapsed``).
COLLAPSED = "(collapsed)"


def _pct(value: float | None, differs: bool = False, collapsed: bool | None = False) -> str:
    if value is None:
        return "-"
    return (
        f"{value:.2f}" + (f" {DIFFERS}" if differs else "") + (f" {COLLAPSED}" if collapsed else "")
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def markdown_table(records: Sequence[RunRecord]) -> str:
    """One header row, one separator and one row per run (the backbone as
    :func:`backbone_cells`; accuracies in %; a figure measured with other settings than
    another row's is marked :data:`DIFFERS`, see :func:`mark_differences`; every accuracy of a
    collapsed run is marked :data:`COLLAPSED`)."""
    header = (
        "run",
        "method",
        "backbone",
        "epochs",
        "k-NN top-1",
        "online linear top-1",
        "offline linear top-1",
        "embedding_std (of spread)",
        "images/s",
        "wall time",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r, backbone in zip(records, backbone_cells(records)):
        cells = (
            r.name,
            r.method,
            backbone,
            "-" if r.epochs is None else str(r.epochs),
            _pct(r.knn_acc1, "k-NN top-1" in r.differs, r.collapsed),
            _pct(r.linear_acc1, "online linear top-1" in r.differs, r.collapsed),
            _pct(r.offline_linear_acc1, "offline linear top-1" in r.differs, r.collapsed),
            embedding_std_cell(r.embedding_std, r.embedding_std_spread, r.collapsed),
            "-" if r.images_per_sec is None else f"{r.images_per_sec:.1f}",
            _duration(r.wall_seconds),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def backbone_cells(records: Sequence[RunRecord]) -> list[str]:
    """Each run's backbone name and the kwargs in which the runs' backbones differ, e.g.
    ``resnet18 channels=[8, 16, 32, 64]`` (a kwarg a run did not set is left out); ``?`` for a
    run whose summary.json does not record its backbone (older versions)."""
    recorded = [r.backbone_kwargs or {} for r in records]
    names = sorted({k for kwargs in recorded for k in kwargs})
    differing = [
        k for k in names if len({json.dumps(kw.get(k), sort_keys=True) for kw in recorded}) > 1
    ]
    cells = []
    for r, kwargs in zip(records, recorded):
        words = [f"{k}={kwargs[k]}" for k in differing if k in kwargs]
        cells.append(
            "?" if r.backbone is None else " ".join([r.backbone, ", ".join(words)]).strip()
        )
    return cells


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


def loss_rows(records: Sequence[RunRecord]) -> list[tuple[str | None, list[RunRecord]]]:
    """loss.png's rows of panels, as (:data:`LOSS_KINDS` column, its runs): one row of every
    run when they logged one kind of contrastive loss (or none), else one row per kind, so
    that InfoNCE and BYOL's 2 - 2cos never share an axis."""
    kinds = [kind for kind in LOSS_KINDS if any(r.loss_kind == kind for r in records)]
    if len(kinds) < 2:
        return [(kinds[0] if kinds else None, list(records))]
    return [(kind, [r for r in records if r.loss_kind == kind]) for kind in kinds]


def plot_loss(records: Sequence[RunRecord], path: Path) -> Path:
    """Contrastive loss and total SSL loss against epoch, as a PNG of two panels, one row of
    them per kind of contrastive loss (:func:`loss_rows`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = loss_rows(records)
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 4 * len(rows)), dpi=100, squeeze=False)
    for (kind, runs), (left, right) in zip(rows, axes):
        name, unit = LOSS_KINDS[kind] if kind else ("contrastive", "train_nce / byol loss")
        _plot_curves(left, runs, "contrastive_curve", f"{unit} ({kind or 'not logged'})")
        left.set_title(f"contrastive loss: {name}")
        _plot_curves(right, runs, "total_loss_curve", "sum of train_*_loss (no classifier)")
        right.set_title("total self-supervised loss" + (f": {name} runs" if len(rows) > 1 else ""))
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
    differences = mark_differences(records)
    collapses = collapse_warnings(records)
    table = markdown_table(records)
    notes = "\n\n".join(block for block in (footnotes(records), *collapses) if block)
    knn_png = plot_knn(records, out / "knn.png")
    loss_png = plot_loss(records, out / "loss.png")
    report = out / "report.md"
    report.write_text(
        "# Run comparison\n\n"
        + table
        + "\n\n"
        + (notes + "\n\n" if notes else "")
        + "Accuracies in %: k-NN and online linear are the runs' last online values "
        "(summary.json); offline linear comes from linear.json when `solo-mixmask linear` "
        "was run. images/s counts training batches only. How each figure was measured, per "
        "row: compare.json.\n\n"
        "![k-NN accuracy](knn.png)\n\n![loss](loss.png)\n\n"
        "Left loss panel: the contrastive term, InfoNCE L(q, k) in nats (train_nce_loss: MoCo "
        "v2, MixMask, Un-Mix) or BYOL's 2 - 2cos(p, z) (train_byol_loss), comparable between "
        "runs of one kind only: runs of both kinds get a row of panels per kind. Right: the sum "
        "of all self-supervised loss terms.\n"
    )
    rows = out / "compare.json"
    rows.write_text(json.dumps(compare_rows(records, [*differences, *collapses]), indent=2))
    return {
        "table": table,
        "notes": notes,
        "report": str(report),
        "json": str(rows),
        "knn_plot": str(knn_png),
        "loss_plot": str(loss_png),
    }


def footnotes(records: Sequence[RunRecord]) -> str:
    """The report's lines under the table for each column with :data:`DIFFERS` cells: every
    marked row's values of the settings that differ. Empty when none differ."""
    lines = []
    for column in CHECKED_COLUMNS:
        marked = [r for r in records if column in r.differs]
        if not marked:
            continue
        lines.append(f"{DIFFERS} {column} measured with different settings:")
        for r in marked:
            values = figure_settings(r, column)
            words = ", ".join(f"{k} {_shown(values, k)}" for k in r.differs[column])
            lines.append(f"- {r.name}: {words}")
    return "\n".join(lines)


def collapse_warnings(records: Sequence[RunRecord]) -> list[str]:
    """One ``warning:`` line per collapsed run (summary.json's ``collapsed``), naming it and its
    embedding_std: its accuracies (marked :data:`COLLAPSED`) do not rank the methods. Returns
    the lines."""
    lines = []
    for r in records:
        if not r.collapsed:
            continue
        std = "not recorded" if r.embedding_std is None else f"{r.embedding_std:.4f}"
        if r.embedding_std is not None and r.embedding_std_spread:
            std += f", {r.embedding_std / r.embedding_std_spread:.1%} of its spread value"
        line = (
            f"{r.name} collapsed (embedding_std {std}): its accuracies, marked {COLLAPSED}, "
            "do not rank the methods"
        )
        warnings.warn(line, ConfigWarning, stacklevel=2)
        lines.append(line)
    return lines


def compare_rows(records: Sequence[RunRecord], warned: Sequence[str]) -> dict[str, Any]:
    """``compare.json``: each row's figures and how they were measured (``backbone``,
    ``backbone_kwargs``, ``knn_settings``, ``offline_linear_settings``; ``differs``: per
    column, the settings in which the row's figure differs from another row's), its collapse
    measure (``embedding_std``, ``embedding_std_spread``, ``collapsed``), and the ``warnings``
    about them (``warned``)."""
    return {
        "rows": [
            {
                "run": r.name,
                "method": r.method,
                "backbone": r.backbone,
                "backbone_kwargs": r.backbone_kwargs,
                "epochs": r.epochs,
                "knn_acc1": r.knn_acc1,
                "linear_acc1": r.linear_acc1,
                "offline_linear_acc1": r.offline_linear_acc1,
                "knn_settings": r.knn_settings,
                "offline_linear_settings": r.offline_linear_settings,
                "differs": r.differs,
                "embedding_std": r.embedding_std,
                "embedding_std_spread": r.embedding_std_spread,
                "collapsed": r.collapsed,
                "images_per_sec": r.images_per_sec,
                "wall_seconds": r.wall_seconds,
            }
            for r in records
        ],
        "warnings": list(warned),
    }
