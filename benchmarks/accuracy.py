"""Fixed-budget accuracy on Fashion-MNIST or CIFAR-10: MoCo v2 against MixMask and the others.

Every run uses the method's config (``configs/pretrain/<fashion_mnist|cifar>/<m>.yaml``)
with the same backbone, epochs, batch size, training images, augmentations (MoCo v2
"aug-plus" for all) and recipe, through :func:`solo_mixmask.run.pretrain.run_pretrain`, one run
per method and seed. The k-NN monitor (k=200, T=0.1, cosine) runs before training and after every epoch.
Results: a table of the final k-NN top-1 (mean, std over seeds, the paired difference to
mocov2plus; ``byol_*`` variants also against ``byol``, in a line below it) and a PNG of k-NN
top-1 against epoch, in ``benchmarks/results/``: ``accuracy_<profile>.{json,md,png}``. The
raw-pixel k-NN on the same images is the floor a representation must beat.

Profiles:
- ``quick``: quarter-width ResNet-18 (CIFAR stem), batch 128, 3 epochs, 3 seeds,
  k-NN memory 5,000 / validation 1,000 images, sized to
  about 30 minutes on a 2-core CPU: the number of training images is computed from step
  times measured at start-up (``--plan`` prints the plan and stops; ``--train-subset`` fixes
  it instead).
- ``full``: ResNet-18, batch 256, 100 epochs on all 60,000 images, k-NN on the whole
  splits, bf16 on a GPU (``precision=auto``).
- ``smoke``: a tiny network, 2 methods, 1 seed, 64 images (a test that the script works).
- ``cifar_cpu``: CIFAR-10 from the JPEG ImageFolder tars (``--data``), in-memory data path,
  asymmetric MoCo v2 recipe of Un-Mix's CIFAR code (:data:`CIFAR_RECIPE`) for mocov2plus and
  mixmask, quarter-width ResNet-18, 10,000 training images, k-NN memory 10,000 / validation
  2,000 after every epoch, a checkpoint after every epoch (for ``fresh_queue_loss.py``): what
  a 2-core CPU shows in about half an hour.
- ``cifar_gpu``: the same recipe at full size on one GPU (ResNet-18, batch 512, all 50,000
  images, bf16, k-NN of the 10,000 test images against the 50,000 training images every
  ``eval_every`` epochs, a checkpoint as often); the number of epochs (at most 100) is planned
  from step times measured at start-up so that both methods fit ``--budget-minutes`` (default
  9). An explicit ``--epochs`` is trained exactly as given; with ``--budget-minutes`` the plan
  only checks it (``over_budget`` and a ``warning:`` line when the estimate passes the budget).
  ``benchmarks/cifar_gpu.sh`` runs it.

Every method's config is checked as the run checks it before anything is planned or trained:
a bad setting (``--extra``) or method is one ``error:`` line and exit status 2, nothing
written. A failed run leaves the others' results (the report names it) and exit status 1.

``--tiny`` shrinks any profile to a check that it runs (tiny network, 8 images per class).
``--baseline FILE`` compares every run with the run of the same method and seed in an earlier
result, epoch by epoch (:mod:`same_seed`).

    python benchmarks/accuracy.py --profile quick --plan
    python benchmarks/accuracy.py --profile quick
    python benchmarks/accuracy.py --profile full --runs-dir runs/accuracy_full
    python benchmarks/accuracy.py --profile cifar_cpu --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Container
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CIFAR10_MEAN,
    CIFAR10_STD,
    REPO,
    RESULTS,
    build_trainer,
    cifar10_folder,
    command_line,
    machine,
    synthetic_batch,
    table,
    write_results,
)
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from same_seed import (  # noqa: E402
    clock_of,
    compare,
    epoch_metrics,
    load_result,
    zero_init_of,
)
from same_seed import markdown as same_seed_markdown  # noqa: E402

from solo_mixmask.cli import compose_config  # noqa: E402
from solo_mixmask.errors import ConfigError, RunStopped, suggest  # noqa: E402
from solo_mixmask.eval.compare import embedding_std_cell, epoch_curves  # noqa: E402

FMNIST_TRAIN_IMAGES = 60_000
CIFAR10_TRAIN_IMAGES = 50_000
BASELINE = "mocov2plus"


def own_baseline(method: str) -> str | None:
    """The method a variant is also compared with, seed by seed: ``byol`` for ``byol_*``."""
    return "byol" if method.startswith("byol_") else None


#: Asymmetric MoCo v2 on CIFAR as Un-Mix's CIFAR code trains it (batch 512, lr 0.06 = 0.03 per
#: 256 images with our linear scaling, wd 5e-4, queue 4096, tau 0.99, T 0.1, cosine schedule),
#: 128-d projections; MixMask gets the same, plus its own branch. Without its warm-up and
#: BatchNorm settings (below): ``cifar_grid.py`` varies those.
UNMIX_CIFAR_BASE = (
    "method_kwargs.symmetric=false",
    "method_kwargs.queue_size=4096",
    "method_kwargs.temperature=0.1",
    "method_kwargs.proj_output_dim=128",
    "momentum.base_tau=0.99",
    "momentum.final_tau=0.99",
    "optimizer.lr=0.03",
    "optimizer.weight_decay=0.0005",
)
#: The single-device fix of docs/MIXMASK_VS_MOCO.md, for every method: 2 warm-up epochs, split
#: BatchNorm (8 groups of 64 images at batch 512) and shuffled keys.
SINGLE_DEVICE_FIX = (
    "scheduler.warmup_epochs=2",
    "method_kwargs.bn_splits=8",
    "method_kwargs.shuffle_bn=true",
)
CIFAR_RECIPE = UNMIX_CIFAR_BASE + SINGLE_DEVICE_FIX


@dataclass(frozen=True)
class Profile:
    """What every run of a profile shares."""

    methods: tuple[str, ...] = ("mocov2plus", "mixmask", "unmix_mixmask", "byol")
    seeds: tuple[int, ...] = (1, 2, 3)
    channels: tuple[int, ...] | None = (16, 32, 64, 128)
    #: backbone.kwargs.stem_width; None: not given (a plain ResNet stem ignores it, always 64
    #: wide: the 16 and 8 of results before 2026-12-08 had no effect)
    stem_width: int | None = None
    batch_size: int = 128
    epochs: int = 3
    train_subset: int | None = None  # None: computed from the budget (or all images)
    knn_train_subset: int | None = 5_000
    val_subset: int | None = 1_000
    workers: int = 2
    budget_minutes: float | None = 30.0
    precision: str = "32-true"
    extra: tuple[str, ...] = field(default_factory=tuple)  # the profile's own, every method
    # the overrides given (--extra, --settings-from; None: none), for ``extra_methods`` only
    user_extra: tuple[str, ...] | None = None
    extra_methods: tuple[str, ...] | None = None  # methods ``user_extra`` applies to (None: all)
    linear_preset: str | None = "small"  # offline linear probe (configs/linear/), None: none
    linear_overrides: tuple[str, ...] = field(default_factory=tuple)
    dataset: str = "fashion_mnist"  # configs/pretrain/<dataset>/; "cifar" reads --data
    train_images: int = FMNIST_TRAIN_IMAGES  # of the whole training split
    data_format: str | None = None  # data.format (None: the config's)
    recipe: tuple[str, ...] = field(default_factory=tuple)  # overrides for every method
    eval_every: int = 1  # k-NN monitor every this many epochs (and after the last)
    # a checkpoint every this many epochs (and after the last; None: the last only), what
    # fresh_queue_loss.py scores
    checkpoint_every: int | None = None
    epochs_from_budget: bool = False  # budget_minutes plans the epochs (else the images)
    # --epochs given with a budget: the epochs are trained as given, the budget only checks
    # them (the plan's over_budget, a warning line)
    epochs_exact: bool = False
    per_class: int | None = None  # CIFAR: first images per class of each split (None: all)
    data: tuple[str, ...] = field(default_factory=tuple)  # where the images are (data_overrides)


PROFILES: dict[str, Profile] = {
    "quick": Profile(),
    "full": Profile(
        channels=None,
        batch_size=256,
        epochs=100,
        knn_train_subset=None,
        val_subset=None,
        workers=8,
        budget_minutes=None,
        precision="auto",
        linear_preset="paper",
    ),
    "smoke": Profile(
        methods=("mocov2plus", "mixmask"),
        seeds=(1,),
        channels=(8, 16, 32, 64),
        batch_size=16,
        epochs=1,
        train_subset=64,
        knn_train_subset=64,
        val_subset=32,
        workers=0,
        budget_minutes=None,
        extra=("method_kwargs.queue_size=64", "method_kwargs.proj_hidden_dim=32"),
        linear_overrides=("linear.epochs=2", "linear.train_subset=64", "linear.val_subset=32"),
    ),
    "cifar_cpu": Profile(
        methods=("mocov2plus", "mixmask"),
        seeds=(1,),
        epochs=12,
        train_subset=10_000,
        knn_train_subset=10_000,
        val_subset=2_000,
        budget_minutes=None,
        linear_preset=None,
        dataset="cifar",
        train_images=CIFAR10_TRAIN_IMAGES,
        data_format="memory",
        recipe=CIFAR_RECIPE,
        checkpoint_every=1,
    ),
    "cifar_gpu": Profile(
        methods=("mocov2plus", "mixmask"),
        seeds=(1,),
        channels=None,
        batch_size=512,
        epochs=100,
        knn_train_subset=None,
        val_subset=None,
        workers=8,
        budget_minutes=9.0,
        precision="auto",
        linear_preset=None,
        dataset="cifar",
        train_images=CIFAR10_TRAIN_IMAGES,
        data_format="memory",
        recipe=CIFAR_RECIPE,
        eval_every=10,
        checkpoint_every=10,
        epochs_from_budget=True,
        extra=("benchmark=true",),
    ),
}
#: What ``--tiny`` changes in any profile: a check that the script runs, in seconds.
TINY = {
    "channels": (8, 16, 32, 64),
    "batch_size": 16,
    "epochs": 2,
    "train_subset": None,
    "knn_train_subset": None,
    "val_subset": None,
    "workers": 0,
    "budget_minutes": None,
    "precision": "32-true",
    "eval_every": 1,
    "epochs_from_budget": False,
    "linear_preset": None,
    "per_class": 8,
    "extra": ("method_kwargs.queue_size=64", "method_kwargs.proj_hidden_dim=32"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--smoke", action="store_true", help="same as --profile smoke")
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="training images per run (default: from the time budget)",
    )
    p.add_argument("--budget-minutes", type=float, default=None)
    p.add_argument(
        "--extra",
        nargs="*",
        default=[],
        help="overrides for every run, e.g. method_kwargs.grid_size=7",
    )
    p.add_argument(
        "--settings-from",
        type=Path,
        default=None,
        help="a throughput.py result (.json): its combined_settings (the winning levers) "
        "are added to --extra",
    )
    p.add_argument(
        "--extra-methods",
        nargs="+",
        default=None,
        help="the methods --extra and --settings-from apply to (default: all; the "
        "profile's own overrides go to every method); e.g. `mixmask` to compare a MixMask "
        "variant with the unchanged baseline",
    )
    p.add_argument(
        "--no-linear",
        action="store_true",
        help="skip the offline linear probe of each final checkpoint",
    )
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="an earlier accuracy.py result (.json): its runs of the same method and seed are "
        "compared epoch by epoch (benchmarks/same_seed.py) and drawn dashed in the plot",
    )
    p.add_argument("--plan", action="store_true", help="print the plan and its time; stop")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="where the run folders go (default: a temporary folder)",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep a run whose folder holds a summary.json and whose config.yaml "
        "agrees with every setting this run would make (else it is rerun)",
    )
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument(
        "--data",
        default=None,
        help="CIFAR profiles: a folder with train/ and test/ ImageFolder trees or "
        "CIFAR-10's train.tar.gz / test.tar.gz (default: $SOLO_MIXMASK_CIFAR10, "
        "else ../shared/data/cifar10)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="shrink the profile to a seconds-long check (tiny network, CPU, "
        "8 images per class, 2 epochs)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.profile = "smoke"
    if args.profile == "smoke":
        args.threads = 1
    return args


def resolve_profile(args: argparse.Namespace) -> Profile:
    """The profile with the command line's changes; ConfigError for an ``--extra-methods``
    name that is not run."""
    prof = PROFILES[args.profile]
    if args.tiny:
        prof = replace(prof, **TINY)
    changes: dict[str, Any] = {}
    if args.methods:
        changes["methods"] = tuple(args.methods)
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    if args.epochs:  # trained as given, never planned down (nor up) from a budget
        changes["epochs"] = args.epochs
        if prof.epochs_from_budget and args.budget_minutes:
            changes["epochs_exact"] = True  # the budget checks them
        elif prof.epochs_from_budget:  # nothing to plan or check
            changes.update(epochs_from_budget=False, budget_minutes=None)
    if args.train_subset:
        changes["train_subset"] = args.train_subset
    if args.budget_minutes:
        changes["budget_minutes"] = args.budget_minutes
    extra = tuple(args.extra) + (winning_settings(args.settings_from) if args.settings_from else ())
    if extra:
        changes["user_extra"] = extra
    if args.extra_methods:
        methods = changes.get("methods", prof.methods)
        for name in args.extra_methods:
            if name not in methods:
                raise ConfigError(
                    "--extra-methods",
                    name,
                    f"one of the methods run (--methods): {', '.join(methods)}"
                    + suggest(name, methods),
                )
        changes["extra_methods"] = tuple(args.extra_methods)
    if args.no_linear:
        changes["linear_preset"] = None
    return replace(prof, **changes)


def data_overrides(prof: Profile, data: str | None) -> tuple[str, ...]:
    """CIFAR profiles: the ImageFolder tree of the JPEG tars as ``data.dataset=custom`` with
    CIFAR-10's mean and std (``data.dataset=cifar10`` would be torchvision's copy)."""
    if prof.dataset != "cifar":
        return ()
    root = cifar10_folder(data, prof.per_class)
    stats = [
        f"data.mean=[{','.join(map(str, CIFAR10_MEAN))}]",
        f"data.std=[{','.join(map(str, CIFAR10_STD))}]",
    ]
    return (
        "data.dataset=custom",
        f"data.train_path={root / 'train'}",
        f"data.val_path={root / 'test'}",
        "data.num_classes=10",
        *stats,
    )


def overrides(
    prof: Profile, method: str, seed: int, train_subset: int | None, run_dir: Path | None = None
) -> list[str]:
    """Hydra overrides that make every method's config share the profile's settings: the
    profile's own overrides for every method, then the user's for ``extra_methods``."""
    epochs = prof.epochs
    out = [
        *prof.data,
        *prof.recipe,
        "augmentations=aug_plus",
        f"max_epochs={epochs}",
        f"optimizer.batch_size={prof.batch_size}",
        f"seed={seed}",
        f"data.train_subset={'null' if train_subset is None else train_subset}",
        f"data.knn_train_subset={'null' if prof.knn_train_subset is None else prof.knn_train_subset}",
        f"data.val_subset={'null' if prof.val_subset is None else prof.val_subset}",
        f"data.num_workers={prof.workers}",
        f"precision={prof.precision}",
        "progress_bar=false",
        f"checkpoint.frequency={min(prof.checkpoint_every or epochs, epochs)}",
        f"name={method}-s{seed}",
    ]
    if prof.data_format is not None:
        out.append(f"data.format={prof.data_format}")
    if prof.eval_every > 1:
        out.append(f"check_val_every_n_epoch={min(prof.eval_every, epochs)}")
    if prof.channels is not None:
        out.append(f"backbone.kwargs.channels=[{','.join(str(c) for c in prof.channels)}]")
    if prof.stem_width is not None:
        out.append(f"backbone.kwargs.stem_width={prof.stem_width}")
    if run_dir is not None:
        out.append(f"checkpoint.run_dir={run_dir}")
    applies = prof.extra_methods is None or method in prof.extra_methods
    return out + list(prof.extra) + (list(prof.user_extra or ()) if applies else [])


def run_cfg(
    prof: Profile, method: str, seed: int, train_subset: int | None, run_dir: Path | None = None
) -> DictConfig:
    return compose_config(
        None, f"{prof.dataset}/{method}", overrides(prof, method, seed, train_subset, run_dir)
    )


def filled_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` checked and filled with its defaults as the run does it (what its config.yaml
    holds; :func:`~solo_mixmask.run.pretrain.prepare_config`, ConfigError for what the run
    would refuse); ``cfg`` itself is left as it is."""
    from solo_mixmask.run.pretrain import prepare_config

    return prepare_config(copy.deepcopy(cfg))[1]


