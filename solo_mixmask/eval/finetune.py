"""``solo-mixmask finetune``: semi-supervised / supervised fine-tuning of the whole backbone.

The query backbone of a checkpoint (or, with ``--random-init``, the same architecture with fresh
weights, the baseline of the same recipe) gets a new linear head (weights N(0, init_std), bias 0)
and both are trained end to end on a class-balanced subset of the labelled training images:
from each class ``max(1, floor(fraction * n_class))`` images, picked with a ``torch.Generator``
seeded by the run's seed (the same count per class when the classes are equally large, as in
Fashion-MNIST, CIFAR and STL-10; ``fraction 1.0`` is every labelled image; ``n_class`` counts
the listed files). The images trained on, the subset but those that could not be decoded, are
written to ``label_subset.csv`` in the output folder so that runs can be compared image for
image; ``finetune.json`` counts them (``train_images``, ``unreadable_train_images``, and
``per_class``, 0 for a class none of whose chosen images decoded, with a warning).

Training: SGD with two parameter groups (``finetune.backbone_lr`` for the backbone,
``finetune.head_lr`` for the head), momentum, a step schedule (``finetune.lr_decay_epochs``,
``finetune.lr_decay_rate``), RandomResizedCrop(scale [crop_min_scale, 1]) + flip crops, BatchNorm
in training mode; nothing is frozen. Evaluation: centre crops of the validation split (its
classes numbered by the training tree), top-1/top-5 in percent. Settings live under
``finetune.*`` (presets in ``configs/finetune/``).
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from solo_mixmask.backbones import cpu_channels_last_hazard, output_width
from solo_mixmask.checkpoints.backbone import LoadedBackbone
from solo_mixmask.config.eval_specs import FinetuneSettings, pretraining_only
from solo_mixmask.config.schema import warn_one_class
from solo_mixmask.errors import ConfigError, ConfigWarning, DataError
from solo_mixmask.eval.features import (
    checkpoint_spec,
    eval_device,
    extract_features,
    make_loader,
    output_dir,
    seeded_subset,
    train_crop_transform,
    train_epochs,
    unreadable_images,
    write_result,
)
from solo_mixmask.eval.linear import evaluate_head, new_linear_head
from solo_mixmask.eval.presets import presets_dir
from solo_mixmask.paths import check_output_dir

PRESETS_DIR = presets_dir("finetune")
SUBSET_FILE = "label_subset.csv"
RESULT_FILE = "finetune.json"
#: Keys the config knows (``knn`` and pretraining read them) that ``finetune`` does not, with
#: what to use instead: refused, never dropped (:func:`~solo_mixmask.config.eval_specs.check_not_read`).
NOT_READ = {
    "data.val_subset": "finetune.val_subset={value}",
    "data.train_subset": "--label-fraction (a share of the labelled training images)",
    "data.knn_train_subset": "--label-fraction (a share of the labelled training images)",
    **pretraining_only("finetune"),
}


def check_fraction(fraction: Any) -> float:
    """``fraction`` as a float in (0, 1] (ConfigError naming ``--label-fraction`` otherwise)."""
    ok = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not ok or not 0.0 < float(fraction) <= 1.0 or math.isnan(float(fraction)):
        raise ConfigError("--label-fraction", fraction, "a number in (0, 1], e.g. 0.01 or 0.1")
    return float(fraction)


def per_class_count(fraction: float, n_class: int) -> int:
    """Images kept from a class of ``n_class`` images: ``max(1, floor(fraction * n_class))``
    (a tolerance of 1e-9 keeps e.g. 0.29 * 100 at 29 despite float rounding)."""
    return max(1, math.floor(fraction * n_class + 1e-9))


def balanced_subset(targets: Sequence[int] | torch.Tensor, fraction: float, seed: int) -> list[int]:
    """Sorted indices of a class-balanced subset of ``targets`` (N,) int, fixed by ``seed``.

    Each class ``c`` (targets >= 0; negative targets are unlabelled and never chosen) gives
    :func:`per_class_count` of its images, drawn with one ``torch.Generator`` seeded by
    ``seed`` that visits the classes in increasing order.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)
    gen = torch.Generator().manual_seed(int(seed))
    chosen: list[int] = []
    for c in torch.unique(targets[targets >= 0]).tolist():
        members = (targets == c).nonzero().flatten()
        keep = per_class_count(fraction, len(members))
        chosen += members[torch.randperm(len(members), generator=gen)[:keep]].tolist()
    return sorted(chosen)


