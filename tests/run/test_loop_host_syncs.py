"""The host syncs of a whole training step in Lightning's loop (the step and the run's callbacks'
batch hooks; the checkpoint callbacks, which Lightning runs after all others, write at epoch
ends here) and of the in-memory loader's batches, counted on the CPU as the aten ops that read a
value back (``benchmarks/common.py`` ``SYNCING_OPS``; on a GPU each one makes the host wait for
the device): with ``performance.loss_check_lag=2`` none, without it the NaN/inf guard's one."""

from __future__ import annotations

import os
import sys
import traceback
from collections import Counter
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import FMNIST_DIR, tiny_cfg

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import SYNCING_OPS  # noqa: E402

PACKAGE = str(Path(__file__).resolve().parents[2] / "solo_mixmask")


class Reads(TorchDispatchMode):
    """Counts the syncing ops dispatched while active, by the package file that called them
    (``"other"``: Lightning, torchmetrics...); ``active`` switches counting on and off."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.in_steps: Counter[str] = Counter()
        self.in_data: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCING_OPS:
            ours = [f for f in traceback.extract_stack() if f.filename.startswith(PACKAGE)]
            site = Path(ours[-1].filename).name if ours else "other"
            if self.active:
                self.in_steps[site] += 1
            elif ours and "/data/" in ours[-1].filename:
                self.in_data[site] += 1
        return func(*args, **(kwargs or {}))


class Open(Callback):
    """First callback: a step's counting starts before any other batch-start hook."""

    def __init__(self, reads: Reads) -> None:
        self.reads, self.steps = reads, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.reads.active = True


class Close(Callback):
    """Last callback: the counting ends after every other batch-end hook."""

    def __init__(self, opener: Open) -> None:
        self.opener = opener

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.opener.reads.active = False
        self.opener.steps += 1


@pytest.mark.skipif(not os.path.isdir(FMNIST_DIR), reason=f"Fashion-MNIST not at {FMNIST_DIR}")
@pytest.mark.parametrize("lag", [0, 2])
def test_a_training_step_reads_back_only_what_the_guard_reads(tmp_path, monkeypatch, lag):
    from solo_mixmask.run import pretrain

    reads = Reads()
    opener = Open(reads)
    build = pretrain.build_callbacks
    monkeypatch.setattr(
        pretrain,
        "build_callbacks",
        lambda spec, run_dir: [opener, *build(spec, run_dir), Close(opener)],
    )
    cfg = tiny_cfg(
        "mixmask",
        data__format="memory",
        data__train_subset=96,  # 12 steps of 8 per epoch
        data__knn_train_subset=32,
        data__val_subset=16,
        max_epochs=2,
        precision="32-true",
        performance__loss_check_lag=lag,
        checkpoint__dir=str(tmp_path),
        checkpoint__run_dir=str(tmp_path / "run"),
    )
    cfg.log_every_n_steps = 1  # Lightning logs after the batch-end hooks: outside the count
    with reads:
        summary = pretrain.run_pretrain(cfg)
    assert summary["steps"] == opener.steps == 24
    expected = Counter({"nonfinite.py": 24}) if lag == 0 else Counter()
    assert reads.in_steps == expected
    # the in-memory loader reads back once per epoch (its order), not per batch
    assert sum(reads.in_data.values()) <= 2 * 2, reads.in_data
