"""What a run prints: one line per epoch without a progress bar, one line for the model, and
none of the third-party notices that say nothing about the run."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from solo_mixmask.core.collapse import is_collapsed, spread_std
from solo_mixmask.methods.heads import EMBEDDING_STD

#: Third-party lines dropped from a run's output (advertising, or a deprecation inside Lightning).
_NOTICES = ("💡 Tip:", "Loading `train_dataloader` to estimate")


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_NOTICES)


def quiet_third_party() -> None:
    """Drop Lightning's product tips and its own ``_pytree`` deprecation warning (raised inside
    Lightning by newer torch, nothing a user can act on). Idempotent."""
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    for name in (*names, *(f"{n}.utilities.rank_zero" for n in names)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices())
        for handler in logger.handlers:
            if not any(isinstance(f, _DropNotices) for f in handler.filters):
                handler.addFilter(_DropNotices())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def parameter_line(model: Any) -> str:
    """``model: mixmask, 369 K parameters (185 K trained by the optimiser)``."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (
        f"model: {type(model).__name__}, {get_human_readable_count(total)} parameters "
        f"({get_human_readable_count(trained)} trained by the optimiser)"
    )


class ModelLine(Callback):
    """One line naming the model and its parameter counts at the start of fit (Lightning's
    summary table stays available with ``enable_model_summary=true``)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero:
            print(parameter_line(pl_module), flush=True)


class EpochLine(Callback):
    """Without a progress bar (CI logs, ``nohup``), one line per epoch on rank 0:
    ``epoch 3/10: nce_loss 5.1230, embedding_std 0.0612 (spread 0.0884), k-NN top-1 45.30%,
    120 img/s, 12.34 s``: the epoch's training img/s (``TrainSpeed``) and wall seconds (to 10 ms:
    benchmarks/throughput.py reads an epoch of about 1 s from them); the k-NN
    figure only on epochs that measured it, with the step it was measured after when that was
    inside the epoch (``val_check_interval``): ``k-NN top-1 45.30% (step 5)``."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._knn_step: int | None = None  # global step of this epoch's last k-NN, if any

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        # a resumed epoch starts here: Lightning does not call on_train_epoch_start for an epoch
        # it continues from a mid-epoch checkpoint
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._start = time.perf_counter()
        self._knn_step = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._knn_step = trainer.global_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [
            f"{key[len('train_') : -len('_epoch')]} {float(value):.4f}"
            for key, value in sorted(metrics.items())
            if key.startswith("train_") and key.endswith("loss_epoch")
        ]
        if EMBEDDING_STD in metrics:
            value = float(metrics[EMBEDDING_STD])
            std = f"embedding_std {value:.4f}"
            dim = getattr(pl_module, "embedding_dim", None)
            if dim:
                std += f" (spread {spread_std(dim):.4f}{', COLLAPSED' if is_collapsed(value, dim) else ''})"
            parts.append(std)
        if self._knn_step is not None and "val_knn_acc1" in metrics:
            inside = self._knn_step != trainer.global_step  # not after the epoch's last step
            at = f" (step {self._knn_step})" if inside else ""
            parts.append(f"k-NN top-1 {float(metrics['val_knn_acc1']):.2f}%{at}")
        # Lightning's callback connector sets Trainer.callbacks; the class does not declare it
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        speed = next((c for c in callbacks if hasattr(c, "epoch_images_per_sec")), None)
        if speed is not None and speed.epoch_images_per_sec:  # this epoch's, not the run's
            parts.append(f"{speed.epoch_images_per_sec:.0f} img/s")
        parts.append(f"{time.perf_counter() - self._start:.2f} s")
        epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        print(f"{epoch}: {', '.join(parts)}", file=sys.stdout, flush=True)
