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
the loader's position and the RNG states (:class:`~solo_mixmask.callbacks.resume_state.ResumeState`).
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from solo_mixmask.backbones import residual_init_kwargs
from solo_mixmask.callbacks import (
    DataOnDevice,
    GracefulStop,
    ResumeState,
    StopCheckpoint,
    TrainSpeed,
    stopped_error,
)
from solo_mixmask.checkpoints.callbacks import LastCheckpoint
from solo_mixmask.checkpoints.io import LAST, atomic_write, safe_load_checkpoint
from solo_mixmask.checkpoints.saved_model import SavedModel, check_model_fits
from solo_mixmask.config.run_specs import (
    LoggerSpec,
    RunSpec,
    method_of,
    record,
    run_spec,
    with_a_class_count,
)
from solo_mixmask.config.schema import (
    check_mandatory_values,
    resolve_interpolations,
    suggest,
    warn_one_class,
)
from solo_mixmask.core.collapse import COLLAPSE_FRACTION, is_collapsed, spread_std
from solo_mixmask.errors import (
    CheckpointError,
    CollapseWarning,
    ConfigError,
    ConfigWarning,
    DataError,
    StopRequested,
)
from solo_mixmask.methods import METHODS
from solo_mixmask.methods.heads import EMBEDDING_STD
from solo_mixmask.run.bad_files import BAD_FILES, count_bad_files, watch_bad_files
from solo_mixmask.run.folder import (
    CONFIG,
    INIT_METRICS,
    LOGS,
    METRICS_CSV,
    RUN_DIR_ENV,
    SUMMARY,
    RunLock,
    check_run_location,
    external_launch,
    has_checkpoint,
    is_rank_zero_process,
    make_run_dir,
    new_run_dir,
    remove_made,
)
from solo_mixmask.run.loggers import build_loggers
from solo_mixmask.run.trainer import build_callbacks, build_trainer
from solo_mixmask.utils.resumable import ResumableLoader, resumable_train_loader

if TYPE_CHECKING:
    from solo_mixmask.config.data_specs import DataSpec
    from solo_mixmask.methods import BaseMethod


def method_class(cfg: DictConfig) -> type[BaseMethod]:
    """The method class named by ``cfg.method`` (ConfigError listing the known ones)."""
    name = method_of(cfg)
    if name not in METHODS:
        raise ConfigError("method", name, f"one of {', '.join(METHODS)}{suggest(name, METHODS)}")
    return METHODS[name]


def prepare_config(cfg: DictConfig) -> tuple[type[BaseMethod], DictConfig]:
    """Check the whole config before anything is built or read (keys and values, the run's and
    the data's settings, the backbone's name and kwargs, and what only the model's construction
    can check: e.g. ``method_kwargs.bn_splits`` with a backbone that has no BatchNorm); returns
    (method class, filled cfg). ``--cfg job`` and the ``-m`` pre-check run exactly these checks."""
    from solo_mixmask.config.data_specs import data_spec
    from solo_mixmask.data.loaders import check_data_settings

    check_mandatory_values(cfg)  # before defaults are filled in (they would hide '???')
    resolve_interpolations(cfg)
    cls = method_class(cfg)
    cfg = cls.add_and_assert_specific_cfg(cfg)
    run_spec(cfg)
    check_data_settings(data_spec(cfg))
    with torch.device("meta"):  # the model as the run builds it, without allocating weights
        cls(with_a_class_count(cfg))
    return cls, cfg