def check_run_configs(prof: Profile) -> None:
    """ConfigError, naming the method, unless every method's run config passes the run's own
    checks: a setting a run would refuse stops the invocation before anything is planned,
    trained or written."""
    for method in prof.methods:
        try:
            filled_config(run_cfg(prof, method, prof.seeds[0], prof.train_subset))
        except ConfigError as err:
            raise ConfigError(err.key, err.value, f"{err.allowed} ({method} runs)") from None


def run_settings(prof: Profile, train_subset: int | None) -> dict[str, dict[str, Any]]:
    """What each method's runs are set to, every override applied (the report's header):
    backbone, batch, epochs, images and the k-NN monitor's k and T."""
    from solo_mixmask.config.data_specs import data_spec
    from solo_mixmask.config.engine_specs import engine_spec
    from solo_mixmask.config.run_specs import trainer_spec

    out = {}
    for method in prof.methods:
        cfg = filled_config(run_cfg(prof, method, prof.seeds[0], train_subset))
        data, engine = data_spec(cfg), engine_spec(cfg)
        out[method] = {
            "backbone": engine.backbone.name,
            "backbone_kwargs": engine.backbone.kwargs,
            "cifar_stem": engine.backbone.cifar_stem,
            "batch_size": data.batch_size,
            "epochs": trainer_spec(cfg).arguments.get("max_epochs"),
            "train_images": data.train_subset,
            "val_images": data.val_subset,
            "knn_memory": data.knn_train_subset,
            # clamped to the memory, as the runs do (and report as knn_k)
            "knn_k": min(engine.knn.k, data.knn_train_subset or engine.knn.k),
            "knn_T": engine.knn.T,
        }
    return out


