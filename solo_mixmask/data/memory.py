"""In-memory data path (``data.format: memory``) for datasets that fit in memory.

Each split is decoded once into one uint8 tensor ``(N, C, H, W)`` (C = 1 for Fashion-MNIST, else
3), moved once to the training device, and every batch is cut from it and augmented there by
:mod:`solo_mixmask.data.batched_augmentations`: no PIL, no worker processes, no host-to-device
copy of images per step. Batches have the format of the PIL path (:mod:`~.loaders`):

- training: ``[indexes (B,) int64, [view_1, ..., view_V] float32 (B, 3, crop, crop), targets]``,
  all on the device;
- k-NN monitor: ``(x (b, 3, crop, crop) float32, y (b,) int64)``, the eval view of each image.

The same promises as the PIL path hold:

- Order and position: the training loader is a :class:`ResumableLoader` (order from
  ``(seed, epoch)``, each rank its shard, position saved in checkpoints).
- Augmentation randomness: each batch draws its crops, flips, jitter... from a device generator
  seeded with the batch's item seeds (themselves functions of ``(seed, epoch, index)``). A batch's
  draws are therefore a function of the run's seed, the epoch and the images in the batch: a
  resumed run, which restarts at a batch boundary, draws exactly what an uninterrupted run
  draws, and no global RNG is used.
- Subsets: ``data.train_subset``, ``data.knn_train_subset`` and ``data.val_subset`` pick the same
  images as the PIL path (same seed, same indices).
- DDP: the training order is split between ranks by the sampler; the k-NN loaders give rank
  ``r`` of ``W`` its :func:`~solo_mixmask.utils.distributed.evaluation_share`, every image
  once across the ranks (not padded: a repeated k-NN memory image would vote twice).

Where the images live: on the device named by :meth:`to_device`, which the engine calls with the
Trainer's root device before fitting or validating (until then, on the CPU).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from solo_mixmask.config.data_specs import DataSpec
from solo_mixmask.data.augmentations import CropSpec
from solo_mixmask.data.batched_augmentations import BatchAugment, eval_view
from solo_mixmask.data.datasets import (
    ArrayImageDataset,
    BadImageWarning,
    ImageFolderDataset,
    build_dataset,
    image_folder_spec,
    load_image_rgb,
)
from solo_mixmask.errors import DataError
from solo_mixmask.utils.distributed import evaluation_share
from solo_mixmask.utils.resumable import ResumableLoader, keep_batch, mix_seed

_MASK63 = (1 << 63) - 1


# --------------------------------------------------------------------------- decoding


@dataclass
class MemoryImages:
    """A split held in memory: ``images`` uint8 (N, C, H, W), ``targets`` int64 (N,) (-1 when
    unlabelled), ``bad_files`` the undecodable files left out, ``source`` what was read.

    ``positions`` int64 (N,): where each image sits in the split as the PIL path numbers it (its
    file list, with the files that fail to decode), of length ``split_length``; None when image
    i is item i (nothing was left out while decoding). Subsets are drawn over those positions,
    so that both paths pick the same files.
    """

    images: torch.Tensor
    targets: torch.Tensor
    bad_files: list[str] = field(default_factory=list)
    source: str = ""
    positions: torch.Tensor | None = None
    split_length: int | None = None
    _on_device: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def items(self) -> int:
        """The split's length as the PIL path counts it (undecodable files included)."""
        return len(self) if self.split_length is None else self.split_length

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets) on ``device``, copied there once and kept."""
        key = str(torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = self.images.to(device)
            self._on_device[key + ":targets"] = self.targets.to(device)
        return self._on_device[key], self._on_device[key + ":targets"]

    def select(self, indices: Sequence[int] | None) -> MemoryImages:
        """The images of the split's items ``indices`` (positions in ``range(self.items)``; all
        when None), in that order; items whose file did not decode are left out."""
        if indices is None:
            return self
        index = torch.as_tensor(list(indices), dtype=torch.long)
        if self.positions is not None:  # item -> row, -1 for the files left out
            row = torch.full((self.items,), -1, dtype=torch.long)
            row[self.positions] = torch.arange(len(self))
            index = row[index]
            index = index[index >= 0]
        return MemoryImages(
            self.images[index], self.targets[index], list(self.bad_files), self.source
        )


class _Decoder(Dataset):
    """Item ``i`` of an ImageFolderDataset as ``(uint8 array (H, W, 3) or None, target, path)``.

    Numpy arrays, not tensors, cross from the workers: torch shares each tensor through a file
    descriptor, and tens of thousands of small images exhaust them."""

    def __init__(self, dataset: ImageFolderDataset):
        self.samples = dataset.samples
        self.strict = dataset.strict

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, int, str]:
        path, target = self.samples[index]
        try:
            img = load_image_rgb(path)
        except DataError:
            if self.strict:
                raise
            return None, target, path
        return np.asarray(img), target, path


def _decode_image_folder(dataset: ImageFolderDataset, workers: int) -> MemoryImages:
    """Decode every file (``workers`` processes); bad files are left out (or raise, strict)."""
    loader = DataLoader(_Decoder(dataset), batch_size=256, num_workers=workers, collate_fn=list)
    images: list[np.ndarray] = []
    targets: list[int] = []
    positions: list[int] = []  # of the decoded files in the dataset's list
    bad = list(dataset.bad_files)  # left out by data.scan_images already
    first: tuple[str, tuple[int, ...]] | None = None
    for position, (img, target, path) in enumerate(item for chunk in loader for item in chunk):
        if img is None:
            warnings.warn(
                f"skipping unreadable image {path!r}; set data.strict=true to stop instead",
                BadImageWarning,
                stacklevel=2,
            )
            bad.append(path)
            continue
        if first is None:
            first = (path, img.shape[:2])
        elif img.shape[:2] != first[1]:
            raise DataError(
                f"data.format=memory holds images of one size: {path!r} is "
                f"{img.shape[1]}x{img.shape[0]} px but {first[0]!r} is "
                f"{first[1][1]}x{first[1][0]} px; resize the images to one size or use "
                "data.format=image_folder"
            )
        images.append(img)
        targets.append(target)
        positions.append(position)
    if not images:
        raise DataError(f"none of the image files under {dataset.root!r} can be decoded")
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    left_out = len(positions) < len(dataset)
    return MemoryImages(
        stacked,
        torch.tensor(targets, dtype=torch.long),
        bad,
        dataset.root,
        torch.tensor(positions, dtype=torch.long) if left_out else None,
        len(dataset) if left_out else None,
    )


def _from_dataset(dataset: Dataset, workers: int) -> MemoryImages:
    """The uint8 tensor of any dataset :func:`build_dataset` returns (no transform)."""
    if isinstance(dataset, ArrayImageDataset):  # Fashion-MNIST: (N, H, W) grayscale
        images = torch.from_numpy(np.ascontiguousarray(dataset.images)).unsqueeze(1)
        return MemoryImages(
            images, torch.as_tensor(dataset.labels, dtype=torch.long), source="idx files"
        )
    if isinstance(dataset, ImageFolderDataset):
        return _decode_image_folder(dataset, workers)
    data = getattr(dataset, "data", None)  # torchvision CIFAR (N, H, W, 3) / STL-10 (N, 3, H, W)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4:
        images = torch.from_numpy(data)
        if images.shape[-1] == 3:
            images = images.permute(0, 3, 1, 2)
        labels = getattr(dataset, "targets", None)
        if labels is None:
            labels = dataset.labels  # type: ignore[attr-defined]
        targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        return MemoryImages(images.contiguous(), targets, source=type(dataset).__name__)
    raise DataError(f"data.format=memory cannot read {type(dataset).__name__} datasets")


#: Splits decoded in this process, by what decides their content (at most 4 kept).
_DECODED: dict[tuple[Any, ...], MemoryImages] = {}


def decode_split(spec: DataSpec, split: str) -> MemoryImages:
    """Split ``split`` of ``spec``'s dataset decoded into memory (CPU).

    Decoded once per process for a given dataset, paths and options: several runs of one
    process (a benchmark) share it. ``spec.num_workers`` processes decode ImageFolder trees.
    """
    if split == "train_labeled" and spec.dataset != "stl10":
        split = "train"  # the same images (only STL-10 has an unlabelled part)
    key = (
        split,
        spec.dataset,
        spec.train_path,
        spec.val_path,
        spec.no_labels,
        spec.strict,
        spec.scan_images,
        spec.download,
    )
    if key not in _DECODED:
        decoded = _from_dataset(
            build_dataset(image_folder_spec(spec), split, None), spec.num_workers
        )
        if len(_DECODED) >= 4:
            _DECODED.pop(next(iter(_DECODED)))
        _DECODED[key] = decoded
    return _DECODED[key]


# --------------------------------------------------------------------------- training


class _BatchKeys(Dataset):
    """Dataset of N images' indexes whose ``__getitems__`` returns a whole batch at once:
    ``(indexes (B,) int64, batch_seed int)`` from the sampler's ``(index, item_seed)`` keys."""

    def __init__(self, memory: MemoryImages):
        self.memory = memory
        self.bad_files = list(memory.bad_files)  # counted in summary.json
        self.report_file: str | None = None

    def __len__(self) -> int:
        return len(self.memory)

    def __getitem__(self, key: Any) -> Any:
        return self.__getitems__([key])

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, int]:
        indexes = torch.tensor([k[0] for k in keys], dtype=torch.long)
        batch_seed = mix_seed(sum(k[1] for k in keys) & _MASK63, len(keys))
        return indexes, batch_seed


