"""Datasets: Fashion-MNIST (idx files), torchvision CIFAR/STL-10 and robust ImageFolder trees.

Every dataset returned by :func:`build_dataset` yields ``(transform(image), target)`` where
``image`` is a PIL image in mode ``'RGB'`` (grayscale, palette, 16-bit, CMYK and alpha images
are converted first) and ``target`` is an ``int`` class index, or ``-1`` for unlabeled images.

Every builder takes the :class:`~solo_mixmask.config.data_specs.DataSpec` parsed from the config at
start-up (its fields are named after the ``data.*`` keys). Where the data is looked for
(``data.train_path`` for ``split='train'``, ``data.val_path`` for ``split='val'``):

- ``fashion_mnist``: the idx ``.gz`` (or uncompressed) files in the given folder (directly or
  under ``FashionMNIST/raw``; a given folder without them is an error, or with
  ``data.download`` where they are downloaded); with no folder given,
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``), then
  torchvision's ``FashionMNIST`` in the cache folder (``data.download``).
- ``cifar10``, ``cifar100``, ``stl10``: torchvision datasets rooted at the given folder, or at
  the cache folder ``$SOLO_MIXMASK_DATA/<dataset>`` (default ``~/.cache/solo_mixmask/<dataset>``).
  They are downloaded only when ``data.download`` is true.
- ``imagenet``, ``imagenet100``, ``custom``: an ImageFolder tree (one sub-folder per class), or
  with ``data.no_labels`` any folder of images (searched recursively, targets ``-1``). Class
  indices come from the TRAINING tree for every split: its class folders, sorted by name, are
  0, 1, ...; the val tree may lack some of them, but a val class folder unknown to the
  training tree is a DataError.

STL-10 choice: ``split='train'`` (pretraining) uses torchvision's ``'train+unlabeled'``
(105,000 images; the 100,000 unlabeled ones have target -1), while ``split='train_labeled'``
uses the 5,000 labeled training images (what the k-NN monitor needs). For every other dataset
``'train_labeled'`` is the same as ``'train'``.

Unreadable images in ImageFolder trees (truncated, zero bytes, not an image) are found when they
are first read: with ``data.strict`` false the file is skipped (the item is None and the
loaders leave it out of its batch; never replaced by another image) with one warning per file;
with ``data.strict`` true a :class:`DataError` naming the file is raised. ``data.scan_images: true`` decodes every file once at build time
(see :func:`scan_image_folder`) and leaves the bad ones out from the start.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from solo_mixmask.config.data_specs import DataSpec
from solo_mixmask.config.dataset_facts import DATASETS, normalisation_of
from solo_mixmask.errors import ConfigError, DataError

DATASET_NUM_CLASSES: dict[str, int] = {name: f.num_classes for name, f in DATASETS.items()}
TORCHVISION_DATASETS = ("cifar10", "cifar100", "stl10")
IMAGE_FOLDER_DATASETS = ("imagenet", "imagenet100", "custom")
SPLITS = ("train", "train_labeled", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


class BadImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


# --------------------------------------------------------------------------- spec helpers


def _check_format(spec: DataSpec) -> None:
    if spec.format != "image_folder":
        raise ConfigError(
            "data.format", spec.format, "'image_folder' (the only format this loader reads)"
        )


def image_folder_spec(spec: DataSpec) -> DataSpec:
    """``spec`` with ``format`` image_folder: what the DALI and in-memory paths use to list or
    decode the files through :func:`build_dataset`."""
    return dataclasses.replace(spec, format="image_folder")


def default_root(dataset: str) -> Path:
    """Cache folder of a torchvision dataset: ``$SOLO_MIXMASK_DATA/<dataset>`` when that
    variable is set, else ``~/.cache/solo_mixmask/<dataset>``."""
    base = os.environ.get("SOLO_MIXMASK_DATA")
    base_path = Path(base) if base else Path.home() / ".cache" / "solo_mixmask"
    return base_path / dataset


def default_stats(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of pixels in [0, 1], 3 channels each.

    Fashion-MNIST and CIFAR-10/100 use their own training-set statistics (Fashion-MNIST's
    grayscale values repeated for the 3 channels); every other dataset uses ImageNet's.
    """
    return normalisation_of(dataset)


# --------------------------------------------------------------------------- small wrappers