def _is_user_error(err: BaseException) -> bool:
    """Bad config, data or checkpoint, or a Trainer setting Lightning refuses (exit 2)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(err, ConfigError | DataError | CheckpointError | MisconfigurationException)


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
    spec: DataSpec, knn_enabled: bool, trainer: L.Trainer, callbacks: list[Callback]
) -> tuple[Any, list[Any]]:
    """(resumable training loader, validation loaders); the loader is handed to ResumeState."""
    from solo_mixmask.data.loaders import (
        build_knn_train_loader,
        build_train_loader,
        build_val_loader,
    )

    rank, world = trainer.global_rank, trainer.world_size
    train_loader: Any = build_train_loader(spec, rank, world)
    if isinstance(train_loader, DataLoader) and not isinstance(train_loader, ResumableLoader):
        train_loader = resumable_train_loader(train_loader, spec.seed, rank, world)
    val_loaders: list[Any] = []  # unlabelled images (data.no_labels): nothing to validate
    if knn_enabled:  # (prepare_config refuses it with data.no_labels)
        val_loaders.append(build_knn_train_loader(spec, rank, world))
    if not spec.no_labels:
        val_loaders.append(build_val_loader(spec, rank, world))
    for cb in callbacks:
        if isinstance(cb, ResumeState):
            cb.loader = train_loader if isinstance(train_loader, ResumableLoader) else None
        if isinstance(cb, DataOnDevice):
            cb.loaders = [x for x in (train_loader, *val_loaders) if hasattr(x, "to_device")]
    return train_loader, val_loaders


def check_val_interval_fits(trainer: L.Trainer, train_loader: Any) -> None:
    """ConfigError when an integer ``val_check_interval`` counted within each epoch
    (``check_val_every_n_epoch`` set) exceeds an epoch's batches (after
    ``limit_train_batches``): Lightning refuses it only inside ``fit``, with a traceback, after
    the run folder and the k-NN pass at initialisation."""
    interval = trainer.val_check_interval
    if isinstance(interval, bool) or not isinstance(interval, int):
        return  # a fraction of an epoch or a time
    if trainer.check_val_every_n_epoch is None:
        return  # counted over the run
    try:
        batches = len(train_loader)
    except (TypeError, NotImplementedError):  # a loader without a length: Lightning checks it
        return
    limit = trainer.limit_train_batches
    batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * limit)
    if interval > batches:
        raise ConfigError(
            "val_check_interval",
            interval,
            f"an integer <= {batches} (the training batches of one epoch), a fraction of an "
            "epoch, or with check_val_every_n_epoch=null a count of batches over the run",
        )


def _initial_metrics(
    knn_enabled: bool,
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
    if knn_enabled:
        results = trainer.validate(model, dataloaders=val_loaders, verbose=False)
        merged = {k: v for r in results for k, v in r.items()}
        init = {
            "knn_acc1_at_init": _metric(merged, "val_knn_acc1"),
            "linear_acc1_at_init": _metric(merged, "val_acc1"),
        }
    if trainer.is_global_zero:
        init_file.write_text(json.dumps(init))
    return init


class FitWork(Callback):
    """Counts what a fit did since :meth:`reset`: training batches (``trained``) and
    validation passes (``validated``, the sanity check not included). A fit that did neither
    (Lightning stopped it at once, as a restored ``Timer`` whose ``max_time`` is used up does)
    has no figure to report: :func:`_train_in` keeps the run's summary then."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.trained = 0
        self.validated = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.trained += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.validated += 1


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


