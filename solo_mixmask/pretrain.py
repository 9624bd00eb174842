"""Run a pretraining job from a config: data, method, Lightning Trainer, run folder, summary.json.

Run folder layout::

    <run_dir>/config.yaml         resolved config (what ``resume`` reads back)
    <run_dir>/checkpoints/        last.ckpt + one every ``checkpoint.frequency`` epochs; with
                                  ``checkpoint.every_n_steps`` last.ckpt is also rewritten
                                  mid-epoch. Every write is atomic (temp file + rename).
    <run_dir>/logs/metrics.csv    per-step/epoch metrics (CSV logger)
    <run_dir>/bad_files.txt       unreadable images skipped (one path a line, any process)
    <run_dir>/summary.json        method, backbone, dataset, epochs, steps, k-NN and linear
                                  accuracies (%), k-NN at init, images/s, wall seconds,
                                  checkpoint, bad_images (count of skipped files), ...

Order of work: the whole config is checked (mandatory values, unknown keys, method values),
the model is built (backbone names and kwargs checked), then the data is opened.

Resume is exact (same weights, queue and metrics as an uninterrupted run on the same hardware
and world size): the training loader's order and each image's augmentation are functions of
``(seed, epoch, index)`` (:mod:`solo_mixmask.utils.resumable`), and every checkpoint also holds
the loader's position and the RNG states (:class:`~solo_mixmask.callbacks.ResumeState`).
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import lightning as L
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from solo_mixmask.callbacks import (
    GracefulStop,
    NonFiniteLossGuard,
    ResumeState,
    StepCheckpoint,
    signal_name,
)
from solo_mixmask.checkpoint_io import LAST, SafeAtomicCheckpointIO, safe_load_checkpoint
from solo_mixmask.compose import apply_overrides
from solo_mixmask.config import (
    check_mandatory_values,
    select,
    suggest,
    to_container,
    trainer_arg_names,
)
from solo_mixmask.console import EpochLine, ModelLine, quiet_third_party
from solo_mixmask.errors import CheckpointError, ConfigError, DataError, RunStopped, StopRequested
from solo_mixmask.methods import METHODS
from solo_mixmask.paths import check_output_dir
from solo_mixmask.run_folder import RunLock, make_run_dir, refuse_existing_run, remove_made
from solo_mixmask.utils.resumable import ResumableLoader, resumable_train_loader

if TYPE_CHECKING:
    from solo_mixmask.methods import BaseMethod

SUMMARY = "summary.json"
CONFIG = "config.yaml"
BAD_FILES = "bad_files.txt"
#: Set by the process that launches DDP children so that they all use its run folder.
RUN_DIR_ENV = "SOLO_MIXMASK_RUN_DIR"


class TrainSpeed(Callback):
    """Images per second over training batches only (validation and checkpointing excluded)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.seconds += time.perf_counter() - self._start
        self.images += int(batch[0].shape[0]) * trainer.world_size

    @property
    def images_per_sec(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


class DataOnDevice(Callback):
    """Hands the Trainer's device to loaders that keep their images there (``to_device``, the
    in-memory path), before every fit or validation."""

    def __init__(self) -> None:
        self.loaders: list[Any] = []

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        for loader in self.loaders:
            loader.to_device(trainer.strategy.root_device)


def method_class(cfg: DictConfig) -> type[BaseMethod]:
    """The method class named by ``cfg.method`` (ConfigError listing the known ones)."""
    name = cfg.get("method")
    if name not in METHODS:
        raise ConfigError("method", name, f"one of {', '.join(METHODS)}{suggest(name, METHODS)}")
    return METHODS[name]


def prepare_config(cfg: DictConfig) -> tuple[type[BaseMethod], DictConfig]:
    """Check the whole config before anything is built; returns (method class, filled cfg)."""
    check_mandatory_values(cfg)  # before defaults are filled in (they would hide '???')
    cls = method_class(cfg)
    cfg = cls.add_and_assert_specific_cfg(cfg)
    return cls, cfg


# --------------------------------------------------------------------------- run folder


def _external_launch() -> bool:
    """Whether this process was started by torchrun / Lightning / SLURM as one of several."""
    if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return True  # torchrun, or a child started by Lightning
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and not interactive


def new_run_dir(cfg: DictConfig) -> Path:
    """``checkpoint.run_dir`` if given, else a fresh ``<checkpoint.dir>/<name>-<time stamp>``.

    Processes of one multi-process run must agree on the folder: children started by Lightning
    inherit it from their parent (``SOLO_MIXMASK_RUN_DIR``); under SLURM the job id names it;
    under torchrun ``checkpoint.run_dir`` (or a ``--rdzv-id``) is required.
    """
    given = select(cfg, "checkpoint.run_dir")
    if given:
        return Path(given)
    base = Path(select(cfg, "checkpoint.dir", "runs"))
    name = select(cfg, "name", "run")
    if _external_launch():
        if os.environ.get(RUN_DIR_ENV):
            return Path(os.environ[RUN_DIR_ENV])
        if os.environ.get("SLURM_JOB_ID"):
            return base / f"{name}-slurm{os.environ['SLURM_JOB_ID']}"
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if run_id not in ("", "none"):
            return base / f"{name}-{run_id}"
        raise ConfigError(
            "checkpoint.run_dir",
            None,
            "a folder shared by all processes when several are launched from outside "
            "(torchrun without --rdzv-id): pass checkpoint.run_dir=/shared/path",
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = base / f"{name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        run_dir = base / f"{name}-{stamp}-{suffix}"
        suffix += 1
    return run_dir


def is_rank_zero_process() -> bool:
    """Whether this process is the run's global rank 0, which makes, locks and (on an early
    user error) removes the run folder; decided before the Trainer exists, from the launcher's
    environment (``RANK`` under torchrun, ``SLURM_PROCID`` under SLURM; a child started by
    Lightning inherits ``SOLO_MIXMASK_RUN_DIR``)."""
    if os.environ.get(RUN_DIR_ENV):
        return False
    if not _external_launch():
        return True
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    return int(rank) == 0


def check_run_location(cfg: DictConfig, run_dir: Path, rank_zero: bool) -> str:
    """Before any work: the folder a new run will write to can be made there and holds no run
    (only ``resume`` writes into an existing run). Returns the key that names it
    (``checkpoint.run_dir`` when given, else ``checkpoint.dir``); ConfigError otherwise."""
    if select(cfg, "checkpoint.run_dir"):
        key = "checkpoint.run_dir"
        check_output_dir(key, run_dir)
    else:
        key = "checkpoint.dir"
        check_output_dir(key, select(cfg, "checkpoint.dir", "runs"))
    # A time-stamped folder chosen here that exists already (another run started in the same
    # second) is not refused: make_run_dir gives this run its own folder, with a suffix.
    if rank_zero and (select(cfg, "checkpoint.run_dir") or _external_launch()):
        refuse_existing_run(key, run_dir)
    return key


def _has_checkpoint(run_dir: Path) -> bool:
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(folder.glob("*.ckpt"))


def _is_user_error(err: BaseException) -> bool:
    """Bad config, data or checkpoint, or a Trainer setting Lightning refuses (exit 2)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(err, ConfigError | DataError | CheckpointError | MisconfigurationException)


# --------------------------------------------------------------------------- trainer


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Top-level config keys that are ``lightning.Trainer`` arguments, as solo-learn passes them."""
    names = trainer_arg_names()
    kwargs = {k: v for k, v in to_container(cfg).items() if k in names}
    if isinstance(kwargs.get("devices"), str) and kwargs["devices"].isdigit():
        kwargs["devices"] = int(kwargs["devices"])  # solo-learn writes "1" for CPU runs
    if kwargs.get("precision") in (None, "auto"):
        # "auto": bf16 autocast on CUDA (fp16 with loss scaling where bf16 is unsupported),
        # full fp32 on CPU, where autocast would only slow the step down.
        import torch

        accelerator = str(kwargs.get("accelerator") or "auto")
        on_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        if on_cuda:
            kwargs["precision"] = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            kwargs["precision"] = "32-true"
    return kwargs


def _continue_csv(logger: CSVLogger, path: Path) -> None:
    """A resumed run appends to the ``metrics.csv`` it finds, keeping every row and column.

    Lightning's CSV writer deletes an existing file when it starts (newer versions) or keeps
    it but knows only the keys logged in this process (2.1): when the first rows it saves lack
    a column of the file, it rewrites the file with the new header and fails on the old rows
    ("dict contains fields not in fieldnames"). So the file is read first, put back after the
    writer started, and its header given to the writer.
    """
    if not path.is_file():
        return
    text = path.read_text()
    header = next(csv.reader([text.split("\n", 1)[0]]), [])
    keys = getattr(logger.experiment, "metrics_keys", None)  # not a list on ranks > 0
    if not isinstance(keys, list):
        return
    if not path.is_file():
        path.write_text(text)
    keys[:0] = [k for k in header if k and k not in keys]


def _loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    loggers: list[Any] = []
    if select(cfg, "logging.csv", True):
        csv_logger = CSVLogger(save_dir=str(run_dir), name="logs", version="")
        _continue_csv(csv_logger, run_dir / "logs" / "metrics.csv")
        loggers.append(csv_logger)
    if select(cfg, "logging.tensorboard", False):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    if select(cfg, "wandb.enabled", False):  # offline unless wandb.offline=false
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(
                name=cfg.name,
                project=select(cfg, "wandb.project", "solo-mixmask"),
                entity=select(cfg, "wandb.entity"),
                save_dir=str(run_dir),
                offline=bool(select(cfg, "wandb.offline", True)),
            )
        )
    return loggers


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """Speed meter, LR monitor, progress bar, NaN guard, resume state and checkpointers."""
    ckpt_dir = run_dir / "checkpoints"
    enabled = bool(cfg.checkpoint.enabled)
    callbacks: list[Callback] = [
        TrainSpeed(),
        LearningRateMonitor(logging_interval="epoch"),
        NonFiniteLossGuard(ckpt_dir if enabled else None),
        ResumeState(None),  # the training loader is attached once it exists
        DataOnDevice(),  # likewise, the loaders that hold their images on the device
        GracefulStop(),  # SIGTERM / Ctrl-C: stop after the step, with a checkpoint
    ]
    if select(cfg, "progress_bar", True):
        callbacks.append(RichProgressBar())
    else:
        callbacks.append(EpochLine())  # CI logs, nohup: one line per epoch
    if not select(cfg, "enable_model_summary", False):
        callbacks.append(ModelLine())  # Lightning's table with enable_model_summary=true
    if enabled:
        extra: dict[str, Any] = {}
        if "enable_version_counter" in inspect.signature(ModelCheckpoint).parameters:
            extra["enable_version_counter"] = False  # last.ckpt is shared with StepCheckpoint
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(ckpt_dir),
                filename="epoch{epoch:03d}",
                auto_insert_metric_name=False,
                every_n_epochs=int(cfg.checkpoint.frequency),
                save_top_k=-1,
                save_last=True,
                **extra,
            )
        )
        every = select(cfg, "checkpoint.every_n_steps")
        # always there: it also writes last.ckpt after the step during which a stop was asked
        callbacks.append(StepCheckpoint(ckpt_dir, int(every) if every else None))
    return callbacks


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[Callback]) -> L.Trainer:
    kwargs = trainer_kwargs(cfg)
    kwargs.setdefault("num_sanity_val_steps", 0)
    kwargs.setdefault("log_every_n_steps", 10)
    kwargs.setdefault("enable_model_summary", False)  # ModelLine prints one line instead
    quiet_third_party()  # before the Trainer logs its tips
    plugins = kwargs.pop("plugins", None) or []
    plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    return L.Trainer(
        **kwargs,
        callbacks=callbacks,
        plugins=[*plugins, SafeAtomicCheckpointIO()],
        logger=_loggers(cfg, run_dir) or False,
        default_root_dir=str(run_dir),
        enable_progress_bar=select(cfg, "progress_bar", True),
        enable_checkpointing=bool(cfg.checkpoint.enabled),
    )


