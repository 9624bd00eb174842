"""backbones.cpu_channels_last_hazard: where channels_last must not train on the CPU, and the
runs that meet it train in NCHW (oneDNN's 1x1 stride-2 weight gradient, uxlfoundation/oneDNN#6035)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from solo_mixmask.backbones import build_backbone, cpu_channels_last_hazard
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
