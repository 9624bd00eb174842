"""One table of what solo_mixmask knows about each named dataset (no imports, any layer reads it).

``mean``/``std`` are per-channel statistics of the training split with pixels in [0, 1] (the
normalisation every pipeline applies unless ``data.mean``/``data.std`` are given); ``image_size``
is the side of its images in pixels (the default evaluation crop), None where images vary.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetFacts:
    num_classes: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    image_size: int | None = None


DATASETS: dict[str, DatasetFacts] = {
    # Fashion-MNIST train set: mean 0.2860, std 0.3530 (grayscale, repeated over 3 channels).
    "fashion_mnist": DatasetFacts(10, (0.2860,) * 3, (0.3530,) * 3, 28),
    "cifar10": DatasetFacts(10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32),
    "cifar100": DatasetFacts(100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32),
    "stl10": DatasetFacts(10, image_size=96),
    "imagenet": DatasetFacts(1000),
    "imagenet100": DatasetFacts(100),
}

#: Every name ``data.dataset`` accepts: the table's, and ``custom`` (any ImageFolder tree).
KNOWN_DATASETS = (*DATASETS, "custom")

#: Evaluation crop of datasets whose images vary in size (ImageNet's 224 centre crop).
DEFAULT_EVAL_CROP = 224


def num_classes_of(dataset: str) -> int | None:
    """Classes of a named dataset, None for a custom one."""
    facts = DATASETS.get(dataset)
    return facts.num_classes if facts else None


def normalisation_of(dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of a named dataset; ImageNet's for a custom one."""
    facts = DATASETS.get(dataset)
    return (facts.mean, facts.std) if facts else (IMAGENET_MEAN, IMAGENET_STD)


def eval_crop_of(dataset: str) -> int:
    """The evaluation crop of a dataset: its image size, else 224."""
    facts = DATASETS.get(dataset)
    return facts.image_size if facts and facts.image_size else DEFAULT_EVAL_CROP
