"""backbones: where channels_last must not train on the CPU (oneDNN's 1x1 stride-2 weight
gradient, uxlfoundation/oneDNN#6035), the residual init, the width of what a model outputs, and
timm's BatchNormAct2d split with its activation."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from solo_mixmask.backbones import (
    SPLIT_BATCH_NORMS,
    SplitBatchNormAct2d,
    build_backbone,
    cpu_channels_last_hazard,
    output_width,
)
from solo_mixmask.core.batch_norm import split_batch_norms, unsplit_batch_norms
from solo_mixmask.errors import ConfigError, ConfigWarning
from tests.cli_helpers import TINY, run_many

NARROW = {"channels": [4, 4, 4, 4]}


def test_a_narrow_resnet_shortcut_is_named_on_the_cpu_only():
    model, _ = build_backbone("resnet18", NARROW, True)
    why = cpu_channels_last_hazard(model, "cpu")
    # the first downsampling block's shortcut: 4 channels in, stride 2
    assert why is not None and "layer2.0.downsample.0 is a 1x1, stride-2 convolution of 4" in why
    assert cpu_channels_last_hazard(model, torch.device("cpu")) == why
    assert cpu_channels_last_hazard(model, "cuda") is None  # cuDNN: no such kernel


@pytest.mark.parametrize(
    ("conv", "trained", "hazard"),
    [
        (nn.Conv2d(7, 8, 1, stride=2), True, True),
        (nn.Conv2d(8, 8, 1, stride=2), True, False),  # one full 8-channel block
        (nn.Conv2d(4, 8, 1, stride=1), True, False),  # stride 1: no strided copy
        (nn.Conv2d(4, 8, 3, stride=2), True, False),  # not a 1x1 kernel
        (nn.Conv2d(4, 8, 1, stride=(1, 2)), True, True),
        (nn.Conv2d(4, 8, 1, stride=2), False, False),  # frozen: no weight gradient
    ],
)
def test_hazard_is_a_trained_narrow_strided_1x1_convolution(conv, trained, hazard):
    conv.weight.requires_grad_(trained)
    assert (cpu_channels_last_hazard(nn.Sequential(conv), "cpu") is not None) is hazard


def test_a_narrow_backbone_trains_in_nchw_with_the_results_of_channels_last_false(tmp_path):
    """A ResNet of 4 channels per stage in channels_last aborted on this machine's CPU ("double
    free or corruption", exit -6) in its first backward; it now trains in NCHW, says so once, and
    ends as the run with performance.channels_last=false does."""
    narrow = ["backbone.kwargs.channels=[4,4,4,4]"]
    base = ["pretrain", "--config-name", "mocov2plus", *TINY, *narrow, "knn_eval.enabled=false"]
    layouts = {"channels_last": "true", "nchw": "false"}
    done = run_many(
        [
            [*base, f"performance.channels_last={v}", f"checkpoint.run_dir={tmp_path / k}"]
            for k, v in layouts.items()
        ]
    )
    for (name, _), proc in zip(layouts.items(), done):
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    said = [line for line in done[0].stderr.splitlines() if "oneDNN" in line]
    assert len(said) == 1 and said[0].startswith("warning: performance.channels_last=true"), said
    assert not [line for line in done[1].stderr.splitlines() if "oneDNN" in line]
    summaries = [json.loads((tmp_path / k / "summary.json").read_text()) for k in layouts]
    for key in ("steps", "linear_acc1", "embedding_std"):
        assert summaries[0][key] == summaries[1][key], key
    weights = [
        torch.load(tmp_path / k / "checkpoints" / "last.ckpt")["state_dict"] for k in layouts
    ]
    for key, value in weights[0].items():
        assert torch.allclose(value.float(), weights[1][key].float(), atol=1e-6), key


def _last_bn_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight of each residual block's last BatchNorm (bn2 of a basic block, bn3 of a
    bottleneck), in block order."""
    blocks = [
        b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage
    ]
    return [getattr(b, "bn3", b.bn2).weight for b in blocks]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_blocks_start_as_torchvisions_which_solo_learn_trains(name):
    """solo-learn builds torchvision's ResNets (zero_init_residual=False: every BatchNorm weight
    starts at 1); timm's own default zeroes each block's last one. Ours start as torchvision's."""
    import torchvision

    ours, _ = build_backbone(name)
    theirs = getattr(torchvision.models, name)()
    ours_bn = {k: v for k, v in ours.state_dict().items() if ".bn" in k or "downsample.1" in k}
    theirs_bn = {k: v for k, v in theirs.state_dict().items() if k in ours_bn}
    assert ours_bn.keys() == theirs_bn.keys() and len(ours_bn) > 0
    for key, value in ours_bn.items():
        assert torch.equal(value, theirs_bn[key]), key
    assert all(bool((w == 1).all()) for w in _last_bn_weights(ours))


