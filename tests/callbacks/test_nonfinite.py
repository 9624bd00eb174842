"""The NaN/inf guard's checkpoint check: the first bad weight named, one host sync per device."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from solo_mixmask.callbacks.nonfinite import first_non_finite

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import count_ops  # noqa: E402


def _state(n: int = 40) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {f"layer{i}.weight": torch.randn(3, 3) for i in range(n)}
    state["bn.num_batches_tracked"] = torch.tensor(7)  # integers are not checked
    return state


def test_finite_weights_pass():
    assert first_non_finite(_state()) is None
    assert first_non_finite({}) is None
    assert first_non_finite({"steps": torch.tensor(3), "note": "x"}) is None


def test_the_first_bad_weight_in_state_dict_order_is_named():
    state = _state()
    state["layer31.weight"][1, 2] = math.inf
    state["layer7.weight"][0, 0] = math.nan
    assert first_non_finite(state) == "layer7.weight"
    half = {"a": torch.ones(2, dtype=torch.bfloat16), "b": torch.tensor([0.0, -math.inf])}
    assert first_non_finite(half) == "b"


def test_one_host_sync_however_many_weights():
    # the check ran one .item() per tensor: 663 syncs in a 2-epoch tiny CIFAR run's two saves
    for n in (4, 200):
        _, reads = count_ops(lambda n=n: first_non_finite(_state(n)))
        assert len(reads) == 1 and "callbacks/nonfinite.py" in reads[0], (n, reads)