class MemoryTrainLoader(ResumableLoader):
    """Training batches cut from one uint8 tensor and augmented on its device.

    ``specs`` are the crop pipelines (``num_crops`` views each, in order); a pipeline's views are
    augmented together in one batched call (its pixel ops through ``torch.compile`` with
    ``compile_backend``, else eagerly). Yields ``[indexes, views, targets]`` on the device.
    """

    def __init__(
        self,
        memory: MemoryImages,
        specs: Sequence[CropSpec],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        compile_backend: str | None = None,
    ):
        super().__init__(
            _BatchKeys(memory),
            batch_size=batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=0,
            collate_fn=keep_batch,
        )
        self.memory = memory
        self.pipelines = [
            (BatchAugment(s, f"augmentations[{i}]", compile_backend), s.num_crops)
            for i, s in enumerate(specs)
        ]
        self.device = torch.device("cpu")
        self._generator: torch.Generator | None = None

    def to_device(self, device: torch.device) -> None:
        """Keep the images on ``device`` and augment there from now on."""
        self.device = torch.device(device)

    def _gen(self) -> torch.Generator:
        if self._generator is None or self._generator.device != self.device:
            self._generator = torch.Generator(device=self.device)
        return self._generator

    def make_batch(self, indexes: torch.Tensor, batch_seed: int) -> list[Any]:
        """``[indexes, views, targets]`` on the device for the images at ``indexes``."""
        images, targets = self.memory.on(self.device)
        if self.device.type == "cuda":  # a copy from pageable memory would wait for the GPU
            indexes = indexes.pin_memory()
        index = indexes.to(self.device, non_blocking=True)
        picked = images[index]
        gen = self._gen()
        gen.manual_seed(batch_seed)
        views: list[torch.Tensor] = []
        for augment, crops in self.pipelines:
            batch = picked.repeat(crops, 1, 1, 1) if crops > 1 else picked
            views.extend(augment(batch, gen).chunk(crops))
        return [index, views, targets[index]]

    def __iter__(self) -> Iterator[list[Any]]:  # type: ignore[override]
        for indexes, batch_seed in super().__iter__():
            yield self.make_batch(indexes, batch_seed)


