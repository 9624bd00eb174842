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


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("bn", ["one", "split_shuffled", "split_batched"])
def test_a_training_step_reads_nothing_back(method, bn):
    kw = {"method_kwargs__bn_splits": 2, "method_kwargs__shuffle_bn": True} if bn != "one" else {}
    if bn == "split_batched":  # the views and mixed views in one online backbone call
        kw["performance__batch_online_forwards"] = True
    step = EngineStep(tiny_cfg(method, **kw))  # training_step, backward, optimiser, EMA
    batch = synthetic_batch()
    step(batch)  # first step: lazily made generators, mask banks, optimiser state
    ops, reads = count_ops(lambda: step(batch))
    assert sum(ops.values()) > 100  # the step did run under the counter
    host_draws = 1 if "unmix" in method else 0
    assert [r for r in reads if not r.startswith(HOST_DRAW)] == []
    assert len(reads) == host_draws, reads
