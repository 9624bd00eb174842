"""ValidateLastEpoch: the last epoch is validated whatever check_val_every_n_epoch says."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from solo_mixmask.callbacks import ValidateLastEpoch


class Validated(L.LightningModule):
    """A linear model that records the epochs at which it was validated."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.validated: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0 and not self.trainer.sanity_checking:
            self.validated.append(self.current_epoch + 1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _validated_epochs(epochs: int, every: int, callbacks: list[Any]) -> list[int]:
    data = DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=2)
    model = Validated()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        check_val_every_n_epoch=every,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data, data)
    return model.validated


@pytest.mark.parametrize(("epochs", "every", "expected"), [(5, 2, [2, 4, 5]), (4, 2, [2, 4])])
def test_the_last_epoch_is_validated(epochs, every, expected):
    # Lightning alone validates after epochs 2 and 4 of 5: summary.json's k-NN was epoch 4's
    assert _validated_epochs(epochs, every, []) == [e for e in expected if e % every == 0]
    assert _validated_epochs(epochs, every, [ValidateLastEpoch()]) == expected
