"""CPU training-step time of every method, interleaved in one process, against the FLOP ideal.

Each round times, one after the other: a full training step (forward passes, losses, queue
update, backward, SGD, EMA) of every method; a bare "extra pass" (one more query forward +
backward through the same backbone and projector, i.e. what a mixed query costs at best); a
MoCo step with that extra pass added to its loss (the same ideal, measured inside one step);
and the mask generation + mixing of the MixMask branch (and Un-Mix's mixing) alone.

The FLOP-ideal ratio of a method with k mixed queries per step is
``(moco step + k * extra pass) / moco step``. Printed and written to
``benchmarks/results/step_time.{json,md}``: each median, each ratio to mocov2plus, the ideal,
the gap between them, and the share of the MixMask step spent on masks + mixing.

    python benchmarks/step_time.py                 # ResNet-18 CIFAR stem, batch 64, 32 px
    python benchmarks/step_time.py --symmetric     # MoCo V2+ (symmetric) family
    python benchmarks/step_time.py --smoke --out-dir /tmp/x   # seconds, for tests
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    EXTRA_PASSES,
    MOCO_FAMILY,
    RESULTS,
    TINY_BACKBONE,
    build_trainer,
    command_line,
    config_method_kwargs,
    extra_pass_job,
    extra_pass_loss,
    interleaved,
    machine,
    mask_jobs,
    mask_share,
    method_cfg,
    summary,
    synthetic_batch,
    table,
    write_results,
)

from solo_mixmask.core.mixing import reversed_partner  # noqa: E402

METHODS_DEFAULT = ("mocov2plus", "mixmask", "unmix", "unmix_mixmask", "byol")
GOAL_GAP = 0.05  # mixmask / moco within 5% of its FLOP-ideal ratio
GOAL_MASK_SHARE = 0.03  # masks + mixing under 3% of the mixmask step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS_DEFAULT))
    p.add_argument("--backbone", default="resnet18")
    p.add_argument(
        "--channels",
        type=int,
        nargs=4,
        default=None,
        help="ResNet stage widths (default: the model's own)",
    )
    p.add_argument("--stem-width", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inner", type=int, default=5, help="repeats of the mask+mixing timing")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--symmetric", action="store_true", help="MoCo V2+ family (default: v2)")
    p.add_argument(
        "--config-dataset",
        default="cifar",
        help="method_kwargs come from configs/pretrain/<this>/<method>.yaml",
    )
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--stem", default=None, help="results file name (default step_time[_sym])")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny backbone, batch 8, 16 px, 2 rounds (a test that it runs)",
    )
    args = p.parse_args(argv)
    if "mocov2plus" not in args.methods:
        args.methods.insert(0, "mocov2plus")
    if args.smoke:
        args.batch, args.crop, args.rounds, args.warmup, args.inner = 8, 16, 2, 1, 1
        args.threads = 1
    return args


def _kwargs(args: argparse.Namespace, method: str) -> dict[str, Any]:
    kw = config_method_kwargs(args.config_dataset, method)
    if method in MOCO_FAMILY:
        kw["symmetric"] = bool(args.symmetric)
    if args.smoke:
        for key in ("proj_hidden_dim", "pred_hidden_dim"):
            if key in kw:
                kw[key] = 32
        kw["proj_output_dim"] = 16
        if "queue_size" in kw:
            kw["queue_size"] = 64
        if "grid_size" in kw:
            kw["grid_size"] = min(kw["grid_size"], args.crop)
    return kw


def _backbone(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        return dict(TINY_BACKBONE)
    kwargs: dict[str, Any] = {}
    if args.channels:
        kwargs["channels"] = list(args.channels)
    if args.stem_width:
        kwargs["stem_width"] = args.stem_width
    return {"name": args.backbone, "kwargs": kwargs}


def build_jobs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(jobs for :func:`interleaved`, the trainers by method)."""
    backbone = _backbone(args)
    trainers = {
        m: build_trainer(
            method_cfg(
                m,
                backbone=backbone,
                batch_size=args.batch,
                crop=args.crop,
                method_kwargs=_kwargs(args, m),
                channels_last=not args.no_channels_last,
                cifar_stem=args.crop <= 64,
            )
        )
        for m in args.methods
    }
    batch = synthetic_batch(args.batch, args.crop)
    x = batch[1][0]
    moco = trainers["mocov2plus"]
    jobs: dict[str, Any] = {m: (lambda t=t: t.step(batch)) for m, t in trainers.items()}

    def moco_plus_extra() -> None:
        """A MoCo step whose loss also holds one more query pass (the ideal, in one step)."""
        moco.apply(moco.forward_loss(batch) + extra_pass_loss(moco, x))

    jobs["extra_pass"] = extra_pass_job(moco, x)
    jobs["moco_plus_extra"] = moco_plus_extra
    partner = reversed_partner(args.batch)
    mix_model = _mask_model(trainers)
    if mix_model is not None:
        jobs.update(mask_jobs(mix_model, x, partner, args.rounds + args.warmup, args.inner))
    unmix_model = next(
        (trainers[m].model for m in ("unmix", "unmix_mixmask") if m in trainers), None
    )
    if unmix_model is not None:
        mixer = next(m for m, _ in unmix_model.mixers if m.name == "unmix")

        def unmix_mixing() -> None:
            for _ in range(args.inner):
                mixer.mix(x, partner, unmix_model.generators.host())

        jobs["unmix_mixing"] = unmix_mixing
    return jobs, trainers


