"""Issue 6: unusual image modes decode to correct RGB; unreadable files are skipped or fatal."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from solo_mixmask.config.data_specs import data_spec
from solo_mixmask.data import datasets as D
from solo_mixmask.errors import DataError
from tests.data.helpers import make_cfg

GOOD = ("a_rgba.png", "b_cmyk.jpg", "c_16bit.png", "d_gray.png", "e_palette.png")
BAD = ("f_truncated.jpg", "g_empty.jpg", "h_text.png")


def _write_faulty_folder(folder: Path) -> Path:
    """Five decodable images of unusual modes and three unreadable files, in sorted order."""
    folder.mkdir(parents=True)
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[...] = (255, 0, 0, 128)  # half-transparent red
    Image.fromarray(rgba, mode="RGBA").save(folder / GOOD[0])
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / GOOD[1], quality=95)  # red
    sixteen = np.array([[0, 1000], [32896, 65535]], dtype=np.uint16)
    Image.fromarray(sixteen).save(folder / GOOD[2])
    Image.new("L", (6, 6), 77).save(folder / GOOD[3])
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    palette.save(folder / GOOD[4])
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    (folder / BAD[0]).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / BAD[1]).write_bytes(b"")
    (folder / BAD[2]).write_text("this is a text file, not a PNG\n")
    return folder


@pytest.fixture()
def faulty(tmp_path) -> Path:
    return _write_faulty_folder(tmp_path / "imgs")


def _cfg(root: Path, **data):
    return make_cfg({"dataset": "custom", "train_path": str(root), "no_labels": True, **data})


def test_unusual_modes_decode_to_rgb(faulty):
    rgba, cmyk, sixteen, gray, palette = (D.load_image_rgb(faulty / n) for n in GOOD)
    for img in (rgba, cmyk, sixteen, gray, palette):
        assert img.mode == "RGB"
    # red at alpha 128 over white: G = B = 255 * (1 - 128/255) = 127
    assert all(abs(a - b) <= 1 for a, b in zip(rgba.getpixel((3, 3)), (255, 127, 127)))
    # CMYK (0, 255, 255, 0) is red; JPEG is lossy so allow a small error
    assert all(abs(a - b) <= 8 for a, b in zip(cmyk.getpixel((8, 8)), (255, 0, 0)))
    # 16-bit scaled by 255/65535: 1000 -> 3.89 -> 4 (clipping would give 255), 32896 -> 128
    assert [sixteen.getpixel((x, y))[0] for y in (0, 1) for x in (0, 1)] == [0, 4, 128, 255]
    assert gray.getpixel((2, 2)) == (77, 77, 77)
    assert palette.getpixel((2, 2)) == (10, 200, 30)


def test_other_modes_in_memory():
    int32 = Image.fromarray(np.array([[65535, 257]], dtype=np.int32))
    assert int32.mode == "I"
    assert D.to_rgb(int32).getpixel((0, 0)) == (255, 255, 255)
    assert D.to_rgb(int32).getpixel((1, 0)) == (1, 1, 1)
    la = Image.new("LA", (2, 2), (0, 0))  # black, fully transparent -> white
    assert D.to_rgb(la).getpixel((0, 0)) == (255, 255, 255)
    trans = Image.new("P", (2, 1), 0)
    trans.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    trans.putpixel((1, 0), 1)
    trans.info["transparency"] = 0  # palette entry 0 is transparent -> white
    assert [D.to_rgb(trans).getpixel((x, 0)) for x in (0, 1)] == [(255, 255, 255), (10, 200, 30)]
    floats = Image.fromarray(np.array([[0.5, 1.0]], dtype=np.float32))
    assert D.to_rgb(floats).getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("name", BAD)
def test_bad_files_raise_data_error_naming_them(faulty, name):
    with pytest.raises(DataError, match=name):
        D.load_image_rgb(faulty / name)


def test_scan_image_folder(faulty):
    good, bad = D.scan_image_folder(faulty)
    assert [Path(p).name for p in good] == list(GOOD)
    assert [Path(p).name for p in bad] == list(BAD)


def test_bad_files_skipped_with_one_warning_each(faulty):
    ds = D.build_dataset(data_spec(_cfg(faulty)), "train", None)
    assert len(ds) == 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = [ds[i] for i in range(len(ds))]
        second = [ds[i] for i in range(len(ds))]
    messages = [str(w.message) for w in caught if issubclass(w.category, D.BadImageWarning)]
    assert len(messages) == 3
    for name in BAD:
        assert sum(name in m for m in messages) == 1
    assert [Path(p).name for p in ds.bad_files] == list(BAD)
    # a bad file is skipped (None), never replaced by another image
    assert [item is None for item in first] == [False] * 5 + [True] * 3
    assert second[5:] == [None] * 3
    for a, b in zip(first[:5], second[:5]):
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_loaders_leave_bad_files_out_of_every_batch(faulty):
    """Evaluation and training batches hold the readable images only, each once: a bad file
    is never replaced by its neighbour (which then counted twice in the k-NN accuracy)."""
    from solo_mixmask.data.loaders import (
        ReadableLoader,
        collate_readable,
        collate_training,
    )

    ds = D.build_dataset(data_spec(_cfg(faulty)), "train", lambda img: img.getpixel((0, 0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.BadImageWarning)
        loader = ReadableLoader(ds, batch_size=3, collate_fn=collate_readable)
        sizes = [len(targets) for _, targets in loader]
        assert sizes == [3, 2]  # a, b, c | d, e, (f) | (g, h): a batch of none is left out
        indexed = list(range(8))
        batch = collate_training([(i, *ds[i]) if ds[i] is not None else None for i in indexed])
    assert batch[0].tolist() == [0, 1, 2, 3, 4]  # indexes of the readable images, each once
    with pytest.raises(DataError, match="1 readable image.* of 3: it needs at least 2"):
        collate_training([(4, *ds[4]), None, None])


def test_strict_raises_naming_the_file(faulty):
    ds = D.build_dataset(data_spec(_cfg(faulty, strict=True)), "train", None)
    assert ds[0][0].mode == "RGB"
    with pytest.raises(DataError, match="f_truncated.jpg"):
        ds[5]


def test_scan_images_drops_bad_files_at_build(faulty):
    with pytest.warns(D.BadImageWarning):
        ds = D.build_dataset(data_spec(_cfg(faulty, scan_images=True)), "train", None)
    assert [Path(p).name for p, _ in ds.samples] == list(GOOD)
    with pytest.raises(DataError, match="f_truncated.jpg"):
        D.build_dataset(data_spec(_cfg(faulty, scan_images=True, strict=True)), "train", None)


def test_folder_of_only_bad_files(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    (tmp_path / "y.jpg").write_bytes(b"")
    ds = D.build_dataset(data_spec(_cfg(tmp_path)), "train", None)
    with pytest.warns(D.BadImageWarning), pytest.raises(DataError, match="can be decoded"):
        ds[1]


# --------------------------------------------------------------------------- loops and FIFOs


def _child(conn, fn, args):
    try:
        conn.send(fn(*args))
    except BaseException as err:  # sent back and raised in the test
        conn.send(err)


def _within(seconds: float, fn, *args):
    """``fn(*args)`` in a forked child, failing the test (not hanging it) after ``seconds``."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(seconds):
            pytest.fail(f"{fn.__name__}{args} did not finish in {seconds}s")
        result = recv.recv()
    finally:
        proc.kill()
        proc.join()
    if isinstance(result, BaseException):
        raise result
    return result


