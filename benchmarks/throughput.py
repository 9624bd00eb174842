"""Training-step throughput of MoCo v2 and MixMask on the CIFAR GPU recipe, each performance
lever alone and the winners combined, against a FLOP-counted fraction of the device's peak
(issue 19). Run through ``benchmarks/throughput.sh`` (one prepared command of at most 9 minutes
on one H100/H200).

The models are the ``cifar_gpu`` profile of ``accuracy.py`` (``configs/pretrain/cifar/<method>
.yaml`` + :data:`accuracy.CIFAR_RECIPE`: ResNet-18 CIFAR stem, 32 px, batch 512, bf16 autocast
on CUDA, channels_last, cuDNN benchmark), composed and built as the engine builds them. In one
process, in this order:

1. the bare training step (synthetic batches already on the device; ``training_step``, the
   NaN/inf guard's read of the loss, backward, the model's optimiser, the EMA;
   :class:`common.EngineStep`) of ``mocov2plus`` and ``mixmask`` with the current defaults
   ("current path"): FLOPs of one step (``FlopCounterMode``), its host syncs (CUDA only), where
   its time goes (:func:`step_profile`), and the peak of one large matrix product (bf16 8192^3
   on a GPU, float32 on a CPU);
2. the k-NN monitor's similarity product + top-k in bfloat16 against float32 on a CIFAR-sized
   bank, and the host floor (:func:`host_floor`: the same ops with next to no arithmetic);
3. each lever alone (:data:`LEVERS`) as a ratio to the current path timed in the same
   interleaved rounds (medians), with host syncs and dispatched aten ops per step;
   ``no_split_bn`` is a reference that prices the recipe's split BatchNorm (never a winner);
4. the winners (ratio > :data:`WIN`, geometric mean over the methods; one per group of
   exclusive settings) combined, against the current path in new rounds;
5. the in-memory data path (:func:`data_path_timing`) eager against
   ``performance.compile_augmentations``; a winner joins the end-to-end winners' settings;
6. with ``--end-to-end``: ``--epochs`` Lightning epochs (``data.format=memory``, the CIFAR-10
   JPEG tars) per method, current path against the winners, MixMask's pair first; the figure
   is epoch 2's (:data:`STEADY_EPOCH`: compilation and cuDNN's search happen in epoch 1).

Every phase's variants are built, then run once untimed (recompiles, CUDA graph recording and
the allocator's growth happen there), then timed in interleaved rounds; a ratio needs
:data:`MIN_ROUNDS` timed rounds, else it is "n/a: too few rounds". ``--budget-s`` (default 480)
is held by estimates: a costly item (:data:`RANK`) starts only when the time left covers its
estimate and those of the items still to come that matter more, else it is reported "n/a:
budget: ..." with the figures; a cut is never a figure. A variant or phase that raises is
reported failed with its error and the run goes on. The results are rewritten after every
phase (``complete: false`` until the end), so a run killed by the wrapper's hard timeout
still leaves the phases it finished; a SIGTERM ends the warm-up or round under way, nothing more
runs, and the results so far are written. Exit status 2 when something failed (results
written), 4 when ``--end-to-end`` has no CIFAR-10 (before any work), 124 when stopped by
SIGTERM, 1 on any other error. Results: ``throughput_<device>[_tiny].{json,md}`` in ``--out``
(default ``$OUT``, else ``benchmarks/results``). ``--tiny``: a tiny network and batch on the
CPU, torch.compile's ``eager`` backend (dynamo without code generation).

    bash benchmarks/throughput.sh --end-to-end            # on a GPU
    python benchmarks/throughput.py --tiny --out /tmp/tp  # CPU: does it run?
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

START = time.perf_counter()  # a script's budget counts from here, torch's import included

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
#: Timed rounds a figure needs; fewer give "n/a: too few rounds".
MIN_ROUNDS = 3
#: What a short budget cuts last to first: the costly items of a run, ranked by what issue 19
#: needs most (0 first): every lever's ratio (they decide the recommendation), the winners
#: combined, the combination end to end against the current path (MixMask's pair, then MoCo
#: v2's), then the rest. An item starts only when the time left covers its estimate plus the
#: estimates of the items still to come that rank as high or higher (:meth:`Bench.affords`);
#: "levers" are the eager levers' builds.
RANK = {
    "levers": 0,
    "lever_rounds": 0,  # the levers' warm-up round and MIN_ROUNDS timed rounds
    "compile": 1,  # the compile lever's builds (its first compilation)
    "reduce_overhead": 2,  # CUDA graphs: the compiled graphs again, recorded
    "combined": 3,  # the winners' builds and rounds
    "end_to_end": 4,
    "data_path_compiled": 5,
    "extra_rounds": 6,  # rounds past MIN_ROUNDS, in every phase
}
#: Estimates until measured (GPU; --tiny: :data:`TINY_ESTIMATES`): seconds of an eager
#: variant's build besides its steps, of a Lightning run besides its epochs (the first one
#: decodes the images too: ``e2e_first_s`` more); Lightning's steps against the bare step's.
ESTIMATES = {"eager_build_s": 3.0, "e2e_fixed_s": 12.0, "e2e_first_s": 20.0, "e2e_step": 1.35}
TINY_ESTIMATES = {"eager_build_s": 1.0, "e2e_fixed_s": 3.0, "e2e_first_s": 1.0, "e2e_step": 1.5}
#: The end-to-end epoch whose speed is reported: epoch 1 compiles and runs cuDNN's search.
STEADY_EPOCH = 2
#: The end-to-end pairs (current path, winners) in the order they run: what a cut loses last.
E2E_ORDER = ("mixmask", "mocov2plus")
WRITE_S = 5.0  # seconds of the budget kept to write the results
FAILED, NO_DATA, STOPPED = 2, 4, 124  # exit statuses
#: The host floor's profile changes: the current path's layers, settings and op sequence with 8
#: channels per stage, :data:`FLOOR_CROP`-px images and 16 per batch (next to no arithmetic).
#: Not fewer channels: a narrower shortcut convolution meets oneDNN's channels_last bug on the
#: CPU (``solo_mixmask.backbones.CPU_CHANNELS_LAST_MIN_CHANNELS``; the process aborted).
FLOOR = {"channels": (8, 8, 8, 8), "stem_width": 8, "batch_size": 16}
FLOOR_CROP = 8  # the smallest crop MixMask's 8 x 8 mask grid allows
TINY_CROP = 16  # --tiny's synthetic batches: a quarter of the 32-px arithmetic
SEED = 1
NOT_REACHED = "not reached: the run stopped before its turn"


class Stopped(Exception):
    """SIGTERM (``throughput.sh``'s hard timeout): the variant being built is given up, nothing
    more is built or run, the round under way ends, and the results so far are written."""


class NoData(Exception):
    """``--end-to-end`` without the CIFAR-10 images it trains on."""


#: ``requested``: a SIGTERM came; ``defer``: inside timed rounds, which stop after the round.
STOP = {"requested": False, "defer": False}


def _stop(signum: int, frame: Any) -> None:
    STOP["requested"] = True
    if not STOP["defer"]:
        raise Stopped(f"stopped by {signal.Signals(signum).name} (the hard timeout)")


def stopped_error(err: BaseException) -> bool:
    """Whether ``err`` is (or wraps: torch.compile re-raises) the SIGTERM's :class:`Stopped`."""
    return isinstance(err, Stopped) or STOP["requested"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget (s)")
    p.add_argument(
        "--max-rounds", type=int, default=6, help=f"timed rounds per phase (>= {MIN_ROUNDS})"
    )
    p.add_argument("--job-s", type=float, default=0.25, help="seconds of steps per timed job")
    p.add_argument(
        "--compile-reserve-s",
        type=float,
        default=90.0,
        help="seconds a compiled variant's build is expected to take until one is measured",
    )
    p.add_argument("--compile-backend", default=None, help="default inductor (tiny: eager)")
    p.add_argument("--knn-bank", type=int, default=50_000)
    p.add_argument("--knn-queries", type=int, default=10_000)
    p.add_argument("--end-to-end", action="store_true", help="also a few Lightning epochs")
    p.add_argument("--epochs", type=int, default=3, help="epochs per end-to-end run (>= 2)")
    p.add_argument("--data", default=None, help="CIFAR-10 folder or tars (as accuracy.py)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="results folder")
    p.add_argument("--tiny", action="store_true", help="tiny network and batch on the CPU")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the profile's)")
    args = p.parse_args(argv)
    if args.tiny:
        args.max_rounds, args.job_s, args.compile_reserve_s = MIN_ROUNDS, 0.0, 20.0
        args.knn_bank, args.knn_queries, args.epochs = 2_000, 500, STEADY_EPOCH
        args.threads = args.threads or 1
    if args.max_rounds < MIN_ROUNDS:
        p.error(f"--max-rounds {args.max_rounds}: a figure needs at least {MIN_ROUNDS} rounds")
    if args.epochs < STEADY_EPOCH:
        p.error(f"--epochs {args.epochs}: the figure is epoch {STEADY_EPOCH}'s, so at least that")
    args.compile_backend = args.compile_backend or ("eager" if args.tiny else "inductor")
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
    """The run's settings, device, deadline, the estimates that hold the budget and the
    config of each (method, settings)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        #: when the budget started: the script's start, or main()'s call in a running process
        self.start = getattr(args, "started", None) or time.perf_counter()
        self.cuda = torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        prof = PROFILES["cifar_gpu"]
        self.prof = replace(prof, **TINY) if args.tiny else prof
        if args.batch:  # e.g. the full network at a CPU-sized batch
            self.prof = replace(self.prof, batch_size=args.batch)
        self.autocast = torch.bfloat16 if self.cuda and self.prof.precision == "auto" else None
        self.deadline = self.start + args.budget_s - WRITE_S
        #: images/s of the current path per phase and method, timed with that phase's levers
        self.phase_current: dict[str, dict[str, float]] = {}
        #: each phase's current-path result per method (``n/a`` with the reason when untimed)
        self.current_status: dict[str, dict[str, dict[str, Any]]] = {}
        self.phase_rounds: dict[str, dict[str, float]] = {}  # warm-up round s, timed rounds
        self.steps_per_job: dict[str, int] = {}  # steps per timed job, per method
        self.step_s: dict[str, float] = {}  # seconds per current-path step, per method
        #: the items of :data:`RANK` still to come (the end-to-end runs only when asked)
        self.pending = {"lever_rounds", "compile", "combined", "reduce_overhead"}
        self.pending |= {"data_path_compiled"} | ({"end_to_end"} if args.end_to_end else set())
        self.estimates = dict(TINY_ESTIMATES if args.tiny else ESTIMATES)
        #: seconds of a compiled variant's build: the latest measured, and the longest (a first
        #: compilation; the inductor's caches make builds of the same graphs cheaper); both
        #: --compile-reserve-s until one is measured
        self.compile_s = self.compile_first_s = args.compile_reserve_s
        self.compiles_measured = 0
        self.e2e_runs = 0  # Lightning runs made (the first one decodes the images)
        crop = int(self.cfg(METHODS[0], {}).augmentations[0].crop_size)
        crop = TINY_CROP if args.tiny else crop
        self.batch = synthetic_batch(self.prof.batch_size, crop, device=self.device)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def job_s(self) -> float:
        """Seconds of one timed job (at least one step of the slower method)."""
        return max(self.args.job_s, max(self.step_s.values(), default=0.0))

    def compiled_measured(self, seconds: float) -> None:
        self.compile_s = seconds
        first = self.compile_first_s if self.compiles_measured else 0.0
        self.compile_first_s = max(first, seconds)
        self.compiles_measured += 1

    def e2e_estimate(self, method: str, settings: dict[str, Any], first: bool = False) -> float:
        """Seconds of one end-to-end run of ``method`` with ``settings`` (``first``: it
        decodes the images); a compiled one meets the graphs of the combined phase again."""
        e = self.estimates
        images = self.prof.train_images if not self.args.tiny else 10 * (self.prof.per_class or 8)
        steps = images // self.prof.batch_size
        step_s = self.step_s.get(method, 0.0) * e["e2e_step"]
        fixed = e["e2e_fixed_s"] + (e["e2e_first_s"] if first else 0.0)
        compiling = any(settings.get(k) for k in ("performance.compile", *DATA_LEVER))
        return fixed + self.args.epochs * steps * step_s + (self.compile_s if compiling else 0.0)

    def e2e_pairs(self) -> list[float]:
        """Seconds of each end-to-end pair still to run (:data:`E2E_ORDER`; the winners'
        runs counted compiled)."""
        first = self.e2e_runs == 0
        return [
            self.e2e_estimate(m, {}, first and i == 0)
            + self.e2e_estimate(m, {"performance.compile": True})
            for i, m in enumerate(E2E_ORDER)
        ]

    def estimate(self, item: str) -> float:
        """Seconds ``item`` of :data:`RANK` is expected to take."""
        rounds = (1 + MIN_ROUNDS) * self.job_s()
        if item == "lever_rounds":
            return 2 * (1 + len(LEVERS)) * rounds
        if item in ("compile", "reduce_overhead"):
            return len(METHODS) * self.compile_s
        if item == "combined":
            return len(METHODS) * (self.compile_first_s + 2 * rounds)
        if item == "data_path_compiled":
            return self.compile_s
        if item == "end_to_end":
            return sum(self.e2e_pairs())
        return 0.0

    def reserve(self, rank: int, but: str = "") -> dict[str, float]:
        """The seconds kept for the items still to come that rank ``rank`` or higher (``but``
        aside), most important first, as much of each as can still fit (an item that no
        longer fits keeps nothing from the ones after it; of the end-to-end runs, the pairs
        that fit)."""
        left, kept = self.left(), {}
        for item in sorted(self.pending, key=lambda i: (RANK[i], i)):
            if RANK[item] > rank or item == but:
                continue
            parts = self.e2e_pairs() if item == "end_to_end" else [self.estimate(item)]
            fits = [t for t in itertools.accumulate(parts) if sum(kept.values()) + t <= left]
            if fits:
                kept[item] = fits[-1]
        return kept

    def affords(self, item: str, need: float) -> str | None:
        """None when ``need`` seconds for ``item`` fit the budget beside the items still to
        come that matter as much or more, else why not ("budget: ...")."""
        if STOP["requested"]:
            return "budget: the SIGTERM of the hard timeout came before its turn"
        keep = self.reserve(RANK[item], but=item)
        left = self.left()
        if left >= need + sum(keep.values()):
            return None
        kept = f" + ~{sum(keep.values()):.0f} s kept for {', '.join(keep)}" if keep else ""
        return f"budget: {max(left, 0):.0f} s left at its turn, ~{need:.0f} s needed{kept}"

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


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:2000]


@dataclass
class Rounds:
    """What :func:`timed_rounds` measured: seconds per call of each job in each timed round,
    the jobs that raised (with their error; left out of the later rounds), and the untimed
    warm-up round's seconds."""

    times: dict[str, list[float]]
    failed: dict[str, str] = field(default_factory=dict)
    warm_up_s: float = 0.0


def timed_rounds(
    jobs: dict[str, Callable[[], Any]],
    bench: Any,
    deadline: float,
    extra_deadline: float | None = None,
    round_s: float = 0.0,
) -> Rounds:
    """One untimed round of every job (a recompile, CUDA graph recording or the allocator's
    growth lands there, not in a figure), then interleaved timed rounds: up to
    :data:`MIN_ROUNDS` while the next one (as long as the last, first ``round_s``) ends before
    ``deadline``, more (up to ``--max-rounds``) while it ends before ``extra_deadline``. A job
    that raises is dropped with its error; a SIGTERM ends the rounds after the one under way
    (the warm-up round at once)."""
    extra_deadline = deadline if extra_deadline is None else min(extra_deadline, deadline)
    out = Rounds({name: [] for name in jobs})
    live = dict(jobs)

    def one_round(timed: bool) -> None:
        for name, job in list(live.items()):
            try:
                cuda_sync()
                begin = time.perf_counter()
                job()
                cuda_sync()
            except Exception as err:  # a finding about this job: the others go on
                if stopped_error(err):
                    raise
                traceback.print_exc()
                out.failed[name] = error_text(err)
                del live[name]
                continue
            if timed:
                out.times[name].append(time.perf_counter() - begin)

    begin = time.perf_counter()
    one_round(timed=False)
    out.warm_up_s = time.perf_counter() - begin
    last = min(round_s, out.warm_up_s) if round_s else out.warm_up_s
    STOP["defer"] = True  # a SIGTERM ends the rounds after the one under way
    try:
        for r in range(bench.args.max_rounds):
            limit = deadline if r < MIN_ROUNDS else extra_deadline
            if not live or STOP["requested"] or time.perf_counter() + last > limit:
                break
            begin = time.perf_counter()
            one_round(timed=True)
            last = time.perf_counter() - begin
            print(f"  round {r + 1}: {last:.1f} s", file=sys.stderr, flush=True)
    finally:
        STOP["defer"] = False
    return out


def rates(rounds: Rounds, work: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per job: ``{"status": "ok", "images_per_s", "rounds"}`` (``work`` images per call over
    the median call) when it was timed in :data:`MIN_ROUNDS` rounds or more, else ``n/a`` with
    the reason, or ``failed`` with its error."""
    out: dict[str, dict[str, Any]] = {}
    for name, times in rounds.times.items():
        if name in rounds.failed:
            out[name] = {"status": "failed", "error": rounds.failed[name]}
        elif len(times) < MIN_ROUNDS:
            why = f"too few rounds: {len(times)} timed before the deadline, {MIN_ROUNDS} needed"
            out[name] = {"status": "n/a", "reason": why}
        else:
            ips = work[name] / statistics.median(times)
            out[name] = {"status": "ok", "images_per_s": ips, "rounds": len(times)}
    return out


def phase_deadlines(bench: Bench, item: str) -> dict[str, float]:
    """The deadlines of :func:`timed_rounds` for the rounds of ``item``: its own rounds keep
    the items that matter as much or more; extra rounds keep every item still to come."""
    return {
        "deadline": bench.deadline - sum(bench.reserve(RANK[item], but=item).values()),
        "extra_deadline": bench.deadline - sum(bench.reserve(RANK["extra_rounds"]).values()),
    }


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
    # A record_function range (the optimiser's step) is mirrored on the GPU timeline as a user
    # annotation spanning its kernels: counting it would count those kernels twice.
    on_device = [
        e
        for e in events
        if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    ]
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


def host_floor(bench: Bench) -> dict[str, Any]:
    """ms per step of each method's current path built with :data:`FLOOR` (median of
    interleaved timings of a few steps): the host's dispatch work of the same ops (on a GPU,
    with their launches) while the device has next to nothing to do. A full step near this
    floor is bound by the host; one far above it, by the device."""
    prof = replace(bench.prof, **FLOOR)
    steps = 2 if bench.args.tiny else 10
    batch = synthetic_batch(FLOOR["batch_size"], FLOOR_CROP, device=bench.device)
    out: dict[str, Any] = {}
    jobs = {}
    for m in METHODS:
        try:
            step = EngineStep(bench.cfg(m, {}, prof=prof), bench.device, bench.autocast)
            warm_up(step, batch, 2)
        except Exception as err:  # a finding, not a reason to lose the levers' run
            if stopped_error(err):
                raise
            out[m] = {"status": "failed", "error": error_text(err)}
            traceback.print_exc()
            continue
        jobs[m] = lambda s=step: [s(batch) for _ in range(steps)]
    rounds = timed_rounds(jobs, bench, **phase_deadlines(bench, "levers"))
    for m, r in rates(rounds, {m: steps for m in jobs}).items():  # "images": steps
        if r["status"] == "ok":
            r = {"status": "ok", "step_ms": 1000 / r.pop("images_per_s"), "rounds": r["rounds"]}
        out[m] = r
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
    rounds = timed_rounds(jobs, bench, **phase_deadlines(bench, "levers"))
    out: dict[str, Any] = {"bank": [bench.args.knn_bank, dim], "queries": bench.args.knn_queries}
    out.update(rates(rounds, {name: bench.args.knn_queries for name in jobs}))
    out["bfloat16"]["settings"] = {"performance.knn_dtype": "bfloat16"}
    if out["bfloat16"]["status"] == out["float32"]["status"] == "ok":
        ratio = out["bfloat16"]["images_per_s"] / out["float32"]["images_per_s"]
        out["bfloat16"].update(ratio=ratio, wins=ratio > WIN)
    return out


#: The data path's lever: the in-memory path's pixel ops through torch.compile.
DATA_LEVER = {"performance.compile_augmentations": True}


def data_path_timing(bench: Bench) -> dict[str, Any]:
    """Images/s of the in-memory data path (a batch's views cut from a uint8 tensor on the device
    and augmented there, the CIFAR recipe's pipelines), eager against
    ``performance.compile_augmentations``, interleaved; aten ops of an eager batch. Synthetic
    images: no data needed. The compiled variant waits for its budget (:data:`RANK`)."""
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
        if backend:
            why = bench.affords("data_path_compiled", bench.compile_s)
            bench.pending.discard("data_path_compiled")
            if why:
                res.update(status="n/a", reason=why)
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
            if stopped_error(err):
                raise
            res.update(status="failed", error=error_text(err))
            traceback.print_exc()
            continue
        jobs[name] = make
    rounds = timed_rounds(jobs, bench, **phase_deadlines(bench, "levers"))
    for name, r in rates(rounds, {name: batch * len(indexes) for name in jobs}).items():
        out[name].update(r)
    if out["compiled"].get("status") == out["eager"].get("status") == "ok":
        ratio = out["compiled"]["images_per_s"] / out["eager"]["images_per_s"]
        out["compiled"].update(ratio=ratio, wins=ratio > WIN)
    return out


def measure(
    bench: Bench,
    variants: dict[str, dict[str, Any]],
    current: dict[str, EngineStep],
    phase: str,
    out: dict[str, dict[str, Any]],
) -> None:
    """Build and warm every (variant, method) that the budget allows (eager ones first), run
    every job once untimed, then time them interleaved with the current path: ``out[variant]
    [method]``, filled as it goes (a SIGTERM leaves what was done)."""
    batch = bench.batch
    jobs: dict[str, Any] = {}
    for name, settings in variants.items():
        out[name] = {
            m: {"settings": settings, "status": "n/a", "reason": NOT_REACHED} for m in METHODS
        }
    for method in METHODS:
        n = bench.steps_per_job[method]
        jobs[f"current/{method}"] = lambda s=current[method], n=n: [s(batch) for _ in range(n)]
    rounds_item = "combined" if phase == "combined" else "lever_rounds"
    for name in sorted(variants, key=lambda n: RANK.get(n, 0)):  # the compiled ones last
        settings = variants[name]
        item = "combined" if phase == "combined" else (name if name in RANK else "levers")
        compiled = bool(settings.get("performance.compile"))
        # both methods or neither: one method's ratio alone makes no winner
        each = bench.compile_s if compiled else 4 * max(bench.step_s.values())
        why = unavailable(bench, settings) or bench.affords(
            item, len(METHODS) * (each + bench.estimates["eager_build_s"])
        )
        for method in METHODS:
            res = out[name][method]
            if why or STOP["requested"]:
                res.update(reason=why or "budget: the SIGTERM of the hard timeout came first")
                continue
            print(f"{phase}: building {name} / {method}", file=sys.stderr, flush=True)
            begin = time.perf_counter()
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
                if stopped_error(err):  # (torch.compile wraps the Stopped in its own error)
                    res.update(reason="budget: stopped by SIGTERM in its warm-up")
                    raise Stopped(res["reason"]) from err
                del res["reason"]
                res.update(status="failed", error=error_text(err))
                traceback.print_exc()
                continue
            res["build_s"] = time.perf_counter() - begin
            if compiled:
                bench.compiled_measured(res["build_s"])
            n = bench.steps_per_job[method]
            jobs[f"{name}/{method}"] = lambda s=step, n=n: [s(batch) for _ in range(n)]
        bench.pending.discard(item)
    bench.pending.discard(rounds_item)
    work = {key: bench.prof.batch_size * bench.steps_per_job[key.split("/")[1]] for key in jobs}
    round_s = len(jobs) * bench.job_s()
    why = bench.affords(rounds_item, (1 + MIN_ROUNDS) * round_s)
    if why:  # not even the rounds a figure needs fit: no figure, not a guess
        for key in jobs:
            name, method = key.split("/")
            if name == "current":
                bench.current_status.setdefault(phase, {})[method] = {
                    "status": "n/a",
                    "reason": why,
                }
            else:
                out[name][method].update(reason=f"{why} to time it")
        return
    print(f"{phase}: timing {len(jobs)} jobs, {bench.left():.0f} s left", file=sys.stderr)
    rounds = timed_rounds(jobs, bench, round_s=round_s, **phase_deadlines(bench, rounds_item))
    bench.phase_rounds[phase] = {
        "warm_up_round_s": rounds.warm_up_s,
        "timed_rounds": max(len(t) for t in rounds.times.values()),
    }
    rated = rates(rounds, work)
    for method in METHODS:
        cur = rated[f"current/{method}"]
        bench.current_status.setdefault(phase, {})[method] = cur
        if cur["status"] == "ok":
            bench.phase_current.setdefault(phase, {})[method] = cur["images_per_s"]
    for key, r in rated.items():
        name, method = key.split("/")
        if name == "current":
            continue
        cur = rated[f"current/{method}"]
        if r["status"] == "ok" and cur["status"] != "ok":
            why = cur.get("reason") or cur.get("error")
            r = {"status": "n/a", "reason": f"no ratio: the current path was not timed ({why})"}
        res = out[name][method]
        res.pop("reason", None)
        res.update(r)
        if r["status"] == "ok":  # the current path timed in the same rounds
            res["current_images_per_s"] = cur["images_per_s"]
            res["ratio"] = res["images_per_s"] / res["current_images_per_s"]


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


class EpochLines(io.TextIOBase):
    """Standard output during a Lightning run, passed on as it comes, and the figures of its
    epoch lines (``solo_mixmask.run.console``: ``epoch 2/3: ..., 12345 img/s, 3.1 s``; the
    run's summary holds only the whole run's): ``{epoch: (img/s over the epoch's training
    batches or None, the epoch's wall seconds, whether the k-NN monitor ran in it)}``."""

    LINE = re.compile(r"^epoch (\d+)/\d+: (?:(.*), )?([\d.]+) s$")

    def __init__(self, target: Any):
        super().__init__()
        self.target = target
        self.pending = ""
        self.epochs: dict[int, tuple[float | None, float, bool]] = {}

    def write(self, text: str) -> int:
        self.target.write(text)
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            found = self.LINE.match(line.strip())
            if found:
                parts = found.group(2) or ""
                ips = re.search(r"(?:^|, )(\d+) img/s$", parts)
                self.epochs[int(found.group(1))] = (
                    float(ips.group(1)) if ips else None,
                    float(found.group(3)),
                    "k-NN top-1" in parts,
                )
        return len(text)

    def flush(self) -> None:
        self.target.flush()


def e2e_data(args: argparse.Namespace) -> tuple[str, ...]:
    """The data overrides of the end-to-end runs, checked before any work: no CIFAR-10 (or
    tars that do not unpack) raise :class:`NoData`."""
    prof = replace(PROFILES["cifar_gpu"], **TINY) if args.tiny else PROFILES["cifar_gpu"]
    try:
        return data_overrides(prof, args.data)
    except SystemExit as err:  # common.cifar10_source: "error: no CIFAR-10 under ..."
        raise NoData(str(err).removeprefix("error: ")) from err
    except Exception as err:  # a tar that does not unpack
        raise NoData(f"the CIFAR-10 images did not unpack: {error_text(err)}") from err


def end_to_end(
    bench: Bench, settings: dict[str, Any], data: tuple[str, ...], out: dict[str, Any]
) -> None:
    """Lightning pretraining runs of ``--epochs`` epochs, ``data.format=memory``: per method
    (:data:`E2E_ORDER`) the current path, then ``settings`` (the winners); a pair starts only
    when both runs fit the budget. ``out[f"{label}/{method}"]``, filled as it goes."""
    from solo_mixmask.run.pretrain import run_pretrain  # the one import of the run package

    prof = replace(bench.prof, epochs=bench.args.epochs, data=data)
    runs = {"current": {}, **({"combined": settings} if settings else {})}
    with tempfile.TemporaryDirectory(prefix="throughput_e2e_") as tmp:  # checkpoints
        for method in E2E_ORDER:
            pair = {f"{label}/{method}": s for label, s in runs.items()}
            for key, s in pair.items():
                out[key] = {"settings": s, "status": "n/a", "reason": NOT_REACHED}
            if not settings:
                out[f"combined/{method}"] = {
                    "settings": {},
                    "status": "n/a",
                    "reason": "no lever won: the current path is the recommendation",
                }
            first = bench.e2e_runs == 0
            need = sum(
                bench.e2e_estimate(method, s, first and key.startswith("current"))
                for key, s in pair.items()
            )
            why = bench.affords("end_to_end", need)
            if why:
                for key in pair:
                    out[key]["reason"] = f"{why} (the pair)"
                continue
            for key, s in pair.items():
                if STOP["requested"]:
                    out[key]["reason"] = "budget: the SIGTERM of the hard timeout came first"
                    continue
                out[key] = e2e_run(bench, run_pretrain, key, s, prof, Path(tmp))
            cur, comb = out[f"current/{method}"], out.get(f"combined/{method}", {})
            for figure in ("steady_images_per_s_wall", "steady_images_per_s_training_batches"):
                if cur.get(figure) and comb.get(figure):
                    comb[f"{figure}_ratio"] = comb[figure] / cur[figure]
    bench.pending.discard("end_to_end")


def e2e_run(
    bench: Bench, run_pretrain: Any, key: str, settings: dict[str, Any], prof: Profile, root: Path
) -> dict[str, Any]:
    """One end-to-end run (``key`` = ``label/method``) and its figures: the whole run's and
    epoch :data:`STEADY_EPOCH`'s (images of one epoch over its wall seconds, which hold the
    data path and Lightning's loop, and over its training batches alone)."""
    print(f"end to end: {key}", file=sys.stderr, flush=True)
    method = key.split("/")[1]
    cfg = bench.cfg(method, settings, prof, run_dir=root / key.replace("/", "_"))
    begin = time.perf_counter()
    lines = EpochLines(sys.stdout)
    try:
        with contextlib.redirect_stdout(lines):
            summary = run_pretrain(cfg)
    except Exception as err:  # keep the other figures: report it, go on
        if isinstance(err, RunStopped):  # the engine's own SIGTERM handler
            STOP["requested"] = True
            why = "budget: stopped by the SIGTERM of the hard timeout during the run"
            return {"settings": settings, "status": "n/a", "reason": why}
        traceback.print_exc()
        return {"settings": settings, "status": "failed", "error": error_text(err)}
    finally:
        bench.e2e_runs += 1
    process_s = time.perf_counter() - begin
    # the images trained: the loader drops the last partial batch of each epoch
    steps_per_epoch = summary["steps"] // max(1, summary["epochs"])
    trained = summary["steps"] * prof.batch_size
    out: dict[str, Any] = {
        "settings": settings,
        "status": "ok",
        "epochs": summary["epochs"],
        "train_images": summary["train_images"],
        "images_trained": trained,
        "wall_seconds": summary["wall_seconds"],
        "process_seconds": process_s,  # + compose, data, start-up
        "images_per_s_training_batches": summary["images_per_sec"],
        "training_batches_clock": summary.get("images_per_sec_clock"),
        "images_per_s_whole_run": trained / summary["wall_seconds"],
        "knn_acc1": summary.get("knn_acc1"),
    }
    steady = lines.epochs.get(STEADY_EPOCH)
    if steady is None or steady[1] <= 0:
        out["steady_epoch"] = f"n/a: no epoch line of epoch {STEADY_EPOCH} with its seconds"
    else:
        ips, wall, evaluated = steady
        out.update(
            steady_epoch=STEADY_EPOCH,
            steady_images_per_s_training_batches=ips,
            steady_epoch_wall_s=wall,
            steady_images_per_s_wall=steps_per_epoch * prof.batch_size / wall,
            steady_epoch_evaluated=evaluated,  # its wall then holds the k-NN pass too
        )
    # what a run costs besides its epochs: the next runs' estimate
    epochs_s = sum(wall for _, wall, _ in lines.epochs.values())
    bench.estimates["e2e_fixed_s"] = max(0.0, process_s - epochs_s)
    return out


def status_text(r: dict[str, Any], width: int = 90) -> str:
    """``n/a: <reason>`` or ``failed: <error>`` of a result that is not ``ok``."""
    return f"{r.get('status', 'n/a')}: {r.get('reason') or r.get('error') or ''}"[:width]


def markdown(res: dict[str, Any]) -> str:
    """The report; every section that the run reached (``complete: false``: cut short)."""
    s = res["settings"]
    lines = [
        f"# Training-step throughput ({res['device']}: {res['device_name']})",
        "",
        f"Command: `{res['command']}`",
        "",
        f"torch {res['machine']['torch']}, load average {res['machine']['load_average_1min']}, "
        f"{s['recipe']}, batch {s['batch_size']}, {s['precision']}, compile backend "
        f"{s['compile_backend']}; wall {res['wall_s']:.0f} s of a {s['budget_s']:.0f} s budget"
        f" ({', '.join(f'{k} {v:.0f} s' for k, v in res['phase_seconds'].items())}).",
    ]
    if not res.get("complete"):
        lines += ["", f"**Incomplete**: {res.get('stopped') or 'the run did not reach its end'}."]
    methods = res.get("methods", {})
    if set(methods) == set(METHODS):
        lines += ["", *lever_table(res)]
    k = res.get("knn", {})
    if "float32" in k:
        parts = [
            f"{d} {k[d]['images_per_s']:.0f} queries/s"
            if k[d]["status"] == "ok"
            else f"{d} {status_text(k[d])}"
            for d in ("float32", "bfloat16")
        ]
        ratio = k["bfloat16"].get("ratio")
        tail = (
            ""
            if ratio is None
            else f", ratio {ratio:.3f}{' (wins)' if k['bfloat16']['wins'] else ''}"
        )
        lines += [
            "",
            f"k-NN monitor (bank {k['bank'][0]} x {k['bank'][1]}, {k['queries']} queries): "
            f"{', '.join(parts)}{tail}.",
        ]
    elif k:
        lines += ["", f"k-NN monitor: {status_text(k, 300)}"]
    d = res.get("data_path", {})
    if "eager" in d:
        parts = []
        for name in ("eager", "compiled"):
            r = d.get(name, {})
            if r.get("status") != "ok":
                parts.append(f"{name} {status_text(r, 120)}")
                continue
            extra = f", {r['aten_ops_per_batch']} aten ops per batch" if name == "eager" else ""
            if name == "compiled":
                extra = f", first 4 batches {r['first_s']:.1f} s"
                if "ratio" in r:
                    extra += f", ratio {r['ratio']:.3f}" + (" (wins)" if r["wins"] else "")
            parts.append(f"{name} {r['images_per_s']:.0f} img/s{extra}")
        lines += [
            "",
            f"In-memory data path (synthetic {d['images'][0]} images, batch {d['batch']}, the "
            f"recipe's pipelines; compiled = performance.compile_augmentations): "
            f"{'; '.join(parts)}.",
        ]
    elif d:
        lines += ["", f"In-memory data path: {status_text(d, 300)}"]
    p = res.get("peak", {})
    if "tflops" in p:
        lines += ["", f"Peak: {p['tflops']:.2f} TFLOP/s ({p['note']}, {p['size']}^3)."]
    if set(methods) == set(METHODS):
        lines += ["", *flops_table(res), "", *profile_table(res)]
    e2e = res.get("end_to_end")
    if e2e:
        lines += ["", *e2e_table(e2e)]
    if res.get("errors"):
        lines += ["", "Errors: " + "; ".join(res["errors"])]
    return "\n".join(lines)


def lever_table(res: dict[str, Any]) -> list[str]:
    header = ["variant", "settings"]
    for m in METHODS:
        header += [f"{m} img/s", f"{m} ratio", f"{m} aten ops/step"]

    def cells(per_method: dict[str, Any]) -> list[str]:
        out = []
        for m in METHODS:
            r = per_method.get(m, {})
            ops = str(r.get("dispatched_ops", "-"))  # none for compiled steps
            if r.get("status") == "ok":
                out += [f"{r['images_per_s']:.0f}", f"{r.get('ratio', 1.0):.3f}", ops]
            else:
                out += [status_text(r), "-", ops]
        return out

    cur = {}
    for m in METHODS:
        r = res["methods"][m]
        cur[m] = {**r["current"], "dispatched_ops": r.get("profile", {}).get("dispatched_ops", "-")}
    rows = [["current path", "config defaults", *cells(cur)]]
    for name, per_method in res.get("levers", {}).items():
        settings = ", ".join(f"{k}={v}" for k, v in LEVERS[name][0].items())
        label = name + (" **wins**" if name in res.get("winners", []) else "")
        rows.append([label, settings, *cells(per_method)])
    if "combined" in res:
        rows.append(
            ["combined winners", ", ".join(res["winners"]) or "none won", *cells(res["combined"])]
        )
    return [table(header, rows)]


def flops_table(res: dict[str, Any]) -> list[str]:
    rows = []
    for m in METHODS:
        r = res["methods"][m]
        cur, best = r["current"], r.get("best", {})
        syncs = {"current": cur.get("host_syncs")}
        syncs |= {n: v.get(m, {}).get("host_syncs") for n, v in res.get("levers", {}).items()}
        syncs["combined"] = res.get("combined", {}).get(m, {}).get("host_syncs")
        counts = {n: v["count"] for n, v in syncs.items() if isinstance(v, dict)}
        rows.append(
            [
                m,
                f"{r['flops_per_image'] / 1e9:.3f}",
                f"{cur['tflops']:.3f}" if "tflops" in cur else status_text(cur, 60),
                f"{100 * cur['peak_fraction']:.1f}%" if "peak_fraction" in cur else "n/a",
                f"{best['tflops']:.3f} ({best['variant']}), {100 * best['peak_fraction']:.1f}%"
                if "tflops" in best
                else "n/a",
                str(counts or cur.get("host_syncs"))[:120],
            ]
        )
    head = ["method", "GFLOP/image/step", "TFLOP/s", "of peak", "best TFLOP/s, of peak"]
    return [table([*head, "host syncs per step"], rows)]


def profile_table(res: dict[str, Any]) -> list[str]:
    rows = []
    for m in METHODS:
        r = res["methods"][m]
        prof, floor, step_ms = r["profile"], r.get("host_floor", {}), r["current"].get("step_ms")
        busy = prof.get("device_busy_ms")
        top = ", ".join(f"{t['name'][:40]} {t['ms']:.2f}" for t in prof["top"][:4])
        if floor.get("status") == "ok":
            over = floor.get("step_over_floor")
            floor_text = f"{floor['step_ms']:.2f}" + (f" (step = {over:.1f}x)" if over else "")
        else:
            floor_text = status_text(floor, 60)
        share = prof.get("device_busy_share")
        rows.append(
            [
                m,
                "n/a" if step_ms is None else f"{step_ms:.2f}",
                "n/a (CPU)"
                if busy is None
                else f"{busy:.2f}" + ("" if share is None else f" ({100 * share:.0f}%)"),
                f"{prof['kernel_launches']:.0f}" if "kernel_launches" in prof else "n/a (CPU)",
                floor_text,
                str(prof.get("dispatched_ops", "n/a")),
                str(prof.get("syncing_ops", "n/a")),
                f"{prof['clock']}: {top}",
            ]
        )
    head = ["method", "step ms", "device busy ms (share)", "kernel launches", "host floor ms"]
    return [
        "Where a current-path step's time goes (torch.profiler, per step):",
        "",
        table([*head, "aten ops", "syncing ops", "top ops, ms"], rows),
    ]


def e2e_table(e2e: dict[str, Any]) -> list[str]:
    if "status" in e2e:  # the phase itself failed
        return [f"End to end: {status_text(e2e, 300)}"]
    rows = []
    for key, v in e2e.items():
        if v.get("status") != "ok":
            rows.append([key, status_text(v, 120), "", "", "", "", ""])
            continue
        ratio = v.get("steady_images_per_s_wall_ratio")
        if "steady_epoch_wall_s" in v:
            steady = f"{v['steady_images_per_s_wall']:.0f}" + (
                " (k-NN pass included)" if v["steady_epoch_evaluated"] else ""
            )
            batches = v["steady_images_per_s_training_batches"]
            batches_text = "n/a" if batches is None else f"{batches:.0f}"
        else:
            steady, batches_text = v["steady_epoch"], "n/a"
        rows.append(
            [
                key,
                steady,
                "-" if ratio is None else f"{ratio:.3f}",
                f"{batches_text} ({v.get('training_batches_clock')})",
                f"{v['images_per_s_whole_run']:.0f}",
                f"{v['wall_seconds']:.0f}",
                str(v["knn_acc1"]),
            ]
        )
    head = [
        "run",
        f"epoch {STEADY_EPOCH} img/s (wall)",
        "ratio to current",
        f"epoch {STEADY_EPOCH} img/s (training batches, clock)",
        "whole run img/s (wall)",
        "wall s",
        "k-NN top-1",
    ]
    return [
        f"## End to end (Lightning, data.format=memory; epoch {STEADY_EPOCH}: epoch 1 compiles "
        "and runs cuDNN's search)",
        "",
        table(head, rows),
    ]


def derive(res: dict[str, Any], bench: Bench) -> None:
    """The figures computed from the measured ones (current img/s, TFLOP/s, fractions of the
    peak, the fastest variant, the host floor's multiple) and the list of errors; again after
    every phase, so that a run cut short reports what it has."""
    peak = res.get("peak", {}).get("tflops")
    for m, r in res.get("methods", {}).items():
        cur = r["current"]
        ips = bench.phase_current.get("levers", {}).get(m)
        if ips is None:
            status = bench.current_status.get("levers", {}).get(m, {"reason": NOT_REACHED})
            cur.update(status="n/a", reason=status.get("reason") or status.get("error"))
            continue
        cur.pop("reason", None)
        cur.update(status="ok", images_per_s=ips, step_ms=1000 * bench.prof.batch_size / ips)
        floor = r.get("host_floor", {})
        if floor.get("status") == "ok":
            floor["step_over_floor"] = cur["step_ms"] / floor["step_ms"]
        busy = r["profile"].get("device_busy_ms")
        if busy is not None:  # of the unprofiled step's time, from the timed rounds
            r["profile"]["device_busy_share"] = busy / cur["step_ms"]
        # the best by its ratio to the current path of its own rounds (phases run at other
        # speeds), as img/s of the levers phase's current path
        ratios = {"current": 1.0}
        if "ratio" in res.get("combined", {}).get(m, {}):
            ratios["combined"] = res["combined"][m]["ratio"]
        for n, v in res.get("levers", {}).items():
            if n not in REFERENCES and "ratio" in v[m]:
                ratios[n] = v[m]["ratio"]
        best = max(ratios, key=lambda n: ratios[n])
        if peak:
            for key, ips_v, name in (
                ("current", ips, "current"),
                ("best", ratios[best] * ips, best),
            ):
                tflops = r["flops_per_image"] * ips_v / 1e12
                r.setdefault(key, {}).update(
                    tflops=tflops, peak_fraction=tflops / peak, variant=name
                )
    errors = list(res["phase_errors"])
    for label, per in (*res.get("levers", {}).items(), ("combined", res.get("combined", {}))):
        errors += [
            f"{label}/{m}: {r['error']}"
            for m, r in per.items()
            if isinstance(r, dict) and r.get("status") == "failed"
        ]
    for part in ("knn", "data_path", "end_to_end"):
        errors += [
            f"{part} {n}: {r['error']}"
            for n, r in res.get(part, {}).items()
            if isinstance(r, dict) and r.get("status") == "failed"
        ]
    errors += [
        f"host floor/{m}: {r['host_floor']['error']}"
        for m, r in res.get("methods", {}).items()
        if r.get("host_floor", {}).get("status") == "failed"
    ]
    res["errors"] = errors


def write(res: dict[str, Any], bench: Bench, final: bool) -> list[Path]:
    """``res`` as JSON and Markdown, now (after every phase, ``complete: false``, and at the
    end); a report that does not render still leaves the JSON."""
    if STOP["requested"] and not res.get("stopped"):
        res["stopped"] = "stopped by SIGTERM (the hard timeout)"
    res["complete"] = final and not res.get("stopped")
    res["wall_s"] = time.perf_counter() - bench.start
    res["phase_rounds"] = bench.phase_rounds
    derive(res, bench)
    try:
        text = markdown(res)
    except Exception as err:  # a report bug must not lose the figures
        traceback.print_exc()
        text = f"# Training-step throughput\n\nThe report did not render ({error_text(err)})."
    args = bench.args
    stem = f"throughput_{res['device']}" + ("_tiny" if args.tiny else "")
    stem += f"_batch{args.batch}" if args.batch else ""
    paths = write_results(stem, res, text, args.out)
    if final:
        print(text)
        print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return paths


def current_path(bench: Bench, methods: dict[str, Any]) -> dict[str, EngineStep]:
    """Each method's current-path step, built and warmed, with its FLOPs, host syncs and
    profile in ``methods[method]``."""
    current = {}
    for m in METHODS:
        step = current[m] = bench.step(m, {})
        bench.step_s[m] = min(warm_up(step, bench.batch, 3 if bench.cuda else 1))
        bench.steps_per_job[m] = max(1, round(bench.args.job_s / bench.step_s[m]))
        flops = step_flops(step, bench.batch)
        methods[m] = {
            "flops_per_step": flops,
            "flops_per_image": flops / bench.prof.batch_size,
            "current": {"host_syncs": host_syncs(bench, step, bench.batch)},
            "steps_per_job": bench.steps_per_job[m],
            "profile": step_profile(bench, step, bench.batch, steps=1 if bench.args.tiny else 3),
        }
    return current


def run(args: argparse.Namespace, res: dict[str, Any], held: list[Bench]) -> None:
    """The phases in order, each written when it ends (``held`` gets the :class:`Bench`)."""
    data = e2e_data(args) if args.end_to_end else ()  # before any work: missing is an error
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
    held.append(bench)
    res.update(
        command=command_line(),
        device=device_label(),
        device_name=torch.cuda.get_device_name(0) if bench.cuda else "CPU",
        machine=machine(),
        settings={
            "recipe": "accuracy.py cifar_gpu profile (configs/pretrain/cifar + CIFAR_RECIPE)"
            + (", tiny" if args.tiny else ""),
            "batch_size": bench.prof.batch_size,
            "precision": "bf16 autocast" if bench.autocast else "float32",
            "channels_last": True,
            "compile_backend": args.compile_backend,
            "budget_s": args.budget_s,
            "min_rounds": MIN_ROUNDS,
            "max_rounds": args.max_rounds,
            "job_s": args.job_s,
            "win_threshold": WIN,
            "ranks": RANK,
            "tiny": args.tiny,
        },
    )

    def phase(name: str, fn: Callable[..., Any], *fn_args: Any) -> Any:
        print(f"== {name}: {bench.left():.0f} s left", file=sys.stderr, flush=True)
        begin = time.perf_counter()
        try:
            return fn(*fn_args)
        except Exception as err:  # the phase is lost, not the run
            if stopped_error(err):
                raise
            traceback.print_exc()
            res["phase_errors"].append(f"{name}: {error_text(err)}")
            return {"status": "failed", "error": error_text(err)}
        finally:
            res["phase_seconds"][name] = round(time.perf_counter() - begin, 1)
            write(res, bench, final=False)

    methods = res["methods"] = {}
    current = phase("current path", current_path, bench, methods)
    if set(current) != set(METHODS):  # nothing compares without it
        return
    res["peak"] = phase("peak", matmul_peak, bench)
    res["knn"] = phase("knn", knn_timing, bench, current[METHODS[0]].model.features_dim)
    floor = phase("host floor", host_floor, bench)
    for m in METHODS:
        methods[m]["host_floor"] = floor.get(m, floor)
    levers = res["levers"] = {}
    phase(
        "levers", measure, bench, {n: s for n, (s, _) in LEVERS.items()}, current, "levers", levers
    )
    settings, won = winners(levers)
    res.update(winners=won, combined_settings=settings)
    gc.collect()  # the levers' models, compiled graphs and CUDA graph pools
    if bench.cuda:
        torch.cuda.empty_cache()
    combined: dict[str, Any] = {}
    if settings:
        phase("combined", measure, bench, {"combined": settings}, current, "combined", combined)
    else:
        bench.pending.discard("combined")
        combined["combined"] = {
            m: {"settings": {}, "status": "n/a", "reason": "no lever won: nothing to combine"}
            for m in METHODS
        }
    res["combined"] = combined.get("combined", combined)
    current.clear()
    gc.collect()
    if bench.cuda:
        torch.cuda.empty_cache()
    res["data_path"] = data_path = phase("data path", data_path_timing, bench)
    # the data path's lever joins the winners for the end-to-end runs (the bare steps take
    # synthetic batches: it cannot change them)
    both = {**settings, **(DATA_LEVER if data_path.get("compiled", {}).get("wins") else {})}
    res["combined_settings"] = both  # what accuracy.py --settings-from applies
    if args.end_to_end:
        res["end_to_end"] = {}
        phase("end to end", end_to_end, bench, both, data, res["end_to_end"])


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """Run, write, and return the exit status; the budget counts from ``started`` (default:
    now)."""
    STOP.update(requested=False, defer=False)
    previous = signal.signal(signal.SIGTERM, _stop)
    args = parse_args(argv)
    args.started = started or time.perf_counter()
    res: dict[str, Any] = {"phase_errors": [], "phase_seconds": {}}
    held: list[Bench] = []
    crashed = False
    try:
        run(args, res, held)
    except NoData as err:
        print(f"throughput.py: error: --end-to-end: {err}", file=sys.stderr)
        return NO_DATA
    except Stopped as err:
        res["stopped"] = str(err)
    except Exception as err:
        traceback.print_exc()
        res["phase_errors"].append(f"run: {error_text(err)}")
        crashed = True
    finally:
        STOP["defer"] = True  # a second SIGTERM must not cut the last write
        try:
            if held:
                write(res, held[0], final=True)
        finally:
            STOP["defer"] = False
            signal.signal(signal.SIGTERM, previous)
    if res.get("stopped"):
        print(f"throughput.py: {res['stopped']}: results so far written", file=sys.stderr)
        return STOPPED
    if crashed or not held:
        print(f"throughput.py: error: {'; '.join(res['phase_errors'])}", file=sys.stderr)
        return 1
    if res["errors"]:
        print(f"throughput.py: error: failed: {'; '.join(res['errors'])}", file=sys.stderr)
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(started=START))
