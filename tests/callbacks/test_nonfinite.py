"""The NaN/inf guard: the loss read at once or ``lag`` steps later (the bad step named either
way, every process stopping at the same step), pending losses read before validation and
checkpoints, and the checkpoint check (the first bad weight named, one host sync per device)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from solo_mixmask.callbacks.nonfinite import (
    BadLoss,
    LossCheck,
    NonFiniteLossGuard,
    first_non_finite,
)
from solo_mixmask.checkpoints.io import LAST
from solo_mixmask.errors import NonFiniteLossError

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


# --------------------------------------------------------------------------- the loss check


def _losses(check: LossCheck, values: list[float], start: int = 0) -> list[BadLoss | None]:
    """Push ``values`` as the losses of steps ``start``, ``start + 1``, ... (epoch 0)."""
    return [check.push(torch.tensor(v), start + i, 0) for i, v in enumerate(values)]


def test_without_a_lag_a_bad_loss_is_reported_at_its_own_step():
    check = LossCheck(0)
    assert _losses(check, [2.0, 1.5]) == [None, None]
    assert check.push(torch.tensor(math.inf), 2, 1) == BadLoss(2, 1, math.inf, math.inf)
    assert check.drain() is None


@pytest.mark.parametrize("lag", [1, 2, 5])
def test_a_lagged_check_reports_the_bad_step_lag_steps_later(lag):
    check = LossCheck(lag)
    losses = [1.0] * 13 + [math.nan] + [1.0] * 10  # many more steps than ring slots
    due = _losses(check, losses)
    first = next(i for i, bad in enumerate(due) if bad is not None)
    assert first == 13 + lag
    bad = due[first]
    assert bad is not None and bad.step == 13 and math.isnan(bad.local)
    assert due[:first] == [None] * first
    assert check.drain() is None  # nothing left pending once a bad step is reported


def test_drain_reads_the_steps_still_pending():
    check = LossCheck(3)
    assert _losses(check, [1.0, 1.0, -math.inf]) == [None, None, None]
    bad = check.drain()
    assert bad is not None and bad.step == 2 and bad.local == -math.inf
    assert check.drain() is None
    assert _losses(check, [1.0, 1.0], start=3) == [None, None] and check.drain() is None


def test_a_lagged_check_keeps_a_copy_of_each_loss():
    # the loss's memory is reused by later steps on a device; the check reads its own copy
    check = LossCheck(2)
    loss = torch.tensor(0.5)
    assert check.push(loss, 0, 0) is None
    loss.fill_(math.nan)
    assert check.drain() is None


def test_a_loss_of_several_values_is_bad_when_any_is():
    assert LossCheck(0).push(torch.tensor([1.0, 2.0]), 0, 0) is None
    bad = LossCheck(0).push(torch.tensor([1.0, math.nan]), 4, 0)
    assert bad is not None and bad.step == 4


@pytest.mark.parametrize("lag", [0, 2])
def test_a_bad_loss_on_another_process_is_reported_by_every_process(lag):
    def other_rank_nan(t: torch.Tensor) -> None:  # the sum over processes, one of them NaN
        t.add_(math.nan)

    check = LossCheck(lag)
    due = [check.push(torch.tensor(1.0), i, 0, other_rank_nan) for i in range(lag + 1)]
    assert due[:lag] == [None] * lag
    bad = due[lag]
    assert bad is not None and bad.step == 0 and bad.local == 1.0 and math.isnan(bad.anywhere)


def test_a_negative_lag_is_refused():
    with pytest.raises(ValueError, match="lag must be >= 0"):
        LossCheck(-1)


def _trainer(step: int, epoch: int = 0) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, current_epoch=epoch, world_size=1)


def test_the_guard_names_the_bad_step_and_the_kept_checkpoint(tmp_path):
    (tmp_path / LAST).write_bytes(b"")
    guard = NonFiniteLossGuard(tmp_path, loss_check_lag=2)
    guard.on_before_backward(_trainer(6), None, torch.tensor(1.0))
    guard.on_before_backward(_trainer(7), None, torch.tensor(math.nan))
    guard.on_before_backward(_trainer(8), None, torch.tensor(math.nan))
    with pytest.raises(NonFiniteLossError) as caught:
        guard.on_before_backward(_trainer(9), None, torch.tensor(math.nan))
    assert caught.value.step == 7 and caught.value.checkpoint == str(tmp_path / LAST)
    assert str(caught.value).startswith("the training loss is nan at step 7 (epoch 0)")


@pytest.mark.parametrize("hook", ["on_validation_start", "on_train_epoch_end", "on_train_end"])
def test_the_guard_reads_pending_losses_at_the_end_of_an_epoch(hook):
    guard = NonFiniteLossGuard(None, loss_check_lag=4)
    guard.on_before_backward(_trainer(3, 2), None, torch.tensor(math.inf))
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at step 3 \(epoch 2\)"):
        getattr(guard, hook)(_trainer(4, 2), None)


def test_a_checkpoint_after_a_pending_bad_loss_names_the_loss_not_a_weight():
    guard = NonFiniteLossGuard(None, loss_check_lag=2)
    guard.on_before_backward(_trainer(5), None, torch.tensor(math.nan))
    state = {"state_dict": {"w": torch.tensor([math.nan])}}  # what the bad step did
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5") as caught:
        guard.on_save_checkpoint(_trainer(6), None, state)
    assert caught.value.checkpoint is None
    with pytest.raises(NonFiniteLossError, match="weight w is not finite"):  # and without one
        NonFiniteLossGuard(None).on_save_checkpoint(_trainer(6), None, state)


@pytest.mark.parametrize(
    ("precision", "advised"), [("bf16-mixed", True), ("16-mixed", True), ("32-true", False)]
)
def test_full_precision_is_advised_only_to_a_run_without_it(precision, advised):
    trainer = SimpleNamespace(global_step=3, current_epoch=0, world_size=1, precision=precision)
    with pytest.raises(NonFiniteLossError) as caught:
        NonFiniteLossGuard(None).on_before_backward(trainer, None, torch.tensor(math.nan))
    message = str(caught.value)
    assert "lower optimizer.lr" in message and "scheduler.warmup_epochs" in message
    assert ("precision=32-true" in message) is advised
    # once "then start again or resume": resume refuses another optimizer.lr and meets the NaN
    assert message.endswith(
        "in a new run (solo-mixmask pretrain: resume keeps the run's "
        "settings and meets the same step)"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_lagged_check_reads_pinned_copies_without_a_sync():
    from common import count_host_syncs

    check = LossCheck(2)
    losses = [torch.tensor(v, device="cuda") for v in [1.0] * 6 + [math.nan, 1.0, 1.0]]
    due = [check.push(loss, i, 0) for i, loss in enumerate(losses[:4])]
    assert due == [None] * 4 and check._ring is not None and check._ring.is_pinned()
    assert count_host_syncs(lambda: check.push(losses[4], 4, 0))["count"] == 0
    due = [check.push(loss, 5 + i, 0) for i, loss in enumerate(losses[5:])]
    assert due[:3] == [None] * 3 and due[3] is not None and due[3].step == 6
