"""Fine-tuning: the class-balanced seeded label subset, end-to-end training, the CLI and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from solo_mixmask.backbones import output_width
from solo_mixmask.checkpoints.backbone import load_backbone
from solo_mixmask.cli import main
from solo_mixmask.config.data_specs import data_spec
from solo_mixmask.config.eval_specs import finetune_settings
from solo_mixmask.data.datasets import build_dataset
from solo_mixmask.eval.features import eval_config, train_crop_transform
from solo_mixmask.eval.finetune import (
    PRESETS_DIR,
    SUBSET_FILE,
    balanced_subset,
    build_model,
    finetune_model,
    read_subset,
)
from solo_mixmask.eval.linear import new_linear_head
from solo_mixmask.eval.presets import load_preset, preset_defaults
from tests.eval.helpers import class_folder_tree, method_checkpoint

TINY_RESNET = {"channels": [8, 16, 32, 64]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_setup(tmp_path) -> tuple[Path, list[str]]:
    """(checkpoint of an untrained tiny ResNet-18, overrides pointing at an ImageFolder with
    classes a, b, c of 10, 10, 6 training images; its val tree has a and c only, so val targets
    must come from the training tree's numbering)."""
    train = class_folder_tree(tmp_path / "train", {"a": 10, "b": 10, "c": 6})
    val = class_folder_tree(tmp_path / "val", {"a": 4, "c": 4}, seed=1)
    ckpt, _ = method_checkpoint(tmp_path / "tiny.ckpt", kwargs=TINY_RESNET, cifar_stem=True)
    overrides = [
        "data.dataset=custom",
        f"data.train_path={train}",
        f"data.val_path={val}",
        "data.num_workers=0",
        "finetune.epochs=2",
        "finetune.batch_size=8",
    ]
    return ckpt, overrides


def test_subset_is_class_balanced_seeded_and_reproducible():
    targets = [0] * 100 + [1] * 100 + [2] * 50 + [-1] * 20
    chosen = balanced_subset(targets, 0.1, seed=3)
    counts = torch.bincount(torch.tensor([targets[i] for i in chosen]))
    assert counts.tolist() == [10, 10, 5]  # floor(0.1 * n_class) from each class, none unlabelled
    assert chosen == sorted(set(chosen))
    assert balanced_subset(targets, 0.1, seed=3) == chosen  # same seed, same images
    assert balanced_subset(targets, 0.1, seed=4) != chosen  # another seed, other images
    assert len(balanced_subset(targets, 0.001, seed=3)) == 3  # at least one per class
    assert balanced_subset(targets, 1.0, seed=3) == list(range(250))  # every labelled image
    assert len(balanced_subset(list(range(10)) * 100, 0.29, seed=0)) == 10 * 29  # no 28.99 -> 28


def test_presets_validate():
    for name in ("paper", "paper_1pct", "small"):
        s = finetune_settings(OmegaConf.create(load_preset(name, PRESETS_DIR)))
        assert s.epochs >= 1 and s.head_lr > 0 and s.backbone_lr > 0
    paper = finetune_settings(OmegaConf.create(load_preset("paper", PRESETS_DIR)))
    assert (paper.epochs, paper.lr_decay_epochs, paper.lr_decay_rate) == (20, (12, 16), 0.2)


def test_whole_network_is_trained(tiny_setup):
    """Fraction 1.0, the default mode: every backbone weight, BatchNorm statistic and the head
    change; nothing is frozen. A random init is the same architecture with other weights."""
    ckpt, overrides = tiny_setup
    lb = load_backbone(ckpt)
    preset = load_preset("small", PRESETS_DIR)
    cfg = eval_config(lb, ckpt, overrides, preset=preset, defaults=preset_defaults(PRESETS_DIR))
    s = finetune_settings(cfg)
    spec = data_spec(cfg)
    train = build_dataset(
        spec, "train_labeled", train_crop_transform(spec.crops[0], s.crop_min_scale)
    )
    backbone = build_model(lb, random_init=False, seed=0)
    head = new_linear_head(output_width(backbone, lb.arch, lb.kwargs), 3, s.init_std)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    head_before = head.weight.clone()
    history = finetune_model(backbone, head, train, s, torch.device("cpu"), seed=0)
    assert len(history) == 2 and all(h["loss"] > 0 for h in history)
    after = backbone.state_dict()
    unchanged = [k for k, v in before.items() if v.is_floating_point() and torch.equal(v, after[k])]
    assert unchanged == []
    assert not torch.equal(head.weight, head_before)
    fresh = build_model(lb, random_init=True, seed=0).state_dict()
    assert fresh.keys() == before.keys()
    assert not torch.equal(fresh["conv1.weight"], before["conv1.weight"])
    again = build_model(lb, random_init=True, seed=0).state_dict()
    assert torch.equal(fresh["conv1.weight"], again["conv1.weight"])


def test_finetune_cli_writes_result_and_subset(tiny_setup, tmp_path, capsys):
    ckpt, overrides = tiny_setup
    out = tmp_path / "ft"
    argv = ["finetune", str(ckpt), "--label-fraction", "0.5", "--preset", "small", *overrides]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "finetune.json").read_text())
    assert (result["label_fraction"], result["init"], result["preset"]) == (
        0.5,
        "checkpoint",
        "small",
    )
    assert result["train_images"] == 5 + 5 + 3 and result["labelled_pool"] == 26
    assert result["per_class"] == {"min": 3, "max": 5}
    assert result["val_images"] == 8 and result["features_dim"] == 64
    assert 0.0 <= result["acc1"] <= result["acc5"] <= 100.0
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["settings"]["epochs"] == 2 and result["settings"]["batch_size"] == 8
    rows = read_subset(out / SUBSET_FILE)
    assert len(rows) == 13
    names = {0: "a", 1: "b", 2: "c"}  # the training tree's class folders, sorted
    assert all(Path(path).parent.name == names[label] for _, label, path in rows)
    # the same seed picks the same images in another folder; --random-init is the same recipe
    again = tmp_path / "ft-random"
    assert main([*argv, "--out", str(again), "--random-init"]) == 0
    assert read_subset(again / SUBSET_FILE) == rows
    assert json.loads((again / "finetune.json").read_text())["init"] == "random"
    assert '"acc1"' in capsys.readouterr().out


