"""Linear probe: head init, step schedule, learning on features, real runs, the authors' layout."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from solo_mixmask.checkpoints.backbone import load_backbone
from solo_mixmask.config.eval_specs import linear_settings
from solo_mixmask.errors import ConfigError
from solo_mixmask.eval.features import eval_config, output_dir, output_path
from solo_mixmask.eval.linear import (
    LinearSettings,
    evaluate_head,
    load_preset,
    new_linear_head,
    run_linear,
    train_on_features,
)
from solo_mixmask.eval.offline_knn import run_knn
from tests.eval.helpers import authors_checkpoint, class_folder_tree, method_checkpoint


def _settings(**kw) -> LinearSettings:
    base = dict(
        epochs=5,
        batch_size=16,
        lr=1.0,
        momentum=0.9,
        weight_decay=0.0,
        lr_decay_epochs=(2, 4),
        lr_decay_rate=0.1,
        init_std=0.01,
        train_subset=None,
        val_subset=None,
        crop_min_scale=0.08,
    )
    return LinearSettings(**{**base, **kw})


def test_head_initialisation():
    torch.manual_seed(0)
    head = new_linear_head(512, 100, 0.01)
    assert torch.count_nonzero(head.bias) == 0
    assert abs(head.weight.std().item() - 0.01) < 0.0005
    assert abs(head.weight.mean().item()) < 0.0005


def test_learns_separable_features_with_step_schedule():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    feats = torch.nn.functional.one_hot(y, 3).float() * 2 + 0.1 * torch.randn(90, 3, generator=g)
    head, history = train_on_features(feats, y, 3, _settings(), seed=0)
    assert [round(h["lr"], 6) for h in history] == [1.0, 1.0, 0.1, 0.1, 0.01]
    assert history[-1]["acc1"] == 100.0
    assert evaluate_head(head, feats, y) == (100.0, 100.0)


def test_evaluate_head_top1_top5_by_hand():
    # identity head: the logits are the features. Each row ranks its target at the given place
    # (0 = top); image 4 is unlabelled. Top-1 hits image 0 alone (1 of 5 labelled images),
    # top-5 all but image 2 (target ranked 6th): 20% and 80%.
    targets = torch.tensor([2, 0, 5, 1, -1, 3])
    ranks = [0, 3, 5, 1, 0, 4]
    feats = torch.empty(6, 6)
    for i, (target, rank) in enumerate(zip(targets.clamp(min=0).tolist(), ranks)):
        order = [c for c in range(6) if c != target]
        order.insert(rank, target)
        feats[i, order] = torch.arange(6, 0, -1, dtype=torch.float32)
    head = torch.nn.Linear(6, 6)
    with torch.no_grad():
        head.weight.copy_(torch.eye(6))
        head.bias.zero_()
    top1, top5 = evaluate_head(head, feats, targets)
    assert (top1, top5) == (pytest.approx(20.0), pytest.approx(80.0))
    # fewer classes than 5: top-5 is top-3, every labelled image a hit
    assert evaluate_head(torch.nn.Linear(6, 3), feats, targets.clamp(max=2))[1] == 100.0


def test_presets_and_settings():
    seed = linear_settings(OmegaConf.create(load_preset("seed")))
    assert (
        seed.epochs,
        seed.batch_size,
        seed.lr,
        seed.momentum,
        seed.weight_decay,
        seed.lr_decay_epochs,
        seed.lr_decay_rate,
        seed.init_std,
    ) == (100, 256, 30.0, 0.9, 0.0, (60, 80), 0.1, 0.01)
    small = linear_settings(OmegaConf.create(load_preset("small")))
    assert small.train_subset == 10000 and small.epochs < seed.epochs
    with pytest.raises(ConfigError, match="--preset"):
        load_preset("nope")
    bad = OmegaConf.create(load_preset("seed"))
    bad.linear.lr_decay_epochs = [60, "x"]
    with pytest.raises(ConfigError, match="linear.lr_decay_epochs"):
        linear_settings(bad)


def test_linear_on_a_real_run_cached_and_images(tiny_runs, tmp_path):
    ckpt = tiny_runs["mixmask"] / "checkpoints" / "last.ckpt"
    common = ["linear.train_subset=64", "linear.val_subset=48", "linear.batch_size=32"]
    cached = run_linear(
        ckpt,
        "small",
        [*common, "linear.epochs=3"],
        cached=True,
        out=tmp_path / "cached.json",
        device="cpu",
    )
    assert cached["cached_features"] is True
    assert (cached["train_images"], cached["val_images"]) == (64, 48)
    assert 0.0 <= cached["acc1"] <= cached["acc5"] <= 100.0
    assert json.loads((tmp_path / "cached.json").read_text())["acc1"] == cached["acc1"]
    images = run_linear(
        ckpt,
        "small",
        [*common, "linear.epochs=1"],
        cached=False,
        out=tmp_path / "images.json",
        device="cpu",
    )
    assert images["cached_features"] is False and images["train_augmentation"].startswith(
        "RandomResizedCrop"
    )
    assert 0.0 <= images["acc1"] <= images["acc5"] <= 100.0
    # default location: next to the run
    assert output_path(ckpt, "linear", None) == tiny_runs["mixmask"] / "linear.json"


def test_eval_config_layers(tiny_runs, tmp_path):
    ckpt = tiny_runs["mocov2plus"] / "checkpoints" / "last.ckpt"
    lb = load_backbone(ckpt)
    cfg = eval_config(lb, ckpt, [])
    assert cfg.data.knn_train_subset == 64 and cfg.augmentations[0].crop_size == 16  # the run's
    cfg = eval_config(lb, ckpt, ["data.dataset=cifar100", "augmentations.0.crop_size=32"])
    assert cfg.data.num_classes is None and cfg.augmentations[0].crop_size == 32
    with pytest.raises(ConfigError, match="key=value"):
        eval_config(lb, ckpt, ["data.dataset"])
    path, _ = authors_checkpoint(tmp_path / "release.pth.tar")
    bare = load_backbone(path)
    assert eval_config(bare, path, []).augmentations[0].crop_size == 28  # fashion_mnist default
    assert eval_config(bare, path, ["data.dataset=imagenet"]).augmentations[0].crop_size == 224
    assert output_path(path, "knn", None) == tmp_path / "release.knn.json"


def test_other_training_images_are_counted_anew(tmp_path):
    # the run's data.num_classes (4) was kept for a 6-class data.train_path: a 4-wide head,
    # then IndexError "Target 5 is out of bounds" (finetune and knn read the same count)
    four = class_folder_tree(tmp_path / "four", dict.fromkeys("abcd", 3))
    six = class_folder_tree(tmp_path / "six", dict.fromkeys("abcdef", 3))
    data = {"dataset": "custom", "train_path": str(four), "val_path": str(four), "num_classes": 4}
    ckpt, _ = method_checkpoint(
        tmp_path / "m.ckpt", kwargs={"channels": [8, 16, 32, 64]}, data=data
    )
    lb = load_backbone(ckpt)
    assert eval_config(lb, ckpt, []).data.num_classes == 4  # the run's, for the run's images
    assert eval_config(lb, ckpt, ["data.num_classes=6"]).data.num_classes == 6
    settings = ["linear.epochs=1", "linear.batch_size=6", "augmentations.0.crop_size=16"]
    result = run_linear(
        ckpt,
        "small",
        [f"data.train_path={six}", f"data.val_path={six}", *settings],
        out=tmp_path / "six.json",
        device="cpu",
    )
    assert result["num_classes"] == 6 and result["train_images"] == result["val_images"] == 18


@pytest.mark.filterwarnings("ignore:skipping unreadable image")
@pytest.mark.parametrize(("cached", "workers"), [(True, 0), (False, 2)])
def test_unreadable_training_images_are_not_counted_as_trained(tmp_path, cached, workers):
    """train_images once counted the listed files: 3 that could not be decoded (skipped with a
    warning) were reported as trained, exit 0."""
    tree = class_folder_tree(tmp_path / "tree", {"a": 4, "b": 4})
    for name in ("zero.jpg", "junk.png", "notes.jpg"):
        (tree / "a" / name).write_bytes(b"" if name == "zero.jpg" else b"not an image")
    data = {"dataset": "custom", "train_path": str(tree), "val_path": str(tree)}
    ckpt, _ = method_checkpoint(
        tmp_path / "m.ckpt", kwargs={"channels": [8, 16, 32, 64]}, data=data
    )
    settings = ["linear.epochs=1", "linear.batch_size=4", "augmentations.0.crop_size=16"]
    result = run_linear(
        ckpt,
        "small",
        [*settings, f"data.num_workers={workers}"],
        out=tmp_path / "l.json",
        device="cpu",
        cached=cached,
    )
    assert (result["train_images"], result["unreadable_train_images"]) == (8, 3)


def test_checkpoints_outside_a_run_get_results_of_their_own(tmp_path):
    # model.ep0.ckpt and model.ep1.ckpt both wrote model.linear.json / model.embed/
    paths = [output_path(tmp_path / f"model.ep{i}.ckpt", "linear", None) for i in (0, 1)]
    assert paths == [tmp_path / "model.ep0.linear.json", tmp_path / "model.ep1.linear.json"]
    assert output_dir(tmp_path / "model.ep1.ckpt", "embed", None) == tmp_path / "model.ep1.embed"
    assert output_dir(tmp_path / "weights", "embed", None) == tmp_path / "weights.embed"


def test_authors_checkpoint_evaluates(tmp_path):
    path, _ = authors_checkpoint(tmp_path / "mixmask_200ep.pth.tar")
    overrides = [
        "data.dataset=fashion_mnist",
        "data.knn_train_subset=40",
        "data.val_subset=16",
        "optimizer.batch_size=20",
        "data.num_workers=0",
        "augmentations.0.crop_size=32",
    ]
    result = run_knn(path, ks=[5, 20], overrides=overrides, device="cpu")
    assert (result["source"], result["arch"], result["features_dim"]) == (
        "mixmask-authors",
        "resnet50",
        2048,
    )
    assert (result["train_images"], result["val_images"]) == (40, 16)
    assert set(result["k"]) == {"5", "20"} and "online" not in result
    assert (tmp_path / "mixmask_200ep.knn.json").is_file()


def test_images_train_a_head_as_wide_as_the_pooled_output(tmp_path):
    """mobilenetv3_small_050 outputs 1024 features, where timm's num_features says 288 (its
    conv_head widens them after the pooling): the head trained on images takes 1024."""
    train = class_folder_tree(tmp_path / "train", {"a": 4, "b": 4}, size=16)
    ckpt, _ = method_checkpoint(tmp_path / "mb.ckpt", backbone="mobilenetv3_small_050")
    overrides = [
        "data.dataset=custom",
        f"data.train_path={train}",
        f"data.val_path={train}",
        "data.num_workers=0",
        "linear.epochs=1",
        "linear.batch_size=4",
    ]
    result = run_linear(
        ckpt, "small", overrides, cached=False, out=tmp_path / "lin.json", device="cpu"
    )
    assert result["features_dim"] == 1024 and result["val_images"] == 8