def _mask_model(trainers: dict[str, Any]) -> Any:
    """The model whose MixMask branch the mask jobs time (mixmask, else unmix_mixmask)."""
    return next((trainers[m].model for m in ("mixmask", "unmix_mixmask") if m in trainers), None)


def analyse(
    times: dict[str, list[float]], args: argparse.Namespace, mask_model: Any = None
) -> dict[str, Any]:
    """Medians, ratios to mocov2plus, FLOP-ideal ratios and the mask share."""
    for name in ("masks_mixing", "unmix_mixing"):  # per call, like mask_bank_refill
        if name in times:
            times[name] = [t / args.inner for t in times[name]]
    stats = {name: summary(ts) for name, ts in times.items()}
    moco = stats["mocov2plus"]["median_s"]
    extra = stats["extra_pass"]["median_s"]
    combined_extra = stats["moco_plus_extra"]["median_s"] - moco
    methods: dict[str, Any] = {}
    for m in args.methods:
        s = dict(stats[m])
        paired = [t / b for t, b in zip(times[m], times["mocov2plus"])]
        s["ratio_to_mocov2plus"] = s["median_s"] / moco
        s["ratio_paired_median"] = statistics.median(paired)
        s["images_per_s"] = args.batch / s["median_s"]
        if m in EXTRA_PASSES:
            k = EXTRA_PASSES[m]
            s["extra_query_passes"] = k
            s["ideal_ratio"] = (moco + k * extra) / moco
            s["ideal_ratio_in_step"] = (moco + k * combined_extra) / moco
            s["gap_to_ideal"] = s["ratio_to_mocov2plus"] / s["ideal_ratio"] - 1
            s["gap_to_ideal_in_step"] = s["ratio_to_mocov2plus"] / s["ideal_ratio_in_step"] - 1
        methods[m] = s
    out: dict[str, Any] = {
        "command": command_line(),
        "settings": {
            "backbone": _backbone(args),
            "batch": args.batch,
            "crop": args.crop,
            "views": 2,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "threads": args.threads,
            "channels_last": not args.no_channels_last,
            "variant": "symmetric (MoCo V2+)" if args.symmetric else "asymmetric (MoCo v2)",
            "method_kwargs": {m: _kwargs(args, m) for m in args.methods},
            "optimizer": "SGD momentum 0.9 (same for every method)",
            "smoke": args.smoke,
        },
        "machine": machine(),
        "methods": methods,
        "references": {n: stats[n] for n in stats if n not in methods},
        "times_s": times,
    }
    goals: dict[str, Any] = {}
    if "mixmask" in methods:
        gap = methods["mixmask"]["gap_to_ideal"]
        goals["mixmask_gap_to_ideal"] = gap
        goals["mixmask_within_5pct_of_ideal"] = abs(gap) <= GOAL_GAP
    if "masks_mixing" in stats and "mixmask" in methods and mask_model is not None:
        cost = mask_share(stats, mask_model, args.batch, methods["mixmask"]["median_s"])
        goals["mask_mixing_per_step"] = cost
        goals["mask_mixing_share_of_mixmask_step"] = cost["share_of_step"]
        goals["mask_mixing_under_3pct"] = cost["share_of_step"] < GOAL_MASK_SHARE
    out["goals"] = goals
    return out


