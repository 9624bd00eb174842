"""Same seed, two settings: does a speed change leave training where it was? (issue 19)

A performance setting (compile, fused optimiser, layout...) must not change what is learned: the
same seed should give the same k-NN curve within noise and the same loss curves. This compares
the runs of two ``accuracy.py`` result files that share (method, seed): the k-NN per evaluated
epoch, the epoch-mean training losses and ``embedding_std`` per epoch, and images/s, and lists
every profile field in which the two invocations differ (so that a comparison across recipes is
visible as one). ``accuracy.py --baseline FILE`` adds the section to its report and draws the
baseline's curves dashed in its plot.

    python benchmarks/same_seed.py benchmarks/results/accuracy_cifar_gpu_fixed_h200.json \
        benchmarks/results/accuracy_cifar_gpu_winners.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

from solo_mixmask.eval.compare import epoch_curves  # noqa: E402

#: Fields of an accuracy.py profile that only name the invocation, not the training.
NOT_TRAINING = {
    "budget_minutes",
    "epochs_from_budget",
    "epochs_exact",
    "linear_preset",
    "linear_overrides",
    "checkpoint_every",
    # backbone.kwargs.stem_width: the profiles' plain ResNet stem ignores it (64 wide)
    "stem_width",
}


def epoch_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(epochs trained, value), ...]}`` of the epoch means a run logged (read by
    :func:`~solo_mixmask.eval.compare.epoch_curves`): every ``train_*_loss_epoch`` and
    ``train_embedding_std`` (logged per epoch only), named without the ``_epoch`` suffix."""
    out = {}
    for key, points in epoch_curves(run_dir).items():
        name = key.removesuffix("_epoch")  # a metric logged per step and per epoch
        if name.startswith("train_") and (name.endswith("loss") or name == "train_embedding_std"):
            out[name] = sorted(points.items())
    return dict(sorted(out.items()))


def _all_extras(profile: dict[str, Any]) -> dict[str, Any]:
    """``profile`` with its ``user_extra`` (accuracy.py since 2026-12-07) appended to ``extra``,
    where results made before recorded both."""
    merged = {key: value for key, value in profile.items() if key != "user_extra"}
    merged["extra"] = list(profile.get("extra") or []) + list(profile.get("user_extra") or [])
    return merged


#: The data overrides that name where a copy of the images lies, not which images: the CIFAR
#: scripts unpack the tars to a folder named by the checksum of their source path.
DATA_PATH_KEYS = ("data.train_path=", "data.val_path=")


def _data_without_paths(profile: dict[str, Any]) -> dict[str, Any]:
    """``profile`` with the folders of its ``data`` overrides left out (:data:`DATA_PATH_KEYS`);
    the images themselves are named by the other fields (dataset, per_class)."""
    data = [
        f"{item.split('=', 1)[0]}=..." if str(item).startswith(DATA_PATH_KEYS) else item
        for item in profile.get("data") or []
    ]
    return {**profile, "data": data} if "data" in profile else profile