class ToRGB:
    """Convert a PIL image to mode ``'RGB'`` (see :func:`to_rgb`) and apply ``transform``."""

    def __init__(self, transform: Callable | None):
        self.transform = transform

    def __call__(self, img: Image.Image) -> Any:
        img = to_rgb(img)
        return img if self.transform is None else self.transform(img)

    def __repr__(self) -> str:
        return f"ToRGB({self.transform!r})"


class ArrayImageDataset(Dataset):
    """Grayscale images held in memory: ``images`` uint8 (N, H, W), ``labels`` int (N,).

    Item ``i`` is ``(transform(PIL RGB image), int label)``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None):
        assert images.ndim == 3 and images.dtype == np.uint8, images.shape
        assert len(images) == len(labels)
        self.images, self.labels = images, labels
        self.targets = [int(t) for t in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


# --------------------------------------------------------------------------- Fashion-MNIST

_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (``.gz`` or plain) into a numpy array of the shape in its header.

    Header: two zero bytes, a dtype code (0x08 = uint8), the number of dimensions, then
    each dimension as a big-endian uint32. Raises DataError for a malformed file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read idx file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says {dims} ({expected} bytes) but holds "
            f"{len(raw) - header} bytes of data"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


_FMNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for sub in (folder, folder / "FashionMNIST" / "raw"):
        for name in (stem + ".gz", stem):
            if (sub / name).is_file():
                return sub / name
    return None


def _find_fashion_mnist(folder: Path, split: str) -> tuple[Path, Path] | None:
    images, labels = (_find_idx_file(folder, s) for s in _FMNIST_STEMS[split])
    return (images, labels) if images is not None and labels is not None else None


@functools.lru_cache(maxsize=4)
def _load_fashion_mnist_files(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != (len(images),):
        raise DataError(
            f"{images_path} / {labels_path}: expected uint8 images (N, H, W) and "
            f"N labels, got {images.shape} {images.dtype} and {labels.shape}"
        )
    return images, labels.astype(np.int64)


def _fashion_mnist(spec: DataSpec, split: str, transform: Callable | None) -> Dataset:
    """Fashion-MNIST's ``split`` from the folder the config names, else the system copy, else
    a download (``data.download``).

    A folder given in ``data.val_path`` / ``data.train_path`` (val looks in ``data.val_path``,
    then ``data.train_path``) is used or refused, never passed over: DataError naming the key
    when it is not an existing folder, or when no given folder holds the split's idx files;
    with ``data.download`` the files are downloaded into the first given folder instead.
    """
    split = "val" if split == "val" else "train"
    keys = ["data.val_path", "data.train_path"] if split == "val" else ["data.train_path"]
    values = [spec.val_path, spec.train_path] if split == "val" else [spec.train_path]
    given = [(key, Path(value).expanduser()) for key, value in zip(keys, values) if value]
    if not spec.download:
        for key, folder in given:
            if not folder.is_dir():
                raise DataError(
                    f"{key}={str(folder)!r} is not an existing folder: give the folder of the "
                    "Fashion-MNIST idx files, set data.download=true to download them there, "
                    f"or leave it unset to use the system copy ({FASHION_MNIST_SYSTEM_DIR})"
                )
    folders = [folder for _, folder in given] if given else [FASHION_MNIST_SYSTEM_DIR]
    for folder in folders:
        found = _find_fashion_mnist(folder, split)
        if found is not None:
            images, labels = _load_fashion_mnist_files(str(found[0]), str(found[1]))
            return ArrayImageDataset(images, labels, transform)
    root = given[0][1] if given else default_root("fashion_mnist")
    if not spec.download:
        stems = " and ".join(f"{stem}[.gz]" for stem in _FMNIST_STEMS[split])
        if given:
            where = " or ".join(f"{key}={str(folder)!r}" for key, folder in given)
            raise DataError(
                f"Fashion-MNIST ({split}): {stems} not found in {where} (directly or under "
                "FashionMNIST/raw); point it at the idx files, set data.download=true to "
                "download them there, or leave it unset to use the system copy"
            )
        raise DataError(
            f"Fashion-MNIST ({split}) idx files not found (searched "
            f"{FASHION_MNIST_SYSTEM_DIR}): install the Debian package dataset-fashion-mnist or "
            "set data.download=true"
        )
    import torchvision

    try:
        tv = torchvision.datasets.FashionMNIST(str(root), train=split == "train", download=True)
    except (RuntimeError, OSError) as err:
        raise DataError(f"Fashion-MNIST download into {root} failed: {err}") from err
    return ArrayImageDataset(tv.data.numpy(), tv.targets.numpy(), transform)


# --------------------------------------------------------------------------- torchvision sets


def _torchvision_dataset(spec: DataSpec, name: str, split: str, transform: Callable | None):
    import torchvision

    key = "data.val_path" if split == "val" else "data.train_path"
    own = spec.val_path if split == "val" else spec.train_path
    given = own or (spec.train_path if split == "val" else None)
    root = Path(given) if given else default_root(name)
    download = spec.download
    wrapped = ToRGB(transform)
    try:
        if name == "stl10":
            tv_split = {"train": "train+unlabeled", "train_labeled": "train", "val": "test"}[split]
            return torchvision.datasets.STL10(
                str(root), split=tv_split, download=download, transform=wrapped
            )
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        return cls(str(root), train=split != "val", download=download, transform=wrapped)
    except (RuntimeError, OSError) as err:
        hint = (
            "set data.download=true to download it"
            if not download
            else "the download failed; fetch it by hand into that folder"
        )
        raise DataError(
            f"data.dataset={name!r}: not found under {key}={str(root)!r} ({err}); "
            f"{hint}, or point {key} at a folder that holds it"
        ) from err


# --------------------------------------------------------------------------- image decoding


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def to_rgb(img: Image.Image) -> Image.Image:
    """Return a new ``'RGB'`` copy of ``img`` whatever its mode.

    - alpha (RGBA, LA, PA, palette or RGB with a transparency entry): composited on white;
    - 16-bit / 32-bit integer ('I;16*', 'I'): values in [0, 65535] scaled by 255/65535 and
      rounded (so 65535 -> 255 and 32896 -> 128), never clipped at 255;
    - float ('F'): values taken as [0, 1] when max <= 1, else as [0, 255]; clipped;
    - everything else (L, 1, P, CMYK, YCbCr, ...): Pillow's own conversion.
    """
    mode = img.mode
    if mode.startswith("I"):
        arr = np.asarray(img).astype(np.float64)
        arr8 = np.rint(np.clip(arr, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        arr8 = np.rint(np.clip(np.nan_to_num(arr) * scale, 0, 255)).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image_rgb(path: str | Path) -> Image.Image:
    """Fully decode the image file at ``path`` and return it as a PIL ``'RGB'`` image.

    Raises DataError naming the file when it cannot be decoded (zero bytes, truncated,
    corrupt, not an image).
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise DataError(
            f"cannot decode image file {str(path)!r}: {type(err).__name__}: {err}"
        ) from err


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _entry_is(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_dir()`` / ``entry.is_file()`` (symlinks followed; a regular file only for
    'file'), False when it cannot be told (broken link, no permission)."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError:
        return False


def _walk_images(
    root: str | Path, enter: Callable[[str], bool] | None = None
) -> list[tuple[str, str]]:
    """``(path, real path)`` of the image files under ``root`` in sorted depth-first order:
    each real directory visited once, each real file listed once (its first path); with
    ``enter``, only the directories whose real path it accepts.

    Symlinks are followed, to directories and to files; the identity of a folder or a file is
    its real path (``os.path.realpath``), so a link to the folder itself, to an ancestor or to
    a file already listed neither loops nor lists an image twice. Only regular files count
    (``S_ISREG``, through file links): a FIFO, socket or device named like an image, or a
    broken link, is left out, since opening a FIFO would block the loader forever. Hidden
    entries and unreadable folders are skipped, as ``os.walk`` does.
    """
    found: list[tuple[str, str]] = []
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    pending = [os.fspath(root)]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in seen_dirs or (enter is not None and not enter(real)):
            continue
        seen_dirs.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            if _entry_is(entry, "dir"):
                subfolders.append(entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and _entry_is(entry, "file"):
                link = _is_link(entry)
                real_file = os.path.realpath(entry.path) if link else os.path.join(real, entry.name)
                if real_file not in seen_files:
                    seen_files.add(real_file)
                    found.append((entry.path, real_file))
        pending.extend(reversed(subfolders))  # depth-first, in sorted order
    return found


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def list_image_files(root: str | Path) -> list[str]:
    """All regular image files under ``root`` (recursive, hidden entries skipped, extension
    case-insensitive), sorted: each real file once, whatever links lead to it (see
    :func:`_walk_images`)."""
    return sorted(path for path, _ in _walk_images(root))


def scan_image_folder(root: str | Path) -> tuple[list[str], list[str]]:
    """Decode every image file under ``root`` once: returns ``(good_paths, bad_paths)``, sorted.

    Costs one full decode per file; meant for small folders, tests and ``data.scan_images``.
    """
    good, bad = [], []
    for path in list_image_files(root):
        try:
            load_image_rgb(path)
        except DataError:
            bad.append(path)
        else:
            good.append(path)
    return good, bad


# --------------------------------------------------------------------------- ImageFolder


class ImageFolderDataset(Dataset):
    """Images listed in ``samples`` (path, target), decoded robustly when read.

    Item ``i`` is ``(transform(RGB image), target)``, or None when the file of sample ``i``
    cannot be decoded: it is skipped, never replaced by another image (the loaders'
    :func:`~solo_mixmask.data.loaders.collate_readable` leaves it out of its batch). With
    ``strict`` a DataError naming the file is raised instead. A skipped path is added to
    ``bad_files`` (once, with one :class:`BadImageWarning`); the first time a process meets one
    it checks that some image of the dataset decodes (DataError otherwise: nothing could ever be
    trained or scored). ``bad_files`` only lists what this process has read: DataLoader workers
    hold their own. Set ``report_file`` to a path to have every process (workers and ranks
    included) append each newly skipped path to that file, one per line, so a run can count
    them all.
    """

    def __init__(
        self,
        root: str | Path,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        transform: Callable | None,
        strict: bool = False,
    ):
        self.root = str(root)
        self.samples = list(samples)
        self.targets = [t for _, t in self.samples]
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform
        self.strict = strict
        self.bad_files: list[str] = []
        self._bad: set[str] = set()
        self._some_readable = False
        self.report_file: str | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def _mark_bad(self, path: str, err: DataError) -> None:
        if path not in self._bad:
            self._bad.add(path)
            self.bad_files.append(path)
            warnings.warn(
                f"skipping unreadable image {path!r} ({err.__cause__ or err}); "
                "set data.strict=true to stop instead",
                BadImageWarning,
                stacklevel=3,
            )
            if self.report_file:
                with open(self.report_file, "a", encoding="utf-8") as f:
                    f.write(path + "\n")  # one short append: atomic between processes

    def _check_some_readable(self) -> None:
        """DataError unless at least one file of the dataset decodes (checked once)."""
        for path, _ in self.samples:
            if self._some_readable:
                return
            if path in self._bad:
                continue
            try:
                load_image_rgb(path)
            except DataError as err:
                self._mark_bad(path, err)
            else:
                self._some_readable = True
        if not self._some_readable:
            raise DataError(
                f"no image under {self.root!r} can be decoded ({len(self.bad_files)} bad files)"
            )

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        if path in self._bad:
            return None
        try:
            img = load_image_rgb(path)
        except DataError as err:
            if self.strict:
                raise
            self._mark_bad(path, err)
            self._check_some_readable()
            return None
        self._some_readable = True
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def _class_folders(root: Path) -> list[str]:
    """Names of the class folders of ``root``: its immediate sub-directories (symlinks to
    directories included), hidden ones skipped, sorted by name."""
    with os.scandir(root) as it:
        return sorted(e.name for e in it if not _is_hidden(e.name) and _entry_is(e, "dir"))


def _class_map(spec: DataSpec, split: str, root: Path) -> tuple[list[str], list[str]]:
    """``(classes, split_classes)``: the class folders of the training tree
    (``data.train_path``), whose positions are the targets of every split, and the class
    folders of ``root`` (the split's own tree) to read.

    Raises DataError when the training tree is missing or when ``root`` (the val tree) has a
    class folder that the training tree lacks. Val may lack some training classes.
    """
    own = _class_folders(root)
    if split != "val":
        return own, own
    given = spec.train_path
    train_root = Path(given).expanduser() if given else None
    if train_root is None or not train_root.is_dir():
        raise DataError(
            f"data.train_path={given!r} is not an existing folder: the classes of "
            f"data.val_path={str(root)!r} are numbered by the class folders of "
            "the training tree, give its path"
        )
    classes = _class_folders(train_root)
    known = set(classes)
    unknown = [c for c in own if c not in known]
    if unknown:
        raise DataError(
            f"data.val_path={str(root)!r} has class folder(s) "
            f"{', '.join(repr(c) for c in unknown)} that "
            f"data.train_path={str(train_root)!r} lacks: every val class must be "
            "a class folder of the training tree (val targets use its numbering)"
        )
    return classes, own


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _class_samples(
    key: str, root: Path, own: list[str], index: dict[str, int]
) -> list[tuple[str, int]]:
    """``(path, target)`` of every image of the class folders ``own`` of ``root``, by class
    (in ``own``'s order), then by path: each real file once, with the class of the folder it
    really lives in.

    Links are followed (see :func:`_walk_images`), but a link never relabels an image: a file
    whose real path lies in class folder ``d`` (the deepest one, for nested real folders) is
    listed under ``d`` only, whichever class folder links to it; a file in the tree but in no
    class folder (e.g. reached through a link to the tree's root) is not listed. A file outside
    the tree takes the class of the one class folder that links to it. DataError, naming
    ``key``, for two class folders that are one real folder, or an outside file linked from
    two class folders: their images would have two classes.
    """
    tree = os.path.realpath(root)
    class_at: dict[str, str] = {}  # real folder -> class
    for c in own:
        real = os.path.realpath(root / c)
        if real in class_at:
            raise DataError(
                f"{key}={str(root)!r}: class folders {class_at[real]!r} and {c!r} are the same "
                f"folder ({real}, through a symbolic link), so their images would have two "
                "classes; remove the link or make the folders distinct"
            )
        class_at[real] = c
    homes: dict[str, str | None] = {}

    def home(real_dir: str) -> str | None:
        """The class whose real folder is the deepest one holding the real folder
        ``real_dir`` (None: no class folder holds it)."""
        if real_dir not in homes:
            found, d = None, real_dir
            while found is None:
                found = class_at.get(d)
                parent = os.path.dirname(d)
                if parent == d:
                    break
                d = parent
            homes[real_dir] = found
        return homes[real_dir]

    def enters(c: str) -> Callable[[str], bool]:
        # class c's walk stays in its own folders and in folders outside the tree (never in
        # another class folder, nor in the tree outside any class folder)
        return lambda real_dir: (
            home(real_dir) == c or (home(real_dir) is None and not _inside(real_dir, tree))
        )

    by_class: dict[str, list[str]] = {c: [] for c in own}
    listed: set[str] = set()
    linked: dict[str, list[tuple[str, str]]] = {}  # real file -> [(class, path)]: the others
    for c in own:
        for path, real_file in _walk_images(root / c, enters(c)):
            if real_file in listed:
                continue
            if home(os.path.dirname(real_file)) == c:
                listed.add(real_file)  # the common case: a file of its own class folder
                by_class[c].append(path)
            else:
                linked.setdefault(real_file, []).append((c, path))
    for real_file, hits in linked.items():
        if real_file in listed:
            continue  # listed in its own class folder
        owner = home(os.path.dirname(real_file))
        if owner is None and _inside(real_file, tree):
            continue  # in the tree, in no class folder: not a class image
        if owner is None:
            linking = sorted({c for c, _ in hits}, key=own.index)
            if len(linking) > 1:
                paths = " and ".join(repr(next(p for c, p in hits if c == x)) for x in linking)
                raise DataError(
                    f"{key}={str(root)!r}: image {real_file!r} is linked from {paths} (class "
                    f"folders {', '.join(repr(x) for x in linking)}), so it would have two "
                    "classes; keep one link"
                )
            owner = linking[0]
        named = next((p for c, p in hits if c == owner), None)
        if named is not None:  # else: hidden in its own class folder, left out there too
            by_class[owner].append(named)
    return [(p, index[c]) for c in own for p in sorted(by_class[c])]


def _image_folder(spec: DataSpec, split: str, transform: Callable | None) -> Dataset:
    key = "data.val_path" if split == "val" else "data.train_path"
    given = spec.val_path if split == "val" else spec.train_path
    if not given:
        raise DataError(
            f"{key} is not set: data.dataset={spec.dataset!r} "
            "reads an image folder tree, give its path"
        )
    root = Path(given).expanduser()
    if not root.is_dir():
        raise DataError(f"{key}={str(root)!r} is not an existing folder")
    if spec.no_labels:
        classes: list[str] = []
        samples = [(p, -1) for p in list_image_files(root)]
    else:
        classes, own = _class_map(spec, split, root)
        if not own:
            raise DataError(
                f"{key}={str(root)!r} has no class sub-folders; for a flat folder "
                "of unlabeled images set data.no_labels=true"
            )
        _check_class_count(spec, classes)
        index = {c: i for i, c in enumerate(classes)}  # one map for every split: train's
        samples = _class_samples(key, root, own, index)
    if not samples:
        raise DataError(
            f"{key}={str(root)!r} holds no image files (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    strict = spec.strict
    scanned_bad: list[str] = []
    if spec.scan_images:
        all_paths = [p for p, _ in samples]
        samples = _drop_bad_samples(samples, strict)
        kept = {p for p, _ in samples}
        scanned_bad = [p for p in all_paths if p not in kept]
        if not samples:
            raise DataError(f"{key}={str(root)!r}: none of its image files can be decoded")
    dataset = ImageFolderDataset(root, samples, classes, transform, strict=strict)
    dataset.bad_files.extend(scanned_bad)  # left out at build time: counted, never read again
    dataset._bad.update(scanned_bad)
    return dataset


def _check_class_count(spec: DataSpec, classes: list[str]) -> None:
    """ConfigError when the training tree has more class folders than ``data.num_classes`` (or
    the fixed count of ``data.dataset``) allows: its last classes' targets would lie beyond
    every classifier's outputs."""
    allowed = num_classes(spec)
    if len(classes) <= allowed:
        return
    found = f"data.train_path={spec.train_path!r} has {len(classes)} class folders"
    if spec.num_classes is not None:
        raise ConfigError("data.num_classes", spec.num_classes, f"{len(classes)} or more ({found})")
    raise ConfigError(
        "data.dataset",
        spec.dataset,
        f"a tree of {allowed} class folders at most ({found}); data.dataset=custom counts them",
    )


def _drop_bad_samples(samples: list[tuple[str, int]], strict: bool) -> list[tuple[str, int]]:
    kept = []
    for path, target in samples:
        try:
            load_image_rgb(path)
        except DataError as err:
            if strict:
                raise
            warnings.warn(
                f"skipping unreadable image {path!r} ({err.__cause__ or err})",
                BadImageWarning,
                stacklevel=3,
            )
            continue
        kept.append((path, target))
    return kept


# --------------------------------------------------------------------------- entry point


def build_dataset(spec: DataSpec, split: str, transform: Callable | None) -> Dataset:
    """Dataset of ``spec.dataset`` for ``split`` in ('train', 'train_labeled', 'val').

    Items are ``(transform(PIL RGB image), int target)`` (target -1 when unlabeled).
    Raises ValueError for an unknown split, ConfigError for a format other than image_folder,
    DataError when the data cannot be found or is empty.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed: expected one of {list(SPLITS)}")
    _check_format(spec)
    if spec.dataset == "fashion_mnist":
        return _fashion_mnist(spec, split, transform)
    if spec.dataset in TORCHVISION_DATASETS:
        return _torchvision_dataset(spec, spec.dataset, split, transform)
    return _image_folder(spec, split, transform)


def num_classes(spec: DataSpec) -> int:
    """Number of classes of ``spec.dataset``.

    ``data.num_classes`` wins when set. ``custom`` counts the class sub-folders of
    ``data.train_path``; with ``data.no_labels`` it is 1 (a placeholder so that an online
    classifier can be built; every target is -1 and ignored).
    """
    if spec.num_classes is not None:
        return spec.num_classes
    if spec.dataset in DATASET_NUM_CLASSES:
        return DATASET_NUM_CLASSES[spec.dataset]
    if spec.no_labels:
        return 1
    root = spec.train_path
    if not root or not Path(root).is_dir():
        raise DataError(
            f"data.train_path={root!r} is not an existing folder: cannot count the "
            "classes of data.dataset='custom'"
        )
    count = len(_class_folders(Path(root)))
    if count == 0:
        raise DataError(
            f"data.train_path={root!r} has no class sub-folders; for unlabeled "
            "images set data.no_labels=true"
        )
    return count


def subset_indices(n: int, size: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a random subset of ``size`` out of ``n`` items, fixed by ``seed``
    (None when ``size`` is None or covers everything)."""
    if size is None or size >= n:
        return None
    gen = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(n, generator=gen)[:size].tolist())
