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

from common import TINY_BACKBONE, interleaved, machine, method_cfg  # noqa: E402

from solo_mixmask.methods import METHODS  # noqa: E402
from solo_mixmask.utils.momentum import ema_update_pairs  # noqa: E402


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
    torch.manual_seed(0)
    model = METHODS[method](cfg).train()
    opt = model.build_optimizer()
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(args.batch, 3, args.crop, args.crop, generator=g) for _ in range(2)]
    batch = [torch.arange(args.batch), views, torch.randint(0, 10, (args.batch,), generator=g)]

    def step() -> None:
        out = model.training_step(batch, 0)
        loss = out if isinstance(out, torch.Tensor) else out["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update_pairs(model.momentum_pairs, 0.99, not old)

    return step


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
