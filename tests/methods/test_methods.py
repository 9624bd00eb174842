"""Every method builds from a config, returns the contract's dict and trains through Lightning."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from solo_mixmask.losses.moco import moco_loss
from solo_mixmask.methods import METHODS
from tests.callbacks.helpers import quiet_trainer
from tests.conftest import synthetic_batch, tiny_cfg

ALL = sorted(METHODS)


class RandomViews(Dataset):
    """n random 16-px images; training items are (index, [view1, view2], target)."""

    def __init__(self, n: int = 40, train: bool = True):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)
        self.train = train

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if not self.train:
            return self.x[i], self.y[i]
        flipped = self.x[i].flip(-1)
        return i, [self.x[i], flipped], self.y[i]


def _fit(model, steps: int = 3) -> L.Trainer:
    trainer = quiet_trainer(
        max_steps=steps,
        max_epochs=1,
        num_sanity_val_steps=0,
        limit_val_batches=2,
    )
    train = DataLoader(RandomViews(8 * steps), batch_size=8, drop_last=True, shuffle=True)
    val = [
        DataLoader(RandomViews(train=False), batch_size=8),
        DataLoader(RandomViews(16, train=False), batch_size=8),
    ]
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    return trainer


@pytest.mark.parametrize("method", ALL)
def test_contract_keys(method):
    from solo_mixmask.methods.base import BaseMomentumMethod

    model = METHODS[method](tiny_cfg(method))
    raw = BaseMomentumMethod.training_step(model, synthetic_batch(), 0)
    for key in ("loss", "acc1", "acc5", "feats", "logits", "z", "momentum_feats", "momentum_z"):
        assert key in raw, key
    assert raw["feats"][0].shape == (8, model.features_dim)
    assert torch.isfinite(model.training_step(synthetic_batch(), 0))


@pytest.mark.parametrize("method", ALL)
def test_trains_through_lightning(method):
    torch.manual_seed(0)
    model = METHODS[method](tiny_cfg(method))
    before = {k: v.clone() for k, v in model.momentum_backbone.state_dict().items()}
    trainer = _fit(model, steps=3)
    assert trainer.global_step == 3
    after = model.momentum_backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    online, momentum = model.backbone.state_dict(), model.momentum_backbone.state_dict()
    assert any(
        not torch.equal(online[k], momentum[k]) for k in online if online[k].is_floating_point()
    )
    if not method.startswith("byol"):  # the BYOL family has no queue
        assert int(model.key_queue.ptr) == (3 * 8) % 20  # 24 keys through a 20-key queue
    assert "val_knn_acc1" in trainer.callback_metrics
    assert 0 <= float(trainer.callback_metrics["val_knn_acc1"]) <= 100


def test_asymmetric_mocov2_loss_and_enqueue():
    """symmetric=false is the seed's MoCo v2: L(q1, k2) with one queue, k2 enqueued."""
    torch.manual_seed(0)
    model = METHODS["mocov2plus"](tiny_cfg("mocov2plus", method_kwargs__symmetric=False))
    assert model.key_queue.queue.shape == (1, 16, 20)
    batch = synthetic_batch()
    _, (x1, x2), y = batch
    queue = model.key_queue.queue.clone()
    q1 = model.forward(x1)
    k2 = model.momentum_forward(x2)["z"]
    class_loss = torch.nn.functional.cross_entropy(q1["logits"], y)
    expected = class_loss + moco_loss(q1["z"], k2, queue[0], 0.2)
    got = model.training_step(batch, 0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        model.key_queue.queue[0, :, :8], torch.nn.functional.normalize(k2, dim=1).T
    )
    assert int(model.key_queue.ptr) == 8


def test_symmetric_mocov2plus_uses_two_queues():
    model = METHODS["mocov2plus"](tiny_cfg("mocov2plus", method_kwargs__symmetric=True))
    batch = synthetic_batch()
    queue = model.key_queue.queue.clone()
    _, (x1, x2), y = batch
    q1, q2 = model.forward(x1), model.forward(x2)
    k1, k2 = model.momentum_forward(x1)["z"], model.momentum_forward(x2)["z"]
    ce = torch.nn.functional.cross_entropy
    class_loss = (ce(q1["logits"], y) + ce(q2["logits"], y)) / 2
    nce = (moco_loss(q1["z"], k2, queue[1], 0.2) + moco_loss(q2["z"], k1, queue[0], 0.2)) / 2
    torch.testing.assert_close(
        model.training_step(batch, 0), class_loss + nce, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("method", ["mixmask", "unmix", "unmix_mixmask"])
def test_mixed_branch_adds_to_moco_loss(method):
    """The mixed methods' loss is MoCo's (same weights) plus a positive mixed term."""
    torch.manual_seed(0)
    mixed = METHODS[method](tiny_cfg(method, method_kwargs__symmetric=False))
    moco = METHODS["mocov2plus"](tiny_cfg("mocov2plus", method_kwargs__symmetric=False))
    moco.load_state_dict(mixed.state_dict(), strict=False)
    batch = synthetic_batch()
    assert mixed.training_step(batch, 0) > moco.training_step(batch, 0)


def test_per_sample_masks_run():
    model = METHODS["mixmask"](
        tiny_cfg(
            "mixmask", method_kwargs__per_sample_masks=True, method_kwargs__mask_type="discrete"
        )
    )
    assert torch.isfinite(model.training_step(synthetic_batch(), 0))


def test_mask_generator_state_round_trips():
    """Masks drawn after restoring the method's generator state equal the ones drawn before."""
    model = METHODS["mixmask"](tiny_cfg("mixmask", method_kwargs__per_sample_masks=True))
    model.training_step(synthetic_batch(), 0)
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    first = torch.rand(3, generator=model.ranked_generators().device(torch.device("cpu")))
    other = METHODS["mixmask"](tiny_cfg("mixmask", method_kwargs__per_sample_masks=True))
    other.on_load_checkpoint(ckpt)
    assert torch.equal(
        torch.rand(3, generator=other.ranked_generators().device(torch.device("cpu"))), first
    )
