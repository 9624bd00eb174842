"""Diagnosis grid on CIFAR-10: MoCo v2 and MixMask under each candidate recipe fix.

Every condition changes the recipe of BOTH methods (never MixMask alone), on top of the recipe
the first GPU comparison collapsed with (:data:`COLLAPSED_RECIPE`: Un-Mix's CIFAR recipe
without warm-up, one BatchNorm over the device batch). Each run logs per epoch its losses and
the collapse measure ``embedding_std`` (1/sqrt(d) when spread, 0 when collapsed); k-NN (k=200,
T=0.1) of the test images against the training images every ``--eval-every`` epochs. The
conditions run in ``--parallel`` processes on one GPU (each process a sequence of runs sharing
its decoded images), so img/s figures here are not speeds: ``cifar_gpu.sh`` measures those.

    python benchmarks/cifar_grid.py --data DIR --epochs 8              # one GPU, ~5 min
    python benchmarks/cifar_grid.py --tiny --out-dir /tmp/grid          # CPU: does it run?

Results: ``cifar_grid[_tiny].{json,md,png}`` in ``--out-dir`` (rewritten as workers finish).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import (  # noqa: E402
    PROFILES,
    TINY,
    UNMIX_CIFAR_BASE,
    Profile,
    data_overrides,
    one_run,
)
from common import RESULTS, command_line, machine, table, write_results  # noqa: E402

from solo_mixmask.errors import RunStopped  # noqa: E402
from solo_mixmask.eval.compare import epoch_curves  # noqa: E402

#: The recipe of the collapsed comparison (main e3fee5b): Un-Mix's CIFAR recipe, no warm-up,
#: one BatchNorm over the device batch. Each condition below is applied on top of it.
COLLAPSED_RECIPE = UNMIX_CIFAR_BASE
WARMUP = "scheduler.warmup_epochs=2"
NO_WARMUP = "scheduler.warmup_epochs=0"
SPLIT_BN = ("method_kwargs.bn_splits=8", "method_kwargs.shuffle_bn=true")
#: Candidate fixes (issue 17's hypotheses), each for both methods.
CONDITIONS: dict[str, tuple[str, ...]] = {
    "collapsed_recipe": (NO_WARMUP,),
    "warmup": (WARMUP,),
    "lower_lr": (NO_WARMUP, "optimizer.lr=0.01"),  # a third of 0.03 per 256 images
    "split_bn_shuffle": (NO_WARMUP, *SPLIT_BN),
    "warmup_split_bn": (WARMUP, *SPLIT_BN),
}
METHODS = ("mocov2plus", "mixmask")
#: Per-epoch columns read from each run's metrics.csv (first match per name).
SERIES = {
    "nce_loss": ("train_nce_loss_epoch",),
    "mixed_loss": ("train_mask_loss_epoch",),
    "embedding_std": ("train_embedding_std",),
    "knn_acc1": ("val_knn_acc1",),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="CIFAR-10 folder (as accuracy.py --data)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--conditions", nargs="+", choices=sorted(CONDITIONS), default=None)
    p.add_argument("--parallel", type=int, default=3, help="worker processes (one GPU)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="CPU, tiny network, 8 images per class")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="keep each run's folder here (default: a temporary folder, removed at the end)",
    )
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def profile(args: argparse.Namespace, condition: str) -> Profile:
    """The cifar_gpu profile (or its tiny form) with the condition's recipe, fixed epochs."""
    prof = PROFILES["cifar_gpu"]
    if args.tiny:
        prof = replace(prof, **TINY)
    every = max(1, min(args.eval_every, args.epochs))
    return replace(
        prof,
        methods=METHODS,
        seeds=(args.seed,),
        epochs=args.epochs,
        eval_every=every,
        budget_minutes=None,
        epochs_from_budget=False,
        recipe=with_overrides(COLLAPSED_RECIPE, CONDITIONS[condition]),
        data=data_overrides(prof, args.data),
    )


