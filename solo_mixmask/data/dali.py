"""NVIDIA DALI pretraining loader for ImageFolder trees (``data.format: dali``).

JPEG decoding and the MoCo v2 augmentations run inside a DALI pipeline: on the GPU
(``fn.decoders.image`` with device ``"mixed"``, every augmentation on ``"gpu"``) or, for tests
and machines without CUDA, on the CPU (``data.dali_device: cpu``). Each image is decoded once
and cropped into the views of every ``augmentations`` pipeline; batches follow solo-learn's
training format ``[indexes (B,) int64, [view_1, ..., view_V] float32 (B, 3, crop, crop),
targets (B,) int64]``, on the GPU for ``gpu``, on the host for ``cpu``.

What each augmentation becomes (per image, per view; the probabilities and ranges are the
config's, see :class:`~solo_mixmask.data.augmentations.CropSpec`):

- ``rrc``: ``fn.random_resized_crop`` (area fraction in [crop_min_scale, crop_max_scale],
  aspect ratio in [3/4, 4/3], bicubic), else a resize of the short side and a centre crop;
- colour jitter with probability p: ``fn.color_twist`` with brightness, contrast and
  saturation factors uniform in [1 - s, 1 + s] and a hue shift uniform in +-hue * 360 degrees
  (DALI applies them in a fixed order, torchvision in a random one; DALI's contrast pivots on
  mid-grey, torchvision's on the image mean);
- grayscale with probability p: the saturation factor set to 0 (luma Y = 0.299 R + 0.587 G +
  0.114 B, torchvision's weights);
- Gaussian blur with probability p: ``fn.gaussian_blur`` with sigma uniform in [0.1, 2.0] and
  the window of :data:`~solo_mixmask.data.augmentations.BLUR_WINDOW`; images that are not
  blurred get sigma 1e-3, which is the identity for that window;
- solarisation with probability p: pixels >= 128 become 255 - pixel; equalisation with
  probability p: ``fn.equalize``;
- horizontal flip with probability p and normalisation (mean/std x 255) in
  ``fn.crop_mirror_normalize``, which also lays the view out as CHW float32.

Decoding differs from the PIL path for images with transparency: DALI's RGB decode drops the
alpha channel (the hidden colour of transparent pixels shows), where the PIL path paints them on
white; palette, CMYK, grayscale and 16-bit images decode alike.

Order, randomness and resume: the training loader is a
:class:`~solo_mixmask.utils.resumable.ResumableLoader`. Epoch ``e``'s file order is the PIL
path's permutation drawn from ``(seed, e)``, each rank reading its disjoint slice; each epoch is
read by a pipeline of its own seeded with ``(seed, e, rank)`` (:func:`augmentation_seed`), so
ranks draw different augmentations and an epoch rebuilt on resume draws what it drew the first
time. A mid-epoch resume replays the epoch's batches already trained (decoded and augmented,
then dropped) because DALI's random draws cannot be skipped: exact, at the cost of loading them.

DALI is an optional dependency (``pip install solo-mixmask[dali]``): it is imported only when
``data.format`` is ``dali``. Undecodable files stop the pipeline with DALI's own error; DALI
has no skip-and-warn mode (check the tree with ``data.scan_images: true`` first).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator, Sequence, Sized
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from solo_mixmask.config.data_specs import DALI_DEVICES, DEFAULT_SEED, DataSpec
from solo_mixmask.data.augmentations import BLUR_SIGMA, BLUR_WINDOW, SOLARIZE_THRESHOLD, CropSpec
from solo_mixmask.data.datasets import (
    IMAGE_FOLDER_DATASETS,
    build_dataset,
    image_folder_spec,
    subset_indices,
)
from solo_mixmask.errors import ConfigError, DataError
from solo_mixmask.utils.resumable import ResumableLoader, keep_batch, mix_seed

__all__ = [
    "DEVICES",
    "INSTALL_HINT",
    "DaliTrainLoader",
    "augmentation_seed",
    "build_dali_train_loader",
    "build_pretrain_pipeline",
    "check_dali_settings",
    "dali_available",
    "image_folder_spec",
    "import_dali",
    "resolve_device",
]

INSTALL_HINT = "pip install solo-mixmask[dali]"
DEVICES = DALI_DEVICES
ASPECT_RATIO = (3 / 4, 4 / 3)
NO_BLUR_SIGMA = 1e-3  # exp(-1 / (2 sigma^2)) underflows: any window keeps only its centre


def dali_available() -> bool:
    """True when ``nvidia.dali`` (and its PyTorch plugin) can be imported."""
    try:
        import_dali()
    except DataError:
        return False
    return True


def import_dali() -> ModuleType:
    """``nvidia.dali``, or a DataError saying how to install it."""
    try:
        import nvidia.dali as dali
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as err:
        raise DataError(
            f"data.format='dali' needs NVIDIA DALI, which is not installed ({err}); install it "
            f"with `{INSTALL_HINT}` (the CUDA 12 wheel, x86-64/aarch64 Linux only) or use "
            "data.format=image_folder"
        ) from err
    return dali


def resolve_device(value: Any) -> str:
    """``data.dali_device`` -> "gpu" or "cpu" ("auto": gpu when CUDA is available)."""
    if value not in DEVICES:
        raise ConfigError("data.dali_device", value, f"one of {', '.join(DEVICES)}")
    if value == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if value == "gpu" and not torch.cuda.is_available():
        raise ConfigError("data.dali_device", value, "'cpu' or 'auto' (no CUDA device here)")
    return value


# --------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class _Ops:
    """The DALI modules, passed around so that they are imported once, lazily."""

    fn: Any
    types: Any
    device: str  # where the augmentations run: "gpu" or "cpu"

    def on_device(self, node: Any) -> Any:
        """A per-sample value produced on the host, moved next to the images."""
        return node.gpu() if self.device == "gpu" else node

    def coin(self, probability: float) -> Any:
        """Per-sample 0/1 draws as float32."""
        flip = self.fn.random.coin_flip(probability=float(probability))
        return self.fn.cast(flip, dtype=self.types.FLOAT)

    def uniform(self, low: float, high: float) -> Any:
        return self.fn.random.uniform(range=(float(low), float(high)))


def _crop(ops: _Ops, images: Any, spec: CropSpec) -> Any:
    size = (spec.crop_size, spec.crop_size)
    if spec.rrc:
        return ops.fn.random_resized_crop(
            images,
            size=size,
            random_area=(spec.crop_min_scale, spec.crop_max_scale),
            random_aspect_ratio=ASPECT_RATIO,
            interp_type=ops.types.INTERP_CUBIC,
        )
    resized = ops.fn.resize(
        images, resize_shorter=spec.crop_size, interp_type=ops.types.INTERP_CUBIC
    )
    return ops.fn.crop(resized, crop=size)


def _color(ops: _Ops, view: Any, spec: CropSpec) -> Any:
    """Colour jitter (probability p) and grayscale (probability p) in one ``color_twist``."""
    if spec.color_jitter_prob <= 0 and spec.grayscale_prob <= 0:
        return view
    kwargs: dict[str, Any] = {}
    saturation: Any = None
    if spec.color_jitter_prob > 0:
        on = ops.coin(spec.color_jitter_prob)

        def factor(strength: float) -> Any:
            return 1.0 + on * (ops.uniform(max(0.0, 1.0 - strength), 1.0 + strength) - 1.0)

        kwargs["brightness"] = factor(spec.brightness)
        kwargs["contrast"] = factor(spec.contrast)
        saturation = factor(spec.saturation)
        kwargs["hue"] = on * ops.uniform(-360.0 * spec.hue, 360.0 * spec.hue)
    if spec.grayscale_prob > 0:
        keep_colour = 1.0 - ops.coin(spec.grayscale_prob)
        saturation = keep_colour if saturation is None else saturation * keep_colour
    if saturation is not None:
        kwargs["saturation"] = saturation
    return ops.fn.color_twist(view, **kwargs)


def _equalize(ops: _Ops, view: Any) -> Any:
    op = getattr(ops.fn, "equalize", None) or ops.fn.experimental.equalize
    return op(view)


def _pixel_ops(ops: _Ops, view: Any, spec: CropSpec) -> Any:
    """Blur, solarisation and equalisation, each applied to a random share of the images."""
    if spec.gaussian_prob > 0:
        on = ops.coin(spec.gaussian_prob)
        sigma = on * ops.uniform(*BLUR_SIGMA) + (1.0 - on) * NO_BLUR_SIGMA
        view = ops.fn.gaussian_blur(view, window_size=BLUR_WINDOW, sigma=sigma)
    if spec.solarization_prob > 0:
        on = ops.on_device(
            ops.fn.random.coin_flip(probability=spec.solarization_prob, dtype=ops.types.UINT8)
        )
        # x + on * [x >= 128] * (255 - 2x): 255 - x where solarised, x elsewhere.
        flipped = view + on * (view >= SOLARIZE_THRESHOLD) * (255 - 2 * view)
        view = ops.fn.cast(flipped, dtype=ops.types.UINT8)
    if spec.equalization_prob > 0:
        on = ops.on_device(
            ops.fn.random.coin_flip(probability=spec.equalization_prob, dtype=ops.types.UINT8)
        )
        view = ops.fn.cast(view + on * (_equalize(ops, view) - view), dtype=ops.types.UINT8)
    return view


def _normalise(ops: _Ops, view: Any, spec: CropSpec) -> Any:
    mirror = (
        ops.fn.random.coin_flip(probability=spec.horizontal_flip_prob)
        if spec.horizontal_flip_prob > 0
        else 0
    )
    return ops.fn.crop_mirror_normalize(
        view,
        dtype=ops.types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in spec.mean],
        std=[255.0 * s for s in spec.std],
        mirror=mirror,
    )


def _view(ops: _Ops, images: Any, spec: CropSpec) -> Any:
    """One augmented view (3, crop, crop) float32 of every decoded image (HWC uint8)."""
    view = _crop(ops, images, spec)
    view = _color(ops, view, spec)
    view = _pixel_ops(ops, view, spec)
    return _normalise(ops, view, spec)


def build_pretrain_pipeline(
    files: Sequence[str],
    specs: Sequence[CropSpec],
    batch_size: int,
    *,
    device: str = "cpu",
    seed: int = DEFAULT_SEED,
    num_threads: int = 2,
    device_id: int | None = None,
    shard_id: int = 0,
    num_shards: int = 1,
    ids: Sequence[int] | None = None,
    reader_name: str = "Reader",
    shuffle: bool = True,
) -> Any:
    """A built DALI pipeline whose outputs are ``(view_1, ..., view_V, sample_id)``.

    Views are float32 (3, crop, crop) per sample, normalised; ``sample_id`` is the int32
    ``ids[i]`` of file ``files[i]`` (the reader's "label"; default ``i``). V = sum of
    ``num_crops`` over ``specs``.
    ``device``: "gpu" (decoding on "mixed", augmentations on the GPU ``device_id``) or "cpu".
    ``seed`` seeds every random draw of the pipeline (augmentations, and the order).
    With ``shuffle`` the files are read in a seeded random order, reshuffled after every epoch,
    and with ``num_shards`` > 1 each shard reads its own slice; without, ``files`` are read in
    the order given, from the first, epoch after epoch.
    """
    import_dali()
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    if device not in ("gpu", "cpu"):
        raise ValueError(f"device={device!r} is not allowed: expected 'gpu' or 'cpu'")
    if not files:
        raise ValueError("files is empty: expected at least one image path")
    ids = list(range(len(files))) if ids is None else [int(i) for i in ids]
    if len(ids) != len(files):
        raise ValueError(f"{len(ids)} ids for {len(files)} files: expected one id per file")
    ops = _Ops(fn, types, device)

    @pipeline_def(
        batch_size=int(batch_size),
        num_threads=max(1, int(num_threads)),
        # DALI's overload says int, but its docs and Pipeline take None for a CPU-only pipeline
        device_id=(device_id or 0) if device == "gpu" else None,  # type: ignore[arg-type]
        seed=int(seed),
        prefetch_queue_depth=2,
    )
    def pipeline() -> tuple[Any, ...]:
        encoded, sample_ids = fn.readers.file(
            files=list(files),
            labels=ids,
            shuffle_after_epoch=bool(shuffle),
            shard_id=int(shard_id),
            num_shards=int(num_shards),
            seed=int(seed),
            name=reader_name,
        )
        decoder = "mixed" if device == "gpu" else "cpu"
        images = fn.decoders.image(encoded, device=decoder, output_type=types.DALIImageType.RGB)
        views = [_view(ops, images, s) for s in specs for _ in range(s.num_crops)]
        return (*views, sample_ids)

    pipe = pipeline()
    pipe.build()
    return pipe


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """The DALI pipeline seed of ``epoch`` on ``rank``: every rank draws its own augmentations,
    and an epoch's draws depend on ``(seed, epoch, rank)`` alone (31 bits, as DALI takes)."""
    return mix_seed(seed, epoch, rank) % (1 << 31)


# --------------------------------------------------------------------------- the loader


class DaliTrainLoader(ResumableLoader):
    """Pretraining batches from a DALI pipeline; one pass = one epoch, resumable.

    ``files[i]`` has target ``targets[i]``; batches are
    ``[indexes (B,) int64, [V views (B, 3, crop, crop) float32], targets (B,) int64]`` with
    indexes into ``files`` (views on the pipeline's device, indexes and targets on the same
    device). ``len()`` is the number of batches per epoch; ``dataset`` is the file-level dataset
    (``len`` = images).

    Order and position are the PIL path's (:class:`~solo_mixmask.utils.resumable.ResumableLoader`):
    epoch ``e``'s order is drawn from ``(seed, e)``, rank ``shard_id`` of ``num_shards`` reads
    its slice of it (the ranks' slices are disjoint), the last incomplete batch is dropped, and
    checkpoints store ``{epoch, batches_done}``. Every epoch gets a pipeline of its own, built
    when the pass starts, that reads this rank's files of the epoch in that order, seeded with
    :func:`augmentation_seed` ``(seed, e, rank)``: ranks draw different augmentations, and a
    rebuilt epoch draws exactly what it drew the first time. A resume inside epoch ``e`` runs
    that epoch's pipeline over the batches already trained and drops them (DALI's draws cannot
    be skipped): the resumed batches are the uninterrupted run's, at the cost of loading the
    skipped ones again.

    The epoch is the sampler's (``sampler.set_epoch``, which Lightning calls at every epoch
    start, or :meth:`load_state_dict`); iterated by hand, a pass that ran to its end moves the
    next pass to the next epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        files: Sequence[str],
        targets: Sequence[int],
        specs: Sequence[CropSpec],
        batch_size: int,
        *,
        device: str = "cpu",
        seed: int = DEFAULT_SEED,
        num_threads: int = 2,
        device_id: int | None = None,
        shard_id: int = 0,
        num_shards: int = 1,
    ):
        import_dali()
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} targets: expected as many")
        super().__init__(
            dataset,
            batch_size=batch_size,
            seed=seed,
            rank=shard_id,
            world_size=num_shards,
            num_workers=0,
            collate_fn=keep_batch,
        )
        self.device = device
        self.num_views = sum(s.num_crops for s in specs)
        self._files = list(files)
        self._targets = torch.as_tensor(list(targets), dtype=torch.int64)
        self._specs = list(specs)
        self._num_threads = num_threads
        self._device_id = device_id
        self._names = [f"view{i}" for i in range(self.num_views)] + ["ids"]
        self._finished: int | None = None  # the epoch of the last pass that ran to its end
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches trained in it)
        self._pass: Generator[list[Any], None, None] | None = None  # the pass under way

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Start the next pass where the checkpoint's run was (see ``ResumableLoader``)."""
        super().load_state_dict(state)  # sets the sampler's epoch and ``batches_done``
        self._resume_at = (int(self.resumable_sampler.epoch), int(self.batches_done))
        self._finished = None

    def _epoch_iterator(self, epoch: int) -> Any:
        """A DALI iterator over this rank's batches of ``epoch``, from its first."""
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        batch = int(self.batch_size or 1)
        order = self.resumable_sampler.indices(epoch)
        order = order[: len(order) // batch * batch]
        pipe = build_pretrain_pipeline(
            [self._files[i] for i in order],
            self._specs,
            batch,
            device=self.device,
            seed=augmentation_seed(self.seed, epoch, self.resumable_sampler.rank),
            num_threads=self._num_threads,
            device_id=self._device_id,
            ids=order,
            shuffle=False,
        )
        return DALIGenericIterator(
            [pipe],
            self._names,
            reader_name="Reader",
            last_batch_policy=LastBatchPolicy.DROP,
            auto_reset=False,
        )

    def _batch(self, out: dict[str, torch.Tensor]) -> list[Any]:
        views = [out[name] for name in self._names[:-1]]
        ids = out["ids"].reshape(-1).to(torch.int64).cpu()
        targets = self._targets[ids]
        where = views[0].device
        return [ids.to(where), views, targets.to(where)]

    def __iter__(self) -> Iterator[list[Any]]:  # type: ignore[override]
        sampler = self.resumable_sampler
        if self._finished is not None and sampler.epoch == self._finished:
            sampler.set_epoch(self._finished + 1)  # iterated by hand: the next epoch
        epoch, skip = int(sampler.epoch), 0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            skip = self._resume_at[1]
        self._resume_at = None
        if self._pass is not None:  # a pass left unfinished: its pipeline goes first
            self._pass.close()
        self._pass = self._epoch(epoch, skip)
        return self._pass

    def _epoch(self, epoch: int, skip: int) -> Generator[list[Any], None, None]:
        """This rank's batches of ``epoch`` after its first ``skip`` (which are made, then
        dropped, so that the pipeline's random draws stay those of the whole epoch)."""
        iterator, last = self._epoch_iterator(epoch), len(self) - 1
        for i, outputs in enumerate(iterator):
            if i == last:  # handed out: a new pass is the next epoch, also if this one is left
                self._finished = epoch
            if i >= skip:
                yield self._batch(outputs[0])


def _files_and_targets(dataset: Dataset) -> tuple[list[str], list[int]]:
    """(paths, targets) of an ImageFolderDataset, or of a Subset of one."""
    indices: Sequence[int] | None = None
    if isinstance(dataset, Subset):
        indices, dataset = dataset.indices, dataset.dataset
    samples = dataset.samples  # type: ignore[attr-defined]
    chosen = [samples[i] for i in indices] if indices is not None else samples
    return [p for p, _ in chosen], [int(t) for _, t in chosen]


def check_dali_settings(spec: DataSpec) -> None:
    """ConfigError for a dataset that is not an ImageFolder tree (whether this machine has
    ``data.dali_device`` is checked when the loader is built). Reads no image, needs no DALI."""
    name = spec.dataset
    if name not in IMAGE_FOLDER_DATASETS:
        raise ConfigError(
            "data.format",
            "dali",
            f"'image_folder' for data.dataset={name!r}: DALI reads ImageFolder trees "
            f"(data.dataset one of {', '.join(IMAGE_FOLDER_DATASETS)})",
        )


def build_dali_train_loader(spec: DataSpec, rank: int = 0, world_size: int = 1) -> DaliTrainLoader:
    """The DALI training loader for ``spec`` (``data.format: dali``), shard ``rank`` of
    ``world_size`` (the Trainer's); its GPU is the launcher's ``LOCAL_RANK``.

    Reads ``data.train_path`` like the ImageFolder loader (class sub-folders, or any images
    with ``data.no_labels``; ``data.train_subset`` as there), decodes and augments with DALI on
    ``data.dali_device`` (auto/gpu/cpu) using ``data.num_workers`` CPU threads (at least 1).
    Raises ConfigError for datasets that are not ImageFolder trees, DataError when DALI is
    missing or the set is smaller than one batch.
    """
    check_dali_settings(spec)
    import_dali()
    device = resolve_device(spec.dali.device)
    batch, seed = spec.batch_size, spec.seed
    dataset = build_dataset(image_folder_spec(spec), "train", None)
    assert isinstance(dataset, Sized)  # an ImageFolderDataset: it has a length
    size = spec.train_subset
    if size is not None:
        if size > len(dataset):
            raise ConfigError("data.train_subset", size, f"null or an int in [1, {len(dataset)}]")
        indices = subset_indices(len(dataset), size, seed)
        dataset = dataset if indices is None else Subset(dataset, indices)
    files, targets = _files_and_targets(dataset)
    shard, shards, local = rank, world_size, int(os.environ.get("LOCAL_RANK", 0))
    if len(files) // shards < batch:
        raise DataError(
            f"the training set has {len(files)} images ({len(files) // shards} per device), "
            f"fewer than one batch of optimizer.batch_size={batch}"
        )
    return DaliTrainLoader(
        dataset,
        files,
        targets,
        spec.crops,
        batch,
        device=device,
        seed=seed,
        num_threads=max(1, spec.num_workers),
        device_id=local,
        shard_id=shard,
        num_shards=shards,
    )