def run_pretrain(
    cfg: DictConfig,
    resume_from: str | None = None,
    run_dir: str | Path | None = None,
    saved_model: SavedModel | None = None,
    finished: dict[str, int | float] | None = None,
    trained_world: int | None = None,
) -> dict[str, Any]:
    """Pretrain as ``cfg`` says; returns (and writes) the run's summary dict.

    ``resume_from``: a checkpoint to continue from (weights, queue, momentum encoder, optimiser,
    schedule, the method's random streams, the global RNGs and the data position are restored);
    ``saved_model`` (its tensor shapes) lets a model that cannot take its weights be refused
    with one line. ``run_dir``: the run folder (default: the checkpoint's, else a new one).
    ``finished`` (``{"steps", "epochs"}`` of ``resume_from``): that checkpoint ends the run,
    whose summary is missing; nothing is trained, its weights are evaluated and the summary
    written. ``trained_world``: the processes that trained ``resume_from`` (None: not
    recorded); a resume on another number is refused before the run folder changes
    (:func:`check_same_world_size`).

    A new run (neither given) checks where it will write before any work, makes its folder
    atomically (:func:`~solo_mixmask.run.folder.make_run_dir`) and holds the folder's lock
    while it runs (:class:`~solo_mixmask.run.folder.RunLock`, released on every exit). When it
    fails with a user error before it trained a step or wrote a checkpoint, the folder it made
    is removed again (never one it did not make).

    SIGTERM or Ctrl-C during the run raise :class:`~solo_mixmask.errors.RunStopped` after
    the step under way (with ``last.ckpt`` written after it when possible, see
    :class:`~solo_mixmask.callbacks.stop.GracefulStop`); no summary is written then.
    """
    from solo_mixmask.config.data_specs import data_spec
    from solo_mixmask.data.loaders import num_classes

    method_cls, cfg = prepare_config(cfg)
    run = run_spec(cfg)
    fresh = run_dir is None and resume_from is None
    rank_zero = is_rank_zero_process()
    if run_dir is None:
        run_dir = Path(resume_from).parents[1] if resume_from else new_run_dir(run.folder)
    run_dir = Path(run_dir)
    key = check_run_location(run.folder, run_dir, rank_zero) if fresh else "checkpoint.run_dir"
    seed_quietly(run.seed)
    data: DataSpec | None = None  # built once: here when the classes come from the data
    classes = run.num_classes
    if classes is None:
        data = data_spec(cfg)
        classes = num_classes(data)
        data = replace(data, num_classes=classes)
        record(cfg, "data.num_classes", classes)
    if rank_zero:  # k-NN and linear accuracy, at initialisation and after, are 100% then
        warn_one_class(classes, run.no_labels)
    made: list[Path] = []
    if fresh and rank_zero:  # a time-stamped name of one process is never shared
        unique = not run.folder.run_dir and not external_launch()
        run_dir, made = make_run_dir(key, run_dir, unique)
    record(cfg, "checkpoint.run_dir", str(run_dir))
    progress = {"steps": 0}
    command = "solo-mixmask " + ("pretrain" if fresh else "resume")
    try:
        with RunLock(run_dir, command, enabled=rank_zero):
            return _train_in(
                cfg,
                run,
                data,
                method_cls,
                run_dir,
                resume_from,
                saved_model,
                progress,
                finished,
                trained_world,
            )
    except BaseException as err:
        early = progress["steps"] == 0 and not has_checkpoint(run_dir)
        if made and not external_launch() and early and _is_user_error(err):
            remove_made(made)  # nothing trained: the folder holds nothing worth keeping
        raise