# --------------------------------------------------------------------------- data faults


def _base_datasets(loader: Any) -> list[Any]:
    """Datasets inside ``loader`` (following ``.dataset`` through wrappers and subsets)."""
    found, node, seen = [], getattr(loader, "dataset", None), 0
    while node is not None and seen < 10:
        found.append(node)
        node, seen = getattr(node, "dataset", None), seen + 1
    return found


def _watch_bad_files(loaders: list[Any], report: Path) -> list[Any]:
    """Make every image-folder dataset of ``loaders`` append skipped files to ``report``."""
    watched = []
    for loader in loaders:
        for ds in _base_datasets(loader):
            if hasattr(ds, "bad_files") and hasattr(ds, "report_file"):
                ds.report_file = str(report)
                watched.append(ds)
    return watched


def count_bad_files(watched: list[Any], report: Path) -> list[str]:
    """Distinct skipped image paths: the report file (all processes) + this process's lists."""
    paths: set[str] = set()
    if report.exists():
        paths.update(line for line in report.read_text(encoding="utf-8").splitlines() if line)
    for ds in watched:
        paths.update(ds.bad_files)
    return sorted(paths)


# --------------------------------------------------------------------------- the run


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else round(float(value), 4)


def _fit_kwargs(trainer: L.Trainer, resume_from: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"ckpt_path": resume_from}
    if resume_from and "weights_only" in inspect.signature(trainer.fit).parameters:
        kwargs["weights_only"] = True  # our CheckpointIO enforces it anyway
    return kwargs


