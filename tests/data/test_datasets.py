"""Tests of solo_mixmask/data/datasets.py: idx reader, Fashion-MNIST, ImageFolder, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from solo_mixmask.config.data_specs import data_spec
from solo_mixmask.data import datasets as D
from solo_mixmask.errors import ConfigError, DataError
from tests.data.helpers import make_cfg, make_spec, needs_fmnist, save_rgb


def _write_idx(path: Path, array: np.ndarray) -> Path:
    """idx file by hand: 0, 0, dtype code 0x08 (uint8), ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


# --------------------------------------------------------------------------- idx reader


@pytest.mark.parametrize("name", ["a.idx.gz", "a.idx"])
def test_read_idx_hand_made(tmp_path, name):
    expected = np.array([[1, 2, 3], [4, 5, 250]], dtype=np.uint8)
    out = D.read_idx(_write_idx(tmp_path / name, expected))
    assert out.shape == (2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(DataError, match="not an idx file"):
        D.read_idx(tmp_path / "junk")
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(DataError, match="10"):
        D.read_idx(short)


# --------------------------------------------------------------------------- Fashion-MNIST


@needs_fmnist
def test_fashion_mnist_train_and_val():
    train = D.build_dataset(make_spec(), "train", None)
    val = D.build_dataset(make_spec(), "val", None)
    assert (len(train), len(val)) == (60000, 10000)
    img, label = train[0]
    assert label == 9  # the first training image is an ankle boot
    assert img.mode == "RGB" and img.size == (28, 28)
    assert sorted(set(train.targets)) == list(range(10))
    assert sorted(set(val.targets)) == list(range(10))
    # grayscale replicated: the three channels are equal
    arr = np.asarray(img)
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])


@needs_fmnist
def test_fashion_mnist_default_stats_match_the_data():
    train = D.build_dataset(make_spec(), "train", None)
    mean, std = D.default_stats("fashion_mnist")
    pixels = train.images.astype(np.float64) / 255.0
    assert mean == (mean[0],) * 3 and std == (std[0],) * 3
    assert abs(pixels.mean() - mean[0]) < 1e-3
    assert abs(pixels.std() - std[0]) < 1e-3


def test_fashion_mnist_train_path_comes_first(tmp_path):
    images = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1, 5]))
    ds = D.build_dataset(make_spec({"train_path": str(tmp_path)}), "train", None)
    assert len(ds) == 5 and ds.targets == [3, 1, 4, 1, 5]
    img, _ = ds[2]
    assert img.getpixel((1, 0)) == (33, 33, 33)  # images[2, 0, 1] = 2*16 + 1


def test_fashion_mnist_missing_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="dataset-fashion-mnist or set data.download=true"):
        D.build_dataset(data_spec(make_cfg()), "train", None)


def test_a_given_fashion_mnist_folder_is_used_or_refused_never_passed_over(tmp_path):
    """Issue 18: a data.train_path that did not exist (or held no idx files) was passed over for
    the system copy, and the run recorded the path it never read."""
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"data.train_path='{missing}' is not an existing folder"):
        D.build_dataset(make_spec({"train_path": str(missing)}), "train", None)
    with pytest.raises(DataError, match=f"data.val_path='{missing}' is not an existing folder"):
        D.build_dataset(make_spec({"val_path": str(missing)}), "val", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"not found in data.train_path='{empty}'"):
        D.build_dataset(make_spec({"train_path": str(empty)}), "train", None)


def test_default_stats():
    assert D.default_stats("cifar10") == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert D.default_stats("cifar100")[0] == (0.5071, 0.4865, 0.4409)
    for name in ("stl10", "imagenet", "imagenet100", "custom"):
        assert D.default_stats(name) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# --------------------------------------------------------------------------- torchvision / config


def test_cifar_missing_names_key_and_download(tmp_path):
    cfg = make_cfg({"dataset": "cifar10", "train_path": str(tmp_path)})
    with pytest.raises(DataError, match=r"data.train_path=.*data.download=true"):
        D.build_dataset(data_spec(cfg), "train", None)


def test_unknown_dataset_split_and_format():
    with pytest.raises(ConfigError, match="data.dataset='mnist'"):
        D.build_dataset(make_spec({"dataset": "mnist"}), "train", None)
    with pytest.raises(ConfigError, match="data.format='dali'"):
        D.build_dataset(make_spec({"format": "dali"}), "train", None)
    with pytest.raises(ValueError, match="split='test'"):
        D.build_dataset(make_spec(), "test", None)