def test_unreadable_chosen_images_are_left_out_of_the_counts_and_the_subset(tiny_setup, capsys):
    """train_images, per_class and label_subset.csv once counted the chosen files, unreadable
    ones included: a class whose one chosen image was unreadable trained on no label while
    per_class said 1, exit 0."""
    ckpt, overrides = tiny_setup
    train = Path(next(o for o in overrides if o.startswith("data.train_path=")).split("=", 1)[1])
    for path in (train / "c").iterdir():
        path.write_bytes(b"not an image")  # every image of class c
    out = ckpt.parent / "ft-bad"
    argv = ["finetune", str(ckpt), "--label-fraction", "0.2", "--preset", "small", *overrides]
    with pytest.warns(UserWarning, match=r"classes \['c'\] trained on no label"):
        assert main([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "finetune.json").read_text())
    assert (result["train_images"], result["unreadable_train_images"]) == (2 + 2, 1)
    assert result["per_class"] == {"min": 0, "max": 2}
    assert {Path(path).parent.name for _, _, path in read_subset(out / SUBSET_FILE)} == {"a", "b"}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--label-fraction", "0"], "--label-fraction=0.0"),
        (["--label-fraction", "1.5"], "--label-fraction=1.5"),
        (["--label-fraction", "nan"], "--label-fraction=nan"),
        (["--preset", "nope"], "--preset='nope'"),
    ],
)
def test_bad_inputs_give_one_error_line(tiny_setup, extra, needle, capsys):
    ckpt, overrides = tiny_setup
    assert main(["finetune", str(ckpt), *extra, *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]


def test_missing_checkpoint_gives_one_error_line(tmp_path, capsys):
    missing = tmp_path / "no" / "last.ckpt"
    assert main(["finetune", str(missing), "--label-fraction", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]


def test_a_narrow_backbone_is_finetuned_in_nchw_on_the_cpu(tmp_path, capsys):
    """A 4-channel ResNet's shortcut meets oneDNN's channels_last weight-gradient bug on the CPU
    (the process aborted here): finetune trains it in NCHW, says so once, and gets the figures
    of performance.channels_last=false."""
    train = class_folder_tree(tmp_path / "train", {"a": 6, "b": 6})
    narrow = {"channels": [4, 4, 4, 4]}
    ckpt, _ = method_checkpoint(tmp_path / "narrow.ckpt", kwargs=narrow, cifar_stem=True)
    argv = ["finetune", str(ckpt), "--preset", "small", "data.dataset=custom"]
    argv += [f"data.train_path={train}", f"data.val_path={train}", "data.num_workers=0"]
    argv += ["finetune.epochs=1", "finetune.batch_size=4"]
    results = []
    for layout in ("true", "false"):
        out = tmp_path / layout
        assert main([*argv, f"performance.channels_last={layout}", "--out", str(out)]) == 0
        said = [line for line in capsys.readouterr().err.splitlines() if "oneDNN" in line]
        assert len(said) == (1 if layout == "true" else 0), said
        results.append(json.loads((out / "finetune.json").read_text()))
    assert results[0]["history"] == results[1]["history"]
    assert results[0]["acc1"] == results[1]["acc1"]


def test_a_backbone_wider_than_its_num_features_is_finetuned(tmp_path, capsys):
    """mobilenetv3_small_050 outputs 1024 features (timm's num_features: 288): the head is
    built for what the backbone outputs, from the checkpoint and from a random init."""
    train = class_folder_tree(tmp_path / "train", {"a": 4, "b": 4}, size=16)
    ckpt, _ = method_checkpoint(tmp_path / "mb.ckpt", backbone="mobilenetv3_small_050")
    argv = ["finetune", str(ckpt), "--preset", "small", "--label-fraction", "1.0"]
    argv += ["data.dataset=custom", f"data.train_path={train}", f"data.val_path={train}"]
    argv += ["data.num_workers=0", "finetune.epochs=1", "finetune.batch_size=4"]
    for extra in ([], ["--random-init"]):
        out = tmp_path / f"out{len(extra)}"
        assert main([*argv, *extra, "--out", str(out)]) == 0, capsys.readouterr().err
        assert json.loads((out / "finetune.json").read_text())["features_dim"] == 1024
