"""No method's training step makes the host wait for the device: counted on the CPU as the aten
ops that read a value back (``.item()``, ``bool(tensor)``, data-dependent shapes), which are
the ops that synchronise with a GPU. The CUDA-only tests (``set_sync_debug_mode``) never run on
a machine without a GPU; this one does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from solo_mixmask.methods import METHODS
from tests.conftest import synthetic_batch, tiny_cfg

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import EngineStep, count_ops  # noqa: E402

#: The one read a step may make: Un-Mix seeds its per-batch lambda and box from the method's
#: host generator (a CPU tensor, so no device sync on a GPU either).
HOST_DRAW = "_local_scalar_dense at solo_mixmask/core/unmix.py:"


#: Where the NaN/inf guard reads the loss when it reads it at once (performance.loss_check_lag=0).
GUARD_READ = "_local_scalar_dense at solo_mixmask/callbacks/nonfinite.py:"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("bn", ["one", "split_shuffled", "split_batched"])
def test_a_training_step_reads_nothing_back(method, bn):
    # the guard reads each loss 2 steps late, from a host copy: the step itself is counted
    kw: dict = {"performance__loss_check_lag": 2}
    if bn != "one":
        kw.update(method_kwargs__bn_splits=2, method_kwargs__shuffle_bn=True)
    if bn == "split_batched":  # the views and mixed views in one online backbone call
        kw["performance__batch_online_forwards"] = True
    step = EngineStep(tiny_cfg(method, **kw))  # training_step, guard, backward, optimiser, EMA
    batch = synthetic_batch()
    step(batch)  # first step: lazily made generators, mask banks, optimiser state
    ops, reads = count_ops(lambda: step(batch))
    assert sum(ops.values()) > 100  # the step did run under the counter
    host_draws = 1 if "unmix" in method else 0
    assert [r for r in reads if not r.startswith(HOST_DRAW)] == []
    assert len(reads) == host_draws, reads


@pytest.mark.parametrize("lag, reads", [(0, 1), (1, 0), (3, 0)])
def test_the_loss_guard_reads_the_device_only_without_a_lag(lag, reads):
    step = EngineStep(tiny_cfg("mocov2plus", performance__loss_check_lag=lag))
    batch = synthetic_batch()
    for _ in range(lag + 1):  # past the first steps, which have nothing due yet
        step(batch)
    _, found = count_ops(lambda: step(batch))
    assert len(found) == reads and all(r.startswith(GUARD_READ) for r in found), found
