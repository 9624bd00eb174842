"""Helpers shared by the benchmark scripts: configs, a bare training step, timing, results.

A "bare" step is what Lightning's loop does for one batch, without its bookkeeping: the
method's ``training_step`` (forward passes, losses, queue update), ``backward``, the SGD step
and the EMA of every (online, momentum) pair. ``self.log`` calls inside ``training_step`` are
no-ops without a Trainer, so the figures are the method's own cost.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` without installing
    sys.path.insert(0, str(REPO))

from solo_mixmask.callbacks.nonfinite import LossCheck  # noqa: E402
from solo_mixmask.config.run_specs import trainer_spec  # noqa: E402
from solo_mixmask.core.masks import MaskBank, draw_cells  # noqa: E402
from solo_mixmask.core.mixing import mix_with_masks  # noqa: E402
from solo_mixmask.methods import METHODS  # noqa: E402
from solo_mixmask.utils.momentum import ema_update, ema_update_pairs  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
MOCO_FAMILY = ("mocov2plus", "mixmask", "unmix", "unmix_mixmask")
#: Extra query forward + backward passes per step over MoCo (the FLOP-ideal ratio's k).
EXTRA_PASSES = {"mocov2plus": 0, "mixmask": 1, "unmix": 1, "unmix_mixmask": 2}
TINY_BACKBONE = {"name": "resnet18", "kwargs": {"channels": [8, 16, 32, 64]}}

warnings.filterwarnings("ignore", message=".*self.trainer.*")
warnings.filterwarnings("ignore", message=".*self.log.*")


def command_line() -> str:
    """The command that ran this script, for the results files."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def config_method_kwargs(dataset: str, method: str) -> dict[str, Any]:
    """``method_kwargs`` of ``configs/pretrain/<dataset>/<method>.yaml`` (plain dict)."""
    path = REPO / "configs" / "pretrain" / dataset / f"{method}.yaml"
    return dict(OmegaConf.to_container(OmegaConf.load(path).get("method_kwargs", {})))


def method_cfg(
    method: str,
    *,
    backbone: dict[str, Any],
    batch_size: int,
    crop: int,
    method_kwargs: dict[str, Any] | None = None,
    channels_last: bool = True,
    cifar_stem: bool | None = None,
    compile_backend: str | None = None,
) -> DictConfig:
    """A config that ``METHODS[method](cfg)`` accepts; two views of ``crop`` pixels."""
    return OmegaConf.create(
        {
            "name": f"bench-{method}",
            "method": method,
            "backbone": {**backbone, "cifar_stem": cifar_stem},
            "method_kwargs": dict(method_kwargs or {}),
            "data": {"dataset": "fashion_mnist", "num_classes": 10, "num_workers": 0},
            "augmentations": [{"crop_size": crop, "num_crops": 2}],
            "optimizer": {"batch_size": batch_size, "lr": 0.03},
            "knn_eval": {"enabled": False},
            "performance": {
                "channels_last": channels_last,
                "compile": compile_backend is not None,
                "compile_backend": compile_backend or "inductor",
            },
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "progress_bar": False,
        }
    )


