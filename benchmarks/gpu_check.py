"""GPU check: step throughput, peak memory and host syncs of MoCo v2 / MixMask / Un-Mix+MixMask,
and the DALI loader's throughput. Run through ``benchmarks/gpu_check.sh`` (at most 8 minutes
on one H100).

1. ResNet-50 at 224 px, batch 256, two views, bf16 autocast, channels_last, synthetic tensors
   on the GPU: images/s (median of interleaved rounds, CUDA-synchronised) and peak allocated
   GPU memory of a full training step (forward, backward, SGD, EMA, queue) per method; the
   bare extra query pass and the MixMask masks + mixing in the same rounds (FLOP-ideal ratio
   and mask share as in ``step_time.py``);
2. host synchronisations inside one training step of each method, counted with
   ``torch.cuda.set_sync_debug_mode("warn")`` (the step should have none);
3. with ``--compile``: the mixmask step with ``performance.compile=true`` (inductor) against
   the eager one, interleaved, and the seconds the first compiled steps took;
4. the DALI pipeline (``data.format=dali``, GPU decoding + augmentation, two 224-px views)
   on a generated JPEG folder, against the PyTorch ImageFolder loader with as many workers
   as CPU cores; skipped with the reason when DALI is not installed.

``--tiny`` runs every part on the CPU with a tiny network (DALI on its CPU pipeline): a test
that the script works, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    EXTRA_PASSES,
    RESULTS,
    TINY_BACKBONE,
    build_trainer,
    command_line,
    config_method_kwargs,
    count_host_syncs,
    cuda_sync,
    extra_pass_job,
    interleaved,
    machine,
    make_jpeg_folder,
    mask_jobs,
    mask_share,
    method_cfg,
    summary,
    synthetic_batch,
    timed_loader,
    write_results,
)
from omegaconf import OmegaConf  # noqa: E402

from solo_mixmask.core.mixing import reversed_partner  # noqa: E402

METHODS = ("mocov2plus", "mixmask", "unmix_mixmask")
CONFIG_NAMES = {"mocov2plus": "mocov2", "mixmask": "mixmask", "unmix_mixmask": "unmix_mixmask"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dali-images", type=int, default=1024)
    p.add_argument("--dali-size", type=int, default=400, help="side of the generated JPEGs")
    p.add_argument("--dali-batches", type=int, default=12)
    p.add_argument(
        "--time-limit",
        type=float,
        default=420.0,
        help="seconds; later parts are skipped when it runs out",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the mixmask step under torch.compile (inductor)",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--tiny", action="store_true", help="CPU, tiny network: a test that it runs")
    args = p.parse_args(argv)
    if args.tiny:
        torch.set_num_threads(1)
        args.batch, args.crop, args.rounds, args.warmup = 8, 32, 2, 1
        args.dali_images, args.dali_size, args.dali_batches = 24, 48, 2
    if args.out is None:
        out = os.environ.get("OUT")
        args.out = (Path(out) if out else RESULTS) / "gpu_check.json"
    return args


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _kwargs(method: str, tiny: bool) -> dict[str, Any]:
    kw = config_method_kwargs("imagenet", CONFIG_NAMES[method])
    if tiny:
        kw.update(proj_hidden_dim=32, proj_output_dim=16, queue_size=64)
    return kw


def _trainer(args: argparse.Namespace, method: str, compile_backend: str | None = None) -> Any:
    """``method``'s BareTrainer on this device (bf16 autocast on CUDA) with the check's settings."""
    device = _device()
    backbone = dict(TINY_BACKBONE) if args.tiny else {"name": args.backbone, "kwargs": {}}
    cfg = method_cfg(
        method,
        backbone=backbone,
        batch_size=args.batch,
        crop=args.crop,
        method_kwargs=_kwargs(method, args.tiny),
        cifar_stem=args.crop <= 64,
        compile_backend=compile_backend,
    )
    return build_trainer(cfg, device, torch.bfloat16 if device == "cuda" else None)


def build(args: argparse.Namespace) -> dict[str, Any]:
    device = _device()
    trainers = {m: _trainer(args, m) for m in METHODS}
    return {"trainers": trainers, "batch": synthetic_batch(args.batch, args.crop, device=device)}


def _peak_memory_job(job: Any, peaks: dict[str, int], name: str) -> Any:
    def run() -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        job()
        if torch.cuda.is_available():
            peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())

    return run


def step_throughput(args: argparse.Namespace, built: dict[str, Any]) -> dict[str, Any]:
    trainers, batch = built["trainers"], built["batch"]
    x, moco, mix = batch[1][0], built["trainers"]["mocov2plus"], built["trainers"]["mixmask"]
    partner = reversed_partner(args.batch, x.device)
    peaks: dict[str, int] = {}
    jobs = {m: _peak_memory_job(lambda t=t: t.step(batch), peaks, m) for m, t in trainers.items()}

    jobs["extra_pass"] = extra_pass_job(moco, x)
    jobs.update(mask_jobs(mix.model, x, partner, args.rounds + args.warmup))
    times = interleaved(jobs, args.rounds, args.warmup, sync=cuda_sync)
    stats = {n: summary(t) for n, t in times.items()}
    base, extra = stats["mocov2plus"]["median_s"], stats["extra_pass"]["median_s"]
    out: dict[str, Any] = {}
    for m in METHODS:
        s = stats[m]
        k = EXTRA_PASSES[m]
        out[m] = {
            **s,
            "images_per_s": args.batch / s["median_s"],
            "peak_gpu_memory_gb": peaks.get(m, 0) / 2**30,
            "ratio_to_mocov2plus": s["median_s"] / base,
            "ideal_ratio": (base + k * extra) / base,
            "paired_ratio": statistics.median(
                [a / b for a, b in zip(times[m], times["mocov2plus"])]
            ),
        }
        out[m]["gap_to_ideal"] = out[m]["ratio_to_mocov2plus"] / out[m]["ideal_ratio"] - 1
    out["references"] = {n: stats[n] for n in ("extra_pass", "masks_mixing", "mask_bank_refill")}
    out["mask_mixing_per_step"] = mask_share(
        stats, mix.model, args.batch, stats["mixmask"]["median_s"]
    )
    out["mask_mixing_share_of_mixmask_step"] = out["mask_mixing_per_step"]["share_of_step"]
    return out


def compiled_step(args: argparse.Namespace, built: dict[str, Any]) -> dict[str, Any]:
    """The mixmask step with ``performance.compile`` (inductor) against the eager one."""
    compiled = _trainer(args, "mixmask", compile_backend="inductor")
    batch, eager = built["batch"], built["trainers"]["mixmask"]
    first = []
    for _ in range(3):  # compilation (forward, backward, recompiles) happens in these steps
        cuda_sync()
        start = time.perf_counter()
        compiled.step(batch)
        cuda_sync()
        first.append(time.perf_counter() - start)
    times = interleaved(
        {"eager": lambda: eager.step(batch), "compiled": lambda: compiled.step(batch)},
        args.rounds,
        1,
        sync=cuda_sync,
    )
    stats = {n: summary(t) for n, t in times.items()}
    return {
        **stats,
        "first_steps_s": first,
        "speedup": stats["eager"]["median_s"] / stats["compiled"]["median_s"],
        "compiled_images_per_s": args.batch / stats["compiled"]["median_s"],
    }


def host_syncs(built: dict[str, Any]) -> dict[str, Any]:
    """Synchronising CUDA calls in one training step (forward, backward, SGD, EMA) per method."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    out: dict[str, Any] = {}
    for m, trainer in built["trainers"].items():
        cuda_sync()
        out[m] = count_host_syncs(lambda t=trainer: t.step(built["batch"]))
    return out


