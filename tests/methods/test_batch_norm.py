"""Split BatchNorm and shuffled keys as an option of every momentum method."""

from __future__ import annotations

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from solo_mixmask.backbones import build_backbone
from solo_mixmask.core.batch_norm import SplitBatchNorm2d
from solo_mixmask.errors import ConfigError
from solo_mixmask.eval.convert import convert_checkpoint
from solo_mixmask.methods import METHODS
from tests.conftest import synthetic_batch, tiny_cfg
from tests.eval.helpers import method_checkpoint

MOMENTUM_METHODS = sorted(METHODS)


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("method", MOMENTUM_METHODS)
def test_every_momentum_method_splits_both_backbones(method):
    plain = METHODS[method](tiny_cfg(method))
    split = METHODS[method](tiny_cfg(method, method_kwargs__bn_splits=4))
    for backbone in (split.backbone, split.momentum_backbone):
        norms = _batch_norms(backbone)
        assert norms and all(type(m) is SplitBatchNorm2d and m.num_splits == 4 for m in norms)
    # one group: BatchNorm2d's computation, and one group per input of an interleaved call
    assert all(
        type(m) is SplitBatchNorm2d and m.num_splits == 1 for m in _batch_norms(plain.backbone)
    )
    # same state_dict keys and shapes: checkpoints load either way
    assert {k: v.shape for k, v in split.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    split.load_state_dict(plain.state_dict())
    loss = split.training_step(synthetic_batch(), 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("method", ["mocov2plus", "byol_mixmask"])
def test_shuffled_keys_come_back_in_order(method):
    """With one BatchNorm group the key batch's statistics do not depend on its order, so the
    shuffled momentum forward must give the unshuffled outputs, image by image."""
    plain = METHODS[method](tiny_cfg(method)).train()
    shuffled = METHODS[method](tiny_cfg(method, method_kwargs__shuffle_bn=True)).train()
    shuffled.load_state_dict(plain.state_dict())
    x = synthetic_batch()[1][0]
    expected = plain.momentum_forward(x)
    got = shuffled.momentum_forward(x)
    for key in ("feats", "z"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    state = {}
    shuffled.on_save_checkpoint(state)
    assert "device" in state["shuffle_generators"]  # the drawn stream is saved for resume


def test_split_statistics_differ_from_one_batch_norm():
    """bn_splits changes what the online network computes in training mode (not in eval)."""
    plain = METHODS["mocov2plus"](tiny_cfg("mocov2plus")).train()
    split = METHODS["mocov2plus"](tiny_cfg("mocov2plus", method_kwargs__bn_splits=2)).train()
    split.load_state_dict(plain.state_dict())
    x = synthetic_batch()[1][0]
    x[::2] += 3.0  # every other image brighter: group 0 of the split (images 0, 2, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(split.eval()(x)["feats"], plain.eval()(x)["feats"])
    assert not torch.allclose(split.train()(x)["feats"], plain.train()(x)["feats"], atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"method_kwargs__bn_splits": 3}, "method_kwargs.bn_splits=3"),  # 8 % 3
        ({"method_kwargs__bn_splits": 8}, "method_kwargs.bn_splits=8"),  # groups of 1
        ({"method_kwargs__bn_splits": 0}, "method_kwargs.bn_splits=0"),
        ({"method_kwargs__shuffle_bn": "yes"}, "method_kwargs.shuffle_bn='yes'"),
        (
            {"method_kwargs__bn_splits": 2, "sync_batchnorm": True},
            "method_kwargs.bn_splits=2",
        ),
        (
            {"method_kwargs__shuffle_bn": True, "sync_batchnorm": True, "devices": 2},
            "method_kwargs.shuffle_bn=True",
        ),
    ],
)
def test_bad_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        METHODS["mixmask"](tiny_cfg("mixmask", **overrides))
    assert str(err.value).startswith(f"{key} is not allowed: expected")


@pytest.mark.parametrize(
    ("overrides", "warns"),
    [
        ({}, True),  # devices 1
        ({"devices": [0]}, True),
        ({"devices": "0,"}, True),
        ({"devices": 2}, False),  # DDP: the keys are shuffled across devices
        ({"devices": "auto"}, False),  # decided at run time
        ({"num_nodes": 2}, False),
        ({"method_kwargs__bn_splits": 2}, False),  # groups: the order matters
    ],
)
def test_shuffled_keys_with_one_batch_norm_on_one_device_warn(overrides, warns, recwarn):
    """Shuffling the keys changes nothing when one BatchNorm sees the whole batch: a warning,
    never a setting that silently does nothing."""
    cfg = tiny_cfg("mocov2plus", method_kwargs__shuffle_bn=True, **overrides)
    METHODS["mocov2plus"].add_and_assert_specific_cfg(cfg)
    said = [str(w.message) for w in recwarn if "method_kwargs.shuffle_bn" in str(w.message)]
    assert bool(said) is warns, said
    if warns:
        assert "has no effect with method_kwargs.bn_splits=1 on one device" in said[0]


