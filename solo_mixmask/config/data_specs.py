"""What the data layer needs from a config, read and checked once: :func:`data_spec`.

:func:`data_spec` is the one reader of the ``data.*`` keys the loaders use (and of ``seed``,
``optimizer.batch_size`` for them), and turns
``augmentations`` into :class:`~solo_mixmask.config.augmentation_specs.CropSpec` s. The data layer
(:mod:`solo_mixmask.data`) receives the frozen :class:`DataSpec` and never reads a config.
Every check raises :class:`~solo_mixmask.errors.ConfigError` naming the key, the value given and
what is allowed. Pure: no torch, no files read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from solo_mixmask.config.augmentation_specs import CropSpec, dataset_of, parse_augmentations
from solo_mixmask.config.schema import (
    BASE_DEFAULTS,
    DATA_FORMATS,
    MAX_SEED,
    batch_size_of,
    check_choice,
    check_number,
    read_bool,
    select,
    suggest,
)
from solo_mixmask.config.schema import (
    DEFAULT_SEED as DEFAULT_SEED,  # re-exported for the data layer
)
from solo_mixmask.errors import ConfigError

#: Images of the labelled training split in the k-NN memory when ``data.knn_train_subset`` is
#: absent (null: all of them).
DEFAULT_KNN_TRAIN_SUBSET = 10_000
#: ``data.num_workers`` when absent or null.
DEFAULT_NUM_WORKERS = 2
#: ``data.dali_device``: where DALI decodes and augments ("auto": the GPU when CUDA is there).
DALI_DEVICES = ("auto", "gpu", "cpu")


@dataclass(frozen=True)
class DaliSpec:
    """Settings of the DALI loader (``data.format: dali``).

    ``device``: one of :data:`DALI_DEVICES`. Each process's shard of the files follows the
    Trainer's rank and world size, as for the other loaders (Lightning reads ``devices`` and
    ``num_nodes`` in all their forms: ``"2"``, ``[0, 1]``, ``-1``, ``auto``).
    """

    device: str = "auto"


@dataclass(frozen=True)
class DataSpec:
    """Everything the data layer reads, checked.

    - ``dataset``: a name of :data:`~solo_mixmask.config.dataset_facts.KNOWN_DATASETS`;
      ``format``: one of ``image_folder``, ``dali``, ``memory``;
    - ``train_path`` / ``val_path``: folders as given (None when unset);
    - ``download``, ``no_labels``, ``strict``, ``scan_images``: ``data.*`` flags;
    - ``num_classes``: ``data.num_classes`` (>= 1), None when unset (then from the dataset);
    - ``crops``: the crop pipelines of ``augmentations``, in order (sizes in pixels);
    - ``batch_size``: images per device per step (>= 2); ``num_workers``: loader processes
      (>= 0); ``seed``: picks subsets, shuffles and augmentation draws;
    - ``train_subset`` / ``val_subset`` / ``knn_train_subset``: numbers of images (>= 1), None
      for all of the split;
    - ``dali``: :class:`DaliSpec`;
    - ``compile_augmentations``: the ``torch.compile`` backend of the in-memory path's batched
      augmentations (``performance.compile_backend`` when ``performance.compile_augmentations``
      is true), None to run them eagerly.
    """

    dataset: str
    format: str
    train_path: str | None
    val_path: str | None
    download: bool
    no_labels: bool
    strict: bool
    scan_images: bool
    num_classes: int | None
    crops: tuple[CropSpec, ...]
    batch_size: int
    num_workers: int
    seed: int
    train_subset: int | None
    val_subset: int | None
    knn_train_subset: int | None
    dali: DaliSpec
    compile_augmentations: str | None = None


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(key, value, f"one of {', '.join(allowed)}{suggest(value, allowed)}")
    return value


def _path(cfg: DictConfig, key: str) -> str | None:
    value = select(cfg, key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(key, value, "a folder path or null")
    return value


def _int_at_least(key: str, value: Any, low: int, allowed: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, value, allowed)
    return value


def image_count(cfg: DictConfig, key: str, default: int | None = None) -> int | None:
    """``cfg[key]``: a number of images (an int >= 1), None for all; ``default`` only when the
    key is absent (an explicit null means all, hence OmegaConf.select rather than
    :func:`select`). The one checker of subset sizes (``data.*_subset``, ``linear.*_subset``,
    ``finetune.val_subset``)."""
    size = OmegaConf.select(cfg, key, default=default)
    if size is None:
        return None
    return _int_at_least(key, size, 1, "null or an int >= 1 (a number of images)")


def data_spec(cfg: DictConfig) -> DataSpec:
    """The :class:`DataSpec` of ``cfg`` (ConfigError naming the first bad key).

    Defaults for absent or null keys: ``data.format`` image_folder, ``data.num_workers`` 2,
    ``seed`` 5, ``data.knn_train_subset`` 10,000 (null: all), the flags false, the subsets
    and ``data.num_classes`` None, ``data.dali_device`` auto. ``data.dataset``,
    ``optimizer.batch_size`` and ``augmentations`` are required.
    """
    dataset = dataset_of(cfg)
    num_classes = select(cfg, "data.num_classes")
    if num_classes is not None:
        _int_at_least("data.num_classes", num_classes, 1, "an int >= 1 or null")
    # keys that the start-up checks (config.validate_base) also check: the same checkers, so
    # a config that reaches the data layer without them gets the same one-line errors
    for key, low, high in (("seed", 0, MAX_SEED), ("data.num_workers", 0, None)):
        if select(cfg, key) is not None:
            check_number(cfg, key, low=low, high=high, integer=True)
    if select(cfg, "data.format") is not None:
        check_choice(cfg, "data.format", DATA_FORMATS)
    # (checked by config.validate_base: a boolean, only with data.format=memory, a backend
    # torch.compile has)
    compile_backend = None
    if select(cfg, "performance.compile_augmentations", False) is True:
        default = BASE_DEFAULTS["performance"]["compile_backend"]
        compile_backend = str(select(cfg, "performance.compile_backend", default))
    return DataSpec(
        dataset=dataset,
        format=select(cfg, "data.format", "image_folder"),
        train_path=_path(cfg, "data.train_path"),
        val_path=_path(cfg, "data.val_path"),
        download=read_bool(cfg, "data.download"),
        no_labels=read_bool(cfg, "data.no_labels"),
        strict=read_bool(cfg, "data.strict"),
        scan_images=read_bool(cfg, "data.scan_images"),
        num_classes=num_classes,
        crops=tuple(parse_augmentations(cfg)),
        batch_size=batch_size_of(cfg),
        num_workers=select(cfg, "data.num_workers", DEFAULT_NUM_WORKERS),
        seed=select(cfg, "seed", DEFAULT_SEED),
        train_subset=image_count(cfg, "data.train_subset"),
        val_subset=image_count(cfg, "data.val_subset"),
        knn_train_subset=image_count(cfg, "data.knn_train_subset", DEFAULT_KNN_TRAIN_SUBSET),
        dali=DaliSpec(
            device=_choice(
                "data.dali_device", select(cfg, "data.dali_device", "auto"), DALI_DEVICES
            ),
        ),
        compile_augmentations=compile_backend,
    )
