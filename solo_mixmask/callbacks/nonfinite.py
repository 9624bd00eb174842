"""Stop on a NaN/inf loss before it reaches the weights (:class:`NonFiniteLossGuard`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from solo_mixmask.checkpoints.io import LAST
from solo_mixmask.errors import NonFiniteLossError


class NonFiniteLossGuard(Callback):
    """Raises :class:`NonFiniteLossError` when the loss about to be back-propagated is not finite.

    Under DDP every rank takes the same decision (any rank's bad loss stops them all), so no
    rank is left waiting in a gradient all-reduce. Costs one device-to-host sync per step.
    """

    def __init__(self, checkpoint_dir: str | Path | None):
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None

    def _last(self) -> str | None:
        last = self.checkpoint_dir / LAST if self.checkpoint_dir else None
        return str(last) if last is not None and last.exists() else None

    def on_before_backward(self, trainer: L.Trainer, pl_module: Any, loss: torch.Tensor) -> None:
        local_bad = not bool(torch.isfinite(loss.detach()).all())
        bad = local_bad
        if trainer.world_size > 1:
            bad = bool(trainer.strategy.reduce_boolean_decision(local_bad, all=False))
        if not bad:
            return
        if local_bad and loss.numel() == 1:
            what = f"the training loss is {float(loss.detach().float().cpu())}"
        else:
            what = "the training loss is not finite on another rank"
        raise NonFiniteLossError(what, trainer.global_step, trainer.current_epoch, self._last())

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse to write a checkpoint whose weights hold NaN/inf (the old file stays)."""
        bad = first_non_finite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise NonFiniteLossError(
                f"weight {bad} is not finite",
                trainer.global_step,
                trainer.current_epoch,
                self._last(),
            )


def first_non_finite(tensors: dict[str, Any]) -> str | None:
    """The first name in ``tensors`` whose floating-point tensor holds NaN/inf, or None.

    One device-to-host sync per device holding tensors (not one per tensor: a ResNet-18
    method's state_dict has several hundred)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            by_device.setdefault(tensor.device, []).append((name, tensor))
    bad: list[str] = []
    for named in by_device.values():
        finite = torch.stack([torch.isfinite(t).all() for _, t in named])
        if not bool(finite.all()):
            bad += [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
    return min(bad, key=list(tensors).index) if bad else None