def dataset_targets(dataset: Dataset) -> list[int]:
    """Targets of every item of a dataset :func:`build_dataset` returns, without decoding
    images where the dataset lists them (``targets`` or STL-10's ``labels``)."""
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None:
            return [int(t) for t in values]
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


def readable_indices(
    dataset: Dataset, indices: Sequence[int], unreadable: Sequence[str]
) -> list[int]:
    """``indices`` but those whose file (``dataset.samples[i][0]``) is in ``unreadable``."""
    if not unreadable:
        return list(indices)
    bad, samples = set(unreadable), dataset.samples  # type: ignore[attr-defined]
    return [i for i in indices if samples[i][0] not in bad]


def write_subset(path: Path, dataset: Dataset, indices: Sequence[int], targets: Sequence[int]):
    """``index,label,path`` per chosen image (path empty for datasets without files)."""
    samples = getattr(dataset, "samples", None)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "path"])
        for i in indices:
            writer.writerow([i, targets[i], samples[i][0] if samples is not None else ""])


def read_subset(path: str | Path) -> list[tuple[int, int, str]]:
    """The rows ``(index, label, path)`` of a ``label_subset.csv``."""
    with Path(path).open(newline="") as f:
        return [(int(r["index"]), int(r["label"]), r["path"]) for r in csv.DictReader(f)]


def build_model(lb: LoadedBackbone, random_init: bool, seed: int) -> nn.Module:
    """The checkpoint's backbone, or with ``random_init`` the same architecture initialised as
    its run built it (the recorded ``backbone.kwargs``: a ResNet's residual init included),
    seeded by ``seed``; maps (B, 3, H, W) to (B, features_dim)."""
    if not random_init:
        return lb.build()
    from solo_mixmask.backbones import build_backbone

    torch.manual_seed(seed)
    model, _ = build_backbone(lb.arch, lb.kwargs, lb.cifar_stem, **lb.stem)
    return model


def _optimizer(
    backbone: nn.Module, head: nn.Module, s: FinetuneSettings
) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(
        [
            {"params": list(backbone.parameters()), "lr": s.backbone_lr},
            {"params": list(head.parameters()), "lr": s.head_lr},
        ],
        lr=s.backbone_lr,
        momentum=s.momentum,
        nesterov=s.nesterov,
        weight_decay=s.weight_decay,
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(s.lr_decay_epochs), s.lr_decay_rate)
    return opt, sched


def finetune_model(
    backbone: nn.Module,
    head: nn.Module,
    train: Dataset,
    s: FinetuneSettings,
    device: torch.device,
    workers: int = 0,
    seed: int = 0,
    channels_last: bool = False,
) -> list[dict[str, Any]]:
    """Train ``backbone`` and ``head`` end to end on ``train`` (items ``(x (3,H,W), y)``).

    Both are in training mode (BatchNorm statistics update) and nothing is frozen: SGD over the
    backbone at ``s.backbone_lr`` and the head at ``s.head_lr``, step schedule per epoch,
    batches in a fresh order each epoch fixed by ``seed``. Returns the per-epoch history of
    ``features.train_epochs``.
    """
    opt, sched = _optimizer(backbone, head, s)
    # a last batch of one image would make BatchNorm fail in training mode: drop it
    drop_single = len(train) > 1 and len(train) % s.batch_size == 1  # type: ignore[arg-type]
    loader = make_loader(train, s.batch_size, workers, True, seed, drop_single)
    backbone.train()
    head.train()
    return train_epochs(
        lambda x: head(backbone(x).float()),
        opt,
        sched,
        loader,
        s.epochs,
        device,
        channels_last,
        min_batch=2,  # BatchNorm trains: a batch of one image would fail
    )


def finetune_dir_name(fraction: float, random_init: bool) -> str:
    """``finetune-0.01``, ``finetune-1`` ... (``-random-init`` appended for the baseline)."""
    return f"finetune-{fraction:g}" + ("-random-init" if random_init else "")


