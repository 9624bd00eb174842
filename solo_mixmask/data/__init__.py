"""Data side of solo_mixmask: datasets, augmentations and loaders (see each module)."""

from solo_mixmask.data.augmentations import (
    DEFAULT_PIPELINE,
    CropSpec,
    MultiCropTransform,
    build_eval_transform,
    build_pretrain_transform,
)
from solo_mixmask.data.datasets import (
    DATASET_NUM_CLASSES,
    BadImageWarning,
    ImageFolderDataset,
    build_dataset,
    default_stats,
    load_image_rgb,
    num_classes,
    read_idx,
    scan_image_folder,
    to_rgb,
)
from solo_mixmask.data.loaders import build_knn_loaders, build_train_loader

__all__ = [
    "DATASET_NUM_CLASSES",
    "DEFAULT_PIPELINE",
    "BadImageWarning",
    "CropSpec",
    "ImageFolderDataset",
    "MultiCropTransform",
    "build_dataset",
    "build_eval_transform",
    "build_knn_loaders",
    "build_pretrain_transform",
    "build_train_loader",
    "default_stats",
    "load_image_rgb",
    "num_classes",
    "read_idx",
    "scan_image_folder",
    "to_rgb",
]