def markdown(res: dict[str, Any]) -> str:
    s, m = res["settings"], res["methods"]
    bb = s["backbone"]
    lines = [
        "# Training-step time on CPU (interleaved, median of rounds)",
        "",
        f"Command: `{res['command']}`",
        "",
        f"{bb['name']} {bb.get('kwargs') or ''} (CIFAR stem: {s['crop'] <= 64}), batch "
        f"{s['batch']}, two {s['crop']}x{s['crop']} views, channels_last={s['channels_last']}, "
        f"{s['threads']} threads, {s['rounds']} rounds after {s['warmup']} warm-up; MoCo "
        f"family {s['variant']}; {s['optimizer']}. Machine: {res['machine']}.",
        "",
    ]
    rows = []
    for name, v in m.items():
        ideal = f"{v['ideal_ratio']:.3f}" if "ideal_ratio" in v else "-"
        ideal2 = f"{v['ideal_ratio_in_step']:.3f}" if "ideal_ratio_in_step" in v else "-"
        gap = f"{100 * v['gap_to_ideal']:+.1f}%" if "gap_to_ideal" in v else "-"
        rows.append(
            [
                name,
                f"{v['median_s']:.3f}",
                f"{v['q1_s']:.3f}-{v['q3_s']:.3f}",
                f"{v['images_per_s']:.1f}",
                f"{v['ratio_to_mocov2plus']:.3f}",
                f"{v['ratio_paired_median']:.3f}",
                ideal,
                ideal2,
                gap,
            ]
        )
    lines.append(
        table(
            [
                "method",
                "median s",
                "IQR s",
                "img/s",
                "ratio to moco",
                "paired ratio",
                "FLOP-ideal",
                "ideal (in one step)",
                "gap to ideal",
            ],
            rows,
        )
    )
    lines.append("")
    refs = res["references"]
    lines.append(
        "References timed in the same rounds: "
        + ", ".join(f"{n} {v['median_s'] * 1000:.1f} ms" for n, v in refs.items())
        + "."
    )
    lines.append("")
    lines.append(
        "FLOP-ideal = (moco step + k x extra pass) / moco step, k = mixed queries per "
        'step (mixmask, unmix: 1; unmix_mixmask: 2). "in one step": the extra pass '
        "measured inside a MoCo step (moco_plus_extra - mocov2plus)."
    )
    g = res["goals"]
    if g:
        lines += ["", "## Goals", ""]
        if "mixmask_gap_to_ideal" in g:
            lines.append(
                f"- mixmask / mocov2plus within 5% of the FLOP-ideal ratio: "
                f"{'met' if g['mixmask_within_5pct_of_ideal'] else 'NOT met'} "
                f"(gap {100 * g['mixmask_gap_to_ideal']:+.1f}%)"
            )
        if "mask_mixing_share_of_mixmask_step" in g:
            c = g["mask_mixing_per_step"]
            lines.append(
                f"- mask generation + mixing under 3% of the mixmask step: "
                f"{'met' if g['mask_mixing_under_3pct'] else 'NOT met'} "
                f"({100 * g['mask_mixing_share_of_mixmask_step']:.2f}%: masks taken from "
                f"the bank + mixing {1000 * c['take_and_mix_s']:.2f} ms, bank refills "
                f"amortised {1000 * c['refill_per_step_s']:.3f} ms per step)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    jobs, trainers = build_jobs(args)
    print(f"timing {', '.join(jobs)}: {args.rounds} rounds", file=sys.stderr)
    times = interleaved(jobs, args.rounds, args.warmup)
    res = analyse(times, args, _mask_model(trainers))
    stem = args.stem or ("step_time_symmetric" if args.symmetric else "step_time")
    text = markdown(res)
    paths = write_results(stem, res, text, args.out_dir)
    print(text)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return res


if __name__ == "__main__":
    main()