def run_finetune(
    checkpoint: str | Path,
    fraction: float = 0.1,
    preset: str = "paper",
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    device: str | None = None,
    random_init: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``checkpoint``'s query backbone with a new head on ``fraction`` of the labels.

    Writes ``label_subset.csv`` and ``finetune.json`` into the output folder (``out``, default
    ``<run>/finetune-<fraction>/`` beside the run, see ``features.output_dir``) and returns the
    result: ``acc1``/``acc5`` (validation, %), the last epoch's training loss and accuracy, the
    settings, image counts, per-epoch history and timings.
    """
    from solo_mixmask.data.augmentations import build_eval_transform
    from solo_mixmask.data.datasets import (
        BadImageWarning,
        build_dataset,
        image_folder_spec,
        num_classes,
    )

    start = time.perf_counter()
    fraction = check_fraction(fraction)
    dev = eval_device(device)
    lb, spec = checkpoint_spec(
        checkpoint, overrides, dev, preset, PRESETS_DIR, not_read=NOT_READ, command="finetune"
    )
    s = spec.finetune
    assert s is not None  # the finetune presets give the config a finetune section
    seed, workers, channels_last = spec.seed, spec.num_workers, spec.channels_last
    classes = num_classes(spec.data)
    warn_one_class(classes, spec.data.no_labels)
    folder = output_dir(checkpoint, finetune_dir_name(fraction, random_init), out)
    check_output_dir("--out", folder)  # before the training

    files = image_folder_spec(spec.data)  # decoded with PIL, whatever the run's data.format
    train_all = build_dataset(
        files, "train_labeled", train_crop_transform(spec.data.crops[0], s.crop_min_scale)
    )
    targets = dataset_targets(train_all)
    indices = balanced_subset(targets, fraction, seed)
    if not indices:
        raise DataError("fine-tuning needs labelled training images; the split has none")
    train = Subset(train_all, indices)
    val_all = build_dataset(files, "val", build_eval_transform(spec.data.crops[0]))
    val = seeded_subset(val_all, s.val_subset, seed)

    backbone = build_model(lb, random_init, seed).to(dev)
    why = cpu_channels_last_hazard(backbone, dev) if channels_last else None
    if why is not None:
        warnings.warn(why, ConfigWarning, stacklevel=2)
        channels_last = False
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    torch.manual_seed(seed)
    features_dim = output_width(backbone, lb.arch, lb.kwargs)
    head = new_linear_head(features_dim, classes, s.init_std).to(dev)
    t0 = time.perf_counter()
    with unreadable_images(train) as unreadable:
        history = finetune_model(backbone, head, train, s, dev, workers, seed, channels_last)
    t1 = time.perf_counter()
    trained = readable_indices(train_all, indices, unreadable)
    folder.mkdir(parents=True, exist_ok=True)
    write_subset(folder / SUBSET_FILE, train_all, trained, targets)
    backbone.eval()
    val_loader = make_loader(val, s.batch_size, workers, False, seed)
    val_f, val_y = extract_features(backbone, val_loader, dev, channels_last)
    top1, top5 = evaluate_head(head, val_f, val_y)
    chosen = torch.bincount(torch.tensor([targets[i] for i in indices]), minlength=classes)
    kept = torch.bincount(torch.tensor([targets[i] for i in trained]), minlength=classes)
    names = getattr(train_all, "classes", None) or list(range(classes))
    unlabelled = [names[c] for c in ((chosen > 0) & (kept == 0)).nonzero().flatten().tolist()]
    if unlabelled:
        warnings.warn(
            f"classes {unlabelled} trained on no label: their chosen images could not be "
            "decoded (set data.scan_images=true to draw among readable images only)",
            BadImageWarning,
            stacklevel=2,
        )
    present = kept[chosen > 0]  # every class drawn from, 0 where none of its images decoded
    fields = {
        "init": "random" if random_init else "checkpoint",
        "preset": preset,
        "label_fraction": fraction,
        "seed": seed,
        "settings": s.as_dict(),
        "train_images": len(trained),  # those chosen, but the unreadable ones
        "unreadable_train_images": len(indices) - len(trained),
        "labelled_pool": sum(t >= 0 for t in targets),
        "per_class": {"min": int(present.min()), "max": int(present.max())},
        "val_images": int(val_f.shape[0]),
        "num_classes": classes,  # the head's outputs
        "features_dim": int(val_f.shape[1]),
        "acc1": round(top1, 4),
        "acc5": round(top5, 4),
        "train_acc1": round(history[-1]["acc1"], 4),
        "train_loss": round(history[-1]["loss"], 6),
        "history": [{k: v for k, v in h.items() if k != "lrs"} for h in history],
        "subset_file": str(folder / SUBSET_FILE),
        "train_seconds": round(t1 - t0, 1),
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "device": str(dev),
    }
    return write_result(folder / RESULT_FILE, checkpoint, lb, spec, fields)
