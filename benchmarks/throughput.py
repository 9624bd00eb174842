"""Training-step throughput of MoCo v2 and MixMask on the CIFAR GPU recipe, each performance
lever alone and the winners combined, against a FLOP-counted fraction of the device's peak
(issue 19). Run through ``benchmarks/throughput.sh`` (one prepared command of at most 9 minutes
on one H100/H200).

The models are the ``cifar_gpu`` profile of ``accuracy.py`` (``configs/pretrain/cifar/<method>
.yaml`` + :data:`accuracy.CIFAR_RECIPE`: ResNet-18 CIFAR stem, 32 px, batch 512, bf16 autocast
on CUDA, channels_last, cuDNN benchmark), composed and built as the engine builds them. In one
process:

1. the bare training step (synthetic batches already on the device; ``training_step``, the
   NaN/inf guard's read of the loss, backward, the model's optimiser, the EMA;
   :class:`common.EngineStep`) of ``mocov2plus`` and
   ``mixmask`` with the current defaults ("current path"), in images/s;
2. each lever alone (:data:`LEVERS`), as a ratio to the current path in the same interleaved
   rounds (medians); the k-NN monitor's similarity product + top-k in bfloat16 against float32
   on a CIFAR-sized bank (50,000 features of the backbone's width, 10,000 queries); the host
   synchronisations in one step of every variant (CUDA only) and the aten ops one step of
   every eager variant dispatches (a step bound by dispatch scales with them); ``nchw_layout``
   (``channels_last=false``) as a lever, ``no_split_bn`` as a reference that prices the
   recipe's split BatchNorm and shuffled keys (:data:`REFERENCE`: never a winner);
3. the in-memory data path (:func:`data_path_timing`: a batch's views cut and augmented on the
   device) eager against ``performance.compile_augmentations``, with its aten ops per batch;
   a winner joins the end-to-end runs' settings;
4. the winners (ratio > :data:`WIN`, geometric mean over the methods; one per group of
   exclusive settings) combined, against the current path in new interleaved rounds;
5. where a current-path step's time goes (:func:`step_profile`): device busy time against the
   step's time, kernel launches, dispatched aten ops, syncing ops and the top ops; and the
   host floor (:func:`host_floor`): the same ops with next to no arithmetic;
6. FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``), the achieved TFLOP/s and
   their fraction of the peak measured here by one large matrix product (bf16 8192^3 on a GPU,
   float32 on a CPU);
7. with ``--end-to-end``: a few epochs of Lightning training (``data.format=memory``, the
   CIFAR-10 JPEG tars) per method, current path and winners, as long as the budget allows.

``--budget-s`` (default 480) is held by sizing the rounds: compiled levers are skipped when less
than ``--compile-reserve-s`` is left, rounds stop when the next would pass their phase's
deadline; a SIGTERM (the wrapper's hard timeout) ends the warm-up or round under way and the
results so far are written. Exit status 2 when a lever failed (results written), 1 on any other
error. Results: ``throughput_<device>[_tiny].{json,md}`` in ``--out`` (default ``$OUT``, else
``benchmarks/results``). ``--tiny``: a tiny network and batch on the CPU, ~30 s.

    bash benchmarks/throughput.sh                         # on a GPU
    python benchmarks/throughput.py --tiny --out /tmp/tp  # CPU: does it run?
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

START = time.perf_counter()  # the budget counts from here, torch's import included

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import PROFILES, TINY, Profile, data_overrides, run_cfg  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
    EngineStep,
    command_line,
    count_host_syncs,
    count_ops,
    cuda_sync,
    interleaved,
    machine,
    synthetic_batch,
    table,
    write_results,
)
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from solo_mixmask.core.knn import weighted_knn_scores  # noqa: E402
from solo_mixmask.errors import RunStopped  # noqa: E402

METHODS = ("mocov2plus", "mixmask")
#: Each lever: the config settings it changes from the current path, and its group (levers of a
#: group exclude each other: the combination takes the best winner of each group).
LEVERS: dict[str, tuple[dict[str, Any], str]] = {
    "ema_two_foreach": ({"performance.ema_foreach_lerp": False}, "ema"),
    "optimizer_for_loop": ({"performance.optimizer_impl": "for_loop"}, "optimizer"),
    "optimizer_fused": ({"performance.optimizer_impl": "fused"}, "optimizer"),
    "compile": ({"performance.compile": True}, "compile"),
    "reduce_overhead": (
        {"performance.compile": True, "performance.compile_mode": "reduce-overhead"},
        "compile",
    ),
    # split BatchNorm reshapes every activation across channels: a copy both ways in NHWC
    "nchw_layout": ({"performance.channels_last": False}, "layout"),
    # MixMask's view and mixed view through the online backbone in one call (same numbers):
    # half its online ops; MoCo v2 (one online input) is unchanged
    "batch_online_forwards": ({"performance.batch_online_forwards": True}, "forwards"),
    # the NaN/inf guard reads each loss 2 steps later from a host copy: no host sync per step
    "lagged_loss_check": ({"performance.loss_check_lag": 2}, "loss_check"),
    "no_split_bn": ({"method_kwargs.bn_splits": 1, "method_kwargs.shuffle_bn": False}, "reference"),
}
#: The group of variants that change the recipe: timed to price a part of it, never winners.
REFERENCE = "reference"
REFERENCES = {name for name, (_, group) in LEVERS.items() if group == REFERENCE}
#: A lever wins when the geometric mean over the methods of its ratio to the current path is
#: above this.
WIN = 1.02
#: The host floor's profile changes: the current path's layers, settings and op sequence with 8
#: channels per stage, :data:`FLOOR_CROP`-px images and 16 per batch (next to no arithmetic).
#: Not fewer channels: a narrower shortcut convolution meets oneDNN's channels_last bug on the
#: CPU (``solo_mixmask.backbones.CPU_CHANNELS_LAST_MIN_CHANNELS``; the process aborted).
FLOOR = {"channels": (8, 8, 8, 8), "stem_width": 8, "batch_size": 16}
FLOOR_CROP = 8  # the smallest crop MixMask's 8 x 8 mask grid allows
SEED = 1


class Stopped(Exception):
    """SIGTERM (``throughput.sh``'s hard timeout): the variant being built is given up, nothing
    more is built or run, the round under way ends, and the results so far are written."""


#: ``requested``: a SIGTERM came; ``defer``: inside timed rounds, which stop after the round.
STOP = {"requested": False, "defer": False}


def _stop(signum: int, frame: Any) -> None:
    STOP["requested"] = True
    if not STOP["defer"]:
        raise Stopped(f"stopped by {signal.Signals(signum).name} (the hard timeout)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget (s)")
    p.add_argument("--max-rounds", type=int, default=15, help="interleaved rounds per phase")
    p.add_argument("--job-s", type=float, default=0.3, help="seconds of steps per timed job")
    p.add_argument(
        "--compile-reserve-s",
        type=float,
        default=120.0,
        help="a compiled lever starts only with this much of the budget left",
    )
    p.add_argument("--compile-backend", default=None, help="default inductor (tiny: aot_eager)")
    p.add_argument("--knn-bank", type=int, default=50_000)
    p.add_argument("--knn-queries", type=int, default=10_000)
    p.add_argument("--end-to-end", action="store_true", help="also a few Lightning epochs")
    p.add_argument("--epochs", type=int, default=3, help="epochs per end-to-end run")
    p.add_argument("--data", default=None, help="CIFAR-10 folder or tars (as accuracy.py)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="results folder")
    p.add_argument("--tiny", action="store_true", help="tiny network and batch on the CPU")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the profile's)")
    args = p.parse_args(argv)
    if args.tiny:
        args.max_rounds, args.job_s, args.compile_reserve_s = 3, 0.0, 0.0
        args.knn_bank, args.knn_queries, args.epochs = 2_000, 500, 1
        args.threads = args.threads or 1
    args.compile_backend = args.compile_backend or ("aot_eager" if args.tiny else "inductor")
    args.out = args.out or Path(os.environ.get("OUT") or RESULTS)
    return args


def device_label() -> str:
    """``cpu``, or the GPU's model in lower case (``NVIDIA H200`` -> ``h200``)."""
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).replace("NVIDIA", "")
    found = re.search(r"\b[A-Za-z]+\d+[A-Za-z]*\b", name)
    return found.group(0).lower() if found else "cuda"