@pytest.mark.parametrize("key", ["zero_init_last", "zero_init_residual"])
def test_zero_init_is_asked_for_under_timms_or_torchvisions_name(key):
    """timm's key and torchvision's (what a solo-learn config passes) both zero the last
    BatchNorm of every block; false under either name keeps torchvision's start."""
    zeroed, _ = build_backbone("resnet18", {key: True}, cifar_stem=True)
    assert all(bool((w == 0).all()) for w in _last_bn_weights(zeroed))
    kept, _ = build_backbone("resnet18", {key: False})
    assert all(bool((w == 1).all()) for w in _last_bn_weights(kept))
    both, _ = build_backbone("resnet18", {"zero_init_last": True, "zero_init_residual": True})
    assert all(bool((w == 0).all()) for w in _last_bn_weights(both))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"zero_init_last": "false"}, "backbone.kwargs.zero_init_last='false' .* true or false"),
        ({"zero_init_residual": 1}, "backbone.kwargs.zero_init_residual=1 .* true or false"),
        (
            {"zero_init_last": True, "zero_init_residual": False},
            r"backbone.kwargs.zero_init_residual=False .* true \(the value of "
            "backbone.kwargs.zero_init_last",
        ),
    ],
)
def test_residual_init_errors_name_the_key_and_value(kwargs, message):
    """A string "false" would be truthy inside timm (zero init after all): refused, as is a
    disagreement between the two names."""
    with pytest.raises(ConfigError, match=message):
        build_backbone("resnet18", kwargs)


def test_other_backbones_are_left_as_timm_builds_them():
    """The residual init is a ResNet setting: another model is given no key it does not take.
    torchvision's key (which the shipped ResNet configs set) is left out with a warning, so a
    config's backbone can be swapped; timm's key goes to timm, which refuses it or not."""
    model, width = build_backbone("mobilenetv3_small_050")
    assert width == model.eval()(torch.randn(1, 3, 32, 32)).shape[1]  # 1024, num_features 288
    with pytest.warns(ConfigWarning, match="zero_init_residual=True is a ResNet setting"):
        build_backbone("mobilenetv3_small_050", {"zero_init_residual": True})
    with pytest.raises(ConfigError, match="backbone.kwargs"):
        build_backbone("mobilenetv3_small_050", {"zero_init_last": True})
    regnet, _ = build_backbone("regnetx_002", {"zero_init_last": True})  # timm takes it here
    assert bool((regnet.s1.b1.conv3.bn.weight == 0).all())


def test_shipped_configs_build_the_residual_init_their_results_were_measured_with():
    """The CIFAR-10 and Fashion-MNIST recipes were measured from timm's zero init (the engine's
    silent default before 2026-12-07) and keep it, under the key solo-learn passes to
    torchvision; the ImageNet configs start as the seed's torchvision ResNet-50."""
    from omegaconf import OmegaConf

    from solo_mixmask.backbones import residual_init_kwargs
    from solo_mixmask.config.compose import compose_config, configs_root

    root = configs_root() / "pretrain"
    names = sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml"))
    assert len(names) >= 17
    for name in names:
        cfg = compose_config(None, name, [])
        kwargs = OmegaConf.select(cfg, "backbone.kwargs")  # absent: none
        kwargs = OmegaConf.to_container(kwargs) if kwargs is not None else {}
        built = residual_init_kwargs(cfg.backbone.name, kwargs)
        assert built["zero_init_last"] is (not name.startswith("imagenet/")), name


