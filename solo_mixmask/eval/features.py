"""Shared pieces of offline evaluation: the evaluation config, the device and feature extraction.

The evaluation config of a checkpoint is built in this order (later wins):

1. the engine defaults (``solo_mixmask.config.schema.BASE_DEFAULTS``);
2. the run's ``config.yaml`` (``<run>/config.yaml`` for ``<run>/checkpoints/x.ckpt``), else the
   config stored in the checkpoint (``hyper_parameters.cfg``, or solo-learn's ``args.json``);
3. a preset (the linear probe's ``configs/linear/<name>.yaml``), on top of the command's own
   defaults (its ``paper`` preset), so that a preset file that leaves a key out gets the default;
4. command-line overrides ``key=value`` (values parsed as YAML: ``null``, ``10``, ``[1, 2]``).

Every key of the preset and of the overrides must be one the config knows (the engine's
defaults, the run's config, the command's own section and
:data:`~solo_mixmask.config.eval_specs.EVAL_EXTRA_KEYS`): a typo is a ConfigError naming it, with a
did-you-mean (:func:`~solo_mixmask.config.eval_specs.check_given_keys`), never dropped.

Changing ``data.dataset`` by override also forgets the run's ``data.num_classes``. Without a run
config the crop size follows the dataset: 28 (Fashion-MNIST), 32 (CIFAR), 96 (STL-10), else 224.

The commands read that config once, into an :class:`~solo_mixmask.config.eval_specs.EvalSpec`
(:func:`checkpoint_spec`), and write their result with :func:`write_result`.

Also shared by ``linear`` and ``finetune``: seeded subsets, loaders, the training crop and the
epoch loop that trains a classifier on images (:func:`train_epochs`); their presets are
:mod:`solo_mixmask.eval.presets`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from solo_mixmask.checkpoints.backbone import LoadedBackbone, load_backbone
from solo_mixmask.config.augmentation_specs import CropSpec
from solo_mixmask.config.eval_specs import (
    EvalSpec,
    compose_eval_config,
    eval_spec,
    refuse_not_read,
)
from solo_mixmask.errors import ConfigError
from solo_mixmask.eval.presets import load_preset, preset_defaults
from solo_mixmask.run.bad_files import BAD_FILES, count_bad_files, watch_bad_files
from solo_mixmask.run.folder import CONFIG, run_dir_of


def run_config(lb: LoadedBackbone, checkpoint: str | Path) -> dict[str, Any] | None:
    """The run's config: ``config.yaml`` of its run folder, else the one in the checkpoint."""
    run = run_dir_of(checkpoint)
    if run is not None:
        return OmegaConf.to_container(OmegaConf.load(run / CONFIG), resolve=True)  # type: ignore[return-value]
    return copy.deepcopy(lb.cfg) if lb.cfg else None


def eval_config(
    lb: LoadedBackbone,
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    preset: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    preset_name: str | None = None,
    not_read: Mapping[str, str] | None = None,
    command: str = "this command",
) -> DictConfig:
    """The evaluation config of ``checkpoint`` (see the module docstring and
    :func:`~solo_mixmask.config.eval_specs.compose_eval_config`): ``defaults`` are the command's own
    section (e.g. ``{"linear": {...}}``, its ``paper`` preset), ``preset`` the chosen preset
    (``preset_name`` for messages); ``not_read``: keys ``command`` refuses, with what to use
    instead (:func:`~solo_mixmask.config.eval_specs.check_not_read`)."""
    from_run = run_config(lb, checkpoint)
    return compose_eval_config(
        from_run, overrides, preset, defaults, preset_name, not_read, command
    )


