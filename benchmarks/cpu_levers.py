"""CPU training step, former path against the new ``performance.*`` defaults, interleaved.

Former: ``optimizer_impl=default`` (torch's for-loop on the CPU) and ``ema_foreach_lerp=false``
(two foreach calls per momentum pair). New: the defaults (foreach SGD, one foreach lerp).
A step is ``training_step`` + backward + the model's own optimiser + its EMA of all pairs.

    python benchmarks/cpu_levers.py --batch 32 --crop 32 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    TINY_BACKBONE,
    EngineStep,
    interleaved,
    machine,
    method_cfg,
    synthetic_batch,
)


def job(method: str, old: bool, args: argparse.Namespace):
    cfg = method_cfg(
        method,
        backbone=TINY_BACKBONE if args.tiny else {"name": "resnet18", "kwargs": {}},
        batch_size=args.batch,
        crop=args.crop,
        method_kwargs={"proj_hidden_dim": 512, "proj_output_dim": 128, "queue_size": 4096},
        cifar_stem=True,
    )
    cfg.performance.optimizer_impl = "default" if old else "auto"
    cfg.performance.ema_foreach_lerp = not old
    step = EngineStep(cfg)
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
        for old in (True, False):
            jobs[f"{method} {'former' if old else 'new'}"] = job(method, old, args)
    times = interleaved(jobs, args.rounds, 2, progress=False)
    print(machine())
    for method in ("mocov2plus", "mixmask"):
        a, b = times[f"{method} former"], times[f"{method} new"]
        ratio = statistics.median([x / y for x, y in zip(a, b)])
        print(
            f"{method}: former {1000 * statistics.median(a):.1f} ms, new "
            f"{1000 * statistics.median(b):.1f} ms, paired former/new {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