def _build_data(
    cfg: DictConfig, trainer: L.Trainer, callbacks: list[Callback]
) -> tuple[Any, list[Any]]:
    """(resumable training loader, validation loaders); the loader is handed to ResumeState."""
    from solo_mixmask.data.loaders import build_knn_loaders, build_train_loader

    rank, world = trainer.global_rank, trainer.world_size
    train_loader: Any = build_train_loader(cfg, rank, world)
    if isinstance(train_loader, DataLoader) and not isinstance(train_loader, ResumableLoader):
        train_loader = resumable_train_loader(train_loader, int(cfg.seed), rank, world)
    knn_train_loader, val_loader = build_knn_loaders(cfg, rank, world)
    val_loaders = [knn_train_loader, val_loader] if cfg.knn_eval.enabled else [val_loader]
    for cb in callbacks:
        if isinstance(cb, ResumeState):
            cb.loader = train_loader if isinstance(train_loader, ResumableLoader) else None
        if isinstance(cb, DataOnDevice):
            cb.loaders = [x for x in (train_loader, *val_loaders) if hasattr(x, "to_device")]
    return train_loader, val_loaders


def _initial_metrics(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: Any,
    val_loaders: list[Any],
    init_file: Path,
    resumed: bool,
) -> dict[str, Any]:
    """k-NN / linear accuracy of the untrained model (read back from ``init_file`` on resume)."""
    if resumed and init_file.exists():
        return json.loads(init_file.read_text())
    init: dict[str, Any] = {}
    if cfg.knn_eval.enabled:
        results = trainer.validate(model, dataloaders=val_loaders, verbose=False)
        merged = {k: v for r in results for k, v in r.items()}
        init = {
            "knn_acc1_at_init": _metric(merged, "val_knn_acc1"),
            "linear_acc1_at_init": _metric(merged, "val_acc1"),
        }
    if trainer.is_global_zero:
        init_file.write_text(json.dumps(init))
    return init