def with_overrides(base: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
    """``base`` overrides with those whose key ``extra`` sets replaced by ``extra``'s."""
    keys = {o.split("=", 1)[0] for o in extra}
    return tuple(o for o in base if o.split("=", 1)[0] not in keys) + extra


def series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values (epochs trained >= 1, value) of :data:`SERIES` (read by
    :func:`~solo_mixmask.eval.compare.epoch_curves`; the untrained model's k-NN is left out)."""
    curves = epoch_curves(run_dir)
    out = {}
    for name, keys in SERIES.items():
        curve = next((curves[key] for key in keys if key in curves), {})
        out[name] = sorted((e, v) for e, v in curve.items() if e > 0)
    return out


def work(args: argparse.Namespace, conditions: list[str], runs_dir: Path) -> list[dict[str, Any]]:
    """Train both methods under each condition, in this process; one record per run."""
    records = []
    for condition in conditions:
        prof = profile(args, condition)
        for method in METHODS:
            run_dir = runs_dir / f"{condition}-{method}"
            start = time.perf_counter()
            try:
                result = one_run(prof, method, args.seed, None, run_dir, reuse=False)
                error = None
            except RunStopped as err:  # SIGTERM: stop this worker, keep its records
                print(f"error: {err}", file=sys.stderr)
                raise SystemExit(err.exit_status) from None
            except Exception as err:  # one failed run must not lose the others
                result, error = {}, f"{type(err).__name__}: {err}"
            summary_file = run_dir / "summary.json"
            summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
            records.append(
                {
                    "condition": condition,
                    "method": method,
                    "overrides": list(CONDITIONS[condition]),
                    "knn_acc1": result.get("knn_acc1"),
                    "knn_acc1_at_init": result.get("knn_acc1_at_init"),
                    "embedding_std": summary.get("embedding_std"),
                    "embedding_std_spread": summary.get("embedding_std_spread"),
                    "collapsed": summary.get("collapsed"),
                    "series": series(run_dir),
                    "wall_seconds": round(time.perf_counter() - start, 1),
                    "error": error,
                }
            )
            print(
                f"grid: {condition} {method}: k-NN {result.get('knn_acc1')}, embedding_std "
                f"{summary.get('embedding_std')}, collapsed {summary.get('collapsed')}"
                + (f", error {error}" if error else ""),
                file=sys.stderr,
                flush=True,
            )
    return records


def _last(points: list[list[float]] | list[tuple[int, float]]) -> float | None:
    return float(points[-1][1]) if points else None


def _first(points: list[list[float]] | list[tuple[int, float]]) -> float | None:
    return float(points[0][1]) if points else None


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown(res: dict[str, Any]) -> str:
    runs = {(r["condition"], r["method"]): r for r in res["runs"]}
    lines = [
        "# CIFAR-10 diagnosis grid: MoCo v2 and MixMask under each candidate fix",
        "",
        f"Command: `{res['command']}`",
        "",
        f"{res['epochs']} epochs, seed {res['seed']}, "
        + (
            "the cifar_gpu profile's tiny form (a tiny network, 8 images per class, on the CPU"
            if res.get("tiny")
            else "cifar_gpu profile (ResNet-18 CIFAR stem, batch 512, all 50,000 images, bf16, "
            "k-NN k=200 T=0.1 of the 10,000 test images"
        )
        + f", k-NN every {res['eval_every']} epochs and after the last). Base recipe for both methods: {list(COLLAPSED_RECIPE)}; "
        f"each condition adds its overrides to both. Runs in {res['parallel']} processes on one "
        f"device, wall time {res['wall_seconds'] / 60:.1f} min. Machine: {res['machine']}.",
        "",
        "embedding_std: std of the L2-normalised projector outputs, mean over dimensions (last "
        "epoch; spread value 1/sqrt(128) = 0.0884, collapse below 10% of it). Losses: first -> "
        "last epoch mean; ln(4097) = 8.32 is a query as close to its key as to the queue.",
        "",
    ]
    rows = []
    for condition in res["conditions"]:
        moco, mix = runs.get((condition, "mocov2plus")), runs.get((condition, "mixmask"))
        if moco is None or mix is None:
            continue
        mk, xk = moco.get("knn_acc1"), mix.get("knn_acc1")
        rows.append(
            [
                condition,
                ", ".join(CONDITIONS[condition]) or "(none)",
                _f(mk),
                _f(xk),
                _f(xk - mk) if mk is not None and xk is not None else "-",
                f"{_f(_first(moco['series']['nce_loss']))} -> "
                f"{_f(_last(moco['series']['nce_loss']))}",
                f"{_f(_first(mix['series']['nce_loss']))} -> "
                f"{_f(_last(mix['series']['nce_loss']))}",
                f"{_f(_first(mix['series']['mixed_loss']))} -> "
                f"{_f(_last(mix['series']['mixed_loss']))}",
                f"{_f(moco.get('embedding_std'), 4)} / {_f(mix.get('embedding_std'), 4)}",
                f"{moco.get('collapsed')} / {mix.get('collapsed')}",
            ]
        )
    lines.append(
        table(
            [
                "condition",
                "overrides (both methods)",
                "MoCo k-NN %",
                "MixMask k-NN %",
                "diff",
                "MoCo nce loss",
                "MixMask nce loss",
                "MixMask mixed loss",
                "embedding_std MoCo / MixMask",
                "collapsed MoCo / MixMask",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Per epoch (MoCo / MixMask): nce loss, MixMask mixed loss, embedding_std, k-NN.",
        "",
    ]
    for condition in res["conditions"]:
        moco, mix = runs.get((condition, "mocov2plus")), runs.get((condition, "mixmask"))
        if moco is None or mix is None:
            continue
        cols = {
            (name, m): dict(r["series"][name])
            for name in SERIES
            for m, r in (("moco", moco), ("mix", mix))
        }
        epochs = sorted({e for c in cols.values() for e in c})
        body = [
            [
                e,
                f"{_f(cols['nce_loss', 'moco'].get(e))} / {_f(cols['nce_loss', 'mix'].get(e))}",
                _f(cols["mixed_loss", "mix"].get(e)),
                f"{_f(cols['embedding_std', 'moco'].get(e), 4)} / "
                f"{_f(cols['embedding_std', 'mix'].get(e), 4)}",
                f"{_f(cols['knn_acc1', 'moco'].get(e))} / {_f(cols['knn_acc1', 'mix'].get(e))}",
            ]
            for e in epochs
        ]
        lines += [
            f"**{condition}**",
            "",
            table(["epoch", "nce loss", "mixed loss", "embedding_std", "k-NN %"], body),
            "",
        ]
    errors = [f"{r['condition']} {r['method']}: {r['error']}" for r in res["runs"] if r["error"]]
    if errors:
        lines += ["Failed runs: " + "; ".join(errors), ""]
    lines.append(f"Plot: `{Path(res['plot']).name}`.")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4), dpi=110)
    panels = [
        ("nce_loss", "clean InfoNCE loss"),
        ("mixed_loss", "MixMask mixed loss"),
        ("embedding_std", "embedding_std x sqrt(d)"),
        ("knn_acc1", "k-NN top-1 %"),
    ]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, condition in enumerate(res["conditions"]):
        for r in res["runs"]:
            if r["condition"] != condition:
                continue
            style = "-" if r["method"] == "mocov2plus" else "--"
            for ax, (name, _) in zip(axes, panels):
                points = r["series"][name]
                if not points:
                    continue
                scale = 1.0
                if name == "embedding_std" and r.get("embedding_std_spread"):
                    scale = 1.0 / r["embedding_std_spread"]
                ax.plot(
                    [p[0] for p in points],
                    [p[1] * scale for p in points],
                    style,
                    marker="o",
                    ms=2,
                    color=colours[i % len(colours)],
                    label=f"{condition} {'MoCo' if style == '-' else 'MixMask'}",
                )
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].axhline(math.log(4097), color="gray", ls=":", lw=1)
    axes[1].axhline(math.log(4097), color="gray", ls=":", lw=1)
    axes[3].legend(fontsize=6)
    fig.suptitle("CIFAR-10 diagnosis grid (solid: MoCo v2, dashed: MixMask)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(
    args: argparse.Namespace, runs: list[dict[str, Any]], conditions: list[str], wall: float
) -> None:
    stem = "cifar_grid" + ("_tiny" if args.tiny else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    res = {
        "command": command_line(),
        "epochs": args.epochs,
        "eval_every": max(1, min(args.eval_every, args.epochs)),
        "seed": args.seed,
        "parallel": args.parallel,
        "tiny": args.tiny,
        "conditions": conditions,
        "base_recipe": list(COLLAPSED_RECIPE),
        "machine": machine(),
        "wall_seconds": wall,
        "runs": runs,
        "plot": str(args.out_dir / f"{stem}.png"),
    }
    plot(res, Path(res["plot"]))
    write_results(stem, res, markdown(res), args.out_dir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    conditions = args.conditions or list(CONDITIONS)
    if args.worker is not None:  # one share of the grid, in this process
        records = work(args, conditions, args.runs_dir)
        args.worker.write_text(json.dumps(records))
        return 0
    if args.runs_dir is not None:
        return grid(args, argv, conditions, args.runs_dir)
    with tempfile.TemporaryDirectory(prefix="cifar_grid_") as tmp:  # checkpoints: MBs per run
        return grid(args, argv, conditions, Path(tmp))


def grid(
    args: argparse.Namespace, argv: list[str] | None, conditions: list[str], runs_dir: Path
) -> int:
    """Share ``conditions`` among ``--parallel`` worker processes; report what they return."""
    start = time.perf_counter()
    shares = [conditions[i :: args.parallel] for i in range(min(args.parallel, len(conditions)))]
    procs = []
    for i, share in enumerate(shares):
        out = runs_dir / f"worker{i}.json"
        cmd = [sys.executable, __file__, *_passed_on(argv), "--worker", str(out)]
        cmd += ["--runs-dir", str(runs_dir), "--conditions", *share]
        procs.append((subprocess.Popen(cmd), out))
    runs: list[dict[str, Any]] = []
    status = 0
    for proc, out in procs:
        status = max(status, proc.wait())
        if out.exists():
            runs += json.loads(out.read_text())
        report(args, runs, conditions, time.perf_counter() - start)
    failed = [r for r in runs if r["error"]]
    print(
        f"cifar_grid: {len(runs)} runs ({len(failed)} failed) in "
        f"{(time.perf_counter() - start) / 60:.1f} min",
        file=sys.stderr,
    )
    return 1 if status or failed or len(runs) < 2 * len(conditions) else 0


def _passed_on(argv: list[str] | None) -> list[str]:
    """This invocation's arguments without those the parent sets for each worker."""
    args = list(sys.argv[1:] if argv is None else argv)
    out, skip = [], False
    for a in args:
        if a in ("--conditions", "--runs-dir", "--worker"):
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
