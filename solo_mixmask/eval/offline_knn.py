"""``solo-mixmask knn``: offline weighted k-NN of a frozen backbone.

It uses the same images as the online k-NN monitor of the run: ``data.knn_train_subset`` clean
(centre-crop) training images as the memory and ``data.val_subset`` validation images as
queries, both picked with the run's seed (override e.g. ``data.knn_train_subset=null`` for the
whole training split). Features are the backbone's pooled output, compared by cosine
similarity; neighbours vote with weight ``exp(sim / temperature)``; several k share one pass.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from solo_mixmask.config.data_specs import DataSpec
from solo_mixmask.config.eval_specs import pretraining_only
from solo_mixmask.config.run_specs import monitor_facts
from solo_mixmask.config.schema import warn_one_class
from solo_mixmask.core.knn import (
    knn_k_used,
    knn_matmul_dtype,
    topk_accuracy,
    weighted_knn_scores,
)
from solo_mixmask.errors import ConfigError
from solo_mixmask.eval.features import (
    AUTOCAST_DTYPES,
    checkpoint_spec,
    eval_device,
    extract_features,
    output_path,
    prepare_backbone,
    run_config,
    spec_of,
    write_result,
)
from solo_mixmask.paths import check_output_file
from solo_mixmask.run.folder import SUMMARY, run_dir_of, saved_config

DEFAULT_KS = (10, 20, 100, 200)
#: Overrides that ``knn`` does not read, and what to use instead: the run's ``precision`` is
#: the online monitor's; the offline features' is ``--precision``.
NOT_READ = {
    "precision": "--precision (32-true, bf16-mixed, 16-mixed or run)",
    **pretraining_only(None),
}


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = list(dict.fromkeys(int(k) for k in ks))
    if not ks or any(k < 1 for k in ks):
        raise ConfigError("--k", ks, "one or more integers >= 1")
    return ks


def online_knn(checkpoint: str | Path) -> dict[str, Any] | None:
    """The run's last online k-NN (``summary.json``) as ``{"acc1", "acc5", "weights",
    "precision"}``, or None outside a run folder. ``weights`` is None when the figure was
    measured on ``checkpoint``'s weights, else why not: summary.json holds the final epoch's
    figure, which is not that of ``epoch000.ckpt``, nor of a ``last.ckpt`` written after it (a
    resume trained on). ``precision``: the one the monitor extracted its features in
    (:func:`run_precision`; None when the run does not record it)."""
    run = run_dir_of(checkpoint)
    summary = run / SUMMARY if run else None
    if run is None or summary is None or not summary.is_file():
        return None
    data = json.loads(summary.read_text())
    if data.get("knn_acc1") is None:
        return None
    path = Path(checkpoint)
    measured = Path(str(data.get("checkpoint") or ""))
    weights = None
    if measured.name != path.name:
        weights = f"the online figure is of {measured.name or 'the final weights'}, not {path.name}"
    elif path.stat().st_mtime > summary.stat().st_mtime:
        weights = f"{path.name} was written after {SUMMARY} (the run trained on)"
    return {
        "acc1": data["knn_acc1"],
        "acc5": data.get("knn_acc5"),
        "weights": weights,
        "precision": run_precision(saved_config(run), data, path),
    }


#: Lightning's short names of its precisions, by the names it prints (``precision=16`` is
#: ``16-mixed``).
PRECISION_NAMES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}


def lightning_precision(setting: Any) -> str:
    """``precision`` as Lightning names it once it has read it (``16`` -> ``16-mixed``)."""
    return PRECISION_NAMES.get(str(setting), str(setting))


def run_precision(
    cfg: DictConfig | dict[str, Any] | None,
    summary: dict[str, Any],
    checkpoint: str | Path | None = None,
) -> str | None:
    """The precision (Lightning's name) that a run validated in, so that its online k-NN
    features were extracted in, or None when the run does not record it.

    ``summary.json``'s ``precision`` when it holds one; else the config's ``precision`` unless
    ``auto``; ``auto`` is resolved as the run resolved it
    (:func:`~solo_mixmask.run.trainer.trainer_kwargs`): ``32-true`` unless it trained on CUDA,
    where it is ``bf16-mixed``, or ``16-mixed`` on a GPU without bfloat16. Where it trained: an
    ``accelerator`` that is not ``auto`` / ``gpu`` / ``cuda`` is never CUDA, ``gpu`` / ``cuda``
    always is; ``auto`` is told by the clock that timed its batches (summary.json's
    ``images_per_sec_clock``: ``host`` off CUDA, ``cuda events`` on it; absent in runs older
    than it, None in a run finished from its checkpoint, ``mixed`` in one resumed elsewhere:
    not recorded). On CUDA, a ``checkpoint`` that holds Lightning's GradScaler state
    (``MixedPrecision``) trained in ``16-mixed``, one without it in ``bf16-mixed``."""
    if summary.get("precision") is not None:
        return lightning_precision(summary["precision"])
    if cfg is None:
        return None
    facts = monitor_facts(cfg)
    if facts.precision not in (None, "auto"):
        return lightning_precision(facts.precision)
    accelerator = str(facts.accelerator or "auto")
    clock = summary.get("images_per_sec_clock")
    if accelerator not in ("auto", "gpu", "cuda") or (accelerator == "auto" and clock == "host"):
        return "32-true"
    on_cuda = accelerator in ("gpu", "cuda") or clock == "cuda events"
    if not on_cuda or checkpoint is None:
        return None
    try:  # mmap: the keys, not the tensors
        saved = torch.load(checkpoint, weights_only=True, map_location="cpu", mmap=True)
    except Exception:  # unreadable here: then the precision is not known
        return None
    scaler = isinstance(saved, dict) and any(
        key in saved for key in ("MixedPrecision", "native_amp_scaling_state")
    )
    return "16-mixed" if scaler else "bf16-mixed"


def monitor_images(spec: DataSpec) -> dict[str, Any]:
    """What decides the images of a k-NN measurement and how they look, by config key: the
    dataset and its folders, the seed that picks the subsets, the subset sizes, the evaluation
    crop and normalisation, and the data path that resizes them (PIL or torch)."""
    crop = spec.crops[0]
    return {
        "data.dataset": spec.dataset,
        "data.format": spec.format,
        "data.train_path": spec.train_path,
        "data.val_path": spec.val_path,
        "seed": spec.seed,
        "data.knn_train_subset": spec.knn_train_subset,
        "data.val_subset": spec.val_subset,
        "augmentations.0.crop_size": crop.crop_size,
        "data.mean": list(crop.mean),
        "data.std": list(crop.std),
    }


def precision_words(precision: str) -> str:
    """``float32`` for ``32-true``, else Lightning's name (``bf16-mixed``: autocast)."""
    return "float32" if precision == "32-true" else precision


def not_like_online(
    offline: dict[str, Any], online: dict[str, Any], ks: Sequence[int]
) -> list[str]:
    """Why an offline k-NN with settings ``offline`` cannot be compared with the online one
    measured with ``online`` (both ``{"k", "temperature", "matmul_dtype", "precision", "images":
    monitor_images(...)}``; ``matmul_dtype``: offline the similarity dtype it used, online
    ``performance.knn_dtype`` as the run set it; ``precision``: what the features were extracted
    in, Lightning's name, online None when the run does not record it), one phrase per
    difference; empty when they are measured alike. Neighbours picked from bfloat16
    similarities can differ from float32's at near-ties; ``auto`` (bfloat16 on CUDA) does not
    say which the run used. Features extracted under bf16 autocast differ from float32's in
    about the third significant digit, enough to move a neighbour at a near-tie."""
    reasons = []
    if online["precision"] is None:
        reasons.append("the run's precision is not recorded")
    elif offline["precision"] != online["precision"]:
        reasons.append(
            f"features in {precision_words(offline['precision'])} offline, "
            f"{precision_words(online['precision'])} online (--precision run extracts them "
            "as the run did)"
        )
    used, setting = offline["matmul_dtype"], online["matmul_dtype"]
    if setting == "auto":
        reasons.append(
            f"similarities in {used} offline, performance.knn_dtype=auto online (bfloat16 if "
            "the run trained on CUDA, else float32)"
        )
    elif used != setting:
        reasons.append(f"similarities in {used} offline, {setting} online")
    if offline["temperature"] != online["temperature"]:
        reasons.append(
            f"temperature {offline['temperature']} offline, {online['temperature']} online"
        )
    if online["k"] not in ks:
        reasons.append(f"k={online['k']} is not among the offline k {list(ks)}")
    for key, value in offline["images"].items():
        if value != online["images"][key]:
            reasons.append(f"{key} {value!r} offline, {online['images'][key]!r} online")
    return reasons


#: ``knn --precision``: what the offline features are extracted in (``run``: as the run did).
PRECISION_CHOICES = (*AUTOCAST_DTYPES, "run")


def offline_precision(
    precision: str, lb: Any, checkpoint: str | Path, online: dict[str, Any] | None
) -> str:
    """``--precision`` resolved: ``run`` is the run's own (:func:`run_precision`; ConfigError
    when it is not recorded or cannot be reproduced offline), else as given."""
    if precision not in PRECISION_CHOICES:
        raise ConfigError("--precision", precision, f"one of {', '.join(PRECISION_CHOICES)}")
    if precision != "run":
        return precision
    if online is not None:
        resolved = online["precision"]
    else:  # no run folder: the config a checkpoint holds, if any
        resolved = run_precision(run_config(lb, checkpoint), {}, checkpoint)
    if resolved is None:
        raise ConfigError(
            "--precision",
            "run",
            f"one of {', '.join(AUTOCAST_DTYPES)}: the run's precision is not recorded",
        )
    if resolved not in AUTOCAST_DTYPES:
        raise ConfigError(
            "--precision",
            "run",
            f"one of {', '.join(AUTOCAST_DTYPES)}: the run trained in {resolved}, which "
            "feature extraction does not reproduce",
        )
    return resolved


def run_knn(
    checkpoint: str | Path,
    ks: Sequence[int] | None = None,
    temperature: float | None = None,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    device: str | None = None,
    precision: str = "32-true",
) -> dict[str, Any]:
    """Offline weighted k-NN top-1/top-5 (%) for each k; writes and returns the result dict.

    ``ks`` defaults to (10, 20, 100, 200) plus ``knn_eval.k`` (the run's, and an overridden
    one); ``temperature`` to ``knn_eval.T`` (the run's 0.1 unless overridden). The result holds
    ``{"k": {"<k>": {"acc1", "acc5", "k_used"}}}`` (``k_used``: k clamped to the labelled
    training images, the neighbours that voted), and when the checkpoint is a run's, the run's
    last online k-NN labelled with the k and T the monitor measured it with (the run's config,
    never the overrides), and the offline-minus-online difference only when the offline k-NN
    was measured alike (the weights the online figure measured, same T, k and images,
    :func:`not_like_online`; else ``not_compared`` says what differs). ``precision``: the
    features' (Lightning's name: ``32-true``, ``bf16-mixed`` or ``16-mixed`` autocast, or ``run``,
    the run's own as :func:`run_precision` finds it); the online monitor extracted them in the
    run's, so a float32 figure of a bf16-mixed run is not compared.
    """
    from solo_mixmask.data.loaders import build_knn_loaders, num_classes

    start = time.perf_counter()
    dev = eval_device(device)  # a GPU this machine lacks, before anything is read
    path = output_path(checkpoint, "knn", out)
    check_output_file("--out", path)  # before the features
    if precision not in PRECISION_CHOICES:  # before the checkpoint is read
        raise ConfigError("--precision", precision, f"one of {', '.join(PRECISION_CHOICES)}")
    lb, spec = checkpoint_spec(checkpoint, overrides, dev, not_read=NOT_READ, command="knn")
    run_spec = spec_of(lb, checkpoint, (), dev)  # what the online monitor measured with
    online_k, online_t = run_spec.knn.k, run_spec.knn.temperature
    ks = _check_ks(ks if ks else [*DEFAULT_KS, spec.knn.k, online_k])
    temperature = float(spec.knn.temperature if temperature is None else temperature)
    if not 0 < temperature < math.inf:
        raise ConfigError("--temperature", temperature, "a number in (0, inf)")
    online = online_knn(checkpoint)
    precision = offline_precision(precision, lb, checkpoint, online)
    model = prepare_backbone(lb, dev, spec.channels_last)
    train_loader, val_loader = build_knn_loaders(spec.data)
    train_f, train_y = extract_features(
        model, train_loader, dev, spec.channels_last, precision=precision
    )
    val_f, val_y = extract_features(model, val_loader, dev, spec.channels_last, precision=precision)
    classes = num_classes(spec.data)
    warn_one_class(classes, spec.data.no_labels)
    # performance.knn_dtype as the online monitor reads it (the run's, unless overridden)
    dtype = knn_matmul_dtype(spec.knn.matmul_dtype, train_f.device)
    scores = weighted_knn_scores(
        train_f, train_y, val_f, classes, ks, temperature, matmul_dtype=dtype
    )
    similarities = str(dtype).removeprefix("torch.")
    per_k = {}
    for k in ks:
        # core's top-k, not torchmetrics': the online monitor's, so offline_minus_online
        # compares one implementation (argmax and topk break ties apart)
        top1, top5 = topk_accuracy(scores[k], val_y, (1, 5))
        per_k[str(k)] = {
            "acc1": round(top1, 4),
            "acc5": round(top5, 4),
            "k_used": knn_k_used(k, train_y),
        }
    fields: dict[str, Any] = {
        "temperature": temperature,
        "precision": precision,  # the features' (Lightning's name; 32-true: float32)
        "matmul_dtype": similarities,  # of the similarity product that picks the neighbours
        "train_images": int(train_f.shape[0]),
        "val_images": int(val_f.shape[0]),
        "features_dim": int(train_f.shape[1]),
        "k": per_k,
    }
    if online is not None:
        other_weights = online.pop("weights")
        online_precision = online.pop("precision")
        fields["online"] = {
            "k": online_k,
            "temperature": online_t,
            "precision": online_precision,  # the run's, resolved; None: not recorded
            **online,
        }
        reasons = [other_weights] if other_weights else []
        reasons += not_like_online(
            {
                "temperature": temperature,
                "matmul_dtype": similarities,
                "precision": precision,
                "images": monitor_images(spec.data),
            },
            {
                "k": online_k,
                "temperature": online_t,
                "matmul_dtype": run_spec.knn.matmul_dtype,  # the setting: auto is not resolved
                "precision": online_precision,
                "images": monitor_images(run_spec.data),
            },
            ks,
        )
        if reasons:
            fields["online"]["not_compared"] = "; ".join(reasons)
        else:
            diff = per_k[str(online_k)]["acc1"] - float(online["acc1"])
            fields["online"]["offline_minus_online_acc1"] = round(diff, 4)
    fields["wall_seconds"] = round(time.perf_counter() - start, 1)
    return write_result(path, checkpoint, lb, spec, fields)
