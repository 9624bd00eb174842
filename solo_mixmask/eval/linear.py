"""``solo-mixmask linear``: offline linear probe of a frozen backbone.

A fresh ``nn.Linear(features_dim, classes)`` (weights N(0, init_std), bias 0) is trained with SGD
and a step schedule (``linear.lr_decay_epochs``, ``linear.lr_decay_rate``) on the backbone's
pooled features; the backbone stays frozen in eval mode (BatchNorm uses its running statistics).
Evaluation is on centre-cropped validation images (``build_eval_transform``).

Two modes:

- cached features (default on CPU): every training and validation image goes through the
  backbone ONCE (centre crop, no augmentation) and the linear layer trains on the stored
  (N, D) tensors; 100 epochs then cost seconds instead of 100 backbone passes;
- images (default on GPU, ``--no-cached-features``): each epoch re-runs the frozen backbone on
  augmented crops (RandomResizedCrop(scale [linear.crop_min_scale, 1]) + horizontal flip), as
  the seed does.

Settings live under ``linear.*`` (presets in ``configs/linear/``); the training images are
``linear.train_subset`` labeled training images (null = all), evaluation uses
``linear.val_subset`` validation images (null = all), both picked with the run's seed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy

from solo_mixmask.backbones import output_width
from solo_mixmask.config.eval_specs import LinearSettings, pretraining_only
from solo_mixmask.config.schema import warn_one_class
from solo_mixmask.errors import DataError
from solo_mixmask.eval.features import (
    checkpoint_spec,
    eval_device,
    extract_features,
    make_loader,
    output_path,
    prepare_backbone,
    seeded_subset,
    train_crop_transform,
    train_epochs,
    unreadable_images,
    write_result,
)
from solo_mixmask.eval.presets import load_preset as _load_preset
from solo_mixmask.eval.presets import presets_dir
from solo_mixmask.paths import check_output_file

PRESETS_DIR = presets_dir("linear")
#: Keys the config knows (``knn`` and pretraining read them) that ``linear`` does not, with the
#: key to use instead: refused, never dropped (:func:`~solo_mixmask.config.eval_specs.check_not_read`).
NOT_READ = {
    "data.val_subset": "linear.val_subset={value}",
    "data.train_subset": "linear.train_subset={value}",
    "data.knn_train_subset": "linear.train_subset={value}",
    **pretraining_only("linear"),
}


def load_preset(preset: str) -> dict[str, Any]:
    """A preset by name (``configs/linear/<name>.yaml``) or by path to a YAML file."""
    return _load_preset(preset, PRESETS_DIR)


def new_linear_head(features_dim: int, classes: int, init_std: float) -> nn.Linear:
    """``nn.Linear(features_dim, classes)`` with weights N(0, init_std) and zero bias."""
    head = nn.Linear(features_dim, classes)
    nn.init.normal_(head.weight, mean=0.0, std=init_std)
    nn.init.zeros_(head.bias)
    return head


def _optimizer(head: nn.Module, s: LinearSettings) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(
        head.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(s.lr_decay_epochs), s.lr_decay_rate)
    return opt, sched


def _labelled(feats: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = targets >= 0
    return feats[keep], targets[keep]


def train_on_features(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    classes: int,
    s: LinearSettings,
    seed: int = 0,
) -> tuple[nn.Linear, list[dict[str, float]]]:
    """Train a fresh head on cached features ``train_f`` (N, D) / ``train_y`` (N,) int64.

    Mini-batches of ``s.batch_size`` in a fresh random order each epoch (fixed by ``seed``),
    step schedule per epoch. Returns the head and per-epoch ``{"epoch", "loss", "acc1", "lr"}``.
    Runs on one CPU thread: the (256 x D) @ (D x C) steps are too small to share, and on a busy
    2-core machine two threads were measured 15x slower (33 s vs 2 s for 10 epochs on 10k).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_on_features(train_f, train_y, classes, s, seed)
    finally:
        torch.set_num_threads(previous)


def _train_on_features(
    train_f: torch.Tensor, train_y: torch.Tensor, classes: int, s: LinearSettings, seed: int
) -> tuple[nn.Linear, list[dict[str, float]]]:
    train_f, train_y = _labelled(train_f, train_y)
    if train_f.shape[0] == 0:
        raise DataError("the linear probe has no labeled training images")
    torch.manual_seed(seed)
    head = new_linear_head(train_f.shape[1], classes, s.init_std)
    opt, sched = _optimizer(head, s)
    gen = torch.Generator().manual_seed(seed)
    history = []
    n = train_f.shape[0]
    for epoch in range(s.epochs):
        order = torch.randperm(n, generator=gen)
        total_loss, correct = 0.0, 0
        lr = opt.param_groups[0]["lr"]
        for start in range(0, n, s.batch_size):
            idx = order[start : start + s.batch_size]
            logits = head(train_f[idx])
            loss = F.cross_entropy(logits, train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == train_y[idx]).sum())
        sched.step()
        history.append(
            {"epoch": epoch + 1, "loss": total_loss / n, "acc1": 100.0 * correct / n, "lr": lr}
        )
    return head, history


