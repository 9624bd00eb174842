"""Val class folders are numbered like the TRAINING tree's, through the real CLI: a tiny
pretraining run (train classes {a, b, c}, val classes {b, c}) gets a right k-NN online and with
``solo-mixmask knn``; a val class unknown to training is one ``error:`` line with exit 2.

Each class is a distinct solid colour, so the val images equal training images of their own
class and a 1-NN vote is right whatever the (tiny, barely trained) backbone: 100%, where
per-split numbering (val 'b' = 0, train 'b' = 1) gave exactly 0%. Issue 18: links between class
folders never relabel or repeat an image, and an unreadable val image is skipped, not replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import TINY, custom_data, error_lines, run_many

COLOURS = {"a": (250, 0, 0), "b": (0, 250, 0), "c": (0, 0, 250), "d": (250, 250, 0)}


def _tree(root: Path, classes: str, per_class: int) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((20, 20, 3), COLOURS[c], dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )
    return root


def _pretrain(train: Path, val: Path, run_dir: Path) -> list[str]:
    return [
        "pretrain",
        *TINY,
        *custom_data(train, val),
        "knn_eval.k=1",
        f"checkpoint.run_dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("class_folders")
    train = _tree(base / "train", "abc", 8)
    val = _tree(base / "val", "bc", 3)
    bad_val = _tree(base / "bad_val", "bd", 3)
    good, bad = run_many(
        [_pretrain(train, val, base / "run"), _pretrain(train, bad_val, base / "run_bad")],
        timeout=400,
        parallel=2,
    )
    assert good.returncode == 0, good.stderr[-3000:]
    ckpt = json.loads((base / "run" / "summary.json").read_text())["checkpoint"]
    knn, knn_bad = run_many(
        [
            ["knn", ckpt, "--k", "1", "--device", "cpu"],
            ["knn", ckpt, "--k", "1", "--device", "cpu", f"data.val_path={bad_val}"],
        ],
        timeout=400,
        parallel=2,
    )
    return {
        "base": base,
        "train": train,
        "bad_val": bad_val,
        "good": good,
        "bad": bad,
        "knn": knn,
        "knn_bad": knn_bad,
    }


def test_online_knn_uses_the_training_class_numbers(runs):
    summary = json.loads((runs["base"] / "run" / "summary.json").read_text())
    assert summary["knn_acc1"] == 100.0, summary


def test_offline_knn_uses_the_training_class_numbers(runs):
    assert runs["knn"].returncode == 0, runs["knn"].stderr[-3000:]
    result = json.loads((runs["base"] / "run" / "knn.json").read_text())
    assert result["val_images"] == 6 and result["train_images"] == 24
    assert result["k"]["1"]["acc1"] == 100.0, result


@pytest.mark.parametrize("name", ["bad", "knn_bad"])
def test_val_class_unknown_to_training_is_one_error_line(runs, name):
    result = runs[name]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert "'d'" in lines[0] and "'b'" not in lines[0], lines[0]
    assert f"data.val_path={str(runs['bad_val'])!r}" in lines[0], lines[0]
    assert f"data.train_path={str(runs['train'])!r}" in lines[0], lines[0]
    if name == "bad":
        assert not (runs["base"] / "run_bad").exists()  # fails before the run folder is made


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """Issue 18: links inside class folders (`ln -s ../a train/b/alias`, links to `..` and to
    the training root) listed images again under the linking class (24 files made 64 training
    images); a class folder that is a link to another one gave its images two classes."""
    base = tmp_path_factory.mktemp("linked_class_folders")
    train = _tree(base / "train", "abc", 8)
    val = _tree(base / "val", "bc", 3)
    (train / "b" / "alias").symlink_to("../a")
    (train / "c" / "up").symlink_to("..")
    (train / "a" / "root").symlink_to(train)
    twin = _tree(base / "twin", "abc", 8)
    (twin / "d").symlink_to("a")
    good, bad = run_many(
        [_pretrain(train, val, base / "run"), _pretrain(twin, val, base / "run_twin")],
        timeout=400,
        parallel=2,
    )
    return {"base": base, "twin": twin, "good": good, "bad": bad}


def test_links_between_class_folders_list_each_image_once_with_its_class(linked):
    assert linked["good"].returncode == 0, linked["good"].stderr[-3000:]
    summary = json.loads((linked["base"] / "run" / "summary.json").read_text())
    assert summary["train_images"] == 24, summary  # 3 classes x 8 files, each once
    assert summary["knn_acc1"] == 100.0, summary  # k-NN memory: 24 images, right labels


def test_a_class_folder_that_links_to_another_is_one_error_line(linked):
    result = linked["bad"]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"data.train_path={str(linked['twin'])!r}" in lines[0], lines[0]
    assert "class folders 'a' and 'd' are the same folder" in lines[0], lines[0]


def test_an_unreadable_val_image_is_skipped_not_replaced(tmp_path):
    """Issue 18: a corrupt validation image was replaced by the next one, which the k-NN
    accuracy then counted twice (64 readable images scored out of 65). Val 'b' holds a green
    image (right), an unreadable file and a blue one (scored as 'c', wrong): 1 of 2 = 50%, where
    the replacement gave 1 of 3."""
    train = _tree(tmp_path / "train", "abc", 8)
    val = _tree(tmp_path / "val", "b", 1)
    (val / "b" / "1.png").write_bytes(b"not a png")
    Image.fromarray(np.full((20, 20, 3), COLOURS["c"], dtype=np.uint8)).save(val / "b" / "2.png")
    (result,) = run_many([_pretrain(train, val, tmp_path / "run")], timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["knn_acc1"] == 50.0, summary
    assert summary["bad_images"] == 1 and summary["bad_image_files"] == [str(val / "b" / "1.png")]
