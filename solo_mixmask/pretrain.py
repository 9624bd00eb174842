"""Run a pretraining job from a config: data, method, Lightning Trainer, run folder, summary.json.

Run folder layout::

    <run_dir>/config.yaml         resolved config (what ``resume`` reads back)
    <run_dir>/checkpoints/        last.ckpt + one every ``checkpoint.frequency`` epochs
    <run_dir>/logs/metrics.csv    per-step/epoch metrics (CSV logger)
    <run_dir>/summary.json        method, backbone, dataset, epochs, steps, k-NN and linear
                                  accuracies (%), k-NN at init, images/s, wall seconds, checkpoint
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from solo_mixmask.config import select, suggest, trainer_arg_names
from solo_mixmask.errors import ConfigError
from solo_mixmask.methods import METHODS

SUMMARY = "summary.json"
CONFIG = "config.yaml"


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


def build_method(cfg: DictConfig) -> L.LightningModule:
    """``METHODS[cfg.method](cfg)`` with a helpful error for unknown names."""
    if cfg.get("method") not in METHODS:
        raise ConfigError(
            "method",
            cfg.get("method"),
            f"one of {', '.join(METHODS)}{suggest(cfg.get('method'), METHODS)}",
        )
    return METHODS[cfg.method](cfg)


def new_run_dir(cfg: DictConfig) -> Path:
    given = select(cfg, "checkpoint.run_dir")
    if given:
        return Path(given)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(select(cfg, "checkpoint.dir", "runs")) / f"{select(cfg, 'name', 'run')}-{stamp}"


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Top-level config keys that are ``lightning.Trainer`` arguments, as solo-learn passes them."""
    names = trainer_arg_names()
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k in names}  # type: ignore[union-attr]
    if isinstance(kwargs.get("devices"), str) and kwargs["devices"].isdigit():
        kwargs["devices"] = int(kwargs["devices"])  # solo-learn writes "1" for CPU runs
    return kwargs


def _loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    loggers: list[Any] = []
    if select(cfg, "logging.csv", True):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs", version=""))
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


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else round(float(value), 4)


def run_pretrain(cfg: DictConfig, resume_from: str | None = None) -> dict[str, Any]:
    """Pretrain as ``cfg`` says; returns (and writes) the run's summary dict.

    ``resume_from``: a checkpoint to continue from (queue, momentum encoder, optimiser, schedule
    and the method's random streams are restored by Lightning and the method's hooks).
    """
    from solo_mixmask.data.loaders import build_knn_loaders, build_train_loader, num_classes

    method_cls = METHODS.get(cfg.get("method"))
    if method_cls is None:
        build_method(cfg)  # raises the ConfigError with the list of methods
    cfg = method_cls.add_and_assert_specific_cfg(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    with open_dict(cfg):
        if select(cfg, "data.num_classes") is None:
            cfg.data.num_classes = num_classes(cfg)
    train_loader = build_train_loader(cfg)
    knn_train_loader, val_loader = build_knn_loaders(cfg)
    val_loaders = [knn_train_loader, val_loader] if cfg.knn_eval.enabled else [val_loader]

    run_dir = Path(resume_from).parents[1] if resume_from else new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.checkpoint.run_dir = str(run_dir)
    OmegaConf.save(cfg, run_dir / CONFIG)
    model = method_cls(cfg)

    speed = TrainSpeed()
    callbacks: list[Callback] = [speed, LearningRateMonitor(logging_interval="epoch")]
    if select(cfg, "progress_bar", True):
        callbacks.append(RichProgressBar())
    checkpointer = None
    if cfg.checkpoint.enabled:
        checkpointer = ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="epoch{epoch:03d}",
            auto_insert_metric_name=False,
            every_n_epochs=int(cfg.checkpoint.frequency),
            save_top_k=-1,
            save_last=True,
        )
        callbacks.append(checkpointer)
    kwargs = trainer_kwargs(cfg)
    kwargs.setdefault("num_sanity_val_steps", 0)
    kwargs.setdefault("log_every_n_steps", 10)
    trainer = L.Trainer(
        **kwargs,
        callbacks=callbacks,
        logger=_loggers(cfg, run_dir) or False,
        default_root_dir=str(run_dir),
        enable_progress_bar=select(cfg, "progress_bar", True),
        enable_checkpointing=bool(cfg.checkpoint.enabled),
    )

    init_file = run_dir / "init_metrics.json"
    start = time.perf_counter()
    if resume_from and init_file.exists():
        init = json.loads(init_file.read_text())
    else:
        init = {}
        if cfg.knn_eval.enabled:
            results = trainer.validate(model, dataloaders=val_loaders, verbose=False)
            merged = {k: v for r in results for k, v in r.items()}
            init = {
                "knn_acc1_at_init": _metric(merged, "val_knn_acc1"),
                "linear_acc1_at_init": _metric(merged, "val_acc1"),
            }
        init_file.write_text(json.dumps(init))
    trainer.fit(
        model, train_dataloaders=train_loader, val_dataloaders=val_loaders, ckpt_path=resume_from
    )
    wall = time.perf_counter() - start

    previous = (
        json.loads((run_dir / SUMMARY).read_text())
        if resume_from and (run_dir / SUMMARY).exists()
        else {}
    )
    metrics = {k: v for k, v in trainer.callback_metrics.items()}
    checkpoint = None
    if checkpointer is not None:
        last = Path(checkpointer.dirpath) / "last.ckpt"
        checkpoint = str(last) if last.exists() else checkpointer.last_model_path or None
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
        **init,
        "images_per_sec": round(speed.images_per_sec, 2),
        "wall_seconds": round(wall + float(previous.get("wall_seconds", 0.0)), 1),
        "train_images": len(train_loader.dataset),
        "bad_images": len(getattr(train_loader.dataset, "bad_files", []) or []),
        "checkpoint": checkpoint,
        "run_dir": str(run_dir),
    }
    if trainer.is_global_zero:
        (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def resume_run(run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from ``checkpoints/last.ckpt``."""
    from solo_mixmask.errors import CheckpointError

    run_dir = Path(run_dir)
    config, last = run_dir / CONFIG, run_dir / "checkpoints" / "last.ckpt"
    if not config.exists():
        raise CheckpointError(f"{run_dir} is not a run folder: {config} is missing")
    if not last.exists():
        raise CheckpointError(f"{run_dir} has no checkpoint to resume from: {last} is missing")
    cfg = OmegaConf.load(config)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return run_pretrain(cfg, resume_from=str(last))  # type: ignore[arg-type]
