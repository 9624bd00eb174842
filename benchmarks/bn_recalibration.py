"""Do BatchNorm statistics from mixed batches cost MixMask k-NN accuracy? (hypothesis H8)

In every MixMask step the mixed images are the last batch through the online backbone, so
about half of its BatchNorm running statistics (what eval mode uses: the k-NN monitor, the
linear probe, transfer) come from patchworks of two images; MoCo's come from clean views only.
For each run folder given, this script computes the k-NN top-1 of the last checkpoint's
backbone on the run's own k-NN images (same k, T, data path) twice: as trained, then after
re-estimating every BatchNorm layer's running mean and variance from clean images (the eval
views of the k-NN memory, one pass in train mode with a cumulative average, no gradient; no
weight changes). If mixed statistics hurt, recalibration lifts MixMask's k-NN more than MoCo's.

    python benchmarks/bn_recalibration.py RUN_DIR [RUN_DIR ...] --tag cifar_cpu

Results: ``benchmarks/results/bn_recalibration[_<tag>].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command_line, machine, publish, table  # noqa: E402

from solo_mixmask.checkpoints.backbone import load_backbone  # noqa: E402
from solo_mixmask.config.data_specs import data_spec  # noqa: E402
from solo_mixmask.config.schema import select  # noqa: E402
from solo_mixmask.core.knn import knn_accuracy  # noqa: E402
from solo_mixmask.data.loaders import build_knn_loaders, num_classes  # noqa: E402
from solo_mixmask.eval.features import (  # noqa: E402
    eval_config,
    eval_device,
    extract_features,
    prepare_backbone,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (checkpoints/last.ckpt)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    return p.parse_args(argv)


@torch.no_grad()
def recalibrate(model: nn.Module, loader: Any, device: torch.device, channels_last: bool) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average)
    from one pass over ``loader``'s images in train mode; returns the images seen."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the whole pass
    model.train()
    seen = 0
    for x, _ in loader:
        x = x.to(device)
        model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        seen += len(x)
    model.eval()
    return seen


def knn_of(
    model: nn.Module,
    loaders: tuple[Any, Any],
    device: torch.device,
    channels_last: bool,
    classes: int,
    k: int,
    t: float,
) -> float:
    train_f, train_y = extract_features(model, loaders[0], device, channels_last)
    val_f, val_y = extract_features(model, loaders[1], device, channels_last)
    return knn_accuracy(train_f, train_y, val_f, val_y, classes, k, t)[0]


def one_run(run_dir: Path, device: torch.device) -> dict[str, Any]:
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    lb = load_backbone(checkpoint)
    cfg = eval_config(lb, checkpoint, [])
    channels_last = bool(select(cfg, "performance.channels_last", False))
    k, t = int(select(cfg, "knn_eval.k", 200)), float(select(cfg, "knn_eval.T", 0.1))
    model = prepare_backbone(lb, device, channels_last)
    spec = data_spec(cfg)
    loaders = build_knn_loaders(spec)
    for loader in loaders:
        if hasattr(loader, "to_device"):
            loader.to_device(device)
    classes = num_classes(spec)
    before = knn_of(model, loaders, device, channels_last, classes, k, t)
    images = recalibrate(model, loaders[0], device, channels_last)
    after = knn_of(model, loaders, device, channels_last, classes, k, t)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "run_dir": str(run_dir),
        "method": summary.get("method"),
        "seed": (lb.cfg or {}).get("seed"),
        "online_knn_acc1": summary.get("knn_acc1"),
        "knn_acc1": before,
        "knn_acc1_recalibrated": after,
        "gain": after - before,
        "recalibration_images": images,
        "k": k,
        "T": t,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = eval_device(args.device)
    rows = [one_run(r, device) for r in args.runs]
    lines = [
        "# BatchNorm statistics re-estimated from clean images (hypothesis H8)",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {machine()}.",
        "",
        table(
            ["run", "method", "seed", "k-NN as trained %", "after re-estimating BN %", "gain"],
            [
                [
                    Path(r["run_dir"]).name,
                    r["method"],
                    r["seed"],
                    f"{r['knn_acc1']:.2f}",
                    f"{r['knn_acc1_recalibrated']:.2f}",
                    f"{r['gain']:+.2f}",
                ]
                for r in rows
            ],
        ),
    ]
    res = {"command": command_line(), "machine": machine(), "runs": rows}
    publish("bn_recalibration", args.tag, res, "\n".join(lines), args.out_dir)
    return res


if __name__ == "__main__":
    main()