def _names(paths: list[str], root: Path) -> list[str]:
    return [str(Path(p).relative_to(root)) for p in paths]


def _read_all(cfg) -> list[tuple[tuple[int, int, int], int]]:
    ds = D.build_dataset(data_spec(cfg), "train", None)
    return [(img.getpixel((0, 0)), target) for img, target in (ds[i] for i in range(len(ds)))]


def test_two_links_to_the_folder_itself_terminate(tmp_path):
    root = tmp_path / "imgs"
    for name in ("a.png", "sub/b.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (1, 2, 3)).save(root / name)
    (root / "loop1").symlink_to(".")
    (root / "sub" / "up").symlink_to("..")  # a link to an ancestor
    assert _names(_within(15, D.list_image_files, root), root) == ["a.png", "sub/b.png"]
    assert _within(15, _read_all, _cfg(root)) == [((1, 2, 3), -1)] * 2


def test_one_link_to_the_folder_itself_lists_each_image_once(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(root / "a.png")
    (root / "here").symlink_to(".")
    (root / "b.png").symlink_to("a.png")  # a second name of a listed file: listed once
    (root / "c.png").symlink_to("missing.png")  # a broken link is not an image
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (4, 4), (4, 5, 6)).save(outside / "d.png")
    Image.new("RGB", (4, 4), (7, 8, 9)).save(outside / "e.png")
    (root / "linked").symlink_to(outside)  # a link to another folder is followed
    (root / "z.png").symlink_to(outside / "e.png")  # a file link: e.png is listed once
    listed = _within(15, D.list_image_files, root)
    assert _names(listed, root) == ["a.png", "linked/d.png", "z.png"]


def test_fifo_named_like_an_image_is_not_listed(tmp_path):
    root = tmp_path / "imgs"
    for c, colour in (("cat", (9, 9, 9)), ("dog", (7, 7, 7))):
        (root / c).mkdir(parents=True)
        Image.new("RGB", (4, 4), colour).save(root / c / "a.png")
    os.mkfifo(root / "cat" / "x.png")
    assert _names(_within(15, D.list_image_files, root), root) == ["cat/a.png", "dog/a.png"]
    cfg = make_cfg({"dataset": "custom", "train_path": str(root)})
    assert _within(15, _read_all, cfg) == [((9, 9, 9), 0), ((7, 7, 7), 1)]


# --------------------------------------------------------------------------- links between classes


def _two_classes(root: Path) -> Path:
    for c, colour in (("dress", (200, 0, 0)), ("tshirt", (0, 0, 200))):
        for i in range(3):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), colour).save(root / c / f"{i}.png")
    return root