class BareTrainer:
    """One method with its optimiser: ``step(batch)`` = training_step + backward + SGD + EMA.

    ``autocast``: a dtype (torch.bfloat16) to run ``training_step`` under autocast on the
    model's device, as Lightning's "bf16-mixed" precision does; None = full precision.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float = 0.03,
        tau: float = 0.99,
        autocast: torch.dtype | None = None,
    ):
        self.model = model.train()
        params = [p for g in model.learnable_params for p in g["params"]]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
        self.tau = tau
        self.autocast = autocast
        self.device_type = next(model.parameters()).device.type

    def autocast_context(self) -> Any:
        """Autocast to ``self.autocast`` on the model's device, or a no-op context."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast)

    def forward_loss(self, batch: list[Any]) -> torch.Tensor:
        """The method's training loss (forward passes, losses, queue update)."""
        with self.autocast_context():
            loss = self.model.training_step(batch, 0)
        return loss["loss"] if isinstance(loss, dict) else loss

    def apply(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward of ``loss``, the SGD step and the EMA of every (online, momentum) pair."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for online, momentum in self.model.momentum_pairs:
            ema_update(online, momentum, self.tau)
        return loss.detach()

    def step(self, batch: list[Any]) -> torch.Tensor:
        return self.apply(self.forward_loss(batch))


class EngineStep:
    """One training step as the engine's Lightning loop takes it: ``training_step`` (under
    ``autocast``, as "bf16-mixed" precision does), the NaN/inf guard's read of the loss
    (``LossCheck`` with ``performance.loss_check_lag``), backward, the model's own optimiser
    (``build_optimizer``: ``optimizer.*`` and ``performance.optimizer_impl``) and the EMA of
    every momentum pair (``performance.ema_foreach_lerp``) at ``momentum.base_tau``. The model
    is built from ``cfg`` through the ``METHODS`` registry, on ``device``."""

    def __init__(self, cfg: DictConfig, device: str = "cpu", autocast: torch.dtype | None = None):
        torch.manual_seed(0)
        self.model = METHODS[cfg.method](cfg).to(device).train()
        self.optimizer = self.model.build_optimizer()
        self.tau = float(self.model.engine.momentum.base_tau)
        self.lerp = bool(self.model.engine.performance.ema_foreach_lerp)
        self.loss_check = LossCheck(trainer_spec(cfg).loss_check_lag)
        self.steps = 0
        self.autocast = autocast
        self.device_type = torch.device(device).type

    def loss(self, batch: list[Any]) -> torch.Tensor:
        ctx = (
            torch.autocast(self.device_type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.model.training_step(batch, 0)
        return out["loss"] if isinstance(out, dict) else out

    def __call__(self, batch: list[Any]) -> None:
        loss = self.loss(batch)
        bad = self.loss_check.push(loss, self.steps, 0)
        if bad is not None:
            raise FloatingPointError(f"the loss of step {bad.step} is {bad.local}")
        self.steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        ema_update_pairs(self.model.momentum_pairs, self.tau, self.lerp)


def extra_pass_loss(trainer: BareTrainer, x: torch.Tensor) -> torch.Tensor:
    """A loss of one more query forward through backbone + projector of images ``x`` (what a
    mixed query costs at best), under the trainer's autocast."""
    with trainer.autocast_context():
        z = trainer.model.forward(x)["z"]
    return z.float().square().mean()


def extra_pass_job(trainer: BareTrainer, x: torch.Tensor) -> Callable[[], None]:
    """Timing job: one extra query forward + backward (:func:`extra_pass_loss`), nothing else."""

    def extra_pass() -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        extra_pass_loss(trainer, x).backward()

    return extra_pass


def build_trainer(
    cfg: DictConfig, device: str = "cpu", autocast: torch.dtype | None = None
) -> BareTrainer:
    torch.manual_seed(0)
    model = METHODS[cfg.method](cfg).to(device)
    return BareTrainer(model, autocast=autocast)


def mask_mixer(model: Any) -> Any:
    """The method's MixMask mixer (``core.mixing.MaskMixer``)."""
    return next(mixer for mixer, _ in model.mixers if mixer.name == "mask")


def mask_jobs(
    model: Any, x: torch.Tensor, partner: torch.Tensor, calls: int, inner: int = 1
) -> dict[str, Callable[[], None]]:
    """Timing jobs for the MixMask branch's own work, done as the model's mixed branch does it.

    ``masks_mixing``: ``inner`` x (pixel masks taken from a bank + mixing) for images ``x``
    (B,3,H,W), from a bank filled beforehand with enough masks for ``calls`` calls, so no
    refill falls inside the timing; ``mask_bank_refill``: one bulk draw of the model's bank
    capacity (its mask mixer's ``bank.capacity`` cell masks). :func:`mask_share` adds the two up.
    """
    n, size = x.shape[0], tuple(x.shape[-2:])
    mixer = mask_mixer(model)
    per_step = n if mixer.per_sample_masks else 1
    gen = model.ranked_generators().device(x.device)
    grid, ratio, kind = mixer.bank.grid_size, mixer.bank.ratio, mixer.bank.mask_type
    bank = MaskBank(grid, ratio, kind, capacity=per_step * calls * inner + 1)
    bank.take(1, generator=gen, device=x.device)  # draws the bank now, outside the timing

    def masks_mixing() -> None:
        for _ in range(inner):
            masks = bank.sample(
                n,
                size,
                per_sample=mixer.per_sample_masks,
                generator=gen,
                device=x.device,
                dtype=x.dtype,
            )
            mix_with_masks(x, masks, partner)

    def mask_bank_refill() -> None:
        draw_cells(mixer.bank.capacity, grid, ratio, kind, generator=gen, device=x.device)

    return {"masks_mixing": masks_mixing, "mask_bank_refill": mask_bank_refill}


def mask_share(stats: dict[str, Any], model: Any, batch: int, step_s: float) -> dict[str, float]:
    """Seconds per step of masks + mixing with the bank's refills amortised, and its share of
    a step of ``step_s`` seconds: ``masks_mixing + refill * masks per step / capacity``, with
    ``stats`` medians per call (a caller timing ``inner`` calls at once divides first)."""
    mixer = mask_mixer(model)
    per_step = batch if mixer.per_sample_masks else 1
    take = stats["masks_mixing"]["median_s"]
    refill = stats["mask_bank_refill"]["median_s"] * per_step / mixer.bank.capacity
    return {
        "take_and_mix_s": take,
        "refill_per_step_s": refill,
        "per_step_s": take + refill,
        "share_of_step": (take + refill) / step_s,
    }


def synthetic_batch(
    batch_size: int, crop: int, views: int = 2, device: str = "cpu", seed: int = 0
) -> list[Any]:
    """``[indexes, [views (B, 3, crop, crop) float32], targets]`` of random images."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(batch_size, 3, crop, crop, generator=g) for _ in range(views)]
    y = torch.randint(0, 10, (batch_size,), generator=g)
    return [torch.arange(batch_size).to(device), [v.to(device) for v in x], y.to(device)]


def cuda_sync() -> None:
    """Wait for the GPU's queued work (a no-op without CUDA), so a timing covers it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(
    jobs: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Seconds per call of each job, run round-robin ``rounds`` times after ``warmup`` rounds.

    Interleaving spreads machine noise (other processes, clock changes) over every job alike.
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before and after each timed call.
    """
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for r in range(warmup + rounds):
        for name, job in jobs.items():
            if sync:
                sync()
            start = time.perf_counter()
            job()
            if sync:
                sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
        if progress:
            label = "warm-up" if r < warmup else f"round {r - warmup + 1}/{rounds}"
            print(f"  {label} done", file=sys.stderr, flush=True)
    return times


def summary(times: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min and count of a list of seconds (quartiles between the smallest
    and largest time: ``statistics.quantiles``' default extrapolates past them for few times)."""
    ordered = sorted(times)
    q = (
        statistics.quantiles(ordered, n=4, method="inclusive")
        if len(ordered) >= 2
        else [ordered[0]] * 3
    )
    return {
        "median_s": statistics.median(ordered),
        "q1_s": q[0],
        "q3_s": q[2],
        "min_s": ordered[0],
        "n": len(ordered),
    }


def timed_loader(loader: Any, batches: int) -> dict[str, Any]:
    """Images/s of ``batches`` batches of ``loader`` after its first one (starting a new pass
    when one ends; CUDA synchronised at the end), the first batch's latency, and the views'
    shape, count and device."""
    start = time.perf_counter()
    it = iter(loader)
    first = next(it)
    first_s = time.perf_counter() - start
    size, seen, begin, batch = first[0].shape[0], 0, time.perf_counter(), first
    while seen < batches:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        seen += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - begin
    views = batch[1]
    return {
        "images_per_s": seen * size / seconds,
        "first_batch_s": first_s,
        "batches": seen,
        "view_shape": list(views[0].shape),
        "views": len(views),
        "view_device": str(views[0].device),
    }


def count_host_syncs(fn: Callable[[], Any]) -> dict[str, Any]:
    """Synchronising CUDA calls made by ``fn()``, counted with
    ``torch.cuda.set_sync_debug_mode("warn")``: ``{"count", "first": up to 3 messages}``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # the mode's own notice ("... is a prototype feature ...") is not a synchronisation
    syncs = [
        str(w.message).splitlines()[0]
        for w in caught
        if "synchroniz" in str(w.message).lower() and "prototype feature" not in str(w.message)
    ]
    return {"count": len(syncs), "first": syncs[:3]}


#: aten ops that make the host wait for the device (a value or a data-dependent shape read back)
SYNCING_OPS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal"})


def count_ops(fn: Callable[[], Any]) -> tuple[collections.Counter[str], list[str]]:
    """How many times ``fn()`` dispatched each aten op (by name), on any device (on a GPU
    roughly the kernels it launches, plus views), and where each op of :data:`SYNCING_OPS` was
    called from (``"op at file.py:line"``, the innermost frame of the package): on a GPU those
    are host syncs unless their tensor lives on the host."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    package = str(REPO / "solo_mixmask")

    class Counting(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: collections.Counter[str] = collections.Counter()
            self.reads: list[str] = []

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
            name = func.overloadpacket.__name__
            self.ops[name] += 1
            if name in SYNCING_OPS:
                ours = [f for f in traceback.extract_stack() if f.filename.startswith(package)]
                site = (
                    f"{Path(ours[-1].filename).relative_to(REPO)}:{ours[-1].lineno}"
                    if ours
                    else "?"
                )
                self.reads.append(f"{name} at {site}")
            return func(*args, **(kwargs or {}))

    with Counting() as mode:
        fn()
    return mode.ops, mode.reads


def write_results(stem: str, data: dict[str, Any], markdown: str, out_dir: Path) -> list[Path]:
    """``<out_dir>/<stem>.json`` and ``.md``, each replaced whole (a process killed while
    writing leaves the previous file, never half of one); returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for path, text in (
        (out_dir / f"{stem}.json", json.dumps(data, indent=2) + "\n"),
        (out_dir / f"{stem}.md", markdown.rstrip() + "\n"),
    ):
        part = path.with_name(path.name + ".part")
        part.write_text(text)
        os.replace(part, path)
        paths.append(path)
    return paths


def publish(name: str, tag: str, data: dict[str, Any], markdown: str, out_dir: Path) -> list[Path]:
    """:func:`write_results` as ``<name>[_<tag>]``, then the Markdown printed; returns the paths."""
    paths = write_results(name + (f"_{tag}" if tag else ""), data, markdown, out_dir)
    print(markdown)
    return paths


def machine() -> dict[str, Any]:
    """What ran the benchmark (CPU count, threads, torch version, GPU name if any)."""
    info = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def make_jpeg_folder(root: Path, count: int, size: int, classes: int = 10) -> Path:
    """``count`` JPEGs (size x size, smooth colour fields + noise) in ``classes`` folders."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0, 255, (3, 3))
        img = np.stack([a[k] * xx + b[k] * yy + c[k] * xx * yy for k in range(3)], axis=-1)
        img = np.clip(img / 2 + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
    return root


#: Where the CIFAR-10 JPEG tars are looked for (a folder with train/ and test/ trees, or with
#: train.tar.gz / test.tar.gz): $SOLO_MIXMASK_CIFAR10, else the shared data next to the clone.
CIFAR10_ENV = "SOLO_MIXMASK_CIFAR10"
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def cifar10_source(given: str | Path | None) -> Path:
    source = Path(given or os.environ.get(CIFAR10_ENV) or SHARED_CIFAR10).expanduser()
    if (source / "train").is_dir() and (source / "test").is_dir():
        return source
    if (source / "train.tar.gz").is_file() and (source / "test.tar.gz").is_file():
        return source
    raise SystemExit(
        f"error: no CIFAR-10 under {source}: expected train/ and test/ folders or "
        f"train.tar.gz and test.tar.gz (set --data or ${CIFAR10_ENV})"
    )


@contextlib.contextmanager
def _exclusive(lock_file: Path):
    """Holds an exclusive lock on ``lock_file`` (POSIX; no lock where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: one process at a time is the user's to keep
        yield
        return
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cifar10_folder(
    given: str | Path | None = None, per_class: int | None = None, dest: Path | None = None
) -> Path:
    """A folder holding CIFAR-10 as ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``.

    ``given`` (or ``$SOLO_MIXMASK_CIFAR10``, else ``../shared/data/cifar10``) is used as it is
    when it holds the two trees. Tars are unpacked into ``dest`` (default
    ``$TMPDIR/solo_mixmask_cifar10[_<per_class>]_<hash of the source path>``) once;
    ``per_class`` keeps only the first that many images of each class of each split (tiny runs
    and tests). The unpacked folder names its source (``.complete``): another source is
    unpacked afresh, never the old copy reused. Processes unpacking the same ``dest`` at once
    (pytest-xdist workers) take turns under a file lock: one unpacks, the others reuse it.
    """
    import hashlib
    import shutil
    import tempfile

    source = cifar10_source(given)
    if (source / "train").is_dir() and per_class is None:
        return source
    resolved = str(source.resolve())
    if dest is None:
        suffix = f"_{per_class}" if per_class is not None else ""
        key = hashlib.sha1(resolved.encode()).hexdigest()[:8]
        dest = Path(tempfile.gettempdir()) / f"solo_mixmask_cifar10{suffix}_{key}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = dest / ".complete"
    with _exclusive(dest.parent / f".{dest.name}.lock"):
        if done.exists() and done.read_text() == resolved:
            return dest
        if dest.exists():  # a copy of another source, or one cut short
            shutil.rmtree(dest)
        for split in ("train", "test"):
            _unpack_split(source, split, per_class, dest)
        done.write_text(resolved)
    return dest


def _unpack_split(source: Path, split: str, per_class: int | None, dest: Path) -> None:
    """Copies ``source``'s ``split`` (a tree or ``<split>.tar.gz``) into ``dest/<split>``,
    the first ``per_class`` images of each class (all when None)."""
    import tarfile

    if (source / split).is_dir():  # a sample of an unpacked tree
        for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            for path in sorted(folder.iterdir())[:per_class]:
                out = dest / split / folder.name / path.name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(path.read_bytes())
        return
    kept: dict[str, int] = {}
    with tarfile.open(source / f"{split}.tar.gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[0] != split:
                continue
            if per_class is not None and kept.get(parts[1], 0) >= per_class:
                continue
            kept[parts[1]] = kept.get(parts[1], 0) + 1
            out = dest.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
