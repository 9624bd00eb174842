"""Exports: torchvision / timm state dicts load strictly; Detectron2 names follow its rules."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import timm
import torch
import torchvision

from solo_mixmask.cli import main
from solo_mixmask.errors import CheckpointError
from solo_mixmask.eval.convert import convert_checkpoint
from tests.eval.helpers import BN_PARAMS, method_checkpoint

TINY = {"channels": [8, 16, 32, 64]}


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """A MoCo checkpoint with a standard-stem ResNet-50 backbone, and the method."""
    return method_checkpoint(tmp_path_factory.mktemp("r50") / "last.ckpt", "resnet50")


def expected_detectron2_r50_keys() -> set[str]:
    """Detectron2's ResNet-50 backbone names, written from its naming rules: a stem
    (stem.conv1 + stem.conv1.norm), then res2..res5 with 3, 4, 6, 3 bottleneck blocks of
    conv1..conv3 each with a .norm, and a projection shortcut (+ .norm) in block 0 only."""

    def conv(prefix: str) -> set[str]:
        return {f"{prefix}.weight"} | {f"{prefix}.norm.{p}" for p in BN_PARAMS}

    keys = conv("stem.conv1")
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        for b in range(blocks):
            for c in (1, 2, 3):
                keys |= conv(f"res{stage}.{b}.conv{c}")
        keys |= conv(f"res{stage}.0.shortcut")
    return keys


def torchvision_name_of(d2_key: str) -> str:
    """Inverse of the Detectron2 rules, written independently of the converter."""
    if d2_key.startswith("stem.conv1.norm."):
        return "bn1." + d2_key.split(".")[-1]
    if d2_key.startswith("stem.conv1."):
        return "conv1." + d2_key.split(".")[-1]
    stage, block, rest = re.match(r"res(\d)\.(\d+)\.(.+)", d2_key).groups()
    layer = f"layer{int(stage) - 1}.{block}."
    rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
    rest = rest.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
    return layer + rest


def _torchvision_model(name: str, cifar_stem: bool = False) -> torch.nn.Module:
    model = getattr(torchvision.models, name)()
    model.fc = torch.nn.Identity()
    if cifar_stem:
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    return model.eval()


def test_torchvision_resnet50_strict_round_trip(r50, tmp_path):
    path, method = r50
    info = convert_checkpoint(path, tmp_path / "out" / "r50.pth", "torchvision")
    assert (info["arch"], info["source"]) == ("resnet50", "solo-mixmask")
    sd = torch.load(tmp_path / "out" / "r50.pth", weights_only=True)
    model = _torchvision_model("resnet50")
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), method.backbone.eval()(x), atol=1e-5)


@pytest.mark.parametrize("cifar_stem", [False, True])
def test_torchvision_resnet18_strict_round_trip(tmp_path, cifar_stem):
    path, method = method_checkpoint(tmp_path / "last.ckpt", "resnet18", cifar_stem=cifar_stem)
    convert_checkpoint(path, tmp_path / "r18.pth", "torchvision")
    model = _torchvision_model("resnet18", cifar_stem)
    model.load_state_dict(torch.load(tmp_path / "r18.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), method.backbone.eval()(x), atol=1e-5)
    assert not any(
        k.startswith(("fc", "projector", "momentum"))
        for k in torch.load(tmp_path / "r18.pth", weights_only=True)
    )


def test_timm_format_for_a_narrow_cifar_resnet(tmp_path):
    path, method = method_checkpoint(tmp_path / "last.ckpt", "resnet18", TINY, cifar_stem=True)
    info = convert_checkpoint(path, tmp_path / "t.pth", "timm")
    assert info["kwargs"] == TINY and info["cifar_stem"] is True
    model = timm.create_model("resnet18", num_classes=0, channels=(8, 16, 32, 64))
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # timm's plain stem is 64 wide
    model.maxpool = torch.nn.Identity()
    model.load_state_dict(torch.load(tmp_path / "t.pth", weights_only=True), strict=True)
    with pytest.raises(CheckpointError, match=r"stage widths \[8, 16, 32, 64\].*--format timm"):
        convert_checkpoint(path, tmp_path / "tv.pth", "torchvision")
    assert not (tmp_path / "tv.pth").exists()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), method.backbone.eval()(x), atol=1e-6)


def test_detectron2_r50_names_and_tensors(r50, tmp_path):
    path, method = r50
    out = tmp_path / "d2" / "r50.pkl"
    convert_checkpoint(path, out, "detectron2")
    with open(out, "rb") as f:
        payload = pickle.load(f)
    assert payload["__author__"] == "solo-mixmask"
    assert payload["matching_heuristics"] is True
    model = payload["model"]
    expected = expected_detectron2_r50_keys()
    assert len(expected) == 265
    assert set(model) == expected
    source = method.backbone.state_dict()
    for key, value in model.items():
        assert isinstance(value, np.ndarray)
        np.testing.assert_array_equal(value, source[torchvision_name_of(key)].numpy())


def test_detectron2_refuses_cifar_stem(tmp_path):
    path, _ = method_checkpoint(tmp_path / "last.ckpt", "resnet18", TINY, cifar_stem=True)
    with pytest.raises(CheckpointError, match="CIFAR stem"):
        convert_checkpoint(path, tmp_path / "x.pkl", "detectron2")
    assert not (tmp_path / "x.pkl").exists()


@pytest.mark.parametrize(
    ("backbone", "kwargs", "widths"),
    [
        ("resnet18", TINY, r"\[8, 16, 32, 64\]"),
        ("resnet50", {"channels": [32, 64, 128, 256]}, r"\[32, 64, 128, 256\]"),
    ],
)
def test_detectron2_refuses_widths_it_cannot_build(tmp_path, capsys, backbone, kwargs, widths):
    """Once: a half-width standard-stem ResNet-18 exported with exit 0, though Detectron2's
    build_resnet_backbone asserts RES2_OUT_CHANNELS 64 for R18/R34 (and would skip weights of
    other shapes with a log warning); --format torchvision refused it."""
    path, _ = method_checkpoint(tmp_path / "last.ckpt", backbone, kwargs)
    with pytest.raises(CheckpointError, match=rf"stage widths {widths}.*RES2_OUT_CHANNELS"):
        convert_checkpoint(path, tmp_path / "x.pkl", "detectron2")
    assert not (tmp_path / "x.pkl").exists()
    assert main(["convert", str(path), str(tmp_path / "x.pkl"), "--format", "detectron2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--format timm" in err[0], err
    assert not (tmp_path / "x.pkl").exists()


def test_non_resnet_backbone(tmp_path):
    net = timm.create_model("mobilenetv3_small_050", num_classes=0)
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    cfg = {"backbone": {"name": "mobilenetv3_small_050", "kwargs": {}}}
    torch.save({"state_dict": sd, "hyper_parameters": {"cfg": cfg}}, tmp_path / "m.ckpt")
    for fmt in ("detectron2", "torchvision"):
        with pytest.raises(CheckpointError, match="needs a ResNet backbone"):
            convert_checkpoint(tmp_path / "m.ckpt", tmp_path / f"m.{fmt}", fmt)
        assert not (tmp_path / f"m.{fmt}").exists()
    convert_checkpoint(tmp_path / "m.ckpt", tmp_path / "m.pth", "timm")
    timm.create_model("mobilenetv3_small_050", num_classes=0).load_state_dict(
        torch.load(tmp_path / "m.pth", weights_only=True), strict=True
    )


def test_solo_learn_cifar_checkpoint_keeps_its_padding_2_stem(tmp_path):
    """solo-learn's CIFAR stem is Conv2d(3, 64, 3, 1, 2): same weights as ours (padding 1), other
    features. The export says which conv to set, and the rebuilt backbone computes the same."""
    import json

    from solo_mixmask.checkpoints.backbone import load_backbone

    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 2, bias=False)  # solo-learn's base.py
    net.maxpool, net.fc = torch.nn.Identity(), torch.nn.Identity()
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "mixmask-ep=0.ckpt")
    (tmp_path / "args.json").write_text(json.dumps({"backbone": {"name": "resnet18"}}))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net.eval()(x)
        assert torch.allclose(
            load_backbone(tmp_path / "mixmask-ep=0.ckpt").build().eval()(x), expected, atol=1e-5
        )
    info = convert_checkpoint(tmp_path / "mixmask-ep=0.ckpt", tmp_path / "tv.pth", "torchvision")
    assert info["source"] == "solo-learn"
    assert info["stem_conv1"].startswith("nn.Conv2d(3, 64, 3, 1, 2, bias=False)")
    model = torchvision.models.resnet18()
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 2, bias=False)  # as stem_conv1 says
    model.maxpool, model.fc = torch.nn.Identity(), torch.nn.Identity()
    model.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), expected, atol=1e-5)


def test_a_pretrained_tag_of_torchvisions_resnet_exports(tmp_path):
    path, method = method_checkpoint(tmp_path / "last.ckpt", "resnet18.tv_in1k")
    convert_checkpoint(path, tmp_path / "r18.pth", "torchvision")
    model = _torchvision_model("resnet18")
    model.load_state_dict(torch.load(tmp_path / "r18.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), method.backbone.eval()(x), atol=1e-5)


def test_our_cifar_checkpoint_names_padding_1(tmp_path):
    path, _ = method_checkpoint(tmp_path / "last.ckpt", "resnet18", cifar_stem=True)
    info = convert_checkpoint(path, tmp_path / "r18.pth", "torchvision")
    assert info["stem_conv1"].startswith("nn.Conv2d(3, 64, 3, 1, 1, bias=False)")
    path, _ = method_checkpoint(tmp_path / "std.ckpt", "resnet18")
    assert convert_checkpoint(path, tmp_path / "std.pth", "torchvision")["stem_conv1"] is None


@pytest.mark.parametrize(
    ("backbone", "kwargs", "message"),
    [
        ("resnetblur18", {}, "trained as timm's 'resnetblur18'"),
        ("resnet18", {"act_layer": "silu"}, r"backbone.kwargs \['act_layer'\]"),
    ],
)
@pytest.mark.parametrize("fmt", ["torchvision", "detectron2"])
def test_torchvision_layout_but_other_layers_is_refused(tmp_path, backbone, kwargs, message, fmt):
    """Same tensor names and shapes as torchvision's resnet18, other forward pass: refused for
    torchvision and Detectron2 (nothing written), fine for timm."""
    path, method = method_checkpoint(tmp_path / "last.ckpt", backbone, kwargs)
    with pytest.raises(CheckpointError, match=message + ".*--format timm"):
        convert_checkpoint(path, tmp_path / "out", fmt)
    assert not (tmp_path / "out").exists()
    convert_checkpoint(path, tmp_path / "t.pth", "timm")
    model = timm.create_model(backbone, num_classes=0, **kwargs)
    model.load_state_dict(torch.load(tmp_path / "t.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), method.backbone.eval()(x), atol=1e-5)


@pytest.mark.parametrize("key", ["zero_init_last", "zero_init_residual"])
def test_a_resnet_trained_from_zero_init_exports_to_torchvision(tmp_path, key):
    """The residual init sets starting values only: a ResNet-18 trained with it is torchvision's
    resnet18, and the export is not refused for the key; the timm export's kwargs (for
    timm.create_model) leave it out, torchvision's name being no argument of timm's."""
    path, method = method_checkpoint(tmp_path / "last.ckpt", "resnet18", {key: True})
    convert_checkpoint(path, tmp_path / "r18.pth", "torchvision")
    model = _torchvision_model("resnet18")
    model.load_state_dict(torch.load(tmp_path / "r18.pth", weights_only=True), strict=True)
    info = convert_checkpoint(path, tmp_path / "t.pth", "timm")
    assert info["kwargs"] == {}
    again = timm.create_model("resnet18", num_classes=0, **info["kwargs"])
    again.load_state_dict(torch.load(tmp_path / "t.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), method.backbone.eval()(x), atol=1e-5)
        assert torch.allclose(again.eval()(x), method.backbone.eval()(x), atol=1e-5)


def test_checkpoint_without_query_backbone_writes_nothing(tmp_path):
    torch.save(
        {"state_dict": {"momentum_backbone.conv1.weight": torch.zeros(8, 3, 7, 7)}},
        tmp_path / "k.ckpt",
    )
    with pytest.raises(CheckpointError, match="no query backbone"):
        convert_checkpoint(tmp_path / "k.ckpt", tmp_path / "k.pkl", "detectron2")
    assert not (tmp_path / "k.pkl").exists()


def test_cli_convert(r50, tmp_path, capsys):
    path, _ = r50
    assert main(["convert", str(path), str(tmp_path / "a.pkl"), "--format", "detectron2"]) == 0
    assert '"tensors": 265' in capsys.readouterr().out
    assert (
        main(
            ["convert", str(tmp_path / "missing.ckpt"), str(tmp_path / "b.pkl"), "--format", "timm"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "does not exist" in err[-1]


def test_authors_release_converts(tmp_path):
    from tests.eval.helpers import authors_checkpoint

    path, backbone = authors_checkpoint(tmp_path / "mixmask_200ep.pth.tar")
    info = convert_checkpoint(path, tmp_path / "d2.pkl", "detectron2")
    assert (info["source"], info["arch"], info["tensors"]) == ("mixmask-authors", "resnet50", 265)
    with open(tmp_path / "d2.pkl", "rb") as f:
        model = pickle.load(f)["model"]
    assert set(model) == expected_detectron2_r50_keys()
    np.testing.assert_array_equal(model["stem.conv1.weight"], backbone["conv1.weight"].numpy())
    np.testing.assert_array_equal(
        model["res5.2.conv3.norm.running_var"], backbone["layer4.2.bn3.running_var"].numpy()
    )
    convert_checkpoint(path, tmp_path / "tv.pth", "torchvision")
    _torchvision_model("resnet50").load_state_dict(
        torch.load(tmp_path / "tv.pth", weights_only=True), strict=True
    )