def profile_differences(profile: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """``"field: baseline -> this"`` for every training-relevant profile field that differs
    (the profile's and the user's overrides compared as one list, ``extra``; the data
    overrides without the folders the images were unpacked to)."""
    out = []
    profile, baseline = _all_extras(profile), _all_extras(baseline)
    profile, baseline = _data_without_paths(profile), _data_without_paths(baseline)
    for key in sorted(set(profile) | set(baseline)):
        if key in NOT_TRAINING:
            continue
        a, b = baseline.get(key), profile.get(key)
        if json.dumps(a) != json.dumps(b):
            out.append(f"{key}: {a} -> {b}")
    return out


def compare(res: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The runs of ``res`` and ``baseline`` (accuracy.py results) that share (method, seed):
    k-NN per epoch of both and their difference (points), each logged curve's last epoch, and
    images/s with their ratio (this / baseline). Unpaired runs are named, not compared."""
    theirs = {(r["method"], r["seed"]): r for r in baseline["runs"]}
    pairs, unpaired, matched = [], [], []
    for run in res["runs"]:
        old = theirs.get((run["method"], run["seed"]))
        if old is None:
            unpaired.append(f"{run['method']} seed {run['seed']}")
            continue
        matched.append((old, run))
        now_knn, old_knn = dict(run["curve"]), dict(old["curve"])
        epochs = sorted(set(now_knn) & set(old_knn))
        now_m, old_m = run.get("epoch_metrics") or {}, old.get("epoch_metrics") or {}
        last = {}  # each curve logged by both, at this run's last epoch
        for name in sorted(set(now_m) & set(old_m)):
            epoch = max(dict(now_m[name]))
            last[name] = (dict(old_m[name]).get(epoch), dict(now_m[name]).get(epoch))
        ips = (old.get("images_per_sec"), run.get("images_per_sec"))
        clocks = (clock_of(old), clock_of(run))
        wall = (
            wall_images_per_s(old, baseline["profile"]),
            wall_images_per_s(run, res["profile"]),
        )
        pairs.append(
            {
                "method": run["method"],
                "seed": run["seed"],
                "knn": [(e, old_knn[e], now_knn[e], now_knn[e] - old_knn[e]) for e in epochs],
                "last_epoch_metrics": last,
                "images_per_s": ips,
                "clocks": clocks,
                # batches timed by different clocks are not compared
                "speed_ratio": ips[1] / ips[0] if all(ips) and clocks[0] == clocks[1] else None,
                "wall_images_per_s": wall,
                "wall_ratio": wall[1] / wall[0] if all(wall) else None,
            }
        )
    trained = [(e, d) for p in pairs for e, _, _, d in p["knn"] if e > 0]
    return {
        "baseline_command": baseline.get("command"),
        "differences": profile_differences(res["profile"], baseline["profile"])
        + init_differences(matched),
        "pairs": pairs,
        "unpaired": unpaired,
        "largest_knn_difference": max((abs(d) for _, d in trained), default=None),
        "baseline_seed_spread": seed_spread(baseline),
    }


def zero_init_of(record: dict[str, Any]) -> bool | None:
    """Whether a ResNet run's blocks started with their last BatchNorm at weight 0, from its
    ``backbone_kwargs`` (a summary or an accuracy.py run; None for a backbone without the
    setting). Records from before it was kept (2026-12-07) were all built with timm's default,
    true. The other constructor arguments come from the config, which the profile holds."""
    return record.get("backbone_kwargs", {"zero_init_last": True}).get("zero_init_last")


def init_differences(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """``"METHOD seed S zero_init_last: baseline -> this"`` for each (baseline, this) run pair
    whose residual blocks started otherwise (a code default, which no profile shows)."""
    return [
        f"{run['method']} seed {run['seed']} zero_init_last: {zero_init_of(old)} -> "
        f"{zero_init_of(run)}"
        for old, run in pairs
        if zero_init_of(old) != zero_init_of(run)
    ]


def clock_of(run: dict[str, Any]) -> str | None:
    """The clock that timed a run's training batches (``images_per_sec_clock``); results from
    before it was recorded (2026-12-07) were all timed on the host."""
    if run.get("images_per_sec") is None:
        return None
    return run.get("images_per_sec_clock", "host")


def wall_images_per_s(run: dict[str, Any], profile: dict[str, Any]) -> float | None:
    """Images trained over the run's wall time (k-NN passes and start-up included): comparable
    whatever clock timed the batches, between runs of one schedule."""
    steps, wall, batch = run.get("steps"), run.get("wall_seconds"), profile.get("batch_size")
    return steps * batch / wall if steps and wall and batch else None


def seed_spread(res: dict[str, Any]) -> dict[str, float]:
    """Per method, the standard deviation over seeds of the final k-NN (points); only methods
    with two seeds or more: the yardstick of "within noise" when the baseline has one."""
    out = {}
    for method in {r["method"] for r in res["runs"]}:
        finals = [r["knn_acc1"] for r in res["runs"] if r["method"] == method and r["knn_acc1"]]
        if len(finals) > 1:
            out[method] = statistics.stdev(finals)
    return out


def markdown(cmp: dict[str, Any], baseline_name: str) -> str:
    """The comparison as a markdown section."""
    lines = [
        f"## Same seed against `{baseline_name}`",
        "",
        f"Baseline command: `{cmp['baseline_command']}`.",
        "",
        "Differs from the baseline in: "
        + ("; ".join(cmp["differences"]) if cmp["differences"] else "nothing")
        + ".",
    ]
    if cmp["unpaired"]:
        lines += ["", "Not in the baseline: " + ", ".join(cmp["unpaired"]) + "."]
    if not cmp["pairs"]:
        return "\n".join([*lines, "", "No (method, seed) run is in both."])
    rows = [
        [p["method"], p["seed"], e, f"{old:.2f}", f"{now:.2f}", f"{d:+.2f}"]
        for p in cmp["pairs"]
        for e, old, now, d in p["knn"]
    ]
    lines += ["", table(["method", "seed", "epoch", "baseline", "this", "difference"], rows)]
    rows = []
    for p in cmp["pairs"]:
        old_ips, now_ips = p["images_per_s"]
        metrics = ", ".join(
            f"{name[len('train_') :]} {a:.4f} -> {b:.4f}"
            for name, (a, b) in p["last_epoch_metrics"].items()
            if a is not None and b is not None
        )
        if p["speed_ratio"]:
            ratio = f"{p['speed_ratio']:.2f}x"
        elif all(p["images_per_s"]):
            ratio = "not comparable: clocks {} -> {}".format(*p["clocks"])
        else:
            ratio = "-"
        walls = [f"{w:.0f}" if w else "-" for w in p["wall_images_per_s"]]
        wall_ratio = f"{p['wall_ratio']:.2f}x" if p["wall_ratio"] else "-"
        rows.append(
            [p["method"], p["seed"], old_ips, now_ips, ratio, *walls, wall_ratio, metrics or "-"]
        )
    head = ["method", "seed", "img/s baseline", "img/s this", "ratio"]
    head += ["wall img/s baseline", "wall img/s this", "wall ratio", "last epoch"]
    lines += [
        "",
        table(head, rows),
        "",
        "img/s: training batches only, timed by `images_per_sec_clock` (results without it were "
        "timed on the host); wall img/s: images trained over the run's wall seconds, k-NN "
        "passes included.",
    ]
    spread = cmp["baseline_seed_spread"]
    yardstick = (
        "seed-to-seed std of the baseline's final k-NN: "
        + ", ".join(f"{m} {s:.2f}" for m, s in sorted(spread.items()))
        if spread
        else "the baseline has one seed per method, so no seed-to-seed spread is measured "
        "to judge it by"
    )
    biggest = cmp["largest_knn_difference"]
    lines += [
        "",
        f"Largest k-NN difference after training: {biggest:.2f} points ({yardstick})."
        if biggest is not None
        else f"No trained epoch evaluated in both ({yardstick}).",
    ]
    return "\n".join(lines)


def load_result(path: Path, label: str) -> dict[str, Any]:
    """An accuracy.py result (.json); ``SystemExit`` with an error line naming ``label`` (the
    option or argument that gave it) and the file when it cannot be read or is not one."""
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {label} {path}: {err}") from None
    if not isinstance(res, dict) or not isinstance(res.get("runs"), list) or "profile" not in res:
        raise SystemExit(f"error: {label} {path} is not an accuracy.py result (.json)")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("baseline", type=Path, help="accuracy.py results (.json) to compare against")
    p.add_argument("results", type=Path, help="accuracy.py results (.json) of the new setting")
    args = p.parse_args(argv)
    base, res = load_result(args.baseline, "baseline"), load_result(args.results, "results")
    print(markdown(compare(res, base), args.baseline.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
