"""The learning rate of every optimiser step in a real (tiny) Lightning fit: milestones and
warm-up counted in epochs of batches, the online classifier at its own rate from step 0."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from solo_mixmask.methods import METHODS
from tests.callbacks.helpers import quiet_trainer
from tests.conftest import tiny_cfg
from tests.methods.test_methods import RandomViews

BATCH, IMAGES, EPOCHS = 8, 64, 4  # 8 optimiser steps per epoch, 32 in all
LR, CLASSIFIER_LR = 0.256, 0.128
SCALE = BATCH / 256  # the lr is scaled by batch x devices / 256


class RatePerStep(Callback):
    """{step: {group name: lr}} as the optimiser is about to step."""

    def __init__(self) -> None:
        self.rates: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.rates[trainer.global_step] = {g["name"]: g["lr"] for g in optimizer.param_groups}


def rates(max_steps: int = -1, accumulate: int = 1, **overrides) -> dict[int, dict[str, float]]:
    torch.manual_seed(0)
    cfg = tiny_cfg(
        "mocov2plus",
        optimizer__batch_size=BATCH,
        optimizer__lr=LR,
        optimizer__classifier_lr=CLASSIFIER_LR,
        max_epochs=EPOCHS,
        **overrides,
    )
    record = RatePerStep()
    trainer = quiet_trainer(
        max_epochs=EPOCHS,
        max_steps=max_steps,
        limit_val_batches=0,
        callbacks=[record],
        accumulate_grad_batches=accumulate,
    )
    loader = DataLoader(RandomViews(IMAGES), batch_size=BATCH, drop_last=True)
    trainer.fit(METHODS["mocov2plus"](cfg), loader)
    return record.rates


def test_step_schedule_lowers_the_rate_from_the_first_step_of_each_milestone_epoch():
    lr = rates(scheduler__name="step", scheduler__lr_decay_steps=[2, 3], scheduler__gamma=0.1)
    backbone = {step: r["backbone"] for step, r in lr.items()}
    base = LR * SCALE
    assert backbone[0] == pytest.approx(base) and backbone[15] == pytest.approx(base)
    assert backbone[16] == pytest.approx(base * 0.1)  # epoch 2 starts at step 16
    assert backbone[23] == pytest.approx(base * 0.1)
    assert backbone[24] == pytest.approx(base * 0.01)  # epoch 3
    assert all(r["classifier"] == pytest.approx(CLASSIFIER_LR * SCALE) for r in lr.values())


def test_unsorted_milestones_decay_as_sorted_ones():
    """[3, 2] once lowered the rate twice from epoch 2 (timm's bisect needs them sorted);
    MultiStepLR, solo-learn's, counts milestones in any order."""
    lr = rates(scheduler__name="step", scheduler__lr_decay_steps=[3, 2], scheduler__gamma=0.1)
    base = LR * SCALE
    assert [lr[s]["backbone"] for s in (15, 16, 24)] == pytest.approx(
        [base, base * 0.1, base * 0.01]
    )


def test_accumulated_batches_scale_every_rate_as_solo_learn_does():
    """solo-learn multiplies lr, classifier_lr, warmup_start_lr and min_lr by
    accumulate_grad_batches (once a standalone run with the same config stepped at half)."""
    lr = rates(
        accumulate=2,
        scheduler__name="warmup_cosine",
        scheduler__warmup_epochs=1,
        scheduler__warmup_start_lr=0.001,
    )
    assert sorted(lr) == list(range(16))  # 4 optimiser steps per epoch of 8 batches
    assert lr[0]["backbone"] == pytest.approx(0.002)  # the warm-up's start, x 2
    assert lr[4]["backbone"] == pytest.approx(LR * SCALE * 2)  # the peak after 1 epoch
    assert all(r["classifier"] == pytest.approx(CLASSIFIER_LR * SCALE * 2) for r in lr.values())


def test_warm_up_epochs_count_whole_epochs_when_max_steps_ends_the_run_early():
    """max_steps=12 with 8 batches per epoch: 1 warm-up epoch is 8 steps (not 12 // 4 = 3)."""
    lr = rates(
        max_steps=12,
        scheduler__name="warmup_cosine",
        scheduler__warmup_epochs=1,
        scheduler__warmup_start_lr=0.0,
    )
    backbone = [lr[step]["backbone"] for step in range(12)]
    base = LR * SCALE
    assert backbone[:8] == pytest.approx([base * step / 8 for step in range(8)])
    assert backbone[8] == pytest.approx(base)  # the peak, then the cosine down to step 12
    assert backbone[8] > backbone[9] > backbone[11] > 0


def test_warm_up_longer_than_max_steps_warns():
    """max_steps=5 inside a warm-up of 8 steps: the run never reaches optimizer.lr (once with
    no warning; the start-up check only compares warmup_epochs with max_epochs)."""
    from solo_mixmask.errors import ConfigWarning

    with pytest.warns(ConfigWarning, match=r"warmup_epochs=1 \(8 steps\) .* 5 steps .*max_steps=5"):
        lr = rates(max_steps=5, scheduler__name="warmup_cosine", scheduler__warmup_epochs=1)
    assert max(lr[step]["backbone"] for step in range(5)) < LR * SCALE


def test_classifier_keeps_its_own_rate_in_step_0_of_a_warm_up():
    lr = rates(
        scheduler__name="warmup_cosine",
        scheduler__warmup_epochs=1,
        scheduler__warmup_start_lr=0.0,
    )
    assert lr[0]["backbone"] == 0.0  # the warm-up's start
    assert [lr[step]["classifier"] for step in range(3)] == pytest.approx(
        [CLASSIFIER_LR * SCALE] * 3
    )
