"""sync_batchnorm's plugin: timm's BatchNormAct2d keeps its activation, and the revert is exact.

A SyncBatchNorm outside a process group normalises as BatchNorm does, so the converted model's
outputs are compared on one CPU process."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import TorchSyncBatchNorm
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from torch import nn

from solo_mixmask.backbones import SPLIT_BATCH_NORMS, SplitBatchNormAct2d, build_backbone
from solo_mixmask.core.batch_norm import split_batch_norms
from solo_mixmask.utils.sync_batch_norm import TimmSyncBatchNorm


def _regnet() -> nn.Module:
    """regnetx_002 (44 BatchNormAct2d layers) in a wrapper, as a LightningModule holds it, with
    running statistics away from their start (eval mode then differs from training's)."""
    torch.manual_seed(0)
    backbone, _ = build_backbone("regnetx_002")
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return nn.Sequential(backbone)


@pytest.mark.parametrize("split", [False, True])
def test_synchronised_model_computes_what_the_model_computed(split):
    """Lightning's own conversion drops the activations (the outputs move); this one keeps
    them, also for the split layers (one group) that every momentum method holds."""
    model = _regnet()
    if split:
        assert split_batch_norms(model, 1, SPLIT_BATCH_NORMS) == 44
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        lightnings = TorchSyncBatchNorm().apply(_regnet()).eval()(x)
    assert (lightnings - expected).abs().max() > 0.01  # the bug this plugin exists for
    plugin = TimmSyncBatchNorm()
    synced = plugin.apply(model)
    layers = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(layers) == 44 and all(type(m) is SyncBatchNormAct for m in layers)
    with torch.no_grad():
        torch.testing.assert_close(synced.eval()(x), expected)
        synced.train()(x)  # no process group: the layers move their statistics as BatchNorm


def test_revert_puts_back_the_layers_with_the_trained_tensors():
    model = _regnet()
    split_batch_norms(model, 1, SPLIT_BATCH_NORMS)
    before = {name: m for name, m in model.named_modules()}
    plugin = TimmSyncBatchNorm()
    synced = plugin.apply(model)
    layer = synced.get_submodule("0.stem.bn")
    assert isinstance(layer, SyncBatchNormAct)
    with torch.no_grad():  # as training would: in place, and a buffer replaced
        layer.weight.mul_(2.0)
        layer.running_var = layer.running_var * 3.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = synced.eval()(x)
    reverted = plugin.revert(synced)
    after = dict(reverted.named_modules())
    assert after.keys() == before.keys() and all(after[k] is m for k, m in before.items())
    stem = after["0.stem.bn"]
    assert type(stem) is SplitBatchNormAct2d and isinstance(stem, BatchNormAct2d)
    assert stem.running_var is layer.running_var and stem.weight is layer.weight
    assert not stem.training
    with torch.no_grad():
        torch.testing.assert_close(reverted(x), expected)
    assert plugin.revert(reverted) is reverted  # nothing left to put back


def test_the_trainer_takes_it_beside_sync_batchnorm():
    """Lightning refuses another LayerSync beside ``sync_batchnorm=True`` unless it is a
    TorchSyncBatchNorm: this one is, and replaces Lightning's."""
    plugin = TimmSyncBatchNorm()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        strategy="ddp",
        sync_batchnorm=True,
        plugins=[plugin],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    assert trainer.strategy._layer_sync is plugin  # type: ignore[attr-defined]


@pytest.mark.parametrize("sync", [False, True])
def test_a_runs_trainer_synchronises_with_it(tmp_path, sync):
    """``sync_batchnorm: true`` in a run's config gives its Trainer this plugin, not
    Lightning's conversion."""
    from solo_mixmask.config.run_specs import run_spec
    from solo_mixmask.run.pretrain import prepare_config
    from solo_mixmask.run.trainer import build_callbacks, build_trainer
    from tests.conftest import tiny_cfg

    overrides = {"sync_batchnorm": True, "strategy": "ddp"} if sync else {}
    _, cfg = prepare_config(tiny_cfg("mocov2plus", **overrides))
    run = run_spec(cfg)
    trainer = build_trainer(
        run.trainer, run.logger, tmp_path, build_callbacks(run.trainer, tmp_path)
    )
    layer_sync = getattr(trainer.strategy, "_layer_sync", None)
    assert isinstance(layer_sync, TimmSyncBatchNorm) is sync