class Bench:
    """The run's settings, device, deadline and the config of each (method, settings)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.start = START
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        prof = PROFILES["cifar_gpu"]
        self.prof = replace(prof, **TINY) if args.tiny else prof
        if args.batch:  # e.g. the full network at a CPU-sized batch
            self.prof = replace(self.prof, batch_size=args.batch)
        self.autocast = torch.bfloat16 if self.cuda and self.prof.precision == "auto" else None
        self.deadline = self.start + args.budget_s - 5  # 5 s to write the results
        self.bare_deadline = self.deadline - (0.5 * args.budget_s if args.end_to_end else 0)
        #: images/s of the current path per phase and method, timed with that phase's levers
        self.phase_current: dict[str, dict[str, float]] = {}
        self.steps_per_job: dict[str, int] = {}  # steps per timed job, per method
        self.step_s: dict[str, float] = {}  # seconds per current-path step, per method
        crop = int(self.cfg(METHODS[0], {}).augmentations[0].crop_size)
        self.batch = synthetic_batch(self.prof.batch_size, crop, device=self.device)

    def left(self, deadline: float | None = None) -> float:
        return (deadline or self.bare_deadline) - time.perf_counter()

    def cfg(self, method: str, settings: dict[str, Any], prof: Any = None, **kw: Any) -> DictConfig:
        cfg = run_cfg(prof or self.prof, method, SEED, None, **kw)
        if self.args.compile_backend != "inductor":
            settings = {**settings, "performance.compile_backend": self.args.compile_backend}
        for key, value in settings.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        return cfg

    def step(self, method: str, settings: dict[str, Any]) -> EngineStep:
        cfg = self.cfg(method, settings)
        if self.cuda:
            torch.backends.cudnn.benchmark = bool(cfg.get("benchmark", False))
        return EngineStep(cfg, self.device, self.autocast)


def unavailable(bench: Bench, settings: dict[str, Any]) -> str | None:
    """Why ``settings`` cannot run on this device, or None."""
    if settings.get("performance.compile_mode") == "reduce-overhead" and not bench.cuda:
        return "CUDA graphs (compile_mode=reduce-overhead) need a CUDA device"
    if settings.get("performance.optimizer_impl") == "fused":
        try:
            p = torch.zeros(1, device=bench.device, requires_grad=True)
            p.grad = torch.ones_like(p)
            torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True).step()
        except Exception as err:  # torch without a fused SGD for this device
            return f"fused SGD unavailable on {bench.device}: {type(err).__name__}: {err}"
    return None


def warm_up(step: EngineStep, batch: list[Any], steps: int) -> list[float]:
    """Seconds of each of the first ``steps`` steps (compilation happens in these)."""
    out = []
    for _ in range(steps):
        cuda_sync()
        begin = time.perf_counter()
        step(batch)
        cuda_sync()
        out.append(time.perf_counter() - begin)
    return out


def timed_rounds(jobs: dict[str, Any], bench: Bench, deadline: float) -> dict[str, list[float]]:
    """Interleaved rounds of ``jobs`` (at least one, at most ``--max-rounds``) while the next
    round, as long as the last, ends before ``deadline``."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    last = 0.0
    STOP["defer"] = True  # a SIGTERM ends the rounds after the one under way
    try:
        for r in range(bench.args.max_rounds):
            if r and (STOP["requested"] or time.perf_counter() + last > deadline):
                break
            begin = time.perf_counter()
            for name, t in interleaved(jobs, 1, 0, sync=cuda_sync, progress=False).items():
                times[name] += t
            last = time.perf_counter() - begin
            print(f"  round {r + 1}: {last:.1f} s", file=sys.stderr, flush=True)
    finally:
        STOP["defer"] = False
    return times


def cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"].get("cudagraph_skips", 0))


def host_syncs(bench: Bench, step: EngineStep, batch: list[Any]) -> Any:
    if not bench.cuda:
        return "n/a: no CUDA device (set_sync_debug_mode counts CUDA synchronisations)"
    cuda_sync()
    return count_host_syncs(lambda: step(batch))


def step_profile(bench: Bench, step: EngineStep, batch: list[Any], steps: int = 3) -> Any:
    """Where one step's time goes (``torch.profiler`` over ``steps`` steps, per step): the
    device's busy time (the sum of its kernels and copies; compared with the step's time it
    says whether the GPU or the host bounds the step), kernel launches, aten ops dispatched
    (eager steps only) and syncing ops, and the ops that take the most device (on a CPU: host)
    time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    out: dict[str, Any] = {}
    if step.model.compile_backend is None:  # a dispatch mode and dynamo do not mix
        ops, reads = count_ops(lambda: step(batch))
        out["dispatched_ops"] = sum(ops.values())
        out["syncing_ops"] = reads
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    cuda_sync()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(batch)
        cuda_sync()
    events = prof.key_averages()
    on_device = [e for e in events if e.device_type == DeviceType.CUDA]
    if bench.cuda:
        out["device_busy_ms"] = sum(e.self_device_time_total for e in on_device) / 1e3 / steps
        launches = (e.count for e in events if "LaunchKernel" in e.key or "GraphLaunch" in e.key)
        out["kernel_launches"] = sum(launches) / steps
    top, key = (
        (on_device, "self_device_time_total") if bench.cuda else (events, "self_cpu_time_total")
    )
    out["top"] = [
        {"name": e.key[:90], "ms": getattr(e, key) / 1e3 / steps, "calls": e.count / steps}
        for e in sorted(top, key=lambda e: getattr(e, key), reverse=True)[:8]
    ]
    out["clock"] = "device" if bench.cuda else "host (CPU)"
    return out


def host_floor(bench: Bench, rounds: int = 5, steps: int = 10) -> dict[str, Any]:
    """ms per step of each method's current path built with :data:`FLOOR` (median of
    ``rounds`` interleaved timings of ``steps`` steps): the host's dispatch work of the same ops
    (on a GPU, with their launches) while the device has next to nothing to do. A full step near
    this floor is bound by the host; one far above it, by the device."""
    prof = replace(bench.prof, **FLOOR)
    batch = synthetic_batch(FLOOR["batch_size"], FLOOR_CROP, device=bench.device)
    out: dict[str, Any] = {}
    jobs = {}
    for m in METHODS:
        try:
            step = EngineStep(bench.cfg(m, {}, prof=prof), bench.device, bench.autocast)
            warm_up(step, batch, 3)
        except Stopped:
            raise
        except Exception as err:  # a finding, not a reason to lose the levers' run
            out[m] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            traceback.print_exc()
            continue
        jobs[m] = lambda s=step: [s(batch) for _ in range(steps)]
    for m, times in interleaved(jobs, rounds, 0, sync=cuda_sync, progress=False).items():
        out[m] = {"step_ms": 1000 * statistics.median(times) / steps}
    return out


def step_flops(step: EngineStep, batch: list[Any]) -> int:
    """FLOPs of one step (forward, backward; the optimiser and EMA count for nothing)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batch)
    return int(counter.get_total_flops())