# --------------------------------------------------------------------------- k-NN monitor


class MemoryEvalLoader:
    """Fixed-order ``(x, y)`` batches of eval views (no randomness), this rank's share.

    Rank ``r`` of ``W`` takes its :func:`~solo_mixmask.utils.distributed.evaluation_share`, a
    contiguous block: every image is evaluated once, and the ranks' batch counts may differ.
    """

    def __init__(
        self,
        memory: MemoryImages,
        spec: CropSpec,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.memory = memory
        self.dataset = _BatchKeys(memory)  # len() and bad-file bookkeeping, like a DataLoader
        self.spec = spec
        self.batch_size = int(batch_size)
        share = evaluation_share(len(memory), rank, world_size)
        self.indices = torch.arange(share.start, share.stop, dtype=torch.long)
        self.device = torch.device("cpu")

    def to_device(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, targets = self.memory.on(self.device)
        indices = self.indices.to(self.device)
        for start in range(0, len(indices), self.batch_size):
            index = indices[start : start + self.batch_size]
            x = eval_view(images[index], self.spec.crop_size, self.spec.mean, self.spec.std)
            yield x, targets[index]


# --------------------------------------------------------------------------- builders


def _check_size(memory: MemoryImages, batch: int, world_size: int) -> None:
    per_rank = len(memory) // world_size
    if per_rank < batch:
        raise DataError(
            f"the training set has {len(memory)} images ({per_rank} per device), "
            f"fewer than one batch of optimizer.batch_size={batch}: lower the batch "
            "size or add images"
        )


def build_memory_train_loader(
    spec: DataSpec, train_subset: Any, rank: int = 0, world_size: int = 1
) -> MemoryTrainLoader:
    """The training loader of ``data.format: memory`` (batches of ``spec.batch_size``);
    ``train_subset`` maps the split's length to the chosen indices (None = all)."""
    memory = decode_split(spec, "train")
    memory = memory.select(train_subset(memory.items))
    _check_size(memory, spec.batch_size, world_size)
    return MemoryTrainLoader(
        memory,
        spec.crops,
        spec.batch_size,
        spec.seed,
        rank=rank,
        world_size=world_size,
        compile_backend=spec.compile_augmentations,
    )


def build_memory_eval_loader(
    spec: DataSpec, split: str, indices: Any, rank: int = 0, world_size: int = 1
) -> MemoryEvalLoader:
    """A k-NN loader of ``split`` (batches of ``spec.batch_size``, the first pipeline's eval
    view); ``indices`` maps the split's length to the chosen indices."""
    memory = decode_split(spec, split)
    memory = memory.select(indices(memory.items))
    return MemoryEvalLoader(memory, spec.crops[0], spec.batch_size, rank, world_size)


__all__ = [
    "MemoryEvalLoader",
    "MemoryImages",
    "MemoryTrainLoader",
    "build_memory_eval_loader",
    "build_memory_train_loader",
    "decode_split",
]