def _launches_children(trainer: L.Trainer) -> bool:
    """Whether Lightning will start the other ranks from this process (plain ``strategy=ddp``)."""
    cluster = getattr(trainer.strategy, "cluster_environment", None)
    return (
        trainer.world_size > 1 and cluster is not None and not cluster.creates_processes_externally
    )


def seed_quietly(seed: int) -> None:
    """``L.seed_everything(seed, workers=True)`` without its log line where Lightning allows it
    (``verbose`` came after lightning 2.1, which solo-learn pins)."""
    kwargs = {"workers": True}
    if "verbose" in inspect.signature(L.seed_everything).parameters:
        kwargs["verbose"] = False
    L.seed_everything(seed, **kwargs)


def _stopped(
    stop: GracefulStop, callbacks: list[Callback], trainer: L.Trainer, run_dir: Path
) -> RunStopped:
    """The :class:`RunStopped` error for a run that a signal stopped (what was saved, how to
    continue)."""
    signum = stop.signum if stop.signum is not None else signal.SIGTERM
    saver = next((cb for cb in callbacks if isinstance(cb, StepCheckpoint)), None)
    last = run_dir / "checkpoints" / LAST
    if saver is not None and saver.saved_on_stop is not None:
        kept = f"last.ckpt holds step {saver.saved_on_stop}, the last step trained"
    elif last.exists():
        kept = (
            f"stopped at step {trainer.global_step} before the step's checkpoint could be "
            "written; the previous last.ckpt is kept and the steps after it are trained again"
        )
    else:
        kept = "no checkpoint had been written yet: resume starts the run again from step 0"
    return RunStopped(
        signum,
        f"stopped by {signal_name(signum)}; {kept}; continue with `solo-mixmask resume {run_dir}`",
    )


