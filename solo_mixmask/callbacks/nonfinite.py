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
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if torch.is_tensor(tensor) and tensor.is_floating_point():
                if not bool(torch.isfinite(tensor).all()):
                    raise NonFiniteLossError(
                        f"weight {name} is not finite",
                        trainer.global_step,
                        trainer.current_epoch,
                        self._last(),
                    )