def matmul_peak(bench: Bench) -> dict[str, Any]:
    """TFLOP/s of one large matrix product: bf16 8192^3 on CUDA, float32 on the CPU."""
    n, dtype = (8192, torch.bfloat16) if bench.cuda else (512 if bench.args.tiny else 2048, None)
    a = torch.randn(n, n, device=bench.device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, device=bench.device, dtype=dtype or torch.float32)

    def products(reps: int) -> float:
        cuda_sync()
        begin = time.perf_counter()
        for _ in range(reps):
            a @ b
        cuda_sync()
        return time.perf_counter() - begin

    once = min(products(1), products(1))  # the first call also warms the library up
    reps = max(3, min(200, int(1.0 / max(once, 1e-6))))  # about one second
    seconds = products(reps)
    return {
        "tflops": 2 * n**3 * reps / seconds / 1e12,
        "dtype": "bfloat16" if bench.cuda else "float32",
        "size": n,
        "note": "bf16 matmul peak measured here"
        if bench.cuda
        else "CPU: float32 matmul peak (no bf16 tensor cores), not a GPU figure",
    }


def knn_timing(bench: Bench, dim: int) -> dict[str, Any]:
    """Queries/s of the k-NN monitor's scoring (similarity product + top-k + votes), float32
    against bfloat16, on a bank of ``--knn-bank`` features of width ``dim``."""
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(bench.args.knn_bank, dim, generator=g).to(bench.device)
    queries = torch.randn(bench.args.knn_queries, dim, generator=g).to(bench.device)
    targets = torch.randint(0, 10, (bench.args.knn_bank,), generator=g).to(bench.device)
    jobs = {
        name: (lambda d=dtype: weighted_knn_scores(bank, targets, queries, 10, (200,), 0.1, 512, d))
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    }
    for job in jobs.values():
        job()
    times = timed_rounds(jobs, bench, time.perf_counter() + min(30.0, 0.1 * bench.args.budget_s))
    out: dict[str, Any] = {"bank": [bench.args.knn_bank, dim], "queries": bench.args.knn_queries}
    for name, t in times.items():
        out[name] = {"images_per_s": bench.args.knn_queries / statistics.median(t), "n": len(t)}
    out["bfloat16"]["ratio"] = out["bfloat16"]["images_per_s"] / out["float32"]["images_per_s"]
    out["bfloat16"]["settings"] = {"performance.knn_dtype": "bfloat16"}
    out["bfloat16"]["wins"] = out["bfloat16"]["ratio"] > WIN
    return out


#: The data path's lever: the in-memory path's pixel ops through torch.compile.
DATA_LEVER = {"performance.compile_augmentations": True}


def data_path_timing(bench: Bench) -> dict[str, Any]:
    """Images/s of the in-memory data path (a batch's views cut from a uint8 tensor on the device
    and augmented there, the CIFAR recipe's pipelines), eager against
    ``performance.compile_augmentations``, interleaved; aten ops of an eager batch. Synthetic
    images: no data needed. The compiled variant waits for ``--compile-reserve-s`` of budget."""
    from solo_mixmask.config.data_specs import data_spec
    from solo_mixmask.data.memory import MemoryImages, MemoryTrainLoader

    spec = data_spec(bench.cfg(METHODS[0], {}))
    batch, crop = bench.prof.batch_size, spec.crops[0].crop_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8 * batch, 3, crop, crop), generator=g, dtype=torch.uint8)
    memory = MemoryImages(images, torch.zeros(len(images), dtype=torch.long))
    indexes = [torch.randperm(len(images), generator=g)[:batch] for _ in range(4)]
    out: dict[str, Any] = {"images": list(images.shape), "batch": batch}
    jobs: dict[str, Any] = {}
    for name, backend in (("eager", None), ("compiled", bench.args.compile_backend)):
        res: dict[str, Any] = {"settings": DATA_LEVER if backend else {}}
        out[name] = res
        if backend and (STOP["requested"] or bench.left() < bench.args.compile_reserve_s):
            res.update(status="n/a", reason=f"budget: {bench.left():.0f} s left at its turn")
            continue
        loader = MemoryTrainLoader(memory, spec.crops, batch, SEED, compile_backend=backend)
        loader.to_device(torch.device(bench.device))

        def make(loader: MemoryTrainLoader = loader) -> None:
            for i, index in enumerate(indexes):
                loader.make_batch(index, i)

        try:
            cuda_sync()
            begin = time.perf_counter()
            make()  # the compiled variant compiles here
            cuda_sync()
            res["first_s"] = time.perf_counter() - begin
            if not backend:
                res["aten_ops_per_batch"] = sum(count_ops(make)[0].values()) // len(indexes)
        except Exception as err:  # a finding (e.g. inductor refusing an op): go on
            res.update(status="failed", error=f"{type(err).__name__}: {err}"[:2000])
            traceback.print_exc()
            continue
        jobs[name] = make
    deadline = min(time.perf_counter() + min(30.0, 0.1 * bench.args.budget_s), bench.bare_deadline)
    for name, t in timed_rounds(jobs, bench, deadline).items():
        ips = batch * len(indexes) / statistics.median(t)
        out[name].update(status="ok", images_per_s=ips, n=len(t))
    if out["compiled"].get("status") == out["eager"].get("status") == "ok":
        ratio = out["compiled"]["images_per_s"] / out["eager"]["images_per_s"]
        out["compiled"].update(ratio=ratio, wins=ratio > WIN)
    return out