def _train_in(
    cfg: DictConfig,
    run: RunSpec,
    data: DataSpec | None,
    method_cls: type[BaseMethod],
    run_dir: Path,
    resume_from: str | None,
    saved_model: SavedModel | None,
    progress: dict[str, int],
    finished: dict[str, int | float] | None = None,
    trained_world: int | None = None,
) -> dict[str, Any]:
    """The run itself, in ``run_dir`` (made and locked): build, fit (or, ``finished``, evaluate
    the checkpoint that ends the run), write summary.json. A resume on another number of
    processes than ``trained_world`` is refused as soon as the Trainer has resolved its
    number, before anything is written. ``progress["steps"]`` holds the optimiser steps
    trained when ``fit`` returns or fails. A fit that trained no step and
    validated nothing (:class:`FitWork`) never overwrites an existing summary.json: it is kept
    and returned, with one warning line."""
    model = method_cls(cfg)  # backbone name/kwargs are checked here, before the data is read
    if resume_from and saved_model is not None:
        check_model_fits(model, saved_model, resume_from)

    callbacks = build_callbacks(run.trainer, run_dir)
    work = FitWork()
    callbacks.append(work)
    # the loggers come after the world-size check: making them rewrites logs/metrics.csv
    trainer = build_trainer(run.trainer, without_loggers(run.logger), run_dir, callbacks)
    if resume_from:
        check_same_world_size(
            trained_world,
            trainer.world_size,
            resume_from,
            devices=trainer.num_devices,
            num_nodes=trainer.num_nodes,
        )
    trainer.loggers = build_loggers(run.logger, run_dir)
    if data is None:
        from solo_mixmask.config.data_specs import data_spec

        data = data_spec(cfg)
    train_loader, val_loaders = _build_data(data, run.knn_enabled, trainer, callbacks)
    check_val_interval_fits(trainer, train_loader)
    run_dir.mkdir(parents=True, exist_ok=True)  # made by rank 0; a no-op on resume
    report = run_dir / BAD_FILES
    watched = watch_bad_files([train_loader, *val_loaders], report)
    if trainer.is_global_zero:
        OmegaConf.save(cfg, run_dir / CONFIG)
    launching = _launches_children(trainer)
    if launching:  # the children inherit the environment: they use this run folder
        os.environ[RUN_DIR_ENV] = str(run_dir)

    start = time.perf_counter()
    speed = next(cb for cb in callbacks if isinstance(cb, TrainSpeed))
    # the run's earlier wall time: the checkpoint's (TrainSpeed state, restored by fit); for a
    # checkpoint written before it carried one, the summary of the run it continues
    earlier = None
    if resume_from and (run_dir / SUMMARY).exists():
        earlier = json.loads((run_dir / SUMMARY).read_text()).get("wall_seconds")
    speed.start_clock(start, None if earlier is None else float(earlier))
    stop = next(cb for cb in callbacks if isinstance(cb, GracefulStop))
    stop.install()
    try:
        init = _initial_metrics(
            run.knn_enabled, trainer, model, val_loaders, run_dir / INIT_METRICS, bool(resume_from)
        )
        stop.check()  # a stop asked during the last batch of the k-NN pass
        if finished is not None and resume_from:
            saved = safe_load_checkpoint(resume_from)
            model.load_state_dict(saved["state_dict"])
            # the run's speed and time up to that checkpoint (its summary.json held them)
            speed_state = (saved.get("callbacks") or {}).get(speed.state_key)
            if speed_state is not None:
                speed.load_state_dict(speed_state)
            if val_loaders:  # not logged: metrics.csv would read it as an epoch-0 row
                loggers, trainer.loggers = trainer.loggers, []
                try:
                    trainer.validate(model, dataloaders=val_loaders, verbose=False)
                finally:
                    trainer.loggers = loggers
        else:
            work.reset()  # the k-NN pass at initialisation is not the fit's
            trainer.fit(
                model,
                train_dataloaders=train_loader,
                val_dataloaders=val_loaders,
                **_fit_kwargs(trainer, resume_from),
            )
    except (SIGTERMException, StopRequested):
        saver = next((cb for cb in callbacks if isinstance(cb, StopCheckpoint)), None)
        raise stopped_error(stop, saver, trainer, run_dir) from None
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
    previous = run_dir / SUMMARY
    if finished is None and not work.trained and not work.validated and previous.is_file():
        # a safety net (resume_run refuses the runs it knows to be finished): every figure of
        # this fit would be null, so the summary of the training behind it stays
        if trainer.is_global_zero:
            warnings.warn(
                f"the fit trained no step and validated nothing (Lightning stopped it at once): "
                f"{previous} is kept as it was, not overwritten with empty figures",
                ConfigWarning,
                stacklevel=2,
            )
        return json.loads(previous.read_text())

    metrics = {k: v for k, v in trainer.callback_metrics.items()}
    writer = next((c for c in callbacks if type(c) is LastCheckpoint), None)
    last = Path(writer.dirpath) / LAST if writer is not None and writer.dirpath else None
    checkpoint = str(last) if last is not None and last.exists() else None
    bad = count_bad_files(watched, report)
    # judged unrounded (collapse_report rounds what it reports): a value just under the cut
    # must not read as "not collapsed" in the summary when the epoch line said collapsed
    std = None if metrics.get(EMBEDDING_STD) is None else float(metrics[EMBEDDING_STD])
    if finished is not None:  # nothing trained now: the last epoch's figure, as logged then
        # the row of the step that ends the run (the epoch-end row a kill may have lost)
        std = _logged_at(run_dir / LOGS / METRICS_CSV, EMBEDDING_STD, int(finished["steps"]) - 1)
    collapse = collapse_report(std, _embedding_dim(model))
    summary = {
        "method": run.method,
        "backbone": run.backbone,
        # the constructor arguments as built, defaults included (a ResNet's residual init)
        "backbone_kwargs": residual_init_kwargs(run.backbone, model.engine.backbone.kwargs),
        "dataset": data.dataset,
        "epochs": finished["epochs"] if finished else _epochs_fit(trainer),
        "steps": int(finished["steps"] if finished else trainer.global_step),
        "knn_acc1": _metric(metrics, "val_knn_acc1"),
        "knn_acc5": _metric(metrics, "val_knn_acc5"),
        "linear_acc1": _metric(metrics, "val_acc1"),
        "linear_acc5": _metric(metrics, "val_acc5"),
        "knn_k": model.knn_k,  # knn_eval.k, clamped to the k-NN memory
        # what the monitors' features were computed in (precision=auto resolved): offline knn
        # compares with the online figure only when it extracts alike
        "precision": str(trainer.precision),
        **collapse,
        **init,
        # a run finished from its checkpoint trained nothing here: its speed and time are the
        # checkpoint's (unknown, null, in a checkpoint without them)
        "images_per_sec": None if finished and not speed.images else round(speed.images_per_sec, 2),
        "images_per_sec_clock": speed.clock,  # host or cuda events
        "wall_seconds": _wall_seconds(finished is not None, wall, speed.wall_seconds_before),
        "train_images": len(train_loader.dataset),
        "bad_images": len(bad),
        "bad_image_files": bad[:20],
        "resumed_from": resume_from,
        "checkpoint": checkpoint,
        "run_dir": str(run_dir),
    }
    if trainer.is_global_zero:
        _write_summary(run_dir / SUMMARY, summary)
        if collapse["collapsed"]:
            warnings.warn(collapse_message(collapse), CollapseWarning, stacklevel=2)
    return summary


