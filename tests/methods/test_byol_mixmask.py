"""BYOL + MixMask (``byol_mixmask``) on the standalone engine: the step's loss against a direct
float64 computation, MixMask's config checks, the generators in checkpoints, and a tiny
pretraining run through our Trainer (``run_pretrain``)."""

from __future__ import annotations

import csv
import os

import pytest
import torch
import torch.nn.functional as F

from solo_mixmask.core import reversed_partner
from solo_mixmask.errors import ConfigError
from solo_mixmask.losses.byol import byol_loss
from solo_mixmask.methods import METHODS
from tests.conftest import FMNIST_DIR, mix_with, synthetic_batch, tiny_cfg
from tests.losses.test_mixed import byol_mixed_float64


def twins(method: str, **overrides):
    """Two copies of ``method`` with the same weights and the same (fresh) mixing generators."""
    torch.manual_seed(0)
    model = METHODS[method](tiny_cfg(method, **overrides))
    twin = METHODS[method](tiny_cfg(method, **overrides))
    twin.load_state_dict(model.state_dict())
    return model, twin


def byol_part(twin, batch):
    """(class loss + BYOL's symmetric loss as floats, x1, z1, z2) computed on ``twin``."""
    _, (x1, x2), y = batch
    o1, o2 = twin.forward(x1), twin.forward(x2)
    z1, z2 = twin.momentum_forward(x1)["z"], twin.momentum_forward(x2)["z"]
    class_loss = (F.cross_entropy(o1["logits"], y) + F.cross_entropy(o2["logits"], y)) / 2
    byol = byol_loss(o1["p"], z2) + byol_loss(o2["p"], z1)
    return class_loss.item() + byol.item(), x1, z1, z2


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # one block mask per batch: lambda 8/16 for every image
        {"method_kwargs__per_sample_masks": True, "method_kwargs__mask_type": "discrete"},
    ],
    ids=["batch_mask", "per_sample_masks"],
)
def test_step_is_byol_plus_the_lambda_weighted_mixed_regression(overrides):
    """loss = CE + byol(p1, z2) + byol(p2, z1) + 1/B sum_j [lam_j r(p_mix_j, z2_j)
    + (1 - lam_j) r(p_mix_j, z2_partner(j))], the targets being the momentum projections of
    the second views, the mixed term written out per sample in float64."""
    model, twin = twins("byol_mixmask", **overrides)
    batch = synthetic_batch()
    got = model.training_step(batch, 0).item()

    base, x1, z1, z2 = byol_part(twin, batch)
    partner = reversed_partner(8)
    x_mix, lam = mix_with(twin, "mask", x1, partner)
    if overrides:
        assert lam.unique().numel() > 1  # the per-sample lambdas really differ
    p_mix = twin.forward(x_mix)["p"].detach()
    expected = base + byol_mixed_float64(p_mix, z2, lam, partner)
    assert got == pytest.approx(expected, rel=1e-5)
    # the test can tell the targets apart: the first views' projections give another loss
    assert abs(got - (base + byol_mixed_float64(p_mix, z1, lam, partner))) > 1e-4


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("grid_size", 17, "an integer in [1, 16] (the crop size in pixels)"),
        ("mask_ratio", 1.5, "a number in (0, 1)"),
        ("mask_type", "blocks", "one of"),
        ("per_sample_masks", "yes", "true or false"),
        ("queue_size", 20, "no such key"),  # a MoCo key is a typo here
        ("pred_hidden_dim", 0, "an integer in [1, inf)"),
    ],
)
def test_config_checks_are_mixmasks_and_byols(key, value, expected):
    cfg = tiny_cfg("byol_mixmask", **{f"method_kwargs__{key}": value})
    with pytest.raises(ConfigError) as info:
        METHODS["byol_mixmask"].add_and_assert_specific_cfg(cfg)
    assert info.value.key == f"method_kwargs.{key}"
    assert expected in str(info.value)


def test_mask_bank_and_generators_travel_in_checkpoints():
    model = METHODS["byol_mixmask"](tiny_cfg("byol_mixmask", method_kwargs__per_sample_masks=True))
    model.training_step(synthetic_batch(), 0)
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    assert "mask_bank.cells" in ckpt["method_generators"]
    x = synthetic_batch(seed=1)[1][0]
    first = mix_with(model, "mask", x, reversed_partner(8))[0]
    other = METHODS["byol_mixmask"](tiny_cfg("byol_mixmask", method_kwargs__per_sample_masks=True))
    other.on_load_checkpoint(ckpt)
    assert torch.equal(mix_with(other, "mask", x, reversed_partner(8))[0], first)


@pytest.mark.skipif(not os.path.isdir(FMNIST_DIR), reason=f"Fashion-MNIST not at {FMNIST_DIR}")
def test_pretrains_through_our_trainer(tmp_path):
    """Two steps of run_pretrain on Fashion-MNIST: summary, per-epoch metrics of every loss
    term and lambda, and the generators in the checkpoint."""
    from solo_mixmask.run.pretrain import run_pretrain

    cfg = tiny_cfg(
        "byol_mixmask",
        name="byol_mixmask",
        data__train_subset=16,
        data__knn_train_subset=32,
        data__val_subset=16,
        precision="32-true",
        checkpoint__dir=str(tmp_path),
        checkpoint__run_dir=str(tmp_path / "run"),
    )
    summary = run_pretrain(cfg)
    assert summary["method"] == "byol_mixmask" and summary["steps"] == 2
    assert 0 <= summary["knn_acc1"] <= 100
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_mask_loss_epoch")]
    (row,) = rows
    assert float(row["train_byol_loss_epoch"]) > 0 and float(row["train_mask_loss_epoch"]) > 0
    assert float(row["train_mask_lambda_epoch"]) == pytest.approx(0.5)  # 8 of 16 cells
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert "mask_bank.cells" in ckpt["method_generators"]
