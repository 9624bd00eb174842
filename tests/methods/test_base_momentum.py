"""BaseMomentumMethod's EMA: once per optimiser step, after it, with tau of that step."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from solo_mixmask.methods import METHODS
from tests.callbacks.helpers import quiet_trainer
from tests.conftest import tiny_cfg
from tests.methods.test_methods import RandomViews


def test_momentum_moves_once_per_optimiser_step_after_it(monkeypatch):
    """8 batches with accumulate_grad_batches=2 are 4 optimiser steps: the momentum networks
    move 4 times, with tau from momentum.base_tau (0.9) at step 0 on the cosine to
    final_tau (1.0) over the 4 steps, each time from online weights the step has changed."""
    from solo_mixmask.methods import base

    torch.manual_seed(0)
    model = METHODS["mocov2plus"](
        tiny_cfg("mocov2plus", momentum__base_tau=0.9, momentum__final_tau=1.0)
    )
    first = next(model.backbone.parameters())
    before = first.detach().clone()
    taus, moved = [], []
    update = base.ema_update_pairs

    def recording(pairs, tau, foreach_lerp=True):
        pairs = list(pairs)
        taus.extend([tau] * len(pairs))
        if any(online is model.backbone for online, _ in pairs):
            moved.append(not torch.equal(first.detach(), before))
            before.copy_(first.detach())
        update(pairs, tau, foreach_lerp)

    monkeypatch.setattr(base, "ema_update_pairs", recording)
    trainer = quiet_trainer(
        max_epochs=1,
        accumulate_grad_batches=2,
        limit_val_batches=0,
    )
    train = DataLoader(RandomViews(64), batch_size=8, drop_last=True)
    trainer.fit(model, train_dataloaders=train)
    assert trainer.global_step == 4
    pairs = len(model.momentum_pairs)
    expected = [1.0 - 0.1 * (math.cos(math.pi * s / 4) + 1) / 2 for s in range(4)]
    assert taus == [tau for tau in expected for _ in range(pairs)]
    assert taus[0] == 0.9 and moved == [True] * 4