def test_cache_folder_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SOLO_MIXMASK_DATA", str(tmp_path))
    assert D.default_root("cifar10") == tmp_path / "cifar10"
    monkeypatch.delenv("SOLO_MIXMASK_DATA")
    assert D.default_root("cifar10") == Path.home() / ".cache" / "solo_mixmask" / "cifar10"


# --------------------------------------------------------------------------- ImageFolder


def _labeled_tree(root: Path) -> Path:
    save_rgb(root / "cat" / "a.png", (200, 10, 10))
    save_rgb(root / "cat" / "b.JPG", (200, 10, 10))
    save_rgb(root / "dog" / "c.png", (10, 10, 200))
    save_rgb(root / "dog" / "sub" / "d.png", (10, 10, 200))
    save_rgb(root / ".ipynb_checkpoints" / "e.png", (0, 0, 0))  # hidden: ignored
    (root / "dog" / "notes.txt").write_text("not an image")  # wrong extension: ignored
    return root


def test_image_folder_with_labels(tmp_path):
    root = _labeled_tree(tmp_path / "train")
    cfg = make_cfg({"dataset": "custom", "train_path": str(root)})
    ds = D.build_dataset(data_spec(cfg), "train", None)
    assert ds.classes == ["cat", "dog"]
    assert ds.targets == [0, 0, 1, 1]
    img, target = ds[3]
    assert target == 1 and img.mode == "RGB" and img.getpixel((0, 0)) == (10, 10, 200)
    assert D.num_classes(data_spec(cfg)) == 2


def test_image_folder_flat_without_labels(tmp_path):
    for i in range(3):
        save_rgb(tmp_path / f"img{i}.png", (i, i, i))
    cfg = make_cfg({"dataset": "custom", "train_path": str(tmp_path), "no_labels": True})
    ds = D.build_dataset(data_spec(cfg), "train", None)
    assert len(ds) == 3 and ds.targets == [-1, -1, -1]
    img, target = ds[2]
    assert target == -1 and img.getpixel((0, 0)) == (2, 2, 2)
    assert D.num_classes(data_spec(cfg)) == 1


def test_image_folder_flat_with_labels_asks_for_no_labels(tmp_path):
    save_rgb(tmp_path / "img.png", (1, 2, 3))
    cfg = make_cfg({"dataset": "custom", "train_path": str(tmp_path)})
    with pytest.raises(DataError, match="data.no_labels=true"):
        D.build_dataset(data_spec(cfg), "train", None)


def test_image_folder_missing_path_names_key(tmp_path):
    missing = tmp_path / "nowhere"
    cfg = make_cfg({"dataset": "imagenet", "train_path": str(missing)})
    with pytest.raises(DataError, match=f"data.train_path='{missing}'"):
        D.build_dataset(data_spec(cfg), "train", None)
    with pytest.raises(DataError, match="data.val_path is not set"):
        D.build_dataset(data_spec(cfg), "val", None)