def measure(
    bench: Bench, variants: dict[str, dict[str, Any]], current: dict[str, EngineStep], phase: str
) -> dict[str, dict[str, Any]]:
    """Build and warm every (variant, method), then time them interleaved with the current
    path until the phase's deadline. Returns ``{variant: {method: result}}``."""
    batch, args = bench.batch, bench.args
    results: dict[str, dict[str, Any]] = {}
    jobs: dict[str, Any] = {}
    steps: dict[str, EngineStep] = {}
    for method in METHODS:
        n = bench.steps_per_job[method]
        jobs[f"current/{method}"] = lambda s=current[method], n=n: [s(batch) for _ in range(n)]
    for name, settings in variants.items():
        results[name] = {}
        reason = unavailable(bench, settings)
        compiled = bool(settings.get("performance.compile"))
        for method in METHODS:
            res: dict[str, Any] = {"settings": settings}
            results[name][method] = res
            if reason:
                res.update(status="n/a", reason=reason)
                continue
            need = args.compile_reserve_s if compiled else 4 * bench.step_s[method]
            if STOP["requested"] or bench.left() < need:  # its warm-up would pass the budget
                why = (
                    "SIGTERM came before" if STOP["requested"] else f"{bench.left():.0f} s left at"
                )
                res.update(status="n/a", reason=f"budget: {why} its turn")
                continue
            print(f"{phase}: building {name} / {method}", file=sys.stderr, flush=True)
            try:
                step = bench.step(method, settings)
                skips = cudagraph_skips()
                res["first_steps_s"] = warm_up(step, batch, 3 if compiled else 1)
                if compiled:  # steps inductor left out of CUDA graphs (mutations, CPU tensors)
                    res["cudagraph_skips"] = cudagraph_skips() - skips
                res["host_syncs"] = host_syncs(bench, step, batch)
                if not compiled:  # a dispatch mode and dynamo do not mix
                    ops, reads = count_ops(lambda s=step: s(batch))
                    res["dispatched_ops"], res["syncing_ops"] = sum(ops.values()), reads
            except Exception as err:  # a finding (e.g. CUDA graphs refusing the step): go on
                if STOP["requested"]:  # (torch.compile wraps the Stopped in its own error)
                    res.update(status="n/a", reason="budget: stopped by SIGTERM in its warm-up")
                    continue
                res.update(status="failed", error=f"{type(err).__name__}: {err}"[:2000])
                traceback.print_exc()
                continue
            steps[f"{name}/{method}"] = step
            n = bench.steps_per_job[method]
            jobs[f"{name}/{method}"] = lambda s=step, n=n: [s(batch) for _ in range(n)]
    share = 0.6 if phase == "levers" else 1.0  # the rest is the combination's
    deadline = time.perf_counter() + share * bench.left()
    print(f"{phase}: timing {len(jobs)} jobs, {bench.left():.0f} s left", file=sys.stderr)
    times = timed_rounds(jobs, bench, deadline)
    for key, t in times.items():
        name, method = key.split("/")
        ips = bench.prof.batch_size * bench.steps_per_job[method] / statistics.median(t)
        if name == "current":
            bench.phase_current.setdefault(phase, {})[method] = ips
            continue
        results[name][method].update(status="ok", images_per_s=ips, rounds=len(t))
    for per_method in results.values():
        for method, res in per_method.items():
            if res.get("status") == "ok":  # the current path timed in the same rounds
                res["current_images_per_s"] = bench.phase_current[phase][method]
                res["ratio"] = res["images_per_s"] / res["current_images_per_s"]
    del steps
    return results


