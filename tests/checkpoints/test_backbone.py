"""Checkpoint loading: safe unpickling, format detection, architecture from the keys."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from solo_mixmask.checkpoints.backbone import (
    extract_backbone,
    infer_resnet,
    load_backbone,
)
from solo_mixmask.checkpoints.io import safe_load
from solo_mixmask.errors import CheckpointError
from solo_mixmask.run.folder import run_dir_of
from tests.eval.helpers import authors_checkpoint, method_checkpoint


class CreatesFile:
    """A pickle payload: unpickling it calls open(path, 'w'), creating the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    # the payload is live: an ordinary unpickler does create its file
    probe = tmp_path / "probe-created"
    pickle.loads(pickle.dumps(CreatesFile(probe))).close()
    assert probe.exists()

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "payload": CreatesFile(marker)},
        ckpt,
    )
    with pytest.raises(CheckpointError, match="refusing to load.*could run arbitrary code"):
        load_backbone(ckpt)
    assert not marker.exists()


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_load(tmp_path / "nope.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        safe_load(garbage)


def test_our_lightning_checkpoint(tmp_path):
    kwargs = {"channels": [8, 16, 32, 64]}
    path, model = method_checkpoint(tmp_path / "last.ckpt", "resnet18", kwargs, cifar_stem=True)
    lb = load_backbone(path)
    assert (lb.source, lb.arch, lb.kwargs, lb.cifar_stem) == (
        "solo-mixmask",
        "resnet18",
        kwargs,
        True,
    )
    assert set(lb.state_dict) == set(model.backbone.state_dict())
    built = lb.build().eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(built(x), model.backbone.eval()(x), atol=1e-6)
    assert run_dir_of(path) is None  # not inside <run>/checkpoints/


def test_native_3x3_conv1_is_not_taken_for_the_cifar_stem(tmp_path):
    """timm's HRNet has a 3x3 stride-2 conv1 of its own: trained with cifar_stem=false it is
    rebuilt as trained (once: read off the weights as the CIFAR stem, stride 1, and every
    evaluation and export ran another network with exit 0)."""
    path, model = method_checkpoint(tmp_path / "last.ckpt", "hrnet_w18_small", cifar_stem=False)
    lb = load_backbone(path)
    assert (lb.arch, lb.cifar_stem) == ("hrnet_w18_small", False)
    built = lb.build().eval()
    assert built.conv1.stride == (2, 2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(built(x), model.backbone.eval()(x), atol=1e-5)


def test_authors_release_layout(tmp_path):
    path, backbone = authors_checkpoint(tmp_path / "mixmask_200ep.pth.tar")
    lb = load_backbone(path)
    assert (lb.source, lb.arch, lb.kwargs, lb.cifar_stem) == (
        "mixmask-authors",
        "resnet50",
        {},
        False,
    )
    assert set(lb.state_dict) == set(backbone)  # head (fc.0/fc.2), key encoder, queue dropped
    assert torch.equal(lb.state_dict["conv1.weight"], backbone["conv1.weight"])  # query, not key
    lb.build()  # loads strictly into resnet50


def test_solo_learn_checkpoint_reads_args_json(tmp_path):
    import torchvision

    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 2, bias=False)  # solo-learn's CIFAR stem
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    sd["projector.0.weight"] = torch.randn(4, 512)
    torch.save({"state_dict": sd, "epoch": 999}, tmp_path / "byol-abc-ep=999.ckpt")
    (tmp_path / "args.json").write_text(
        json.dumps(
            {
                "backbone": {"name": "resnet18"},
                "data": {"dataset": "cifar100", "train_path": "x"},
                "augmentations": [{"crop_size": 32, "rrc": {"enabled": True}}],
            }
        )
    )
    lb = load_backbone(tmp_path / "byol-abc-ep=999.ckpt")
    assert (lb.source, lb.arch, lb.cifar_stem) == ("solo-learn", "resnet18", True)
    assert lb.build().conv1.padding == (2, 2)  # solo-learn pads its CIFAR stem by 2
    assert lb.cfg["data"]["dataset"] == "cifar100"
    assert lb.cfg["augmentations"] == [{"crop_size": 32}]
    assert not any(k.startswith("projector") for k in lb.state_dict)
    lb.build()


def test_plain_torchvision_state_dict(tmp_path):
    import torchvision

    sd = torchvision.models.resnet18().state_dict()
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "r18.pth")
    lb = load_backbone(tmp_path / "r18.pth")
    assert (lb.source, lb.arch, lb.kwargs, lb.cifar_stem) == ("torchvision", "resnet18", {}, False)
    assert "fc.weight" not in lb.state_dict and len(lb.state_dict) == len(sd) - 2


def test_no_query_backbone_is_an_error():
    momentum_only = {
        "state_dict": {
            "momentum_backbone.conv1.weight": torch.zeros(8, 3, 3, 3),
            "projector.0.weight": torch.zeros(2, 2),
        }
    }
    with pytest.raises(CheckpointError, match="no query backbone found.*momentum_backbone"):
        extract_backbone(momentum_only)
    with pytest.raises(CheckpointError, match="expected a dict"):
        extract_backbone([1, 2, 3])


def test_infer_resnet_depths_and_widths():
    def fake(blocks, bottleneck, width=64):
        sd = {"conv1.weight": torch.zeros(64, 3, 7, 7)}
        last, exp = ("conv3", 4) if bottleneck else ("conv2", 1)
        for s, n in enumerate(blocks, start=1):
            for b in range(n):
                sd[f"layer{s}.{b}.conv1.weight"] = torch.zeros(1)
                sd[f"layer{s}.{b}.{last}.weight"] = torch.zeros(width * 2 ** (s - 1) * exp)
        return sd

    assert infer_resnet(fake((3, 4, 6, 3), True)) == ("resnet50", {}, False)
    assert infer_resnet(fake((3, 4, 23, 3), True)) == ("resnet101", {}, False)
    assert infer_resnet(fake((3, 4, 6, 3), False)) == ("resnet34", {}, False)
    assert infer_resnet(fake((2, 2, 2, 2), False, width=32)) == (
        "resnet18",
        {"channels": [32, 64, 128, 256]},
        False,
    )
    with pytest.raises(CheckpointError, match=r"blocks per stage \[1, 1, 1, 1\]"):
        infer_resnet(fake((1, 1, 1, 1), False))


def test_narrow_resnet_without_config_is_inferred(tmp_path):
    kwargs = {"channels": [8, 16, 32, 64]}
    path, model = method_checkpoint(tmp_path / "a.ckpt", "resnet18", kwargs, cifar_stem=True)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["hyper_parameters"]  # as solo-learn saves them: no cfg inside
    torch.save(ckpt, tmp_path / "b.ckpt")
    lb = load_backbone(tmp_path / "b.ckpt")
    assert (lb.source, lb.arch, lb.kwargs, lb.cifar_stem, lb.cfg) == (
        "solo-learn",
        "resnet18",
        kwargs,
        True,
        None,
    )
    model.backbone.conv1.padding = (2, 2)  # what solo-learn's CIFAR stem, which made it, pads
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(lb.build().eval()(x), model.backbone.eval()(x), atol=1e-6)