def dali_loader(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of the DALI pipeline and of the PyTorch ImageFolder loader on generated JPEGs."""
    from solo_mixmask.config.data_specs import data_spec
    from solo_mixmask.data.dali import dali_available, import_dali
    from solo_mixmask.data.loaders import build_train_loader

    if not dali_available():
        try:
            import_dali()
        except Exception as err:  # the DataError with the install hint
            return {"skipped": str(err)}
    device = "gpu" if torch.cuda.is_available() else "cpu"
    cores = os.cpu_count() or 2
    out: dict[str, Any] = {"device": device}
    with tempfile.TemporaryDirectory(prefix="gpu_check_jpegs_") as tmp:
        start = time.perf_counter()
        folder = make_jpeg_folder(Path(tmp), args.dali_images, args.dali_size)
        out["generate_s"] = time.perf_counter() - start
        aug = OmegaConf.load(
            Path(__file__).resolve().parents[1]
            / "configs"
            / "pretrain"
            / "imagenet"
            / "augmentations"
            / "aug_plus.yaml"
        )
        aug = OmegaConf.to_container(aug)
        for entry in aug:
            entry["crop_size"] = args.crop
        for fmt, workers in (("dali", min(cores, 8)), ("image_folder", cores)):
            cfg = OmegaConf.create(
                {
                    "data": {
                        "dataset": "custom",
                        "train_path": str(folder),
                        "format": fmt,
                        "dali_device": device,
                        "num_workers": 0 if args.tiny else workers,
                    },
                    "augmentations": aug,
                    "optimizer": {"batch_size": args.batch},
                    "seed": 5,
                }
            )
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            out[fmt] = timed_loader(build_train_loader(data_spec(cfg)), args.dali_batches)
            out[fmt]["workers_or_threads"] = max(1, cfg.data.num_workers)
            if torch.cuda.is_available():
                out[fmt]["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = time.perf_counter()
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    res: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(),
        "device": _device(),
        "settings": {
            "backbone": "tiny" if args.tiny else args.backbone,
            "batch": args.batch,
            "crop": args.crop,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "precision": "bf16 autocast" if torch.cuda.is_available() else "fp32",
            "channels_last": True,
            "tiny": args.tiny,
            "compile": args.compile,
        },
    }
    built = build(args)
    res["steps"] = step_throughput(args, built)
    print(f"steps done at {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    res["host_syncs"] = host_syncs(built)
    if args.compile and time.perf_counter() - start < args.time_limit:
        try:
            res["compile"] = compiled_step(args, built)
        except Exception as err:  # report, do not lose the other parts
            res["compile"] = {"error": f"{type(err).__name__}: {err}"[:2000]}
    del built
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if time.perf_counter() - start < args.time_limit:
        res["dali"] = dali_loader(args)
    else:
        res["dali"] = {"skipped": f"time limit of {args.time_limit} s reached"}
    res["wall_seconds"] = time.perf_counter() - start
    lines = [
        f"# GPU check ({res['device']})",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {res['machine']}",
        "",
    ]
    for m in METHODS:
        s = res["steps"][m]
        lines.append(
            f"- {m}: {s['images_per_s']:.0f} img/s, peak {s['peak_gpu_memory_gb']:.1f} "
            f"GB, ratio {s['ratio_to_mocov2plus']:.3f} (ideal {s['ideal_ratio']:.3f})"
        )
    c = res["steps"]["mask_mixing_per_step"]
    lines.append(
        f"- masks + mixing share of the mixmask step: {100 * c['share_of_step']:.2f}% "
        f"(taken from the bank + mixing {1000 * c['take_and_mix_s']:.2f} ms, bank "
        f"refills amortised {1000 * c['refill_per_step_s']:.3f} ms per step)"
    )
    lines.append(f"- host syncs per step: {res['host_syncs']}")
    if "compile" in res:
        c = res["compile"]
        lines.append(
            f"- torch.compile (mixmask): speedup {c['speedup']:.3f}x, "
            f"{c['compiled_images_per_s']:.0f} img/s, first steps "
            f"{', '.join(f'{t:.1f}' for t in c['first_steps_s'])} s"
            if "speedup" in c
            else f"- torch.compile (mixmask): {c}"
        )
    lines.append(f"- DALI: {res['dali']}")
    text = "\n".join(lines)
    write_results(args.out.stem, res, text, args.out.parent)
    print(text)
    return res


if __name__ == "__main__":
    main()