# --------------------------------------------------------------------------- budget


def _calibration_device(prof: Profile) -> tuple[str, torch.dtype | None]:
    """Where the runs will train: CUDA with bf16 autocast for ``precision=auto`` on a GPU."""
    if prof.precision == "auto" and torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", None


def _timed(fn: Any, repeats: int, device: str) -> float:
    """Seconds per call of ``fn`` (after one warm-up call), the device synchronised."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def calibrate(prof: Profile, steps: int = 2) -> dict[str, Any]:
    """Seconds per training step of each method, seconds per batch of the in-memory data path
    (when the profile uses it) and the monitor's forward images/s, on the runs' device."""
    device, autocast = _calibration_device(prof)
    repeats = steps if device == "cpu" else 10 * steps
    step_s: dict[str, float] = {}
    forward_img_s = 0.0
    cfg = None
    for method in prof.methods:
        cfg = run_cfg(prof, method, prof.seeds[0], prof.batch_size)
        trainer = build_trainer(cfg, device=device, autocast=autocast)
        crop = int(cfg.augmentations[0].crop_size)
        batch = synthetic_batch(prof.batch_size, crop)
        batch = [batch[0].to(device), [v.to(device) for v in batch[1]], batch[2].to(device)]
        step_s[method] = _timed(lambda t=trainer, b=batch: t.step(b), repeats, device)
        if not forward_img_s:
            model = trainer.model.eval()
            with torch.no_grad(), trainer.autocast_context():
                forward_s = _timed(lambda m=model, x=batch[1][0]: m(x), repeats, device)
            forward_img_s = prof.batch_size / forward_s
    out = {"step_s": step_s, "forward_img_s": forward_img_s, "device": device}
    if prof.data_format == "memory" and cfg is not None:
        from solo_mixmask.config.data_specs import data_spec
        from solo_mixmask.data.batched_augmentations import BatchAugment

        specs = data_spec(cfg).crops
        images = torch.randint(
            0, 256, (prof.batch_size, 3, 32, 32), dtype=torch.uint8, device=device
        )
        gen = torch.Generator(device=device).manual_seed(0)
        augments = [(BatchAugment(s), s.num_crops) for s in specs]
        out["data_batch_s"] = _timed(
            lambda: [a(images.repeat(n, 1, 1, 1), gen) for a, n in augments], repeats, device
        )
    return out


# Measured on the demo: start-up (imports, Fashion-MNIST, workers) and Lightning's per-step
# bookkeeping plus the loader's share of the cores, on top of the bare step.
STARTUP_S = 10.0
STEP_OVERHEAD = 1.25
EVAL_OVERHEAD = 1.5
#: On a GPU: start-up with CUDA, cuDNN's first calls and decoding the JPEG tree (16 cores), and
#: Lightning's per-step bookkeeping, which weighs more next to a 20 ms step than a 2 s one.
GPU_STARTUP_S = 40.0
GPU_STEP_OVERHEAD = 1.35


def linear_images(prof: Profile) -> int:
    """Images whose features the offline linear probe extracts per run (train + validation)."""
    if prof.linear_preset is None:
        return 0
    from solo_mixmask.eval.linear import load_preset

    lin = dict(load_preset(prof.linear_preset).get("linear", {}))
    lin.update(
        {
            k.split(".", 1)[1]: v
            for k, v in (o.split("=", 1) for o in prof.linear_overrides)
            if k.startswith("linear.")
        }
    )
    train, val = lin.get("train_subset"), lin.get("val_subset")
    return (int(train) if train not in (None, "null") else prof.train_images) + (
        int(val) if val not in (None, "null") else 10_000
    )


def plan(prof: Profile, cal: dict[str, Any] | None) -> dict[str, Any]:
    """Training images per run (or, with ``epochs_from_budget``, epochs per run) and the
    estimated total seconds."""
    seeds = len(prof.seeds)
    eval_images = (prof.knn_train_subset or prof.train_images) + (prof.val_subset or 10_000)
    if cal is None:  # nothing measured: the profile's fixed subset and epochs
        subset = prof.train_subset
        return {
            "train_subset": subset,
            "epochs": prof.epochs,
            "eval_every": prof.eval_every,
            "estimated_s": None,
            "eval_images": eval_images,
        }
    gpu = cal.get("device") == "cuda"
    startup, overhead = (GPU_STARTUP_S, GPU_STEP_OVERHEAD) if gpu else (STARTUP_S, STEP_OVERHEAD)
    eval_s = EVAL_OVERHEAD * eval_images / cal["forward_img_s"]
    linear_s = EVAL_OVERHEAD * linear_images(prof) / cal["forward_img_s"]
    runs = seeds * len(prof.methods)
    data_s = cal.get("data_batch_s", 0.0)
    per_step = overhead * seeds * (sum(cal["step_s"].values()) + len(prof.methods) * data_s)
    subset, epochs, every = prof.train_subset, prof.epochs, prof.eval_every
    budget_s = 0.9 * 60 * prof.budget_minutes if prof.budget_minutes else None
    if budget_s is not None and prof.epochs_from_budget:
        steps = (subset or prof.train_images) // prof.batch_size
        per_epoch = steps * per_step + runs * eval_s / every
        fits = math.floor((budget_s - runs * (startup + eval_s + linear_s)) / per_epoch)
        if not prof.epochs_exact:
            epochs = max(1, min(prof.epochs, fits))
        every = min(every, epochs)
        if not prof.epochs_exact:
            epochs = max(every, epochs // every * every)  # the last epoch is always evaluated
    elif subset is None and budget_s is not None:
        fixed = runs * (startup + (epochs + 1) * eval_s + linear_s)
        steps = math.floor((budget_s - fixed) / (epochs * per_step))
        steps = max(2, min(steps, prof.train_images // prof.batch_size))
        subset = steps * prof.batch_size
    steps = (subset or prof.train_images) // prof.batch_size
    evals = epochs // every + 1
    out = {
        "train_subset": subset,
        "epochs": epochs,
        "eval_every": every,
        "steps_per_epoch": steps,
        "eval_images": eval_images,
        "eval_s": eval_s,
        "linear_probe_s": linear_s,
        "estimated_s": runs * (startup + evals * eval_s + linear_s) + epochs * steps * per_step,
        "calibration": cal,
    }
    if prof.epochs_exact and budget_s is not None:
        out["over_budget"] = out["estimated_s"] > budget_s
    return out


def warn_over_budget(prof: Profile, the_plan: dict[str, Any]) -> None:
    """A warning line when ``--epochs`` (trained as given) is estimated past the budget: the
    slot's time limit may cut the last run (results are rewritten after each run)."""
    if not the_plan.get("over_budget"):
        return
    print(
        f"warning: --epochs {prof.epochs} is estimated at "
        f"{the_plan['estimated_s'] / 60:.1f} min, more than the budget's "
        f"{0.9 * prof.budget_minutes:.1f} (90% of --budget-minutes {prof.budget_minutes}): "
        "trained as given, the slot's time limit may cut the last run",
        file=sys.stderr,
        flush=True,
    )


