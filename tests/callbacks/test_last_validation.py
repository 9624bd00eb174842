"""ValidateLastEpoch: the last epoch is validated whatever check_val_every_n_epoch says."""

from __future__ import annotations

from typing import Any

import pytest

from solo_mixmask.callbacks import ValidateLastEpoch
from tests.callbacks.helpers import TinyModule, fit_tiny


class Validated(TinyModule):
    """The tiny model, recording the epochs after which it was validated."""

    def __init__(self) -> None:
        super().__init__()
        self.validated: list[int] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.validated.append(self.current_epoch + 1)


def _validated_epochs(epochs: int, every: int, callbacks: list[Any]) -> list[int]:
    model = Validated()
    fit_tiny(callbacks, batches=2, epochs=epochs, model=model, val_every=every)
    return model.validated


@pytest.mark.parametrize(("epochs", "every", "expected"), [(5, 2, [2, 4, 5]), (4, 2, [2, 4])])
def test_the_last_epoch_is_validated(epochs, every, expected):
    # Lightning alone validates after epochs 2 and 4 of 5: summary.json's k-NN was epoch 4's
    assert _validated_epochs(epochs, every, []) == [e for e in expected if e % every == 0]
    assert _validated_epochs(epochs, every, [ValidateLastEpoch()]) == expected