def test_image_folder_empty_raises(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("no images here")
    cfg = make_cfg({"dataset": "custom", "train_path": str(tmp_path)})
    with pytest.raises(DataError, match="holds no image files"):
        D.build_dataset(data_spec(cfg), "train", None)
    cfg = make_cfg({"dataset": "custom", "train_path": str(tmp_path), "no_labels": True})
    with pytest.raises(DataError, match="holds no image files"):
        D.build_dataset(data_spec(cfg), "train", None)


def test_num_classes_table_and_override():
    assert D.num_classes(make_spec()) == 10
    assert D.num_classes(make_spec({"dataset": "imagenet100"})) == 100
    assert D.num_classes(make_spec({"dataset": "cifar100", "num_classes": 7})) == 7
    with pytest.raises(ConfigError, match="data.num_classes=0"):
        D.num_classes(make_spec({"num_classes": 0}))


def test_subset_indices_deterministic():
    a = D.subset_indices(100, 10, seed=5)
    assert a == D.subset_indices(100, 10, seed=5)
    assert a != D.subset_indices(100, 10, seed=6)
    assert a == sorted(a) and len(set(a)) == 10 and all(0 <= i < 100 for i in a)
    assert D.subset_indices(100, None, seed=5) is None
    assert D.subset_indices(100, 100, seed=5) is None


# --------------------------------------------------------------------------- one class map

COLOURS = {"a": (250, 0, 0), "b": (0, 250, 0), "c": (0, 0, 250), "d": (250, 250, 0)}


def _colour_tree(root: Path, classes: str, per_class: int = 2) -> Path:
    """One sub-folder per class letter, ``per_class`` solid images of the class's colour."""
    for c in classes:
        for i in range(per_class):
            save_rgb(root / c / f"{i}.png", COLOURS[c])
    return root


def test_val_classes_are_numbered_like_train(tmp_path):
    train = _colour_tree(tmp_path / "train", "abc")
    val = _colour_tree(tmp_path / "val", "bc")
    cfg = make_cfg({"dataset": "custom", "train_path": str(train), "val_path": str(val)})
    tr = D.build_dataset(data_spec(cfg), "train", None)
    labeled = D.build_dataset(data_spec(cfg), "train_labeled", None)
    va = D.build_dataset(data_spec(cfg), "val", None)
    assert tr.targets == labeled.targets == [0, 0, 1, 1, 2, 2]
    assert va.targets == [1, 1, 2, 2]  # train's indices of 'b' and 'c', not 0 and 1
    assert tr.classes == labeled.classes == va.classes == ["a", "b", "c"]
    assert va.class_to_idx == tr.class_to_idx == {"a": 0, "b": 1, "c": 2}
    for img, target in (va[i] for i in range(len(va))):
        assert img.getpixel((0, 0)) == COLOURS[tr.classes[target]]
    assert D.num_classes(data_spec(cfg)) == 3


@pytest.mark.parametrize("split", ["train", "val"])
def test_more_class_folders_than_the_class_count_is_refused(tmp_path, monkeypatch, split):
    """Once a 4-folder tree with data.num_classes=3 (or a dataset's fixed count) trained until
    the classifier met target 3: an IndexError traceback, or a device-side assert on a GPU."""
    tree = _colour_tree(tmp_path / "train", "abcd", per_class=1)
    paths = {"train_path": str(tree), "val_path": str(tree)}
    with pytest.raises(ConfigError, match=r"data.num_classes=3 is not allowed: expected 4 or more"):
        D.build_dataset(make_spec({"dataset": "custom", "num_classes": 3, **paths}), split, None)
    assert (
        len(
            D.build_dataset(
                make_spec({"dataset": "custom", "num_classes": 4, **paths}), split, None
            )
        )
        == 4
    )
    monkeypatch.setitem(D.DATASET_NUM_CLASSES, "imagenet100", 3)
    with pytest.raises(
        ConfigError, match=r"data.dataset='imagenet100' is not allowed: expected a tree of 3"
    ):
        D.build_dataset(make_spec({"dataset": "imagenet100", **paths}), split, None)


def test_val_class_unknown_to_training_raises(tmp_path):
    train = _colour_tree(tmp_path / "train", "ab")
    val = _colour_tree(tmp_path / "val", "bd")
    cfg = make_cfg({"dataset": "custom", "train_path": str(train), "val_path": str(val)})
    with pytest.raises(DataError) as info:
        D.build_dataset(data_spec(cfg), "val", None)
    message = str(info.value)
    assert "'d'" in message and "'b'" not in message
    assert f"data.val_path={str(val)!r}" in message
    assert f"data.train_path={str(train)!r}" in message
    assert "\n" not in message
    assert D.build_dataset(data_spec(cfg), "train", None).targets == [
        0,
        0,
        1,
        1,
    ]  # train itself is fine


def test_val_needs_the_training_tree_for_its_class_map(tmp_path):
    val = _colour_tree(tmp_path / "val", "ab")
    cfg = make_cfg({"dataset": "custom", "val_path": str(val)})
    with pytest.raises(DataError, match="data.train_path"):
        D.build_dataset(data_spec(cfg), "val", None)


# --------------------------------------------------------------------------- strict booleans


@pytest.mark.parametrize("key", ["data.no_labels", "data.strict", "data.scan_images"])
def test_boolean_data_keys_take_only_true_or_false(tmp_path, capsys, key):
    """Through the CLI (show-masks builds the dataset without a pretraining config check):
    bool('maybe') was True, so `data.no_labels=maybe` read an unlabeled folder."""
    from solo_mixmask.cli import main

    for cls in ("a", "b"):
        for i in range(3):
            save_rgb(tmp_path / "tree" / cls / f"{i}.png", (40 * i, 0, 200), size=20)
    out = tmp_path / "masks.png"
    argv = ["show-masks", "--num-images", "2", "--out", str(out), "data.dataset=custom"]
    code = main([*argv, f"data.train_path={tmp_path / 'tree'}", f"{key}=maybe"])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {key}='maybe' is not allowed: expected true or false"], err[-3000:]
    assert not out.exists()
    with pytest.raises(ConfigError, match=key):
        D.build_dataset(
            make_spec(
                {"dataset": "custom", "train_path": str(tmp_path / "tree"), key.split(".")[1]: "no"}
            ),
            "train",
            None,
        )
