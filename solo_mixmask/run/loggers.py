"""The loggers of a pretraining run, and a resumed run's ``metrics.csv`` continued in place."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger

from solo_mixmask.config.run_specs import LoggerSpec
from solo_mixmask.run.folder import LOGS, METRICS_CSV


def continue_csv(logger: CSVLogger, path: Path) -> None:
    """A resumed run appends to the ``metrics.csv`` it finds, keeping every row and column.

    Lightning's CSV writer deletes an existing file when it starts (newer versions) or keeps
    it but knows only the keys logged in this process (2.1): when the first rows it saves lack
    a column of the file, it rewrites the file with the new header and fails on the old rows
    ("dict contains fields not in fieldnames"). So the file is read first, put back after the
    writer started, and its header given to the writer.
    """
    if not path.is_file():
        return
    saved = path.read_bytes()  # bytes: the csv writer's "\r\n" line ends are kept as they are
    header = next(csv.reader([saved.split(b"\n", 1)[0].decode().rstrip("\r")]), [])
    keys = getattr(logger.experiment, "metrics_keys", None)  # not a list on ranks > 0
    if not isinstance(keys, list):
        return
    if not path.is_file():
        path.write_bytes(saved)
    keys[:0] = [k for k in header if k and k not in keys]


def build_loggers(spec: LoggerSpec, run_dir: Path) -> list[Any]:
    """The run's loggers: ``<run_dir>/logs/metrics.csv`` (``logging.csv``, default on, continued
    on resume), TensorBoard under ``<run_dir>/tensorboard`` (``logging.tensorboard``) and W&B
    (``wandb.enabled``, offline unless ``wandb.offline=false``)."""
    loggers: list[Any] = []
    if spec.csv:
        csv_logger = CSVLogger(save_dir=str(run_dir), name=LOGS, version="")
        continue_csv(csv_logger, run_dir / LOGS / METRICS_CSV)
        loggers.append(csv_logger)
    if spec.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    if spec.wandb.enabled:  # offline unless wandb.offline=false
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(
                name=spec.run_name,
                project=spec.wandb.project,
                entity=spec.wandb.entity,
                save_dir=str(run_dir),
                offline=spec.wandb.offline,
            )
        )
    return loggers