# --------------------------------------------------------------------------- runs


def knn_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(epochs trained, online k-NN top-1 %) of a run; epoch 0 is the untrained model."""
    return sorted(epoch_curves(run_dir).get("val_knn_acc1", {}).items())


def planned(prof: Profile, the_plan: dict[str, Any]) -> Profile:
    """``prof`` as it runs under ``the_plan``: its epochs, evaluation interval and training
    subset (the results' profile records them: same_seed.py compares profiles, and a
    budget-planned subset of another size is a difference, never "nothing")."""
    return replace(
        prof,
        epochs=the_plan["epochs"],
        eval_every=the_plan["eval_every"],
        train_subset=the_plan["train_subset"],
    )


def raw_pixel_knn(prof: Profile, seed: int, train_subset: int | None) -> float:
    """k-NN top-1 (%) of mean-centred raw pixels on the same k-NN images as the runs."""
    from solo_mixmask.config.data_specs import data_spec
    from solo_mixmask.core.knn import knn_accuracy
    from solo_mixmask.data.loaders import build_knn_loaders

    cfg = run_cfg(prof, BASELINE, seed, train_subset)
    knn_train, val = build_knn_loaders(data_spec(cfg))

    def load(loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*[(x.flatten(1), y) for x, y in loader])
        return torch.cat(xs), torch.cat(ys)

    (tx, ty), (vx, vy) = load(knn_train), load(val)
    if torch.cuda.is_available():  # 50,000 x 10,000 distances of 3,072-d vectors
        tx, ty, vx, vy = (t.cuda() for t in (tx, ty, vx, vy))
    mean = tx.mean(dim=0, keepdim=True)
    top1, _ = knn_accuracy(
        tx - mean, ty, vx - mean, vy, 10, int(cfg.knn_eval.k), float(cfg.knn_eval.T)
    )
    return top1


def config_differences(filled: DictConfig, saved: Path) -> list[str]:
    """``key: saved != wanted`` for every key of the run's saved config.yaml or of ``filled``
    (a config filled in as the run fills it: :func:`filled_config`) whose values differ; the
    paths, the checkpoint frequency and the classes a run counted in the data
    (``data.num_classes`` that ``filled`` leaves unset) aside."""
    if not saved.exists():
        return [f"{saved} is missing"]
    want = _leaves(OmegaConf.to_container(filled, resolve=True))
    have = _leaves(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    ignored = {"checkpoint.run_dir", "checkpoint.dir", "checkpoint.frequency"}  # not training
    if want.get("data.num_classes") is None:
        ignored.add("data.num_classes")
    return _differences(have, want, ignored)


def built_differences(filled: DictConfig, summary: dict[str, Any]) -> list[str]:
    """``key: built != wanted (backbone_kwargs)`` for every constructor argument (defaults
    included) that the run's summary says its backbone was built with otherwise than this code
    builds it from ``filled`` (:func:`filled_config`). A summary from before 2026-12-07
    records none: the config's, with timm's residual init (:func:`same_seed.zero_init_of`)."""
    from solo_mixmask.backbones import residual_init_kwargs
    from solo_mixmask.config.engine_specs import backbone_spec

    backbone = backbone_spec(filled)
    want = residual_init_kwargs(str(backbone.name), dict(backbone.kwargs))
    have = summary.get("backbone_kwargs")
    if have is None:
        have = {**want, "zero_init_last": zero_init_of(summary)}
    return [f"{d} (backbone_kwargs)" for d in _differences(have, want)]


def _differences(
    have: dict[str, Any], want: dict[str, Any], ignored: Container[str] = ()
) -> list[str]:
    """``key: have != want`` over the keys of both, ``'<absent>'`` for a missing one."""
    absent = "<absent>"
    return [
        f"{k}: {have.get(k, absent)!r} != {want.get(k, absent)!r}"
        for k in sorted(have.keys() | want.keys())
        if k not in ignored and have.get(k, absent) != want.get(k, absent)
    ]


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()
        }
    return {prefix[:-1]: tree}


def one_run(
    prof: Profile, method: str, seed: int, train_subset: int | None, run_dir: Path, reuse: bool
) -> dict[str, Any]:
    from solo_mixmask.run.pretrain import run_pretrain

    summary_file = run_dir / "summary.json"
    cfg = run_cfg(prof, method, seed, train_subset, run_dir)
    filled = filled_config(cfg) if reuse else None  # filled once for both comparisons
    differs = config_differences(filled, run_dir / "config.yaml") if filled is not None else []
    saved = json.loads(summary_file.read_text()) if reuse and summary_file.exists() else None
    if saved is not None and filled is not None and not differs:
        differs = built_differences(filled, saved)
    reused = saved is not None and not differs
    if reused:
        summary = saved
    else:
        if saved is not None:
            print(
                f"  {run_dir.name}: rerun, its config differs: {'; '.join(differs[:5])}",
                file=sys.stderr,
            )
        if run_dir.exists():  # a new run never writes into an old one: this one replaces it
            import shutil

            print(f"  {run_dir.name}: replacing the earlier run in {run_dir}", file=sys.stderr)
            shutil.rmtree(run_dir)
        summary, reused = run_pretrain(cfg), False
    keep = (
        "backbone_kwargs",
        "knn_acc1",
        "knn_acc5",
        "linear_acc1",
        "knn_acc1_at_init",
        "knn_k",
        "images_per_sec",
        "images_per_sec_clock",
        "wall_seconds",
        "steps",
        "epochs",
        "train_images",
        "embedding_std",
        "embedding_std_spread",
        "collapsed",
    )
    out = {
        "method": method,
        "seed": seed,
        **{k: summary.get(k) for k in keep},
        "curve": knn_curve(run_dir),
        "epoch_metrics": epoch_metrics(run_dir),
        "run_dir": str(run_dir),
        "reused": reused,
    }
    if prof.linear_preset is not None:
        out["offline_linear"] = offline_linear(prof, run_dir, reused)
    return out


def offline_linear(prof: Profile, run_dir: Path, reuse: bool) -> dict[str, Any]:
    """``solo-mixmask linear`` of the run's last checkpoint with the profile's preset (cached
    features on the CPU); kept in ``bench_linear.json``, reused with the run when it matches."""
    from solo_mixmask.eval.linear import run_linear

    record = run_dir / "bench_linear.json"
    asked = {"preset": prof.linear_preset, "overrides": list(prof.linear_overrides)}
    if reuse and record.exists():
        saved = json.loads(record.read_text())
        if {k: saved.get(k) for k in asked} == asked:
            return saved["result"]
    result = run_linear(
        run_dir / "checkpoints" / "last.ckpt",
        preset=str(prof.linear_preset),
        overrides=list(prof.linear_overrides),
        out=run_dir / "linear.json",
    )
    keep = {k: result[k] for k in ("acc1", "acc5", "train_images", "val_images", "preset")}
    record.write_text(json.dumps({**asked, "result": keep}, indent=1))
    return keep


def _stats(values: list[float]) -> dict[str, Any]:
    """mean, sample std (n - 1; None for one value: no spread measured), min, max, n."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def aggregate(runs: list[dict[str, Any]], methods: tuple[str, ...]) -> dict[str, Any]:
    """Per-method statistics of the final k-NN top-1 and the paired difference to moco."""
    by = {
        m: {r["seed"]: r for r in runs if r["method"] == m and r.get("knn_acc1") is not None}
        for m in methods
    }
    out: dict[str, Any] = {}
    for m, seeds in by.items():
        if not seeds:
            continue
        row: dict[str, Any] = {"knn_acc1": _stats([r["knn_acc1"] for r in seeds.values()])}
        linear = [r["linear_acc1"] for r in seeds.values() if r.get("linear_acc1") is not None]
        if linear:
            row["online_linear_acc1"] = _stats(linear)
        offline = {
            s: r["offline_linear"]["acc1"] for s, r in seeds.items() if "offline_linear" in r
        }
        if offline:
            row["offline_linear_acc1"] = _stats(list(offline.values()))
        # a run finished by resume from its checkpoint has no speed or time (null): left out
        for key in ("wall_seconds", "images_per_sec"):
            known = [r[key] for r in seeds.values() if r.get(key) is not None]
            row[key] = _stats(known) if known else None
        stds = [r["embedding_std"] for r in seeds.values() if r.get("embedding_std") is not None]
        if stds:
            row["embedding_std"] = _stats(stds)
            row["embedding_std_spread"] = next(
                r["embedding_std_spread"] for r in seeds.values() if r.get("embedding_std_spread")
            )
        row["collapsed_runs"] = sum(bool(r.get("collapsed")) for r in seeds.values())
        base = by.get(BASELINE, {})
        paired = [seeds[s]["knn_acc1"] - base[s]["knn_acc1"] for s in seeds if s in base]
        if paired and m != BASELINE:
            row["diff_to_mocov2plus"] = _stats(paired)
        base_lin = {
            s: r["offline_linear"]["acc1"] for s, r in base.items() if "offline_linear" in r
        }
        paired_lin = [offline[s] - base_lin[s] for s in offline if s in base_lin]
        if paired_lin and m != BASELINE:
            row["offline_linear_diff_to_mocov2plus"] = _stats(paired_lin)
        own = own_baseline(m)
        if own is not None and by.get(own):
            mine = by[own]
            paired = [seeds[s]["knn_acc1"] - mine[s]["knn_acc1"] for s in seeds if s in mine]
            if paired:
                row[f"diff_to_{own}"] = _stats(paired)
            own_lin = {
                s: r["offline_linear"]["acc1"] for s, r in mine.items() if "offline_linear" in r
            }
            paired_lin = [offline[s] - own_lin[s] for s in offline if s in own_lin]
            if paired_lin:
                row[f"offline_linear_diff_to_{own}"] = _stats(paired_lin)
        out[m] = row
    return out