def test_split_model_exports_ordinary_batch_norm(tmp_path):
    """A checkpoint trained with split BatchNorm converts to a torchvision ResNet that loads
    strictly and computes what the backbone computes in eval mode."""
    path, plain = method_checkpoint(tmp_path / "plain.ckpt", cifar_stem=True)
    cfg = OmegaConf.create(plain.cfg)
    cfg.method_kwargs.bn_splits = 4
    split = METHODS["mocov2plus"](cfg)
    split.load_state_dict(plain.state_dict())
    split.training_step(synthetic_batch(size=32), 0)  # moves the running statistics
    ckpt = torch.load(path, weights_only=False)
    ckpt["state_dict"] = split.state_dict()
    ckpt["hyper_parameters"]["cfg"]["method_kwargs"]["bn_splits"] = 4
    torch.save(ckpt, path)
    convert_checkpoint(path, tmp_path / "r18.pth", "torchvision")
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.load_state_dict(torch.load(tmp_path / "r18.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), split.backbone.eval()(x), atol=1e-5, rtol=0)


def _with_backbone(cfg, name: str):
    cfg.backbone = OmegaConf.create({"name": name, "kwargs": {}, "cifar_stem": False})
    cfg.performance = OmegaConf.create({"channels_last": False})
    return cfg


def test_timm_norm_act_layers_of_both_backbones_are_split():
    """regnetx_002's BatchNorm layers are all timm's BatchNormAct2d: every one is split, in
    both backbones, its activation kept (eval mode: what the unsplit model computes)."""
    plain = METHODS["mocov2plus"](_with_backbone(tiny_cfg("mocov2plus"), "regnetx_002"))
    cfg = _with_backbone(tiny_cfg("mocov2plus", method_kwargs__bn_splits=4), "regnetx_002")
    split = METHODS["mocov2plus"](cfg)
    split.load_state_dict(plain.state_dict())
    for backbone in (split.backbone, split.momentum_backbone):
        norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert len(norms) == 44 and all(
            isinstance(m, SplitBatchNorm2d) and m.num_splits == 4 for m in norms
        )
    x = synthetic_batch()[1][0]
    with torch.no_grad():
        torch.testing.assert_close(split.eval()(x)["feats"], plain.eval()(x)["feats"])
    loss = split.train().training_step(synthetic_batch(), 0)
    assert torch.isfinite(loss["loss"] if isinstance(loss, dict) else loss)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"method_kwargs__bn_splits": 2},
            r"method_kwargs.bn_splits=2 is not allowed: expected 1 for convnext_atto \(its "
            "backbone has no BatchNorm layer to split",
        ),
        (
            {"method_kwargs__shuffle_bn": True, "devices": 2},
            r"method_kwargs.shuffle_bn=True is not allowed: expected false for convnext_atto "
            r"\(no BatchNorm layer",
        ),
    ],
)
def test_bn_options_are_refused_for_a_backbone_without_batch_norm(overrides, message):
    """ConvNeXt normalises with LayerNorm: split statistics and shuffled keys change nothing."""
    cfg = _with_backbone(tiny_cfg("mocov2plus", **overrides), "convnext_atto")
    with pytest.raises(ConfigError, match=message):
        METHODS["mocov2plus"](cfg)
    METHODS["mocov2plus"](_with_backbone(tiny_cfg("mocov2plus"), "convnext_atto"))  # defaults


def test_bn_splits_are_refused_when_a_batch_norm_layer_stays_unsplit(monkeypatch):
    """A BatchNorm layer of a class with no split version would normalise the whole batch."""
    import solo_mixmask.methods.base as base

    def with_batch_norm_1d(*args, **kwargs):
        model, width = build_backbone(*args, **kwargs)
        return nn.Sequential(model, nn.BatchNorm1d(width)), width

    monkeypatch.setattr(base, "build_backbone", with_batch_norm_1d)
    with pytest.raises(
        ConfigError,
        match=r"method_kwargs.bn_splits=2 is not allowed: expected 1 "
        r"for resnet18 \(its BatchNorm layer 1 \(BatchNorm1d\) has no split",
    ):
        METHODS["mocov2plus"](tiny_cfg("mocov2plus", method_kwargs__bn_splits=2))
