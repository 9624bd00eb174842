"""Embedding pictures: PNG + coordinates from the CLI, method in the title, missing packages."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch
from PIL import Image

from solo_mixmask.cli import main
from solo_mixmask.errors import ConfigError
from solo_mixmask.eval.embed import pick_method, project_2d
from tests.eval.helpers import class_folder_tree, method_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_setup(tmp_path):
    """(untrained tiny checkpoint, overrides for an ImageFolder whose val tree has 3 classes of
    5, 4 and 3 images)."""
    train = class_folder_tree(tmp_path / "train", {"a": 2, "b": 2, "c": 2})
    val = class_folder_tree(tmp_path / "val", {"a": 5, "b": 4, "c": 3}, seed=1)
    ckpt, _ = method_checkpoint(
        tmp_path / "tiny.ckpt", kwargs={"channels": [8, 16, 32, 64]}, cifar_stem=True
    )
    overrides = [
        "data.dataset=custom",
        f"data.train_path={train}",
        f"data.val_path={val}",
        "data.num_workers=0",
    ]
    return ckpt, overrides


def test_embed_writes_png_and_one_row_per_image(tiny_setup, tmp_path):
    pytest.importorskip("sklearn")
    ckpt, overrides = tiny_setup
    out = tmp_path / "emb"
    assert main(["embed", str(ckpt), "--method", "tsne", "--out", str(out), *overrides]) == 0
    with (out / "embed.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and sorted(int(r["index"]) for r in rows) == list(range(12))
    assert sorted(int(r["label"]) for r in rows) == [0] * 5 + [1] * 4 + [2] * 3
    assert all(abs(float(r["x"])) + abs(float(r["y"])) > 0 for r in rows)
    png = Image.open(out / "embed.png")
    assert png.format == "PNG" and "t-SNE (scikit-learn)" in png.text["Title"]
    summary = json.loads((out / "embed.json").read_text())
    assert (summary["method"], summary["images"]) == ("t-SNE (scikit-learn)", 12)
    # --num-images picks a seeded subset of the validation split
    few = tmp_path / "few"
    argv = ["embed", str(ckpt), "--method", "tsne", "--num-images", "6", "--out", str(few)]
    assert main([*argv, *overrides]) == 0
    with (few / "embed.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 6


def test_project_2d_shapes_and_too_few_images():
    pytest.importorskip("sklearn")
    feats = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    coords = project_2d(feats, "tsne", seed=0)
    assert coords.shape == (10, 2)
    with pytest.raises(Exception, match="at least 4 images"):
        project_2d(feats[:3], "tsne", seed=0)


def test_without_umap_or_sklearn_one_error_line_names_pip(tiny_setup, monkeypatch, capsys):
    ckpt, overrides = tiny_setup
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "umap", None)
    assert main(["embed", str(ckpt), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "pip install scikit-learn" in err[0]
    with pytest.raises(ConfigError, match="pip install umap-learn"):
        pick_method("umap")
    with pytest.raises(ConfigError, match="--method"):
        pick_method("pca")


def test_missing_checkpoint_gives_one_error_line(tmp_path, capsys):
    missing = tmp_path / "no" / "last.ckpt"
    assert main(["embed", str(missing), "--method", "tsne"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]


def test_an_unreadable_image_leaves_out_its_own_row(tiny_setup, tmp_path, capsys):
    """Once: a traceback (zip() argument 2 is shorter) after embed.png and a CSV whose rows
    after the unreadable image paired index i with the label and point of image i + 1."""
    pytest.importorskip("sklearn")
    ckpt, overrides = tiny_setup
    (tmp_path / "val" / "a" / "0.png").write_bytes(b"not an image")  # index 0 of 12
    out = tmp_path / "emb"
    assert main(["embed", str(ckpt), "--method", "tsne", "--out", str(out), *overrides]) == 0
    with (out / "embed.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["index"]) for r in rows) == list(range(1, 12))
    # the val tree: a (indices 0-4), b (5-8), c (9-11)
    class_of = [0] * 5 + [1] * 4 + [2] * 3
    assert all(int(r["label"]) == class_of[int(r["index"])] for r in rows), rows
    summary = json.loads((out / "embed.json").read_text())
    assert (summary["images"], summary["unreadable_images"]) == (11, 1)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.val_subset=20", "data.val_subset=20 is not allowed: expected --num-images 20"),
        ("data.train_subset=20", "expected --num-images (embed draws validation images only)"),
        ("precision=bf16-mixed", "expected nothing: embed extracts its features in float32"),
        ("knn_eval.k=5", "(embed does not read knn_eval)"),
        ("optimizer.lr=0.1", "(embed does not read optimizer.lr)"),
        ("method_kwargs.temperature=0.5", "(embed does not read method_kwargs)"),
        ("max_epochs=5", "(embed does not read max_epochs)"),
        ("backbone.cifar_stem=false", "the backbone is rebuilt from the checkpoint"),
        ("devices=2", "expected --device"),
    ],
)
def test_keys_embed_does_not_read_are_refused(tiny_setup, tmp_path, capsys, override, expected):
    """Once: accepted and ignored (data.val_subset=20 embedded every validation image)."""
    ckpt, overrides = tiny_setup
    out = tmp_path / "emb"
    argv = ["embed", str(ckpt), "--method", "tsne", "--out", str(out), *overrides, override]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not out.exists()


def test_more_images_than_the_split_holds_are_refused(tiny_setup, tmp_path, capsys):
    """Once: --num-images 20 on a 12-image split embedded 12, silently."""
    ckpt, overrides = tiny_setup
    out = tmp_path / "emb"
    argv = ["embed", str(ckpt), "--method", "tsne", "--num-images", "20", "--out", str(out)]
    assert main([*argv, *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --num-images=20 is not allowed"), err
    assert "(the validation split has 12 images)" in err[0], err
    assert not out.exists()
