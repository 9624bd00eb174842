"""In-memory data path (``data.format=memory``) against the PIL loader, same config, one run.

For one CIFAR-10 profile of ``accuracy.py`` (its recipe, backbone, batch and augmentations):

1. loader images/s (two augmented views per image, steady state after the first batch): the
   PIL loader with each ``--workers`` setting, and the in-memory path on the training device;
2. the bare training step's images/s (``mocov2plus`` and ``mixmask``) on synthetic batches of
   the same shape, on the same device (bf16 autocast on a GPU, as the runs train);
3. end to end on the CPU: the same steps fed by the PIL loader (the profile's workers) and by
   the in-memory path, interleaved round by round so that both see the same machine load.

On a GPU the PIL loader is skipped unless ``--pil-on-gpu`` (its CPU-bound augmentations are not
what that machine would train with). Results: ``benchmarks/results/memory_path[_<tag>].{json,md}``.

    python benchmarks/memory_path.py                         # CPU, cifar_cpu profile
    python benchmarks/memory_path.py --profile cifar_gpu     # on a GPU machine
    python benchmarks/memory_path.py --tiny --out-dir /tmp/x # seconds, for tests
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import PROFILES, TINY, data_overrides, run_cfg  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
    build_trainer,
    command_line,
    count_host_syncs,
    machine,
    publish,
    synthetic_batch,
    table,
    timed_loader,
)
from data import loader_speed  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from solo_mixmask.config.data_specs import data_spec  # noqa: E402
from solo_mixmask.data.loaders import build_train_loader  # noqa: E402

METHODS = ("mocov2plus", "mixmask")
#: The issue's goals: the data path alone >= 3x the training step's images/s on a GPU, and the
#: in-memory path not slower than the PIL loader end to end on the CPU.
GOAL_DATA_OVER_STEP = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=("cifar_cpu", "cifar_gpu"), default="cifar_cpu")
    p.add_argument("--data", default=None, help="CIFAR-10 folder or tars (as accuracy.py)")
    p.add_argument(
        "--per-class",
        type=int,
        default=500,
        help="images per class to read (the memory path decodes them all)",
    )
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batches", type=int, default=12, help="timed loader batches per setting")
    p.add_argument("--steps", type=int, default=4, help="timed training steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved end-to-end rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pil-on-gpu", action="store_true")
    p.add_argument("--tiny", action="store_true", help="tiny everything (a test that it runs)")
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.tiny:
        args.per_class, args.workers, args.batches, args.steps, args.rounds = 8, [0], 2, 1, 1
        args.threads = 1
    return args


def profile_cfg(args: argparse.Namespace, method: str, fmt: str) -> DictConfig:
    prof = PROFILES[args.profile]
    if args.tiny:
        prof = replace(prof, **{**TINY, "per_class": args.per_class})
    prof = replace(prof, per_class=args.per_class, data_format=fmt)
    prof = replace(prof, data=data_overrides(prof, args.data))
    cfg = run_cfg(prof, method, prof.seeds[0], None)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[return-value]


def device_and_autocast(args: argparse.Namespace) -> tuple[str, torch.dtype | None]:
    if args.profile == "cifar_gpu" and torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def memory_loader_speed(cfg: DictConfig, device: str, batches: int) -> dict[str, Any]:
    """Images/s of the in-memory loader on ``device`` (after the first batch, which also
    copies the images there); decoding is reported apart."""
    start = time.perf_counter()
    loader: Any = build_train_loader(data_spec(cfg))
    decode_s = time.perf_counter() - start
    loader.to_device(torch.device(device))
    out = {**timed_loader(loader, batches), "decode_s": decode_s, "images": len(loader.dataset)}
    if device == "cuda":  # making a batch should never wait for the GPU
        out["host_syncs_per_batch"] = count_host_syncs(lambda: next(iter(loader)))
    return out


def fed_steps(trainer: Any, source: Any, steps: int, device: str) -> float:
    """Images/s of ``steps`` bare training steps, each fed by ``next(source)``."""
    trainer.step(next(source))
    _sync(device)
    start = time.perf_counter()
    images = 0
    for _ in range(steps):
        batch = next(source)
        images += int(batch[0].shape[0])
        trainer.step(batch)
    _sync(device)
    return images / (time.perf_counter() - start)


def forever(loader: Any, device: str) -> Any:
    while True:
        for batch in loader:
            if device != "cpu" and not batch[0].is_cuda:
                batch = [batch[0].to(device), [v.to(device) for v in batch[1]], batch[2].to(device)]
            yield batch


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [
        "# In-memory data path vs PIL loader",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Profile {s['profile']} of accuracy.py (batch {s['batch_size']}, 32 px, 2 views, "
        f"{s['images']} training images), device {s['device']}, {s['threads']} torch "
        f"threads. Machine: {res['machine']}.",
        "",
    ]
    step_ref = res["steps"]["mixmask"]
    rows = [
        [
            f"PIL loader, {r['workers']} workers",
            f"{r['images_per_s']:.0f}",
            f"{r['images_per_s'] / step_ref:.2f}x",
        ]
        for r in res["pil"]
    ]
    m = res["memory"]
    rows.append(
        [
            f"in-memory path on {s['device']}",
            f"{m['images_per_s']:.0f}",
            f"{m['images_per_s'] / step_ref:.2f}x",
        ]
    )
    lines += [table(["loader", "img/s", "vs mixmask step img/s"], rows), ""]
    lines += [
        f"In-memory decode of the split: {m['decode_s']:.1f} s for {m['images']} images "
        "(once per process)."
    ]
    if "host_syncs_per_batch" in m:
        lines += [
            f"Host synchronisations while making one batch on the GPU: "
            f"{m['host_syncs_per_batch']['count']} {m['host_syncs_per_batch']['first']}."
        ]
    lines += [
        "",
        table(
            ["method", "bare step img/s (synthetic batches)"],
            [[k, f"{v:.1f}"] for k, v in res["steps"].items()],
        ),
    ]
    e2e = res.get("end_to_end")
    if e2e:
        lines += [
            "",
            f"End to end (mocov2plus steps fed by the loader, {s['rounds']} interleaved "
            f"rounds of {s['steps']} steps, medians): PIL loader with "
            f"{e2e['pil_workers']} workers {e2e['pil_images_per_s']:.1f} img/s, in-memory "
            f"path {e2e['memory_images_per_s']:.1f} img/s: ratio "
            f"**{e2e['memory_over_pil']:.2f}x**.",
        ]
    g = res["goals"]
    lines += ["", "## Goals", ""]
    lines.append(
        f"- data path alone >= {GOAL_DATA_OVER_STEP:.0f}x the mixmask step's img/s: "
        f"{'met' if g['data_over_step_met'] else 'NOT met'} "
        f"({g['data_over_step']:.2f}x)"
    )
    if "memory_not_slower" in g:
        lines.append(
            f"- in-memory path not slower than the PIL loader end to end: "
            f"{'met' if g['memory_not_slower'] else 'NOT met'} "
            f"({g['memory_over_pil']:.2f}x)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device, autocast = device_and_autocast(args)
    mem_cfg = profile_cfg(args, "mocov2plus", "memory")
    pil_cfg = profile_cfg(args, "mocov2plus", "image_folder")
    batch, crop = int(mem_cfg.optimizer.batch_size), int(mem_cfg.augmentations[0].crop_size)
    pil = []
    if device == "cpu" or args.pil_on_gpu:
        for w in args.workers:
            print(f"PIL loader, {w} workers", file=sys.stderr, flush=True)
            pil.append(loader_speed(pil_cfg, w, args.batches))
    print("in-memory loader", file=sys.stderr, flush=True)
    memory = memory_loader_speed(mem_cfg, device, args.batches)
    steps: dict[str, float] = {}
    for method in METHODS:
        print(f"bare step, {method}", file=sys.stderr, flush=True)
        trainer = build_trainer(profile_cfg(args, method, "memory"), device, autocast)
        synth = synthetic_batch(batch, crop)
        synth = [synth[0].to(device), [v.to(device) for v in synth[1]], synth[2].to(device)]
        steps[method] = fed_steps(trainer, iter(lambda s=synth: s, None), args.steps, device)
    end_to_end = None
    if device == "cpu":
        trainer = build_trainer(mem_cfg, device, autocast)
        workers = int(PROFILES[args.profile].workers if not args.tiny else 0)
        with open_dict(pil_cfg):
            pil_cfg.data.num_workers = workers
        sources = {
            "pil": forever(build_train_loader(data_spec(pil_cfg)), device),
            "memory": forever(build_train_loader(data_spec(mem_cfg)), device),
        }
        speeds: dict[str, list[float]] = {"pil": [], "memory": []}
        for r in range(args.rounds):
            for name in ("pil", "memory") if r % 2 == 0 else ("memory", "pil"):
                print(f"end to end, round {r + 1}, {name}", file=sys.stderr, flush=True)
                speeds[name].append(fed_steps(trainer, sources[name], args.steps, device))
        pil_s, mem_s = statistics.median(speeds["pil"]), statistics.median(speeds["memory"])
        end_to_end = {
            "pil_workers": workers,
            "pil_images_per_s": pil_s,
            "memory_images_per_s": mem_s,
            "memory_over_pil": mem_s / pil_s,
            "rounds": speeds,
        }
    goals: dict[str, Any] = {"data_over_step": memory["images_per_s"] / steps["mixmask"]}
    goals["data_over_step_met"] = goals["data_over_step"] >= GOAL_DATA_OVER_STEP
    if end_to_end:
        goals["memory_over_pil"] = end_to_end["memory_over_pil"]
        goals["memory_not_slower"] = end_to_end["memory_over_pil"] >= 1.0
    res = {
        "command": command_line(),
        "settings": {
            "profile": args.profile,
            "batch_size": batch,
            "device": device,
            "images": memory["images"],
            "threads": args.threads,
            "steps": args.steps,
            "rounds": args.rounds,
            "tiny": args.tiny,
        },
        "machine": machine(),
        "pil": pil,
        "memory": memory,
        "steps": steps,
        "end_to_end": end_to_end,
        "goals": goals,
    }
    paths = publish("memory_path", args.tag, res, markdown(res), args.out_dir)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return res


if __name__ == "__main__":
    main()