def _wall_seconds(finished_only: bool, wall: float, before: float | None) -> float | None:
    """The run's wall seconds: this process's ``wall`` after the ``before`` seconds of the
    processes that trained it earlier; a run this process only finished (it trained nothing)
    took ``before`` (None: unknown)."""
    if finished_only:
        return None if before is None else round(before, 1)
    return round(wall + (before or 0.0), 1)


def without_loggers(spec: LoggerSpec) -> LoggerSpec:
    """``spec`` with every logger off: a Trainer built with it gets its loggers later."""
    return replace(spec, csv=False, tensorboard=False, wandb=replace(spec.wandb, enabled=False))


def check_same_world_size(
    trained: int | None, world: int, checkpoint: str, devices: Any, num_nodes: Any
) -> None:
    """CheckpointError when a resume from ``checkpoint``, trained on ``trained`` processes
    (None: not recorded, not checked), would run on ``world`` (``devices x num_nodes`` as the
    Trainer resolved them). Which devices they are may change, not how many: the optimiser
    and its learning-rate schedule come back as the old processes computed them (the rate
    scaled by their batch, the schedule over their steps) while the momentum schedule is
    recomputed over the new number's steps."""
    if trained is None or trained == world:
        return
    raise CheckpointError(
        f"{checkpoint} was trained on {_processes(trained)} and this resume would run on "
        f"{world} (devices={devices}, num_nodes={num_nodes}): the optimiser and its "
        f"learning-rate schedule come back as set for {_processes(trained)} (the rate scaled "
        "by their batch, the schedule over their steps) while the momentum schedule would be "
        f"recomputed for {_processes(world)}, so the rest of the run would train with "
        f"mismatched schedules; resume with devices x num_nodes = {trained} (which devices "
        f"may change, not how many), or start a new run (solo-mixmask pretrain) on {world}; "
        "nothing was changed"
    )


