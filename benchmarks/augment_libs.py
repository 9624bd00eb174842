"""Which library should augment the in-memory path's batches? Ours (torch ops) against kornia.

The same MoCo v2 "aug-plus" pipeline at 32 px (random resized crop 0.2-1, colour jitter
0.4/0.4/0.4/0.1 with p 0.8, grayscale 0.2, flip 0.5, normalisation; blur off as in our CIFAR
configs) on the same uint8 batch, timed interleaved (median of ``--repeats`` rounds):

- ``solo_mixmask``: :class:`solo_mixmask.data.batched_augmentations.BatchAugment`, parameters
  from an explicit generator (what ``data.format=memory`` runs);
- ``kornia``: ``kornia.augmentation`` with the same settings (``same_on_batch=False``; its
  parameters come from the global RNG). Skipped with a note where kornia is not installed
  (it is not a dependency of this project: ``pip install kornia`` to measure it).

DALI is not in the race: its pipelines start from encoded files or external-source callbacks,
its augmentation speed needs a GPU, and its wheel (~425 MB) cannot travel to the lent GPU
machines. Results: ``benchmarks/results/augment_libs[_<tag>].{json,md}``.

    python benchmarks/augment_libs.py
    python benchmarks/augment_libs.py --tiny --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command_line, machine, publish, table  # noqa: E402

from solo_mixmask.config.augmentation_specs import parse_pipeline  # noqa: E402
from solo_mixmask.data.batched_augmentations import BatchAugment  # noqa: E402

AUG_PLUS_32 = {"crop_size": 32, "num_crops": 1, "gaussian_prob": 0.0}
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.tiny:
        args.batch, args.repeats, args.threads = 16, 2, 1
    return args


def ours(device: str) -> Any:
    spec = parse_pipeline(AUG_PLUS_32, "augmentations[0]", *CIFAR_STATS)
    augment = BatchAugment(spec)
    gen = torch.Generator(device=device).manual_seed(0)
    return lambda images: augment(images, gen)


def kornia_pipeline(device: str) -> Any | None:
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    mean = torch.tensor(CIFAR_STATS[0], device=device)
    std = torch.tensor(CIFAR_STATS[1], device=device)
    pipe = torch.nn.Sequential(
        K.RandomResizedCrop((32, 32), scale=(0.2, 1.0), resample="bicubic"),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomHorizontalFlip(p=0.5),
        K.Normalize(mean, std),
    ).to(device)
    return lambda images: pipe(images.float().div_(255.0))


def timed(fn: Any, images: torch.Tensor, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(images)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, device=args.device)
    contenders = {"solo_mixmask": ours(args.device)}
    k = kornia_pipeline(args.device)
    if k is not None:
        contenders["kornia"] = k
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up
        fn(images)
    for r in range(args.repeats):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            times[name].append(timed(contenders[name], images, args.device))
    rows, results = [], {}
    base = statistics.median(times["solo_mixmask"])
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {"median_s": med, "images_per_s": args.batch / med, "times_s": ts}
        rows.append([name, f"{1000 * med:.1f}", f"{args.batch / med:.0f}", f"{med / base:.2f}"])
    lines = [
        "# Batched augmentation libraries (aug-plus, 32 px)",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Batch {args.batch} uint8 images, device {args.device}, {args.threads} torch "
        f"threads, median of {args.repeats} interleaved rounds. Machine: {machine()}.",
        "",
        table(["library", "ms per batch", "img/s", "time vs solo_mixmask"], rows),
    ]
    if k is None:
        lines += ["", "kornia is not installed here: not measured (`pip install kornia`)."]
    res = {
        "command": command_line(),
        "machine": machine(),
        "device": args.device,
        "batch": args.batch,
        "results": results,
        "kornia_installed": k is not None,
    }
    publish("augment_libs", args.tag, res, "\n".join(lines), args.out_dir)
    return res


if __name__ == "__main__":
    main()