class SavedModel(NamedTuple):
    """What a resumed checkpoint holds of the model: tensor shapes by ``state_dict`` key and
    the config it was written with (None when it has none)."""

    shapes: dict[str, tuple[int, ...]]
    cfg: dict[str, Any] | None


def check_model_fits(model: Any, saved: SavedModel, checkpoint: str) -> None:
    """CheckpointError naming the tensors (and the method / backbone settings) that differ when
    ``model`` cannot take the weights of ``checkpoint`` (what Lightning would otherwise report
    as a long size-mismatch traceback)."""
    from solo_mixmask.checkpoints import config_differences, shape_mismatch

    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatch = shape_mismatch(shapes, saved.shapes)
    if mismatch is None:
        return
    changed = config_differences(saved.cfg or {}, to_container(model.cfg)) if saved.cfg else []
    settings = f"; settings that differ: {'; '.join(changed)}" if changed else ""
    raise CheckpointError(
        f"{checkpoint} does not fit the model this config builds{settings}; {mismatch}. A run "
        "resumes with its own method and backbone settings: drop those overrides, or start a "
        "new run with solo-mixmask pretrain"
    )


def run_pretrain(
    cfg: DictConfig,
    resume_from: str | None = None,
    run_dir: str | Path | None = None,
    saved_model: SavedModel | None = None,
) -> dict[str, Any]:
    """Pretrain as ``cfg`` says; returns (and writes) the run's summary dict.

    ``resume_from``: a checkpoint to continue from (weights, queue, momentum encoder, optimiser,
    schedule, the method's random streams, the global RNGs and the data position are restored);
    ``saved_model`` (its tensor shapes) lets a model that cannot take its weights be refused
    with one line. ``run_dir``: the run folder (default: the checkpoint's, else a new one).

    A new run (neither given) checks where it will write before any work, makes its folder
    atomically (:func:`~solo_mixmask.run_folder.make_run_dir`) and holds the folder's lock
    while it runs (:class:`~solo_mixmask.run_folder.RunLock`, released on every exit). When it
    fails with a user error before it trained a step or wrote a checkpoint, the folder it made
    is removed again (never one it did not make).

    SIGTERM or Ctrl-C during the run raise :class:`~solo_mixmask.errors.RunStopped` after
    the step under way (with ``last.ckpt`` written after it when possible, see
    :class:`~solo_mixmask.callbacks.GracefulStop`); no summary is written then.
    """
    from solo_mixmask.data.loaders import num_classes

    method_cls, cfg = prepare_config(cfg)
    fresh = run_dir is None and resume_from is None
    rank_zero = is_rank_zero_process()
    if run_dir is None:
        run_dir = Path(resume_from).parents[1] if resume_from else new_run_dir(cfg)
    run_dir = Path(run_dir)
    key = check_run_location(cfg, run_dir, rank_zero) if fresh else "checkpoint.run_dir"
    seed_quietly(int(cfg.seed))
    with open_dict(cfg):
        if select(cfg, "data.num_classes") is None:
            cfg.data.num_classes = num_classes(cfg)
    made: list[Path] = []
    if fresh and rank_zero:  # a time-stamped name of one process is never shared
        unique = not select(cfg, "checkpoint.run_dir") and not _external_launch()
        run_dir, made = make_run_dir(key, run_dir, unique)
    with open_dict(cfg):
        cfg.checkpoint.run_dir = str(run_dir)
    progress = {"steps": 0}
    command = "solo-mixmask " + ("pretrain" if fresh else "resume")
    try:
        with RunLock(run_dir, command, enabled=rank_zero):
            return _train_in(cfg, method_cls, run_dir, resume_from, saved_model, progress)
    except BaseException as err:
        early = progress["steps"] == 0 and not _has_checkpoint(run_dir)
        if made and not _external_launch() and early and _is_user_error(err):
            remove_made(made)  # nothing trained: the folder holds nothing worth keeping
        raise