def _processes(count: int) -> str:
    """``1 process``, ``2 processes``."""
    return f"{count} process" if count == 1 else f"{count} processes"


def _epochs_fit(trainer: L.Trainer) -> int | float:
    """The epochs ``fit`` trained: whole epochs (int), or, when ``max_steps`` ended the run
    inside an epoch, with the fraction of that epoch's batches trained (2.5: 2 epochs and half
    of the third; Lightning counts that epoch as whole)."""
    epochs = int(trainer.current_epoch)
    batches = trainer.fit_loop.epoch_loop.batch_progress.current.ready  # of the last epoch
    total = trainer.num_training_batches
    if epochs > 0 and math.isfinite(total) and 0 < batches < total:
        return fractional_epochs(epochs - 1, batches, int(total))
    return epochs


def fractional_epochs(whole: int, batches: int, total: int) -> float:
    """``whole`` epochs and ``batches`` of the ``total`` of the next, to two decimals rounded
    down, so that an epoch in progress never shows as done (999 of 1000 batches: 0.99)."""
    return round(whole + math.floor(100 * batches / total) / 100, 2)


def _embedding_dim(model: Any) -> int | None:
    """The projector's output width d: set by the first training step, else (a run finished
    from its checkpoint trains none) the out_features of the projector's last linear layer."""
    dim = getattr(model, "embedding_dim", None)
    if dim is None and isinstance(getattr(model, "projector", None), torch.nn.Module):
        linears = [m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)]
        dim = linears[-1].out_features if linears else None
    return dim


def _logged_at(path: Path, column: str, step: int) -> float | None:
    """The value of ``column`` that a CSV log holds for global step index ``step`` (None when
    the file, the row or the value is absent: never another step's value)."""
    if not path.is_file():
        return None
    value = None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(column) and row.get("step") == str(step):
                value = float(row[column])
    return value


def collapse_report(std: float | None, dim: int | None) -> dict[str, Any]:
    """The summary's collapse fields: ``embedding_std`` (the last epoch's mean, None when no
    epoch measured it), ``embedding_std_spread`` (1/sqrt(d)) and ``collapsed``
    (:func:`~solo_mixmask.core.collapse.is_collapsed`; None, unknown, without a measure)."""
    spread = spread_std(dim) if dim else None
    return {
        "embedding_std": None if std is None else round(std, 6),
        "embedding_std_spread": None if spread is None else round(spread, 6),
        "collapsed": None if std is None or not dim else bool(is_collapsed(std, dim)),
    }


def collapse_message(collapse: dict[str, Any]) -> str:
    """The one warning line of a collapsed run."""
    std, spread = collapse["embedding_std"], collapse["embedding_std_spread"]
    return (
        f"the run collapsed: embedding_std {std:.4f} is {std / spread:.1%} of the spread value "
        f"{spread:.4f} (below {COLLAPSE_FRACTION:.0%}): its projector outputs barely depend on "
        "the image, so its accuracies measure no representation. A learning-rate warm-up "
        "(scheduler.warmup_epochs) or a lower optimizer.lr prevented the collapses we "
        "diagnosed: see docs/MIXMASK_VS_MOCO.md"
    )


def _write_summary(path: Path, summary: dict[str, Any]) -> None:
    """``summary.json``, written whole or not at all (:func:`atomic_write`). A full disk is a
    CheckpointError: the run has trained, and ``resume`` finishes it once there is space."""
    atomic_write(
        path,
        lambda f: f.write(json.dumps(summary, indent=2).encode()),
        f"cannot write {path}: no space left on device; the run has trained and its "
        f"checkpoints are kept: free some space, then solo-mixmask resume {path.parent} "
        "writes the summary",
    )