# --------------------------------------------------------------------------- report


def mean_curve(curves: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    """(every epoch of any curve, the mean over the curves that have it)."""
    epochs = sorted(set().union(*curves))
    return epochs, [statistics.fmean([c[e] for c in curves if e in c]) for e in epochs]


def plot(
    runs: list[dict[str, Any]],
    methods: tuple[str, ...],
    raw: float | None,
    path: Path,
    title: str,
    baseline_runs: list[dict[str, Any]] | None = None,
) -> None:
    """Mean k-NN curve per method (band: one std over seeds); ``baseline_runs`` (another
    invocation's runs of the same seeds) dashed in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for m in methods:
        curves = [dict(r["curve"]) for r in runs if r["method"] == m and r["curve"]]
        if not curves:
            continue
        epochs, mean = mean_curve(curves)
        # the sample std of the seeds, as the table's +- (0 where one seed measured the epoch)
        at = [[c[e] for c in curves if e in c] for e in epochs]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in at]
        (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=f"{m} (n={len(curves)})")
        ax.fill_between(
            epochs,
            [a - b for a, b in zip(mean, std)],
            [a + b for a, b in zip(mean, std)],
            color=line.get_color(),
            alpha=0.15,
        )
        seeds = {r["seed"] for r in runs if r["method"] == m}
        old = [
            dict(r["curve"])
            for r in baseline_runs or []
            if r["method"] == m and r["seed"] in seeds and r["curve"]
        ]
        if old:
            ax.plot(*mean_curve(old), ls="--", color=line.get_color(), label=f"{m}, baseline")
    if raw is not None:
        ax.axhline(raw, color="gray", ls="--", lw=1, label=f"raw pixels ({raw:.1f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epochs trained (0 = random initialisation)")
    ax.set_ylabel("k-NN top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pm(s: dict[str, Any] | None, signed: bool = False) -> str:
    """``mean ± std``, or ``mean (n=1)`` where one value gave no spread; ``-`` for none."""
    if not s:
        return "-"
    mean = f"{s['mean']:{'+' if signed else ''}.2f}"
    return f"{mean} (n=1)" if s["std"] is None else f"{mean} ± {s['std']:.2f}"


def _spread(s: dict[str, Any], over: str) -> str:
    """``std 1.23 over 3 <over>``, or ``1 <over> only, no std``."""
    if s["std"] is None:
        return f"{s['n']} {over} only, no std"
    return f"std {s['std']:.2f} over {s['n']} {over}"


def markdown(res: dict[str, Any]) -> str:
    prof, agg = res["profile"], res["aggregate"]
    given = list(prof.get("user_extra") or [])
    lines = [
        f"# Fixed-budget k-NN accuracy on "
        f"{DATASET_TITLES.get(prof['dataset'], prof['dataset'])} ({res['profile_name']} profile)",
        "",
        f"Command: `{res['command']}`",
        "",
        f"{settings_sentence(res['settings'], res['runs'])}. Aug-plus for every method, seeds "
        f"{list(prof['seeds'])}. Profile overrides (every method): {list(prof['extra']) or 'none'}"
        f". Overrides given (--extra, --settings-from): {given or 'none'}"
        + (
            f" (for {', '.join(prof['extra_methods'])} only)"
            if given and prof["extra_methods"]
            else ""
        )
        + f". Wall time of this invocation {res['wall_seconds'] / 60:.1f} min. "
        f"Machine: {res['machine']}. ± is the sample standard deviation over seeds (n - 1); "
        "(n=1): one seed, no spread measured.",
        "",
    ]
    if res.get("errors"):
        runs = len(prof["methods"]) * len(prof["seeds"])
        lines += [
            f"**{len(res['errors'])} of {runs} runs failed** (accuracy.py exits non-zero): "
            f"{'; '.join(res['errors'])}. The tables hold the runs that finished.",
            "",
        ]
    if prof.get("recipe") or prof.get("data_format"):
        lines += [
            f"Recipe for every method: {list(prof.get('recipe') or []) or 'the configs'}; "
            f"data.format={prof.get('data_format') or 'the config'}; k-NN monitor every "
            f"{prof.get('eval_every', 1)} epoch(s).",
            "",
        ]
    if not res.get("complete", True):
        lines += [
            "**Partial results:** this invocation had not finished when this was written "
            "(rewritten after every run).",
            "",
        ]
    rows = []
    for m, row in agg.items():
        k = row["knn_acc1"]
        rows.append(
            [
                m,
                k["n"],
                _pm(k),
                f"{k['min']:.2f}-{k['max']:.2f}",
                _pm(row.get("diff_to_mocov2plus"), signed=True),
                _pm(row.get("offline_linear_acc1")),
                _pm(row.get("offline_linear_diff_to_mocov2plus"), signed=True),
                _pm(row.get("online_linear_acc1")),
                embedding_std_cell(
                    row["embedding_std"]["mean"] if row.get("embedding_std") else None,
                    row.get("embedding_std_spread"),
                    False,
                )
                + (f", **{row['collapsed_runs']} collapsed**" if row.get("collapsed_runs") else ""),
                f"{row['images_per_sec']['mean']:.0f}" if row["images_per_sec"] else "-",
            ]
        )
    lines.append(
        table(
            [
                "method",
                "seeds",
                "k-NN top-1 % (mean ± std)",
                "min-max",
                "k-NN diff to mocov2plus (paired)",
                "offline linear top-1 %",
                "linear diff (paired)",
                "online linear top-1 %",
                "embedding_std (of spread)",
                "train img/s",
            ],
            rows,
        )
    )
    if prof.get("linear_preset"):
        lines += [
            "",
            f"Offline linear probe: `solo-mixmask linear CKPT --preset "
            f"{prof['linear_preset']}` (frozen backbone, cached features"
            + (f", overrides {list(prof['linear_overrides'])}" if prof["linear_overrides"] else "")
            + ").",
        ]
    clocks = sorted({c for c in map(clock_of, res["runs"]) if c})
    lines += [
        "",
        "Train img/s: training batches only (not data loading, k-NN passes or checkpoints), "
        f"timed by: {', '.join(clocks) or '-'} (summary.json `images_per_sec_clock`).",
    ]
    reused = sum(bool(r.get("reused")) for r in res["runs"])
    if reused:
        lines += [
            "",
            f"{reused} of {len(res['runs'])} runs were reused from earlier "
            "invocations (`--reuse`, same config); their train img/s is what was "
            "measured then, under whatever load the machine had, so compare speeds "
            "with `step_time.py` rather than this column.",
        ]
    if res.get("raw_pixel_knn") is not None:
        lines += [
            "",
            f"Raw pixels (mean-centred), same k-NN images: {res['raw_pixel_knn']:.2f}%."
            + (
                f" Random initialisation: {res['knn_at_init_mean']:.2f}% (mean over runs)."
                if res.get("knn_at_init_mean") is not None  # None while every run failed
                else ""
            ),
        ]
        base = agg.get(BASELINE, {}).get("knn_acc1")
        if base and base["mean"] <= res["raw_pixel_knn"]:
            lines += [
                "",
                f"**MoCo v2 ({base['mean']:.2f}%) did not pass the raw-pixel k-NN "
                f"({res['raw_pixel_knn']:.2f}%)**: at this budget nothing has learnt a "
                "representation worth having, so the comparison below cannot tell a "
                "correct MixMask from a broken one.",
            ]
    diff = agg.get("mixmask", {}).get("diff_to_mocov2plus")
    if diff:
        verdict = (
            "one seed only: no spread to judge by"
            if diff["n"] < 2
            else "MixMask is ahead of MoCo v2"
            if diff["mean"] > diff["std"]
            else "MixMask is behind MoCo v2"
            if diff["mean"] < -diff["std"]
            else "MixMask and MoCo v2 are within one standard deviation of each other"
        )
        lines += [
            "",
            f"MixMask - MoCo v2: {diff['mean']:+.2f} points ({_spread(diff, 'paired seeds')}"
            f"): {verdict} at this budget. The paper's "
            "ImageNet claim (+1.5 linear top-1 after 200 epochs) is about a far larger "
            "budget.",
        ]
    for m, row in agg.items():
        own = own_baseline(m)
        diff = row.get(f"diff_to_{own}") if own else None
        if diff:
            lin = row.get(f"offline_linear_diff_to_{own}")
            verdict = (
                "one seed only: no spread to judge by"
                if diff["n"] < 2
                else f"{m} is ahead of {own}"
                if diff["mean"] > diff["std"]
                else f"{m} is behind {own}"
                if diff["mean"] < -diff["std"]
                else f"{m} and {own} are within one standard deviation of each other"
            )
            lines += [
                "",
                f"{m} - {own} (same budget, paired seeds): k-NN {diff['mean']:+.2f} points "
                f"({_spread(diff, 'seeds')})"
                + (f", offline linear {_pm(lin, signed=True)}" if lin else "")
                + f": {verdict} on k-NN at this budget.",
            ]
            own_knn, raw = agg.get(own, {}).get("knn_acc1"), res.get("raw_pixel_knn")
            if own_knn and raw is not None and own_knn["mean"] <= raw:
                lines[-1] += (
                    f" {own} itself ({own_knn['mean']:.2f}%) did not pass the raw-pixel k-NN "
                    f"({raw:.2f}%), so this budget cannot tell a helpful mixed branch from a "
                    "harmful one either."
                )
    lines += [
        "",
        "k-NN top-1 (%) per epoch (mean over seeds; epoch 0 = random initialisation):",
        "",
        per_epoch_table(res),
    ]
    lines += ["", f"Plot: `{Path(res['plot']).name}`."]
    if "same_seed" in res:
        name = Path(res["same_seed"]["baseline"]).name
        lines += ["", same_seed_markdown(res["same_seed"], name)]
    return "\n".join(lines)


def settings_sentence(settings: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """What the runs were set to (:func:`run_settings`), in words; one clause per group of
    methods whose settings differ. k-NN's k is the one the runs report, else the one they
    were set to (``knn_eval.k`` clamped to the k-NN memory)."""

    def words(method: str, s: dict[str, Any]) -> str:
        ks = sorted({r["knn_k"] for r in runs if r["method"] == method and r.get("knn_k")})
        kwargs = ", ".join(f"{k}={v}" for k, v in s["backbone_kwargs"].items())
        return (
            f"Backbone {s['backbone']}({kwargs}){' (CIFAR stem)' if s['cifar_stem'] else ''}, "
            f"batch {s['batch_size']}, {s['epochs']} epochs on {s['train_images'] or 'all'} "
            f"training images; k-NN (k={', '.join(map(str, ks)) or s['knn_k']}, "
            f"T={s['knn_T']}): {s['val_images'] or 'all'} validation images against a memory "
            f"of {s['knn_memory'] or 'all'} training images"
        )

    groups: dict[str, list[str]] = {}
    for method, s in settings.items():
        groups.setdefault(words(method, s), []).append(method)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{', '.join(methods)}: {text}" for text, methods in groups.items())


def per_epoch_table(res: dict[str, Any]) -> str:
    """Markdown table: epoch, each method's mean k-NN top-1 at that epoch, raw pixels."""
    methods = [m for m in res["profile"]["methods"] if any(r["method"] == m for r in res["runs"])]
    curves = {m: [dict(r["curve"]) for r in res["runs"] if r["method"] == m] for m in methods}
    epochs = sorted({e for cs in curves.values() for c in cs for e in c})
    raw = res.get("raw_pixel_knn")
    rows = []
    for e in epochs:
        cells = []
        for m in methods:
            values = [c[e] for c in curves[m] if e in c]
            cells.append(f"{statistics.fmean(values):.2f}" if values else "-")
        rows.append([e, *cells, f"{raw:.2f}" if raw is not None else "-"])
    return table(["epoch", *methods, "raw pixels"], rows)


DATASET_TITLES = {"fashion_mnist": "Fashion-MNIST", "cifar": "CIFAR-10"}


def report(
    args: argparse.Namespace,
    prof: Profile,
    the_plan: dict[str, Any],
    settings: dict[str, dict[str, Any]],
    runs: list[dict[str, Any]],
    errors: list[str],
    raw: float | None,
    wall: float,
    stem: str,
    done: bool,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``<stem>.{json,md,png}`` for the runs so far (``done`` false: partial results,
    rewritten after every run so that a run cut short still leaves what it measured); with
    ``baseline`` (``--baseline``'s results) the same-seed comparison too; ``settings``: each
    method's, from :func:`run_settings`."""
    inits = [r["knn_acc1_at_init"] for r in runs if r.get("knn_acc1_at_init") is not None]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    png = args.out_dir / f"{stem}.png"
    res = {
        "command": command_line(),
        "profile_name": args.profile + (" (tiny)" if args.tiny else ""),
        "profile": asdict(prof),
        "plan": the_plan,
        "settings": settings,
        "machine": machine(),
        "wall_seconds": wall,
        "complete": done,
        "runs": runs,
        "aggregate": aggregate(runs, prof.methods),
        "raw_pixel_knn": raw,
        "knn_at_init_mean": statistics.fmean(inits) if inits else None,
        "errors": errors,
        "plot": str(png),
        "repo": str(REPO),
    }
    if baseline is not None:
        res["same_seed"] = compare(res, baseline)
        res["same_seed"]["baseline"] = str(args.baseline)
    title = DATASET_TITLES.get(prof.dataset, prof.dataset)
    plot(
        runs,
        prof.methods,
        raw,
        png,
        f"{title} k-NN, {prof.epochs} epochs, {the_plan['train_subset'] or 'all'} images",
        baseline_runs=baseline["runs"] if baseline is not None else None,
    )
    write_results(stem, res, markdown(res), args.out_dir)
    return res


def winning_settings(path: Path) -> tuple[str, ...]:
    """The ``combined_settings`` of a throughput.py result as overrides (``key=value``, values
    in YAML: ``true``, ``fused``); an error line naming the file if it has none."""
    try:
        settings = json.loads(path.read_text())["combined_settings"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(
            f"error: --settings-from {path}: not a throughput.py result ({err!r})"
        ) from None
    return tuple(
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in settings.items()
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # checked before any training: an error line naming the file
    baseline = load_result(args.baseline, "--baseline") if args.baseline else None
    try:  # every run's config, checked before anything is planned, trained or written
        prof = resolve_profile(args)
        prof = replace(prof, data=data_overrides(prof, args.data))
        check_run_configs(prof)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    torch.set_num_threads(args.threads)
    needs_budget = prof.budget_minutes and (prof.train_subset is None or prof.epochs_from_budget)
    cal = calibrate(prof) if (needs_budget or args.plan) else None
    the_plan = plan(prof, cal)
    warn_over_budget(prof, the_plan)
    prof = planned(prof, the_plan)
    est = the_plan.get("estimated_s")
    print(
        f"plan: {len(prof.methods)} methods x {len(prof.seeds)} seeds, {prof.epochs} epochs "
        f"of {the_plan['train_subset'] or 'all'} images"
        + (f"; estimated {est / 60:.1f} min" if est else ""),
        file=sys.stderr,
        flush=True,
    )
    if args.plan:
        print(json.dumps(the_plan, indent=2))
        return {"plan": the_plan}
    settings = run_settings(prof, the_plan["train_subset"])
    stem = f"accuracy_{args.profile}{'_tiny' if args.tiny else ''}"
    stem += f"_{args.tag}" if args.tag else ""
    start = time.perf_counter()
    raws = [raw_pixel_knn(prof, s, the_plan["train_subset"]) for s in prof.seeds]
    raw = statistics.fmean(raws) if raws else None
    print(f"raw pixels k-NN: {raw:.2f}%", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_acc_") as tmp:
        runs_dir = args.runs_dir or Path(tmp)
        runs: list[dict[str, Any]] = []
        errors: list[str] = []
        stopped: RunStopped | None = None
        for seed in prof.seeds:  # seed-major: a cut-short benchmark stays balanced
            for method in prof.methods:
                print(f"run {method} seed {seed}", file=sys.stderr, flush=True)
                try:
                    runs.append(
                        one_run(
                            prof,
                            method,
                            seed,
                            the_plan["train_subset"],
                            runs_dir / f"{method}-s{seed}",
                            args.reuse,
                        )
                    )
                except RunStopped as err:  # SIGTERM / Ctrl-C: stop after this report
                    errors.append(f"{method} seed {seed}: stopped ({err})")
                    stopped = err
                except Exception as err:  # keep going: report the failure in the table
                    errors.append(f"{method} seed {seed}: {type(err).__name__}: {err}")
                    print(errors[-1], file=sys.stderr)
                report(
                    args,
                    prof,
                    the_plan,
                    settings,
                    runs,
                    errors,
                    raw,
                    time.perf_counter() - start,
                    stem,
                    done=False,
                    baseline=baseline,
                )
                if stopped is not None:
                    print(f"error: {stopped}", file=sys.stderr)
                    raise SystemExit(stopped.exit_status)
        wall = time.perf_counter() - start
    res = report(args, prof, the_plan, settings, runs, errors, raw, wall, stem, True, baseline)
    print(markdown(res))
    print(f"\nwrote {args.out_dir / stem}.{{json,md,png}}")
    if errors:  # the others' results are written: a figure, but not the one asked for
        print(
            f"error: {len(errors)} of {len(prof.methods) * len(prof.seeds)} runs failed: "
            + "; ".join(errors),
            file=sys.stderr,
        )
        raise SystemExit(1)
    return res


if __name__ == "__main__":
    main()