def _train_in(
    cfg: DictConfig,
    method_cls: type[BaseMethod],
    run_dir: Path,
    resume_from: str | None,
    saved_model: SavedModel | None,
    progress: dict[str, int],
) -> dict[str, Any]:
    """The run itself, in ``run_dir`` (made and locked): build, fit, write summary.json.
    ``progress["steps"]`` holds the optimiser steps trained when ``fit`` returns or fails."""
    model = method_cls(cfg)  # backbone name/kwargs are checked here, before the data is read
    if resume_from and saved_model is not None:
        check_model_fits(model, saved_model, resume_from)

    callbacks = build_callbacks(cfg, run_dir)
    trainer = build_trainer(cfg, run_dir, callbacks)
    train_loader, val_loaders = _build_data(cfg, trainer, callbacks)
    run_dir.mkdir(parents=True, exist_ok=True)  # made by rank 0; a no-op on resume
    report = run_dir / BAD_FILES
    watched = _watch_bad_files([train_loader, *val_loaders], report)
    if trainer.is_global_zero:
        OmegaConf.save(cfg, run_dir / CONFIG)
    launching = _launches_children(trainer)
    if launching:  # the children inherit the environment: they use this run folder
        os.environ[RUN_DIR_ENV] = str(run_dir)

    start = time.perf_counter()
    stop = next(cb for cb in callbacks if isinstance(cb, GracefulStop))
    stop.install()
    try:
        init = _initial_metrics(
            cfg, trainer, model, val_loaders, run_dir / "init_metrics.json", bool(resume_from)
        )
        stop.check()  # a stop asked during the last batch of the k-NN pass
        trainer.fit(
            model,
            train_dataloaders=train_loader,
            val_dataloaders=val_loaders,
            **_fit_kwargs(trainer, resume_from),
        )
    except (SIGTERMException, StopRequested):
        raise _stopped(stop, callbacks, trainer, run_dir) from None
    except SystemExit as err:  # Lightning's answer to a KeyboardInterrupt: sys.exit(1)
        if isinstance(err.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    finally:
        stop.uninstall()
        progress["steps"] = int(trainer.global_step)
        if launching:
            os.environ.pop(RUN_DIR_ENV, None)
    wall = time.perf_counter() - start

    previous = (
        json.loads((run_dir / SUMMARY).read_text())
        if resume_from and (run_dir / SUMMARY).exists()
        else {}
    )
    metrics = {k: v for k, v in trainer.callback_metrics.items()}
    speed = next(cb for cb in callbacks if isinstance(cb, TrainSpeed))
    checkpointer = next((cb for cb in callbacks if isinstance(cb, ModelCheckpoint)), None)
    checkpoint = None
    if checkpointer is not None:
        assert checkpointer.dirpath is not None  # build_callbacks gives it one
        last = Path(checkpointer.dirpath) / LAST
        checkpoint = str(last) if last.exists() else checkpointer.last_model_path or None
    bad = count_bad_files(watched, report)
    summary = {
        "method": cfg.method,
        "backbone": cfg.backbone.name,
        "dataset": cfg.data.dataset,
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "knn_acc1": _metric(metrics, "val_knn_acc1"),
        "knn_acc5": _metric(metrics, "val_knn_acc5"),
        "linear_acc1": _metric(metrics, "val_acc1"),
        "linear_acc5": _metric(metrics, "val_acc5"),
        "knn_k": model.knn_k,  # knn_eval.k, clamped to the k-NN memory
        **init,
        "images_per_sec": round(speed.images_per_sec, 2),
        "wall_seconds": round(wall + float(previous.get("wall_seconds", 0.0)), 1),
        "train_images": len(train_loader.dataset),
        "bad_images": len(bad),
        "bad_image_files": bad[:20],
        "resumed_from": resume_from,
        "checkpoint": checkpoint,
        "run_dir": str(run_dir),
    }
    if trainer.is_global_zero:
        (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


class NothingToResume(Exception):
    """``resume`` of a run that already trained its ``max_epochs``: nothing was changed."""


def epochs_trained(checkpoint: dict[str, Any]) -> int | None:
    """Whole epochs (training and end-of-epoch evaluation) behind ``checkpoint``, or None when
    it holds no loader position (a non-resumable loader).

    An epoch-end checkpoint is written after the epoch's evaluation, with all its batches done;
    a mid-epoch one never has all batches done.
    """
    loader = (checkpoint.get("callbacks") or {}).get("ResumeState", {}).get("loader")
    if not isinstance(loader, dict) or "epoch" not in loader:
        return None
    done, total = int(loader.get("batches_done", 0)), int(loader.get("num_batches", 0) or 0)
    return int(loader["epoch"]) + (1 if total and done >= total else 0)


def _check_max_epochs(run_dir: Path, saved: DictConfig, cfg: DictConfig, done: int | None) -> None:
    """Refuse a ``max_epochs`` below the epochs already trained; NothingToResume for a finished
    run; a warning when ``max_epochs`` changes (what happens to the schedules)."""
    try:
        old, new = int(saved.max_epochs), int(cfg.max_epochs)
    except (TypeError, ValueError, AttributeError):
        return  # prepare_config reports a bad max_epochs
    if done is not None and done >= new:
        if new == old:
            raise NothingToResume(
                f"{run_dir} is finished ({done} of {old} epochs trained); nothing was changed. "
                f"To train it longer: solo-mixmask resume {run_dir} max_epochs=N (N > {done})"
            )
        raise ConfigError(
            "max_epochs",
            new,
            f"more than {done}: {run_dir} has already trained {done} epochs (its max_epochs is "
            f"{old}); nothing was changed",
        )
    if new != old:
        import warnings

        from solo_mixmask.errors import ConfigWarning

        schedule = select(cfg, "scheduler.name", "warmup_cosine")
        lr = (
            f"the learning-rate schedule ({schedule}) is restored from the checkpoint and still "
            f"spans {old} epochs (after them the rate stays at scheduler.min_lr="
            f"{select(cfg, 'scheduler.min_lr')})"
            if schedule in ("warmup_cosine", "cosine")
            else f"the learning-rate schedule ({schedule}) is restored from the checkpoint"
        )
        warnings.warn(
            f"max_epochs changes from {old} to {new}: training continues to epoch {new}, but "
            f"{lr}, while the momentum tau schedule is recomputed over {new} epochs; the "
            f"result is not the one of a run started with max_epochs={new}",
            ConfigWarning,
            stacklevel=2,
        )


def _training_checkpoint(path: Path) -> dict[str, Any]:
    """``path`` loaded safely (weights only), CheckpointError unless it is a training
    checkpoint (weights, loop and optimiser states)."""
    checkpoint = safe_load_checkpoint(path)
    for key in ("state_dict", "loops", "optimizer_states"):
        if key not in checkpoint:
            raise CheckpointError(
                f"{path} is not a training checkpoint (no {key!r}); resume needs the last.ckpt "
                "that solo-mixmask pretrain wrote"
            )
    return checkpoint


def epoch_checkpoints(folder: Path) -> list[Path]:
    """The ``epochNNN.ckpt`` files of a checkpoint folder, newest (highest epoch) first."""
    found = []
    for path in folder.glob("epoch*.ckpt"):
        match = re.match(r"epoch(\d+)", path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path.stat().st_mtime, path))
    return [path for *_, path in sorted(found, reverse=True)]


def _newest_epoch_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest ``epochNNN.ckpt`` that loads as a training checkpoint, loaded; None when
    there is none (unusable ones are passed over with a warning)."""
    for path in epoch_checkpoints(folder):
        try:
            return path, _training_checkpoint(path)
        except CheckpointError as err:
            _warn(f"passing over {path}: {err}")
    return None


def _warn(message: str) -> None:
    import warnings

    from solo_mixmask.errors import ConfigWarning

    warnings.warn(message, ConfigWarning, stacklevel=3)


def _check_same_method(path: Path, saved: SavedModel, cfg: DictConfig) -> None:
    """CheckpointError when the checkpoint at ``path`` was written by another method than
    ``cfg.method``."""
    written_by = saved.cfg.get("method") if saved.cfg else None
    if written_by is not None and written_by != cfg.get("method"):
        raise CheckpointError(
            f"{path} was written by method {written_by!r}, but the run's config asks for "
            f"method={cfg.get('method')!r}: a run resumes with its own method; start a new run "
            f"(solo-mixmask pretrain method={cfg.get('method')} ...) to train another one"
        )


def _saved_model(checkpoint: dict[str, Any]) -> SavedModel:
    """Tensor shapes and ``hyper_parameters.cfg`` of a training checkpoint (its one reader)."""
    hparams = checkpoint.get("hyper_parameters")
    saved_cfg = hparams.get("cfg") if isinstance(hparams, dict) else None
    shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if hasattr(v, "shape")}
    return SavedModel(shapes, saved_cfg if isinstance(saved_cfg, dict) else None)


def resume_run(run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from ``checkpoints/last.ckpt``.

    The run folder's lock is taken first (:class:`~solo_mixmask.run_folder.RunLock`): a run that
    a live process trains is refused (ConfigError), a stale lock taken over with a warning.
    Without ``last.ckpt`` the newest usable ``epochNNN.ckpt`` is used (a warning names it).
    The checkpoint is read with ``torch.load(weights_only=True)``: a file that needs
    arbitrary pickled objects is refused (CheckpointError) before anything in it can run, and
    so is one written by another method, or (when the model is built) one whose tensors do not
    fit the model of the config with ``overrides``. A run that already trained its
    ``max_epochs`` raises :class:`NothingToResume` and nothing in its folder changes;
    ``max_epochs=N`` with ``N`` above the epochs trained extends it; a lower ``N`` is a
    ConfigError. A run stopped before its first checkpoint (and never finished) starts again
    from step 0 in the same folder.
    """
    run_dir = Path(run_dir)
    config = run_dir / CONFIG
    if not config.exists():
        raise CheckpointError(f"{run_dir} is not a run folder: {config} is missing")
    with RunLock(run_dir, "solo-mixmask resume", enabled=is_rank_zero_process()):
        return _resume_locked(run_dir, overrides)


def _resume_locked(run_dir: Path, overrides: list[str] | None) -> dict[str, Any]:
    """:func:`resume_run` once the run folder's lock is held."""
    config, folder = run_dir / CONFIG, run_dir / "checkpoints"
    last = folder / LAST
    saved = OmegaConf.load(config)
    if not isinstance(saved, DictConfig):
        raise CheckpointError(f"{run_dir} is not a run folder: {config} does not hold a mapping")
    cfg = saved
    if overrides:
        cfg = apply_overrides(saved, overrides)  # hydra's grammar, as for pretrain
    if last.exists():
        try:
            checkpoint = _training_checkpoint(last)
        except CheckpointError as err:
            newest = epoch_checkpoints(folder)
            if not newest:
                raise
            raise CheckpointError(
                f"{err}; the newest epoch checkpoint is {newest[0]}: move {last} away and "
                "resume again to continue from it"
            ) from err
    else:
        found = _newest_epoch_checkpoint(folder)
        if found is None:
            if (run_dir / SUMMARY).exists() or any(folder.glob("*.ckpt")):
                raise CheckpointError(
                    f"{run_dir} has no checkpoint to resume from: {last} is missing"
                )
            import shutil

            _warn(
                f"{run_dir} was stopped before its first checkpoint: nothing was trained, so the "
                "run starts again from step 0 in this folder"
            )
            shutil.rmtree(run_dir / "logs", ignore_errors=True)
            (run_dir / "init_metrics.json").unlink(missing_ok=True)
            return run_pretrain(cfg, run_dir=run_dir)
        last, checkpoint = found
        _warn(
            f"{run_dir} has no checkpoints/last.ckpt: resuming from {last.name}, its newest "
            "epoch checkpoint (the steps trained after it are trained again)"
        )
    saved_model = _saved_model(checkpoint)
    _check_same_method(last, saved_model, cfg)
    done = epochs_trained(checkpoint)
    del checkpoint
    _check_max_epochs(run_dir, saved, cfg, done)
    return run_pretrain(cfg, resume_from=str(last), saved_model=saved_model)