def checkpoint_spec(
    checkpoint: str | Path,
    overrides: Sequence[str],
    device: torch.device,
    preset: str | None = None,
    folder: Path | None = None,
    not_read: Mapping[str, str] | None = None,
    command: str = "this command",
) -> tuple[LoadedBackbone, EvalSpec]:
    """The backbone of ``checkpoint`` and its :func:`spec_of` (the preset, when named, read
    before the checkpoint; keys ``command`` does not read, ``not_read``, refused before it)."""
    preset_cfg = load_preset(preset, folder) if preset is not None and folder is not None else None
    if not_read:  # a typo'd command line fails before a large checkpoint is read
        refuse_not_read(overrides, preset_cfg, preset, not_read, command)
    lb = load_backbone(checkpoint)
    spec = spec_of(lb, checkpoint, overrides, device, preset, folder, preset_cfg, not_read, command)
    return lb, spec


def spec_of(
    lb: LoadedBackbone,
    checkpoint: str | Path,
    overrides: Sequence[str],
    device: torch.device,
    preset: str | None = None,
    folder: Path | None = None,
    preset_cfg: dict[str, Any] | None = None,
    not_read: Mapping[str, str] | None = None,
    command: str = "this command",
) -> EvalSpec:
    """The :class:`~solo_mixmask.config.eval_specs.EvalSpec` of ``checkpoint``'s :func:`eval_config`
    for a command on ``device``; with ``preset`` (a name in ``folder``, e.g.
    ``configs/linear/``, or a YAML path; ``preset_cfg`` when already read) over the folder's
    defaults."""
    if preset is not None and folder is not None and preset_cfg is None:
        preset_cfg = load_preset(preset, folder)
    cfg = eval_config(
        lb,
        checkpoint,
        overrides,
        preset=preset_cfg,
        defaults=preset_defaults(folder) if folder is not None else None,
        preset_name=preset,
        not_read=not_read,
        command=command,
    )
    return eval_spec(cfg, str(device))


def eval_device(name: str | None = None) -> torch.device:
    """``name`` (e.g. 'cpu', 'cuda:0') or CUDA when available, else the CPU."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise ConfigError("--device", name, "a torch device such as cpu or cuda:0") from err
        check_device_present(device, name)
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device_present(device: torch.device, name: str) -> None:
    """ConfigError naming ``--device`` when ``device`` is a GPU this machine does not have
    (before any checkpoint or data is read)."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("--device", name, "cpu: CUDA is not available on this machine")
        if device.index is not None and device.index >= count:
            raise ConfigError("--device", name, f"cuda:0 to cuda:{count - 1} ({count} GPU(s) here)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device", name, "cpu: MPS is not available on this machine")


def prepare_backbone(lb: LoadedBackbone, device: torch.device, channels_last: bool) -> nn.Module:
    """The frozen backbone in eval mode on ``device`` (channels-last when asked)."""
    model = lb.build().to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


