"""CPU training step, former path against the new ``performance.*`` defaults, interleaved.

Former: ``optimizer_impl=default`` (torch's for-loop on the CPU), ``ema_foreach_lerp=false``
(two foreach calls per momentum pair) and plain ``BatchNorm2d`` layers where ``bn_splits`` is 1
(before 2026-12-06 they were not swapped for one-group ``SplitBatchNorm2d``). New: the defaults
(foreach SGD, one foreach lerp, one-group split layers). Batched: the defaults with
``performance.batch_online_forwards=true`` (MixMask's view and mixed view in one backbone call).
A step is ``training_step`` + backward + the model's own optimiser + its EMA of all pairs; the
configs' own ``bn_splits`` (1).

    python benchmarks/cpu_levers.py --batch 32 --crop 32 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    TINY_BACKBONE,
    EngineStep,
    interleaved,
    machine,
    method_cfg,
    synthetic_batch,
)

from solo_mixmask.core.batch_norm import SplitBatchNorm2d  # noqa: E402


def plain_batch_norms(module: nn.Module) -> None:
    """Swap one-group split layers back to the ``nn.BatchNorm2d`` they share tensors with."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SplitBatchNorm2d) and child.num_splits == 1:
                plain = nn.BatchNorm2d(child.num_features, child.eps, child.momentum)
                for key, tensor in [
                    *child.named_parameters(recurse=False),
                    *child.named_buffers(recurse=False),
                ]:
                    setattr(plain, key, tensor)
                setattr(parent, name, plain.train(child.training))


def job(method: str, variant: str, args: argparse.Namespace):
    cfg = method_cfg(
        method,
        backbone=TINY_BACKBONE if args.tiny else {"name": "resnet18", "kwargs": {}},
        batch_size=args.batch,
        crop=args.crop,
        method_kwargs={"proj_hidden_dim": 512, "proj_output_dim": 128, "queue_size": 4096},
        cifar_stem=True,
    )
    old = variant == "former"
    cfg.performance.optimizer_impl = "default" if old else "auto"
    cfg.performance.ema_foreach_lerp = not old
    cfg.performance.batch_online_forwards = variant == "batched"
    step = EngineStep(cfg)
    if old:
        for backbone in (step.model.backbone, step.model.momentum_backbone):
            plain_batch_norms(backbone)
    batch = synthetic_batch(args.batch, args.crop)
    return lambda: step(batch)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    jobs = {}
    for method in ("mocov2plus", "mixmask"):
        for variant in ("former", "new", "batched"):
            jobs[f"{method} {variant}"] = job(method, variant, args)
    times = interleaved(jobs, args.rounds, 2, progress=False)
    print(machine())
    for method in ("mocov2plus", "mixmask"):
        new = times[f"{method} new"]
        line = [f"{method}: new {1000 * statistics.median(new):.1f} ms"]
        for variant in ("former", "batched"):
            other = times[f"{method} {variant}"]
            ratio = statistics.median([x / y for x, y in zip(other, new)])
            line.append(
                f"{variant} {1000 * statistics.median(other):.1f} ms (paired {variant}/new "
                f"{ratio:.3f})"
            )
        print(", ".join(line))


if __name__ == "__main__":
    main()