def train_on_images(
    model: nn.Module,
    loader: DataLoader,
    classes: int,
    features_dim: int,
    s: LinearSettings,
    device: torch.device,
    channels_last: bool,
    seed: int = 0,
) -> tuple[nn.Linear, list[dict[str, float]]]:
    """Train a fresh head on ``model``'s features of augmented images, recomputed every epoch."""
    torch.manual_seed(seed)
    head = new_linear_head(features_dim, classes, s.init_std).to(device)
    opt, sched = _optimizer(head, s)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = model(x).float()
        return head(feats)

    history = train_epochs(forward, opt, sched, loader, s.epochs, device, channels_last)
    return head, history


@torch.no_grad()
def evaluate_head(
    head: nn.Module, feats: torch.Tensor, targets: torch.Tensor
) -> tuple[float, float]:
    """(top-1, top-5) accuracy in percent of ``head`` on features (N, D) / targets (N,)."""
    feats, targets = _labelled(feats, targets)
    if feats.shape[0] == 0:
        raise DataError("the linear probe has no labeled validation images")
    device = next(head.parameters()).device
    logits = head(feats.to(device)).cpu()
    classes = logits.shape[1]

    def percent(k: int) -> float:  # top-k over images; no argument checks (they refuse 1 class)
        top_k = min(k, classes)
        acc = multiclass_accuracy(
            logits, targets, classes, average="micro", top_k=top_k, validate_args=False
        )
        return 100.0 * acc.item()

    return percent(1), percent(5)


def run_linear(
    checkpoint: str | Path,
    preset: str = "paper",
    overrides: Sequence[str] = (),
    cached: bool | None = None,
    out: str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Linear probe of ``checkpoint``'s query backbone; writes and returns the result dict.

    ``cached`` None means: cached features on the CPU, images on a GPU. The result holds
    ``acc1``/``acc5`` (validation, %), ``train_acc1`` (last epoch), the settings, image counts
    and timings; it is written to ``<run>/linear.json`` (see ``features.output_path``).
    """
    from solo_mixmask.data.augmentations import build_eval_transform
    from solo_mixmask.data.datasets import build_dataset, image_folder_spec, num_classes

    start = time.perf_counter()
    dev = eval_device(device)  # a GPU this machine lacks, before anything is read
    path = output_path(checkpoint, "linear", out)
    check_output_file("--out", path)  # before the features
    lb, spec = checkpoint_spec(
        checkpoint, overrides, dev, preset, PRESETS_DIR, not_read=NOT_READ, command="linear"
    )
    s = spec.linear
    assert s is not None  # the linear presets give the config a linear section
    seed, workers, channels_last = spec.seed, spec.num_workers, spec.channels_last
    cached = dev.type == "cpu" if cached is None else bool(cached)
    model = prepare_backbone(lb, dev, channels_last)
    classes = num_classes(spec.data)
    warn_one_class(classes, spec.data.no_labels)
    files = image_folder_spec(spec.data)  # decoded with PIL, whatever the run's data.format
    eval_tf = build_eval_transform(spec.data.crops[0])
    val = seeded_subset(build_dataset(files, "val", eval_tf), s.val_subset, seed)
    val_loader = make_loader(val, s.batch_size, workers, False, seed)

    t0 = time.perf_counter()
    if cached:
        labelled = build_dataset(files, "train_labeled", eval_tf)
        train = seeded_subset(labelled, s.train_subset, seed)
        train_loader = make_loader(train, s.batch_size, workers, False, seed)
        with unreadable_images(train_loader) as unreadable:
            train_f, train_y = extract_features(model, train_loader, dev, channels_last)
        val_f, val_y = extract_features(model, val_loader, dev, channels_last)
        t1 = time.perf_counter()
        head, history = train_on_features(train_f, train_y, classes, s, seed)
        features_dim = int(train_f.shape[1])
        feature_seconds, train_seconds = t1 - t0, time.perf_counter() - t1
    else:
        train_tf = train_crop_transform(spec.data.crops[0], s.crop_min_scale)
        labelled = build_dataset(files, "train_labeled", train_tf)
        train = seeded_subset(labelled, s.train_subset, seed)
        features_dim = output_width(model, lb.arch, lb.kwargs)
        train_loader = make_loader(train, s.batch_size, workers, True, seed)
        with unreadable_images(train_loader) as unreadable:
            head, history = train_on_images(
                model, train_loader, classes, features_dim, s, dev, channels_last, seed
            )
        t1 = time.perf_counter()
        val_f, val_y = extract_features(model, val_loader, dev, channels_last)
        feature_seconds, train_seconds = time.perf_counter() - t1, t1 - t0
    top1, top5 = evaluate_head(head, val_f, val_y)
    fields = {
        "preset": preset,
        "seed": seed,  # picks the train_subset / val_subset images
        "cached_features": cached,
        "train_augmentation": "none (centre crop, cached)"
        if cached
        else f"RandomResizedCrop(scale=({s.crop_min_scale}, 1)) + flip",
        "settings": s.as_dict(),
        # the images trained on: the listed ones but those that could not be decoded
        "train_images": len(train) - len(unreadable),  # type: ignore[arg-type]
        "unreadable_train_images": len(unreadable),
        "val_images": int(val_f.shape[0]),
        "num_classes": classes,  # the head's outputs
        "features_dim": features_dim,
        "acc1": round(top1, 4),
        "acc5": round(top5, 4),
        "train_acc1": round(history[-1]["acc1"], 4),
        "train_loss": round(history[-1]["loss"], 6),
        "feature_seconds": round(feature_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "device": str(dev),
    }
    return write_result(path, checkpoint, lb, spec, fields)