#: Lightning's precisions that feature extraction can run in: full float32, or float32 weights
#: under ``torch.autocast`` to bfloat16 / float16, as a Lightning run validates in them.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "32-true": None,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in for Lightning's ``precision`` on ``device``: nothing
    for ``32-true``, ``torch.autocast(device.type, dtype)`` for ``bf16-mixed`` / ``16-mixed``
    (what Lightning's mixed-precision plugin wraps a validation step in)."""
    if precision not in AUTOCAST_DTYPES:
        raise ConfigError("--precision", precision, f"one of {', '.join(AUTOCAST_DTYPES)}")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    channels_last: bool = False,
    log_every: float = 30.0,
    precision: str = "32-true",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader`` of ``(x (B,3,H,W), y (B,))``, in float32 or, with
    ``precision`` ``bf16-mixed`` / ``16-mixed``, under autocast (:func:`precision_context`).

    Returns ``(features (N, D) float32 on the CPU, targets (N,) int64)`` in loader order (a
    target comes back with its image, also when the loader left unreadable images out).
    Prints a progress line every ``log_every`` seconds.
    """
    _, feats, targets = _extract(model, loader, device, channels_last, log_every, precision)
    return feats, targets


@torch.no_grad()
def extract_indexed_features(
    model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`extract_features` (float32) of a loader of ``(index (B,), x, y)`` batches (an
    :class:`~solo_mixmask.data.loaders.IndexedDataset`): ``(indices (N,), features, targets)``,
    each index the one of its own image, also when unreadable images were left out."""
    indices, feats, targets = _extract(model, loader, device, channels_last)
    if indices is None:
        raise ValueError("extract_indexed_features needs (index, x, y) batches")
    return indices, feats, targets


def _extract(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    channels_last: bool = False,
    log_every: float = 30.0,
    precision: str = "32-true",
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The loop of :func:`extract_features`, for batches ``(x, y)`` or ``(index, x, y)``:
    ``(indices or None, features, targets)``."""
    feats, targets, indices = [], [], []
    done, total = 0, len(loader.dataset)  # type: ignore[arg-type]
    last = time.perf_counter()
    for batch in loader:
        *index, x, y = batch
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision_context(precision, device):
            out = model(x)
        feats.append(out.float().cpu())
        targets.append(torch.as_tensor(y, dtype=torch.long))
        indices += [torch.as_tensor(i, dtype=torch.long) for i in index]
        done += len(y)
        if time.perf_counter() - last > log_every:
            print(f"  features: {done}/{total} images", flush=True)
            last = time.perf_counter()
    return torch.cat(indices) if indices else None, torch.cat(feats), torch.cat(targets)


def output_path(checkpoint: str | Path, name: str, out: str | Path | None) -> Path:
    """Where a result JSON goes: ``out`` when given; ``<run>/<name>.json`` for a checkpoint in a
    run folder; else ``<checkpoint stem>.<name>.json`` beside the checkpoint."""
    if out:
        return Path(out)
    run = run_dir_of(checkpoint)
    if run is not None:
        return run / f"{name}.json"
    stem = checkpoint_stem(checkpoint)
    return stem.with_name(f"{stem.name}.{name}.json")


def output_dir(checkpoint: str | Path, name: str, out: str | Path | None) -> Path:
    """Where a command that writes several files puts them: ``out`` when given; ``<run>/<name>/``
    for a checkpoint in a run folder; else ``<checkpoint stem>.<name>/`` beside the checkpoint."""
    if out:
        return Path(out)
    run = run_dir_of(checkpoint)
    if run is not None:
        return run / name
    stem = checkpoint_stem(checkpoint)
    return stem.with_name(f"{stem.name}.{name}")


#: What a checkpoint file's name ends with, longest first.
CHECKPOINT_SUFFIXES = (".pth.tar", ".ckpt", ".pth", ".pt", ".tar", ".pkl")


def checkpoint_stem(checkpoint: str | Path) -> Path:
    """``checkpoint`` without its checkpoint suffix (:data:`CHECKPOINT_SUFFIXES`), every other
    dot kept: ``model.ep0.ckpt`` and ``model.ep1.ckpt`` give results of their own."""
    path = Path(checkpoint)
    suffix = next((s for s in CHECKPOINT_SUFFIXES if path.name.endswith(s)), "")
    return path.with_name(path.name[: len(path.name) - len(suffix)] if suffix else path.name)


def write_result(
    path: Path, checkpoint: str | Path, lb: LoadedBackbone, spec: EvalSpec, fields: dict[str, Any]
) -> dict[str, Any]:
    """Write an evaluation result as JSON to ``path`` (its folder made when missing): the
    header every command's result starts with (``checkpoint`` as given, ``checkpoint_resolved``:
    its absolute path, ``source``, ``arch``, ``dataset``), then ``fields``. Returns what was
    written plus ``json``: the file's path."""
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "checkpoint_resolved": str(Path(checkpoint).resolve()),
        "source": lb.source,
        "arch": lb.arch,
        "dataset": spec.data.dataset,
        **fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return {**result, "json": str(path)}


@contextlib.contextmanager
def unreadable_images(images: DataLoader | Subset) -> Iterator[list[str]]:
    """The image paths that the image-folder datasets below ``images`` (a loader, a subset)
    skip as unreadable inside the block (in worker processes too; not those skipped before it,
    such as the files ``data.scan_images`` left out): the yielded list is filled, sorted, when
    the block ends."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / BAD_FILES
        watched = watch_bad_files([images], report)
        known = {path for ds in watched for path in ds.bad_files}
        found: list[str] = []
        try:
            yield found
        finally:
            found.extend(p for p in count_bad_files(watched, report) if p not in known)
            for dataset in watched:
                dataset.report_file = None


def seeded_subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """``size`` random items of ``dataset`` fixed by ``seed`` (all of it for None)."""
    from solo_mixmask.data.datasets import subset_indices

    indices = subset_indices(len(dataset), size, seed)  # type: ignore[arg-type]
    return dataset if indices is None else Subset(dataset, indices)


def make_loader(
    dataset: Dataset, batch: int, workers: int, shuffle: bool, seed: int, drop_last: bool = False
) -> DataLoader:
    """A DataLoader of ``dataset``; shuffled with a generator seeded by ``seed`` when asked.
    Unreadable images are left out of their batch (never replaced), and a batch left empty is
    not yielded."""
    from solo_mixmask.data.loaders import ReadableLoader, collate_readable

    return ReadableLoader(
        dataset,
        batch_size=batch,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        collate_fn=collate_readable,
    )


def train_crop_transform(spec: CropSpec, crop_min_scale: float) -> Any:
    """Callable(PIL RGB image) -> (3, crop, crop) float: RandomResizedCrop(scale
    [crop_min_scale, 1]) + horizontal flip, crop size and normalisation of ``spec`` (the first
    crop pipeline, as evaluation)."""
    from solo_mixmask.config.augmentation_specs import parse_pipeline
    from solo_mixmask.data.augmentations import build_crop_transform

    pipeline = {
        "crop_size": spec.crop_size,
        "num_crops": 1,
        "rrc": {"enabled": True, "crop_min_scale": crop_min_scale, "crop_max_scale": 1.0},
        "color_jitter": {"prob": 0.0},
        "grayscale": {"prob": 0.0},
        "gaussian_prob": 0.0,
        "solarization": {"prob": 0.0},
        "equalization": {"prob": 0.0},
        "horizontal_flip": {"prob": 0.5},
        "mean": list(spec.mean),
        "std": list(spec.std),
    }
    return build_crop_transform(parse_pipeline(pipeline, "train", spec.mean, spec.std))


def train_epochs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader: DataLoader,
    epochs: int,
    device: torch.device,
    channels_last: bool = False,
    min_batch: int = 1,
) -> list[dict[str, Any]]:
    """Train a classifier for ``epochs`` epochs of ``loader`` (``(x (B,3,H,W), y (B,))``).

    ``forward`` maps images to logits (B, classes) and decides what learns (a frozen backbone
    under ``torch.no_grad`` plus a head, or a whole network); images with a negative target
    (unlabelled) are skipped, and so is a batch with fewer than ``min_batch`` labelled images
    (2 where BatchNorm trains: a batch that lost unreadable images can be that small).
    Cross-entropy, one ``optimizer`` step per batch, ``scheduler``
    stepped per epoch. Returns per-epoch ``{"epoch", "loss", "acc1" (%), "lr"}`` where ``lr``
    is the first parameter group's rate at the start of the epoch (``lrs``: every group's, when
    there are several). Prints one line per epoch.
    """
    history = []
    for epoch in range(epochs):
        total_loss, correct, seen = 0.0, 0, 0
        lrs = [group["lr"] for group in optimizer.param_groups]
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
            keep = y >= 0
            labelled = int(keep.sum())  # one host sync per batch, reused below
            if labelled < max(min_batch, 1):
                continue
            x = x[keep]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = forward(x)
            loss = F.cross_entropy(logits, y[keep])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * labelled
            correct += int((logits.argmax(1) == y[keep]).sum())
            seen += labelled
        scheduler.step()
        seen = max(seen, 1)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": total_loss / seen,
            "acc1": 100.0 * correct / seen,
            "lr": lrs[0],
        }
        if len(lrs) > 1:
            row["lrs"] = lrs
        history.append(row)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total_loss / seen:.4f}", flush=True)
    return history