@pytest.mark.parametrize(
    ("name", "kwargs", "width"),
    [
        ("mobilenetv3_small_050", {}, 1024),  # num_features 288, then conv_head to 1024
        ("resnet18", {"global_pool": "catavgmax"}, 1024),  # num_features 512, avg and max
        ("resnet18", {"channels": [4, 4, 4, 8]}, 8),
    ],
)
def test_the_width_is_what_the_model_outputs(name, kwargs, width):
    """timm's num_features is the width before the head's own layers or a wider pooling: the
    classifier and the probes are built for the pooled output. Also on the meta device
    (``pretrain --cfg job``'s check), and the weights and train mode are left alone."""
    model, got = build_backbone(name, kwargs)
    assert got == width == model.eval()(torch.randn(2, 3, 32, 32)).shape[1]
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert output_width(model, name, kwargs) == width
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.device("meta"):
        assert build_backbone(name, kwargs)[1] == width


def test_a_model_without_global_pooling_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"backbone.kwargs.global_pool='' is not allowed: .*"
        r"\(1, 512, 7, 7\)",
    ):
        build_backbone("resnet18", {"global_pool": ""})


def _norm_act(act: nn.Module) -> nn.Module:
    from timm.layers import BatchNormAct2d

    norm = BatchNormAct2d(3, momentum=0.1)
    norm.act = act
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, -1.0, 0.3]))
    return norm


def test_timm_batch_norm_act_is_split_and_keeps_its_activation():
    """Each group of a split BatchNormAct2d is what timm's layer gives it alone (activation
    included); one group and eval mode are timm's layer; the state_dict keys are timm's."""
    torch.manual_seed(0)
    reference = _norm_act(nn.SiLU())
    net = nn.Sequential(_norm_act(nn.SiLU()))
    net.load_state_dict(nn.Sequential(reference).state_dict())
    assert split_batch_norms(net, 4, SPLIT_BATCH_NORMS) == 1
    split = net[0]
    assert isinstance(split, SplitBatchNormAct2d) and type(reference).__name__ == "BatchNormAct2d"
    assert (
        isinstance(split, type(reference))
        and split.state_dict().keys() == reference.state_dict().keys()
    )
    x = torch.randn(8, 3, 4, 4)
    x[1::4] += 4.0
    y = split(x)
    for j in range(4):
        one = _norm_act(nn.SiLU())
        one.load_state_dict(reference.state_dict())
        torch.testing.assert_close(y[j::4], one(x[j::4]), atol=1e-5, rtol=1e-5)
    reference.load_state_dict(split.state_dict())  # the running statistics the groups moved
    torch.testing.assert_close(split.eval()(x), reference.eval()(x))
    split.train().num_splits = 1
    torch.testing.assert_close(split(x), reference.train()(x))
    assert (y < 0).any() and (y >= -0.2785).all()  # SiLU's minimum: the activation ran


@pytest.mark.parametrize("name", ["regnetx_002", "mobilenetv3_small_050"])
def test_every_batch_norm_of_a_timm_model_is_split(name):
    """regnetx_002 and the MobileNets hold BatchNormAct2d layers only: none is left unsplit,
    and in eval mode the split model computes what timm's does."""
    model, _ = build_backbone(name)
    split, _ = build_backbone(name)
    split.load_state_dict(model.state_dict())
    count = split_batch_norms(split, 2, SPLIT_BATCH_NORMS)
    assert count > 10 and unsplit_batch_norms(split) == []
    assert split_batch_norms(model, 2) == 0 and len(unsplit_batch_norms(model)) == count
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(split.eval()(x), model.eval()(x))


def test_a_stem_width_a_plain_stem_ignores_is_said():
    """timm's ResNet reads stem_width for a deep stem only: the tests' "stem_width=8" once
    built a 64-wide 7x7 stem with no word, and summary.json recorded stem_width 8."""
    with pytest.warns(ConfigWarning, match=r"stem_width=8 has no effect on resnet18's plain"):
        model, _ = build_backbone("resnet18", {"channels": [8, 16, 32, 64], "stem_width": 8})
    assert model.conv1.out_channels == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deep stem reads it
        deep, _ = build_backbone("resnet18", {"stem_type": "deep", "stem_width": 8})
    assert deep.conv1[0].out_channels == 8
