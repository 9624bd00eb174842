"""DataLoaders for pretraining (multi-view batches) and for the k-NN monitor.

Training batches follow solo-learn: ``[indexes (B,) int64, [view_1, ..., view_V], targets (B,)
int64]`` with each view a float tensor (B, 3, crop, crop). Subsets (``data.train_subset``,
``data.val_subset``, ``data.knn_train_subset``) are random but fixed by ``seed``: the same
seed picks the same images (sorted by index). Every builder takes the
:class:`~solo_mixmask.config.data_specs.DataSpec` parsed from the config at start-up.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from solo_mixmask.config.data_specs import DataSpec
from solo_mixmask.data.augmentations import build_eval_transform, build_pretrain_transform
from solo_mixmask.data.datasets import build_dataset, image_folder_spec, subset_indices
from solo_mixmask.data.datasets import num_classes as num_classes  # re-exported
from solo_mixmask.errors import ConfigError, DataError
from solo_mixmask.utils.distributed import UnpaddedDistributedSampler


class IndexedDataset(Dataset):
    """Wraps a dataset so that item ``i`` is ``(i, *dataset[i])`` (solo-learn's indexes)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...] | None:
        item = self.dataset[index]
        return None if item is None else (index, *item)


def collate_readable(batch: list[Any]) -> Any:
    """``default_collate`` of the items that are not None (None: an unreadable image, skipped,
    never replaced); None when no item is left."""
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


def collate_training(batch: list[Any]) -> Any:
    """:func:`collate_readable` for training batches: a batch that lost unreadable images
    trains on the others; DataError when fewer than 2 are left (each image is mixed with a
    partner of its batch, and BatchNorm needs 2)."""
    kept = [item for item in batch if item is not None]
    if len(kept) < 2:
        raise DataError(
            f"a training batch has {len(kept)} readable image(s) of {len(batch)}: it needs at "
            "least 2; set data.scan_images=true to leave unreadable files out before batching, "
            "or remove them"
        )
    return default_collate(kept)


class ReadableLoader(DataLoader):
    """A DataLoader (give it ``collate_fn=collate_readable``) that leaves out the batches whose
    every image was unreadable."""

    def __iter__(self) -> Any:
        for batch in super().__iter__():
            if batch is not None:
                yield batch


def subset_for(size: int | None, key: str, n: int, clamp: bool, seed: int) -> list[int] | None:
    """Sorted indices of ``size`` random items out of ``n``, fixed by ``seed`` (None = all of
    them). A size above ``n`` is a ConfigError naming ``key`` unless ``clamp`` (then:
    everything).
    """
    if size is None:
        return None
    if size > n and not clamp:
        raise ConfigError(key, size, f"null or an int in [1, {n}] (the split has {n} images)")
    return subset_indices(n, size, seed)


def _subset(dataset: Dataset, size: int | None, key: str, clamp: bool, seed: int) -> Dataset:
    """``dataset`` restricted to :func:`subset_for` (all of it when that is None)."""
    indices = subset_for(size, key, len(dataset), clamp, seed)  # type: ignore[arg-type]
    return dataset if indices is None else Subset(dataset, indices)


def _seed_worker(worker_id: int) -> None:
    """Seed Python's and numpy's RNGs in a worker from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def check_data_settings(spec: DataSpec) -> None:
    """The checks of ``spec.format``'s settings that building its loaders makes, without reading
    an image (``--cfg job`` and ``-m``'s pre-check run them): ConfigError naming the key."""
    if spec.format == "dali":
        from solo_mixmask.data.dali import check_dali_settings

        check_dali_settings(spec)
    elif spec.format == "memory":
        from solo_mixmask.data.batched_augmentations import check_batchable

        for i, crop in enumerate(spec.crops):
            check_batchable(crop, f"augmentations[{i}]")


def build_train_loader(spec: DataSpec, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Shuffled, drop-last loader of the pretraining views.

    Yields ``[indexes (B,) int64, [V tensors (B, 3, H, W) float32], targets (B,) int64]`` with
    B = optimizer.batch_size (fewer when unreadable images were skipped, see
    :func:`collate_training`) and V = sum of num_crops; indexes count within the (sub)set.
    Raises DataError when the (sub)set is smaller than a batch.
    With ``data.format: dali`` the batches come from a DALI pipeline instead (same format; see
    :mod:`solo_mixmask.data.dali`). With ``data.format: memory`` the images are decoded once
    into a tensor on the training device and augmented there (:mod:`solo_mixmask.data.memory`);
    that loader is already resumable and sharded for ``rank`` of ``world_size``.
    """
    if spec.format == "dali":
        from solo_mixmask.data.dali import build_dali_train_loader

        return build_dali_train_loader(spec, rank, world_size)
    if spec.format == "memory":
        from solo_mixmask.data.memory import build_memory_train_loader

        return build_memory_train_loader(
            spec,
            lambda n: subset_for(spec.train_subset, "data.train_subset", n, False, spec.seed),
            rank,
            world_size,
        )
    batch, workers = spec.batch_size, spec.num_workers
    dataset = build_dataset(spec, "train", build_pretrain_transform(spec.crops))
    dataset = _subset(dataset, spec.train_subset, "data.train_subset", False, spec.seed)
    if len(dataset) < batch:  # type: ignore[arg-type]
        raise DataError(
            f"the training set has {len(dataset)} images, fewer than one batch of "  # type: ignore[arg-type]
            f"optimizer.batch_size={batch}: lower the batch size or add images"
        )
    return DataLoader(
        IndexedDataset(dataset),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(spec.seed),
        collate_fn=collate_training,
    )


def _eval_loader(
    dataset: Dataset, batch: int, workers: int, rank: int, world_size: int
) -> DataLoader:
    """Rank ``rank`` of ``world_size``'s share of ``dataset`` in order, every image once across
    the ranks (:class:`~solo_mixmask.utils.distributed.UnpaddedDistributedSampler`)."""
    return ReadableLoader(
        dataset,
        batch_size=batch,
        sampler=UnpaddedDistributedSampler(dataset, rank, world_size),
        drop_last=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_seed_worker,
        collate_fn=collate_readable,
    )


def _needs_labels(spec: DataSpec, what: str) -> None:
    if spec.no_labels:
        raise ConfigError(
            "data.no_labels",
            True,
            f"false for {what} (it needs labelled images); unlabelled images pretrain with "
            "knn_eval.enabled=false, without validation loaders",
        )


def _eval_split_loader(
    spec: DataSpec, split: str, size: int | None, key: str, clamp: bool, rank: int, world_size: int
) -> DataLoader:
    """``size`` images of ``split`` (all when null; a size above the split is an error naming
    ``key`` unless ``clamp``) with the eval transform, in a fixed order, batch size
    optimizer.batch_size; ``rank`` of ``world_size`` gets its share, every image being in one
    share (none padded in twice), and each share holding one image at least (else a
    ConfigError naming ``key``). With ``data.format: memory`` an in-memory loader; DALI data
    is read by plain loaders here."""
    loader: Any
    if spec.format == "memory":
        from solo_mixmask.data.memory import build_memory_eval_loader

        loader = build_memory_eval_loader(
            spec, split, lambda n: subset_for(size, key, n, clamp, spec.seed), rank, world_size
        )
    else:
        if spec.format == "dali":
            spec = image_folder_spec(spec)
        images = build_dataset(spec, split, build_eval_transform(spec.crops[0]))
        images = _subset(images, size, key, clamp, spec.seed)
        loader = _eval_loader(images, spec.batch_size, spec.num_workers, rank, world_size)
    images_in = len(loader.dataset)
    if images_in < world_size:  # a rank without images would miss the others' collectives
        raise ConfigError(
            key,
            size,
            f"at least {world_size} images, one for each of the {world_size} processes (the "
            f"set has {images_in}): choose more images or fewer devices",
        )
    return loader


def build_knn_train_loader(spec: DataSpec, rank: int = 0, world_size: int = 1) -> DataLoader:
    """The k-NN monitor's memory: ``data.knn_train_subset`` (default 10,000) clean images of the
    labelled training split (all when null or larger than the split), yielding ``(x (B, 3,
    crop, crop) float32, y (B,) int64)`` with the eval transform, in a fixed order; batch size
    optimizer.batch_size; ``rank`` of ``world_size`` gets its share (see
    :func:`_eval_split_loader`). ConfigError naming ``data.no_labels`` for unlabelled data."""
    _needs_labels(spec, "the k-NN monitor")
    return _eval_split_loader(
        spec,
        "train_labeled",
        spec.knn_train_subset,
        "data.knn_train_subset",
        True,
        rank,
        world_size,
    )


def build_val_loader(spec: DataSpec, rank: int = 0, world_size: int = 1) -> DataLoader:
    """``data.val_subset`` images of the val split (all when null; more than the split is a
    ConfigError), as :func:`build_knn_train_loader` yields them (the k-NN queries and the online
    linear accuracy)."""
    _needs_labels(spec, "validation")
    return _eval_split_loader(
        spec, "val", spec.val_subset, "data.val_subset", False, rank, world_size
    )


def build_knn_loaders(
    spec: DataSpec, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader, DataLoader]:
    """(:func:`build_knn_train_loader`, :func:`build_val_loader`)."""
    return build_knn_train_loader(spec, rank, world_size), build_val_loader(spec, rank, world_size)
