"""Shared helpers for the data tests: small configs and a skip marker for Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from solo_mixmask.config.data_specs import DataSpec, data_spec
from solo_mixmask.data.datasets import FASHION_MNIST_SYSTEM_DIR

torch.set_num_threads(1)

needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST idx files absent from {FASHION_MNIST_SYSTEM_DIR} "
    "(install the Debian package dataset-fashion-mnist)",
)


def make_cfg(
    data: dict[str, Any] | None = None,
    augmentations: list | None = None,
    batch_size: int = 16,
    seed: int = 5,
) -> DictConfig:
    """A config in the project's layout; ``data`` entries override the defaults."""
    base = {
        "dataset": "fashion_mnist",
        "train_path": None,
        "val_path": None,
        "format": "image_folder",
        "num_workers": 0,
        "download": False,
        "no_labels": False,
        "train_subset": None,
        "val_subset": None,
        "knn_train_subset": 10000,
        "strict": False,
        "mean": None,
        "std": None,
    }
    base.update(data or {})
    return OmegaConf.create(
        {
            "data": base,
            "augmentations": augmentations if augmentations is not None else [{"num_crops": 2}],
            "optimizer": {"batch_size": batch_size},
            "seed": seed,
        }
    )


def make_spec(*args: Any, **kwargs: Any) -> DataSpec:
    """The :class:`DataSpec` of :func:`make_cfg` ``(*args, **kwargs)``."""
    return data_spec(make_cfg(*args, **kwargs))


def save_rgb(path: Path, color: tuple[int, int, int], size: int = 12) -> Path:
    """Write a solid-colour RGB PNG (or JPEG, by suffix) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), color, dtype=np.uint8)).save(path)
    return path