def winners(levers: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The best winning lever of each group (geometric mean of its ratios over the methods);
    the :data:`REFERENCE` variants change the recipe and never win."""
    best: dict[str, tuple[float, str]] = {}
    for name, per_method in levers.items():
        ratios = [r.get("ratio") for r in per_method.values()]
        if any(r is None for r in ratios):
            continue
        mean = math.exp(statistics.fmean(math.log(r) for r in ratios))
        group = LEVERS[name][1]
        for r in per_method.values():
            r["geomean_ratio"] = mean
        if group != REFERENCE and mean > WIN and mean > best.get(group, (0.0, ""))[0]:
            best[group] = (mean, name)
    names = [name for _, name in best.values()]
    settings: dict[str, Any] = {}
    for name in names:
        settings.update(LEVERS[name][0])
    return settings, names


def end_to_end(bench: Bench, runs: dict[str, dict[str, Any]], step_ips: dict[str, float]) -> Any:
    """Lightning pretraining runs of ``--epochs`` epochs, ``data.format=memory``."""
    try:
        data = data_overrides(bench.prof, bench.args.data)
    except SystemExit as err:  # no CIFAR-10 here
        print(f"end to end skipped: {err}", file=sys.stderr)
        return {"skipped": str(err)}
    prof = replace(bench.prof, epochs=bench.args.epochs, data=data)
    with tempfile.TemporaryDirectory(prefix="throughput_e2e_") as tmp:  # checkpoints
        return _end_to_end_runs(bench, runs, step_ips, prof, Path(tmp))


def _end_to_end_runs(
    bench: Bench,
    runs: dict[str, dict[str, Any]],
    step_ips: dict[str, float],
    prof: Profile,
    root: Path,
) -> dict[str, Any]:
    """One run per settings label and method, each in its own folder under ``root``."""
    from solo_mixmask.run.pretrain import run_pretrain  # the one import of the run package

    out: dict[str, Any] = {}
    for label, settings in runs.items():
        for method in METHODS:
            key = f"{label}/{method}"
            images = 50_000 if not bench.args.tiny else 80
            estimate = 40 + 1.35 * bench.args.epochs * images / step_ips[method] + 20
            estimate += 90 if settings.get("performance.compile") else 0
            if STOP["requested"] or bench.left(bench.deadline) < estimate:
                out[key] = {
                    "skipped": f"budget: {bench.left(bench.deadline):.0f} s left, "
                    f"~{estimate:.0f} s needed"
                }
                continue
            print(f"end to end: {key}", file=sys.stderr, flush=True)
            cfg = bench.cfg(method, settings, prof, run_dir=root / key.replace("/", "_"))
            begin = time.perf_counter()
            try:
                summary = run_pretrain(cfg)
            except Exception as err:  # keep the bare-step figures: report it, go on
                STOP["requested"] |= isinstance(err, RunStopped)  # the engine's own handler
                traceback.print_exc()
                out[key] = {"settings": settings, "error": f"{type(err).__name__}: {err}"[:2000]}
                continue
            wall = summary["wall_seconds"]
            # the images trained: the loader drops the last partial batch of each epoch
            trained = summary["steps"] * prof.batch_size
            out[key] = {
                "settings": settings,
                "epochs": summary["epochs"],
                "train_images": summary["train_images"],
                "images_trained": trained,
                "wall_seconds": wall,
                "process_seconds": time.perf_counter() - begin,  # + compose, data, start-up
                "images_per_s_training_batches": summary["images_per_sec"],
                "training_batches_clock": summary.get("images_per_sec_clock"),
                "images_per_s_whole_run": trained / wall,
                "knn_acc1": summary.get("knn_acc1"),
            }
    return out


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [
        f"# Training-step throughput ({res['device']}: {res['device_name']})",
        "",
        f"Command: `{res['command']}`",
        "",
        f"torch {res['machine']['torch']}, load average {res['machine']['load_average_1min']}, "
        f"{s['recipe']}, batch {s['batch_size']}, {s['precision']}, compile backend "
        f"{s['compile_backend']}; wall {res['wall_s']:.0f} s of a {s['budget_s']:.0f} s budget.",
        "",
    ]
    header = ["variant", "settings"]
    for m in METHODS:
        header += [f"{m} img/s", f"{m} ratio", f"{m} aten ops/step"]
    rows = []

    def cells(per_method: dict[str, Any]) -> list[str]:
        out = []
        for m in METHODS:
            r = per_method[m]
            ops = str(r.get("dispatched_ops", "-"))  # none for compiled steps
            if r.get("status") == "ok":
                out += [f"{r['images_per_s']:.0f}", f"{r['ratio']:.3f}", ops]
            else:
                out += [
                    f"{r.get('status')}: {r.get('reason') or r.get('error', '')}"[:90],
                    "-",
                    ops,
                ]
        return out

    cur = {
        m: {
            "status": "ok",
            **res["methods"][m]["current"],
            "ratio": 1.0,
            "dispatched_ops": res["methods"][m]["profile"].get("dispatched_ops", "-"),
        }
        for m in METHODS
    }
    rows.append(["current path", "config defaults", *cells(cur)])
    for name, per_method in res["levers"].items():
        settings = ", ".join(f"{k}={v}" for k, v in LEVERS[name][0].items())
        rows.append(
            [name + (" **wins**" if name in res["winners"] else ""), settings, *cells(per_method)]
        )
    c = res["combined"]
    rows.append(["combined winners", ", ".join(res["winners"]) or "none won", *cells(c)])
    lines += [table(header, rows), ""]
    k = res["knn"]
    lines.append(
        f"k-NN monitor (bank {k['bank'][0]} x {k['bank'][1]}, {k['queries']} queries): float32 "
        f"{k['float32']['images_per_s']:.0f} queries/s, bfloat16 "
        f"{k['bfloat16']['images_per_s']:.0f} queries/s, ratio {k['bfloat16']['ratio']:.3f}"
        f"{' (wins)' if k['bfloat16']['wins'] else ''}."
    )
    d = res["data_path"]
    parts = []
    for name in ("eager", "compiled"):
        r = d[name]
        if r.get("status") == "ok":
            extra = f", {r['aten_ops_per_batch']} aten ops per batch" if name == "eager" else ""
            if name == "compiled":
                extra = f", first 4 batches {r['first_s']:.1f} s, ratio {r['ratio']:.3f}"
                extra += " (wins)" if r["wins"] else ""
            parts.append(f"{name} {r['images_per_s']:.0f} img/s{extra}")
        else:
            parts.append(f"{name} {r.get('status')}: {r.get('reason') or r.get('error', '')}"[:120])
    lines += [
        "",
        f"In-memory data path (synthetic {d['images'][0]} images, batch {d['batch']}, the "
        f"recipe's pipelines; compiled = performance.compile_augmentations): {'; '.join(parts)}.",
    ]
    p = res["peak"]
    lines += ["", f"Peak: {p['tflops']:.2f} TFLOP/s ({p['note']}, {p['size']}^3).", ""]
    rows = []
    for m in METHODS:
        r = res["methods"][m]
        cur, best = r["current"], r["best"]
        syncs = {n: v[m].get("host_syncs") for n, v in res["levers"].items()}
        syncs = {
            "current": cur["host_syncs"],
            **syncs,
            "combined": res["combined"][m].get("host_syncs"),
        }
        counts = {n: v["count"] for n, v in syncs.items() if isinstance(v, dict)}
        rows.append(
            [
                m,
                f"{r['flops_per_image'] / 1e9:.3f}",
                f"{cur['tflops']:.3f}",
                f"{100 * cur['peak_fraction']:.1f}%",
                f"{best['tflops']:.3f} ({best['variant']}), {100 * best['peak_fraction']:.1f}%",
                str(counts or cur["host_syncs"])[:120],
            ]
        )
    head = ["method", "GFLOP/image/step", "TFLOP/s", "of peak", "best TFLOP/s, of peak"]
    lines.append(table([*head, "host syncs per step"], rows))
    lines += ["", "Where a current-path step's time goes (torch.profiler, per step):", ""]
    rows = []
    for m in METHODS:
        prof, step_ms = res["methods"][m]["profile"], res["methods"][m]["current"]["step_ms"]
        floor = res["methods"][m]["host_floor"]
        busy = prof.get("device_busy_ms")
        top = ", ".join(f"{t['name'][:40]} {t['ms']:.2f}" for t in prof["top"][:4])
        rows.append(
            [
                m,
                f"{step_ms:.2f}",
                "n/a (CPU)"
                if busy is None
                else f"{busy:.2f} ({100 * prof['device_busy_share']:.0f}%)",
                f"{prof['kernel_launches']:.0f}" if "kernel_launches" in prof else "n/a (CPU)",
                f"{floor['step_ms']:.2f} (step = {floor['step_over_floor']:.1f}x)"
                if "step_ms" in floor
                else f"failed: {floor['error'][:60]}",
                str(prof.get("dispatched_ops", "n/a")),
                str(prof.get("syncing_ops", "n/a")),
                f"{prof['clock']}: {top}",
            ]
        )
    head = ["method", "step ms", "device busy ms (share)", "kernel launches", "host floor ms"]
    lines.append(table([*head, "aten ops", "syncing ops", "top ops, ms"], rows))
    e2e = res.get("end_to_end")
    if e2e:
        lines += ["", "## End to end (Lightning, data.format=memory)", ""]
        if "skipped" in e2e:
            lines.append(f"Skipped: {e2e['skipped']}")
        else:
            rows = []
            for key, v in e2e.items():
                if "skipped" in v or "error" in v:
                    rows.append([key, v.get("skipped") or v["error"][:120], "", "", ""])
                    continue
                rows.append(
                    [
                        key,
                        f"{v['images_per_s_training_batches']:.0f} "
                        f"({v.get('training_batches_clock')})",
                        f"{v['images_per_s_whole_run']:.0f}",
                        f"{v['wall_seconds']:.0f}",
                        str(v["knn_acc1"]),
                    ]
                )
            head = ["run", "img/s (training batches)", "img/s (epochs / wall)", "wall s"]
            lines.append(table([*head, "k-NN top-1"], rows))
    if res["errors"]:
        lines += ["", "Errors: " + "; ".join(res["errors"])]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.cuda.is_available():  # as the engine's trainer does (run/trainer.py): TF32
        torch.set_float32_matmul_precision("high")
    import torch._dynamo.config as dynamo_config

    # one compiled graph per (backbone, grad mode, mode) of every variant: above torch's 8
    for key in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo_config, key):
            setattr(dynamo_config, key, 64)
    bench = Bench(args)
    print(f"current path, {bench.device}", file=sys.stderr, flush=True)
    current = {m: bench.step(m, {}) for m in METHODS}
    methods: dict[str, Any] = {}
    for m, step in current.items():
        bench.step_s[m] = min(warm_up(step, bench.batch, 3 if bench.cuda else 1))
        bench.steps_per_job[m] = max(1, round(args.job_s / bench.step_s[m]))
        flops = step_flops(step, bench.batch)
        methods[m] = {
            "flops_per_step": flops,
            "flops_per_image": flops / bench.prof.batch_size,
            "current": {"host_syncs": host_syncs(bench, step, bench.batch)},
            "steps_per_job": bench.steps_per_job[m],
            "profile": step_profile(bench, step, bench.batch),
        }
    print("host floor", file=sys.stderr, flush=True)
    for m, floor in host_floor(bench).items():
        methods[m]["host_floor"] = floor
    peak = matmul_peak(bench)
    knn = knn_timing(bench, current[METHODS[0]].model.features_dim)
    levers = measure(bench, {n: s for n, (s, _) in LEVERS.items()}, current, "levers")
    print("data path", file=sys.stderr, flush=True)  # after the step's levers: they come first
    data_path = data_path_timing(bench)
    settings, won = winners(levers)
    # the data path's lever joins the winners for the end-to-end runs (the bare steps take
    # synthetic batches: it cannot change them)
    data_settings = DATA_LEVER if data_path["compiled"].get("wins") else {}
    both = {**settings, **data_settings}  # what accuracy.py --settings-from applies
    gc.collect()  # the levers' models, compiled graphs and CUDA graph pools
    if bench.cuda:
        torch.cuda.empty_cache()
    if settings:
        combined = measure(bench, {"combined": settings}, current, "combined")["combined"]
    else:
        combined = {
            m: {
                "settings": {},
                "status": "ok",
                "same_as_current": True,
                "images_per_s": bench.phase_current["levers"][m],
                "current_images_per_s": bench.phase_current["levers"][m],
                "ratio": 1.0,
            }
            for m in METHODS
        }
    for m in METHODS:
        ips = bench.phase_current["levers"][m]
        methods[m]["current"].update(images_per_s=ips, step_ms=1000 * bench.prof.batch_size / ips)
        floor = methods[m]["host_floor"]
        if "step_ms" in floor:
            floor["step_over_floor"] = methods[m]["current"]["step_ms"] / floor["step_ms"]
        busy = methods[m]["profile"].get("device_busy_ms")
        if busy is not None:  # of the unprofiled step's time, from the timed rounds
            methods[m]["profile"]["device_busy_share"] = busy / methods[m]["current"]["step_ms"]
        # the best by its ratio to the current path of its own rounds (phases run at other
        # speeds), as img/s of the levers phase's current path
        ratios = {"current": 1.0, "combined": combined[m].get("ratio", 0.0)}
        ratios.update({n: r[m].get("ratio", 0.0) for n, r in levers.items() if n not in REFERENCES})
        best = max(ratios, key=lambda n: ratios[n])
        for key, ips_v, name in (("current", ips, "current"), ("best", ratios[best] * ips, best)):
            tflops = methods[m]["flops_per_image"] * ips_v / 1e12
            methods[m].setdefault(key, {}).update(
                tflops=tflops, peak_fraction=tflops / peak["tflops"], variant=name
            )
    errors = [
        f"{n}/{m}: {r['error']}"
        for n, per in levers.items()
        for m, r in per.items()
        if r.get("status") == "failed"
    ]
    errors += [f"combined/{m}: {r['error']}" for m, r in combined.items() if "error" in r]
    errors += [
        f"data path/{n}: {data_path[n]['error']}"
        for n in ("eager", "compiled")
        if "error" in data_path[n]
    ]
    errors += [
        f"host floor/{m}: {r['host_floor']['error']}"
        for m, r in methods.items()
        if "error" in r["host_floor"]
    ]
    res: dict[str, Any] = {
        "command": command_line(),
        "device": device_label(),
        "device_name": torch.cuda.get_device_name(0) if bench.cuda else "CPU",
        "machine": machine(),
        "settings": {
            "recipe": "accuracy.py cifar_gpu profile (configs/pretrain/cifar + CIFAR_RECIPE)"
            + (", tiny" if args.tiny else ""),
            "batch_size": bench.prof.batch_size,
            "precision": "bf16 autocast" if bench.autocast else "float32",
            "channels_last": True,
            "compile_backend": args.compile_backend,
            "budget_s": args.budget_s,
            "win_threshold": WIN,
            "tiny": args.tiny,
        },
        "methods": methods,
        "levers": levers,
        "winners": won,
        "combined_settings": both,
        "combined": combined,
        "knn": knn,
        "data_path": data_path,
        "peak": peak,
        "errors": errors,
    }
    if args.end_to_end:
        runs = {"current": {}, **({"combined": both} if both else {})}
        ips = {m: methods[m]["current"]["images_per_s"] for m in METHODS}
        res["end_to_end"] = end_to_end(bench, runs, ips)
        res["errors"] += [
            f"end to end {k}: {v['error']}"
            for k, v in res["end_to_end"].items()
            if isinstance(v, dict) and "error" in v
        ]
    res["wall_s"] = time.perf_counter() - bench.start
    stem = f"throughput_{res['device']}" + ("_tiny" if args.tiny else "")
    stem += f"_batch{args.batch}" if args.batch else ""
    text = markdown(res)
    paths = write_results(stem, res, text, args.out)
    print(text)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return res


def main(argv: list[str] | None = None) -> int:
    STOP.update(requested=False, defer=False)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        res = run(parse_args(argv))
    except Exception as err:
        traceback.print_exc()
        print(f"throughput.py: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if res["errors"]:
        print(f"throughput.py: error: levers failed: {'; '.join(res['errors'])}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
