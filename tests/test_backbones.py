"""backbones.cpu_channels_last_hazard: where channels_last must not train on the CPU, and the
runs that meet it train in NCHW (oneDNN's 1x1 stride-2 weight gradient, uxlfoundation/oneDNN#6035)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from solo_mixmask.backbones import build_backbone, cpu_channels_last_hazard
from solo_mixmask.errors import ConfigError, ConfigWarning
from tests.cli_helpers import TINY, run_many

NARROW = {"channels": [4, 4, 4, 4], "stem_width": 4}


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
    narrow = ["backbone.kwargs.channels=[4,4,4,4]", "backbone.kwargs.stem_width=4"]
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
    assert width == model.num_features
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