def _labelled(root: Path) -> list[tuple[str, tuple[int, int, int], int]]:
    cfg = make_cfg({"dataset": "custom", "train_path": str(root)})
    ds = D.build_dataset(data_spec(cfg), "train", None)
    return [
        (str(Path(p).relative_to(root)), ds[i][0].getpixel((0, 0)), t)
        for i, (p, t) in enumerate(ds.samples)
    ]


def test_links_between_class_folders_never_relabel_or_repeat_an_image(tmp_path):
    """`ln -s ../dress train/tshirt/alias` listed the dress images again as t-shirts, and links
    to `..` or the training root listed every image again in the linking class."""
    root = _two_classes(tmp_path / "train")
    (root / "tshirt" / "alias").symlink_to("../dress")
    (root / "tshirt" / "up").symlink_to("..")
    (root / "dress" / "root").symlink_to(root)
    (root / "dress" / "copy.png").symlink_to("0.png")  # a second name of dress/0.png
    (root / "stray.png").symlink_to(root / "dress" / "1.png")  # in the tree, in no class
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (4, 4), (0, 0, 201)).save(outside / "x.png")
    (root / "tshirt" / "more").symlink_to(outside)  # outside the tree: the linking class's
    expected = [(f"dress/{i}.png", (200, 0, 0), 0) for i in range(3)]
    expected += [(f"tshirt/{i}.png", (0, 0, 200), 1) for i in range(3)]
    expected += [("tshirt/more/x.png", (0, 0, 201), 1)]
    assert _within(15, _labelled, root) == expected


def test_a_class_folder_linked_to_another_or_a_file_linked_from_two_classes_is_refused(tmp_path):
    root = _two_classes(tmp_path / "train")
    (root / "skirt").symlink_to("dress")
    cfg = make_cfg({"dataset": "custom", "train_path": str(root)})
    with pytest.raises(DataError, match="class folders 'dress' and 'skirt' are the same folder"):
        D.build_dataset(data_spec(cfg), "train", None)
    (root / "skirt").unlink()
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (4, 4), (1, 1, 1)).save(outside)
    (root / "dress" / "x.png").symlink_to(outside)
    (root / "tshirt" / "x.png").symlink_to(outside)
    with pytest.raises(DataError, match="linked from .*class folders 'dress', 'tshirt'"):
        D.build_dataset(data_spec(cfg), "train", None)
