"""solo_mixmask.run.console: the epoch line printed without a progress bar."""

from __future__ import annotations

import re
from typing import Any

from solo_mixmask.run.console import EpochLine
from tests.callbacks.helpers import TinyModule, fit_tiny


class LogsStepAsKnn(TinyModule):
    """Validation logs the global step it ran after as ``val_knn_acc1``."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_knn_acc1", float(self.trainer.global_step))


def test_a_knn_measured_at_the_epochs_end_is_the_epochs(capsys) -> None:
    fit_tiny([EpochLine()], batches=8, epochs=2, model=LogsStepAsKnn(), val_every=1, val_interval=4)
    knn = re.findall(
        r"^epoch (\d)/2: .*k-NN top-1 ([\d.]+)%( \(step \d+\))?", capsys.readouterr().out, re.M
    )
    # epoch 1 measured after steps 4 and 8 (its end), epoch 2 after 12 and 16 (its end)
    assert knn == [("1", "8.00", ""), ("2", "16.00", "")]


def test_a_knn_measured_inside_the_epoch_names_its_step(capsys) -> None:
    fit_tiny(
        [EpochLine()], batches=8, epochs=2, model=LogsStepAsKnn(), val_over_run=True, val_interval=5
    )
    knn = re.findall(
        r"^epoch (\d)/2: .*k-NN top-1 ([\d.]+)%( \(step \d+\))?", capsys.readouterr().out, re.M
    )
    # every 5 steps over the run: after steps 5 (epoch 1), 10 and 15 (epoch 2)
    assert knn == [("1", "5.00", " (step 5)"), ("2", "15.00", " (step 15)")]


def test_the_epochs_seconds_are_printed_to_ten_milliseconds(capsys) -> None:
    """Once printed to 0.1 s: benchmarks/throughput.py's img/s of a 1-second GPU epoch was then
    off by up to 5%."""
    fit_tiny([EpochLine()], batches=2, epochs=2, model=TinyModule())
    seconds = re.findall(r"^epoch \d/2: (?:.*, )?(\d+\.\d+) s$", capsys.readouterr().out, re.M)
    assert len(seconds) == 2 and all(len(s.split(".")[1]) == 2 for s in seconds)
