"""The standalone engine: ``BaseMethod`` and ``BaseMomentumMethod`` with solo-learn's contract.

A method is ``cls(cfg)`` with one omegaconf config. Subclasses add their own config defaults and
checks in ``add_and_assert_specific_cfg`` (chained to the parent), their parameter groups in
``learnable_params``, their (online, momentum) module pairs in ``momentum_pairs``, and their
self-supervised loss in ``training_step`` on top of the dict this base returns:

``{"loss": online-classifier loss, "acc1", "acc5", "feats": [per view (B, D)], "logits": [...],
  "momentum_feats": [...], plus whatever ``forward`` / ``momentum_forward`` add (e.g. "z")}``.

Training batches are ``[indexes (B,), [view_1 (B,3,H,W), view_2, ...], targets (B,)]``; validation
batches ``(x, y)``. With ``knn_eval.enabled`` validation takes two loaders: clean training images
(dataloader 0, the k-NN memory) and the validation split (dataloader 1).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.utilities.data import dim_zero_cat

from solo_mixmask.backbones import build_backbone, cpu_channels_last_hazard, momentum_copy
from solo_mixmask.config.engine_specs import EngineSpec, PerformanceSpec, SchedulerSpec, engine_spec
from solo_mixmask.config.schema import BASE_DEFAULTS, fill_defaults, to_container, validate_base
from solo_mixmask.core.batch_norm import UnsplitBatchNormError, interleaved_forward
from solo_mixmask.core.knn import knn_accuracy, knn_k_used, knn_matmul_dtype
from solo_mixmask.errors import ConfigError, ConfigWarning, config_warning
from solo_mixmask.utils.compiling import check_compile_backend
from solo_mixmask.utils.momentum import cosine_tau, ema_update_pairs
from solo_mixmask.utils.optim import optimizer_impl_kwargs


def _compile_backend(performance: PerformanceSpec) -> str | None:
    """The torch.compile backend of ``performance.compile_backend`` when ``performance.compile``
    is true (default "inductor"; "eager" / "aot_eager" compile nothing, for tests), else None."""
    if not performance.compile:
        return None
    return check_compile_backend(performance.compile_backend)


def _masked_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k accuracy (fraction) over labelled samples (target >= 0), without a host sync."""
    # Kept for the training step: torchmetrics drops ignore_index targets by boolean indexing,
    # a host sync per call (validation, where that costs nothing, uses MulticlassAccuracy).
    labelled = targets >= 0
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hit = (top == targets.unsqueeze(1)).any(dim=1) & labelled
    return hit.sum() / labelled.sum().clamp(min=1)


def _masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (B, C) over labelled samples (``targets`` (B,) >= 0)."""
    labelled = (targets >= 0).sum().clamp(min=1)
    return F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum") / labelled


def _top_k_accuracy(num_classes: int, k: int) -> MulticlassAccuracy:
    """Top-``k`` accuracy (fraction, micro: over images) of labelled images (target -1 ignored),
    accumulated over an epoch and summed over processes by torchmetrics."""
    return MulticlassAccuracy(
        num_classes=num_classes,
        top_k=min(k, num_classes),
        average="micro",
        ignore_index=-1,
        validate_args=False,  # its checks sync with the host and refuse num_classes=1
    )


def _updated(metric: Metric) -> bool:
    """Whether ``metric`` saw a batch since its last reset (``compute`` before that only warns)."""
    return metric._update_count > 0


class LabelledFeatures(Metric):
    """The k-NN monitor's store: features (N, D) float32 and targets (N,) of one epoch's images.

    ``gathered()`` concatenates every process's store in rank order (torchmetrics' all-gather,
    which also takes shares of different sizes). The states are not saved in checkpoints.
    """

    full_state_update = False
    feats: list[torch.Tensor]
    targets: list[torch.Tensor]

    def __init__(self) -> None:
        super().__init__()
        self.add_state("feats", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, feats: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``feats`` (B, D), ``targets`` (B,) (-1: unlabelled)."""
        self.feats.append(feats.detach().float())
        self.targets.append(targets.detach())

    def _concatenated(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dim_zero_cat(self.feats), dim_zero_cat(self.targets)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), targets (N,)) of every process (torchmetrics' ``compute``)."""
        return self._concatenated()

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), targets (N,)) of every process, in rank order.

        Read inside ``sync_context`` rather than through ``compute()``, whose wrapper squeezes
        one-element tensors (a single image's targets) and clones the result.
        """
        with self.sync_context():
            return self._concatenated()


class EpochMean(Metric):
    """The mean over an epoch and every process of a value logged once per training step,
    weighted by batch size as Lightning's epoch mean is: ``total`` (sum of value x batch size)
    over ``weight`` (images). Unlike Lightning's own sums, its states can travel in a
    checkpoint (:meth:`EpochMeans.sums`)."""

    full_state_update = False
    total: torch.Tensor
    weight: torch.Tensor

    def __init__(self, sync_on_compute: bool = True) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, batch_size: int) -> None:
        """Add one step's scalar ``value`` for ``batch_size`` images (no host sync)."""
        self.total = self.total + value.detach().to(self.total.dtype) * batch_size
        self.weight = self.weight + batch_size

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


class EpochMeans:
    """The :class:`EpochMean` of each value the training step logs per epoch, by name.

    Lightning resets them at the end of every epoch (they are logged as metric objects).
    :meth:`sums` gives this process's partial sums of the epoch so far; :meth:`restore` puts
    such sums back, each into its mean when the name is next updated (a resumed process
    creates its means then, on the device of the values).
    """

    def __init__(self) -> None:
        self.means: dict[str, EpochMean] = {}
        #: Images in this step's batch (set by the training step; the weight of its values).
        self.batch_size = 1
        self._restored: dict[str, dict[str, torch.Tensor]] = {}

    def update(
        self, name: str, value: torch.Tensor, batch_size: int | None, sync: bool
    ) -> EpochMean:
        """Add this step's ``value`` of ``name`` for ``batch_size`` images (None: the step's
        batch), after a restored partial sum; returns its mean, synced over processes at the
        epoch's end when ``sync``."""
        mean = self.means.get(name)
        if mean is None:
            mean = self.means[name] = EpochMean(sync_on_compute=sync).to(value.device)
        restored = self._restored.pop(name, None)
        if restored is not None:
            mean.total = restored["total"].to(mean.total)
            mean.weight = restored["weight"].to(mean.weight)
        mean.update(value, self.batch_size if batch_size is None else batch_size)
        return mean

    def sums(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{name: {"total", "weight"}}``: this process's sums of the epoch so far, on the CPU."""
        return {
            name: {"total": mean.total.detach().cpu(), "weight": mean.weight.detach().cpu()}
            for name, mean in self.means.items()
        }

    def restore(self, sums: dict[str, dict[str, torch.Tensor]]) -> None:
        """Continue the epoch whose partial :meth:`sums` these are: each mean starts from them."""
        self._restored = dict(sums)
        for mean in self.means.values():
            mean.reset()


def lr_scheduler(
    optimizer: torch.optim.Optimizer, sch: SchedulerSpec, total_steps: int, steps_per_epoch: int
) -> Any:
    """The timm scheduler of ``sch`` (``scheduler.*``) for a run of ``total_steps`` optimiser
    steps of which ``steps_per_epoch`` make an epoch, stepped once per optimiser step
    (``step_update(t)`` with t steps done, ``t_in_epochs=False``); None for
    ``scheduler.name=none``. Warm-up and decay milestones are given in epochs: the step
    schedule's first step at the lower rate is the first step of epoch m (as torch's MultiStepLR
    stepped per epoch), the cosine's warm-up ends after ``warmup_epochs`` epochs of steps, also
    when ``max_steps`` ends the run early. Groups marked ``static_lr`` (the online classifier)
    keep their rate from the first step on."""
    from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

    total = max(total_steps, 1)
    per_epoch = max(steps_per_epoch, 1)
    scheduler: Any
    if sch.name == "none":
        return None
    if sch.name == "step":
        # timm lowers the rate for step t once t + 1 reaches a milestone: + 1 makes step
        # m * per_epoch (0-based, the first of epoch m) the first one at the lower rate
        milestones = [int(m) * per_epoch + 1 for m in sch.lr_decay_steps]
        scheduler = MultiStepLRScheduler(
            optimizer,
            decay_t=milestones,
            decay_rate=sch.gamma,
            t_in_epochs=False,
        )
    else:
        warmup = int(sch.warmup_epochs * per_epoch) if sch.name == "warmup_cosine" else 0
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=max(total - warmup, 1),
            lr_min=sch.min_lr,
            warmup_t=warmup,
            warmup_lr_init=sch.warmup_start_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    keep_static_rates(optimizer)  # timm's constructor set every group to its warm-up start
    return scheduler


def keep_static_rates(optimizer: torch.optim.Optimizer) -> None:
    """Put the groups marked ``static_lr`` back at their own rate (``initial_lr``)."""
    for group in optimizer.param_groups:
        if group.get("static_lr"):
            group["lr"] = group["initial_lr"]


def _without_bias_n_norm(group: dict[str, Any]) -> list[dict[str, Any]]:
    """``group`` split for LARS with solo-learn's ``exclude_bias_n_norm``: its matrices and
    kernels as they are, its 1-D tensors (biases, norm layers) in a copy with weight decay 0 and
    no trust ratio (``always_adapt`` false: timm's Lars then leaves a group without weight
    decay unadapted). Groups left empty are dropped."""
    params = list(group["params"])
    kept = {**group, "params": [p for p in params if p.ndim > 1]}
    flat = {
        **group,
        "params": [p for p in params if p.ndim <= 1],
        "weight_decay": 0.0,
        "always_adapt": False,
    }
    if "name" in group:
        flat["name"] = f"{group['name']}_bias_n_norm"
    return [g for g in (kept, flat) if g["params"]]


class BaseMethod(L.LightningModule):
    """Backbone + online linear classifier + k-NN monitor + optimiser/schedule from the config."""

    def __init__(self, cfg: DictConfig):
        super().__init__()
        cfg = self.add_and_assert_specific_cfg(cfg)
        self.cfg = cfg
        self.save_hyperparameters({"cfg": to_container(cfg)})
        #: The config as read by the engine (the one read of its keys; ``self.cfg`` stays for
        #: solo-learn's contract and the methods' own ``method_kwargs``).
        self.engine: EngineSpec = engine_spec(cfg)
        spec = self.engine
        self.backbone, self.features_dim = build_backbone(
            spec.backbone.name, spec.backbone.kwargs, spec.backbone.cifar_stem
        )
        self.channels_last = spec.performance.channels_last
        if self.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.compile_backend = _compile_backend(spec.performance)
        # torch.compile wrappers per backbone, in a plain dict so that they are not registered as
        # submodules: state_dict keys stay "backbone.*" / "momentum_backbone.*".
        self._compiled: dict[int, Any] = {}
        self.num_classes = spec.num_classes
        self.classifier = nn.Linear(self.features_dim, self.num_classes)
        self.knn_enabled = spec.knn.enabled
        #: The k the k-NN monitor last voted with (knn_eval.k clamped to its memory), or None.
        self.knn_k: int | None = None
        # Which views of a training batch go through the online network (None = all).
        self.online_views: list[int] | None = None
        self.batch_online_forwards = spec.performance.batch_online_forwards
        # (input, its online backbone features) computed ahead in one call for this step
        self._online_features: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Validation metrics (torchmetrics: summed / gathered over processes, reset every epoch;
        # their states are not in the state_dict, so checkpoints keep the same keys).
        self.val_top1 = _top_k_accuracy(self.num_classes, 1)
        self.val_top5 = _top_k_accuracy(self.num_classes, 5)
        #: The online classifier's cross-entropy over the labelled validation images of all
        #: processes, weighted by image (Lightning's epoch mean weights batches, and across
        #: processes divides by a truncated mean count).
        self.val_loss_mean = MeanMetric()
        #: k-NN memory (validation dataloader 0: clean training images) and queries (dataloader 1).
        self.knn_memory = LabelledFeatures()
        self.knn_queries = LabelledFeatures()
        #: The epoch means of the values logged per training step (see :meth:`log`).
        self.epoch_means = EpochMeans()

    # ------------------------------------------------------------------ config
    @staticmethod
    def add_and_assert_specific_cfg(cfg: DictConfig) -> DictConfig:
        """Fill the engine's defaults and check the keys shared by every method."""
        fill_defaults(cfg, BASE_DEFAULTS)
        validate_base(cfg)
        return cfg

    # --------------------------------------------------------------- parameters
    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        """Parameter groups: ``{"name", "params", optional "lr", "weight_decay", "static_lr"}``."""
        return [
            {"name": "backbone", "params": self.backbone.parameters()},
            {
                "name": "classifier",
                "params": self.classifier.parameters(),
                "lr": self.engine.optimizer.classifier_lr,
                "weight_decay": 0.0,
                "static_lr": True,
            },
        ]

    def on_fit_start(self) -> None:
        """Train in NCHW on the CPU where channels_last meets oneDNN's narrow 1x1 convolution
        bug (:func:`~solo_mixmask.backbones.cpu_channels_last_hazard`), with one warning."""
        why = cpu_channels_last_hazard(self.backbone, self.device) if self.channels_last else None
        if why is None:
            return
        if self.trainer.is_global_zero:
            warnings.warn(why, ConfigWarning, stacklevel=2)
        self.channels_last = False
        for name in ("backbone", "momentum_backbone"):
            module = getattr(self, name, None)
            if isinstance(module, nn.Module):
                module.to(memory_format=torch.contiguous_format)

    # ----------------------------------------------------------------- forward
    def backbone_features(self, backbone: nn.Module, X: torch.Tensor) -> torch.Tensor:
        """``X`` (B,3,H,W) -> (B, D); the features of an input of this step's one online call
        (:meth:`extra_online_inputs`) are taken from that call."""
        if backbone is self.backbone:
            for i, (x, feats) in enumerate(self._online_features):
                if x is X:
                    del self._online_features[i]
                    return feats
        if self.channels_last:
            X = X.contiguous(memory_format=torch.channels_last)
        return self._backbone_callable(backbone)(X)

    def _backbone_callable(self, backbone: nn.Module) -> Any:
        """``backbone``, or its ``torch.compile`` wrapper (built lazily) with performance.compile."""
        if self.compile_backend is None:
            return backbone
        key = id(backbone)
        if key not in self._compiled:
            mode = self.engine.performance.compile_mode
            self._compiled[key] = torch.compile(
                backbone, backend=self.compile_backend, mode=None if mode == "default" else mode
            )
        return self._compiled[key]

    def extra_online_inputs(self, batch: list[Any]) -> list[torch.Tensor]:
        """Images (B,3,H,W) that the method sends through ``forward`` in this training step
        besides the views (none here; mixed views in :class:`~solo_mixmask.methods.mixed_branch.
        MixedBranchLogic`). Called once, before the views' forwards, so that
        ``performance.batch_online_forwards`` can compute all of them in one backbone call."""
        return []

    def _forward_online_together(self, xs: list[torch.Tensor]) -> None:
        """With ``performance.batch_online_forwards``: the online backbone features of ``xs``
        from one call per shape (:func:`~solo_mixmask.core.batch_norm.interleaved_forward`,
        each input normalised as in its own call), kept for ``backbone_features``."""
        self._online_features = []
        if not self.batch_online_forwards or len(xs) < 2:
            return
        by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for x in xs:
            by_shape.setdefault(tuple(x.shape), []).append(x)
        for same in by_shape.values():
            try:
                feats = interleaved_forward(
                    lambda x: self.backbone_features(self.backbone, x), self.backbone, same
                )
            except UnsplitBatchNormError as error:
                raise ConfigError(
                    "performance.batch_online_forwards", True, f"false for this backbone: {error}"
                ) from error
            self._online_features += zip(same, feats)

    def forward(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        """``X`` (B,3,H,W) -> ``{"feats": (B,D), "logits": (B,classes)}`` (classifier on detached feats)."""
        feats = self.backbone_features(self.backbone, X)
        return {"feats": feats, "logits": self.classifier(feats.detach())}

    def _classification(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Online classifier's loss and top-1/top-5 accuracy in percent (as solo-learn's step
        returns them, and as val_acc1 is logged)."""
        return {
            "loss": _masked_cross_entropy(logits, targets),
            "acc1": 100 * _masked_accuracy(logits, targets, 1),
            "acc5": 100 * _masked_accuracy(logits, targets, 5),
        }

    def training_step(self, batch: list[Any], batch_idx: int) -> Any:
        """The engine's output dict (see the module docstring). Typed ``Any`` as in the method
        contract (``contract.MethodHost``): methods override it to return their loss tensor."""
        if self.compile_backend is not None and self.engine.performance.compile_mode == (
            "reduce-overhead"
        ):
            # CUDA graphs: a new iteration starts, so the compiled backbones may reuse the
            # previous step's graph outputs (they are called several times per step)
            torch.compiler.cudagraph_mark_step_begin()
        _, views, targets = batch
        self.epoch_means.batch_size = int(targets.shape[0])
        chosen = self.online_views if self.online_views is not None else range(len(views))
        online = [views[i] for i in chosen]
        self._forward_online_together(online + self.extra_online_inputs(batch))
        outs = [self.forward(x) for x in online]
        out: dict[str, Any] = {key: [o[key] for o in outs] for key in outs[0]}
        stats = [self._classification(o["logits"], targets) for o in outs]
        for key in ("loss", "acc1", "acc5"):
            out[key] = torch.stack([s[key] for s in stats]).mean()
        if not self.engine.no_labels:  # (unlabelled images: 0 loss and 0% measure nothing)
            self.log_dict(
                {
                    "train_class_loss": out["loss"],
                    "train_acc1": out["acc1"],
                    "train_acc5": out["acc5"],
                },
                on_epoch=True,
                sync_dist=True,
            )
        return out

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``log``, except for a tensor logged in training with ``on_epoch=True``
        (mean): its epoch mean is kept in :attr:`epoch_means` and logged from there, so that
        a checkpoint written inside an epoch can carry the sums so far
        (:class:`~solo_mixmask.callbacks.ResumeState`; Lightning does not save its own, and a
        run resumed there logged the mean of the later batches only). Logged under Lightning's
        names: ``<name>_step`` (unless ``on_step=False``) and ``<name>_epoch``, or ``<name>``
        alone at the epoch's end with ``on_step=False``."""
        if args or not self._logs_epoch_mean(value, kwargs):
            super().log(name, value, *args, **kwargs)
            return
        kwargs.pop("on_epoch")
        kwargs.pop("metric_attribute", None)
        on_step = kwargs.pop("on_step", None) is not False
        sync = bool(kwargs.get("sync_dist", False))
        mean = self.epoch_means.update(name, value, kwargs.get("batch_size"), sync)
        if on_step:
            super().log(f"{name}_step", value, on_step=True, on_epoch=False, **kwargs)
        super().log(
            f"{name}_epoch" if on_step else name,
            mean,
            on_step=False,
            on_epoch=True,
            metric_attribute=f"epoch_means.{name}",
            **kwargs,
        )

    def _logs_epoch_mean(self, value: Any, kwargs: dict[str, Any]) -> bool:
        """Whether :meth:`log` keeps the epoch mean of this call (see there)."""
        return (
            kwargs.get("on_epoch") is True
            and kwargs.get("reduce_fx", "mean") in ("mean", torch.mean)
            and isinstance(value, torch.Tensor)
            and self._trainer is not None
            and bool(self.trainer.training)
        )

    # -------------------------------------------------------------- validation
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        out = self.forward(x)
        is_val = dataloader_idx == (1 if self.knn_enabled else 0)
        if is_val and len(y):  # torchmetrics cannot reshape an empty batch
            labelled = (y >= 0).sum()
            self.val_loss_mean.update(_masked_cross_entropy(out["logits"], y), weight=labelled)
            self.val_top1.update(out["logits"], y)
            self.val_top5.update(out["logits"], y)
        if self.knn_enabled and len(y):
            (self.knn_memory if dataloader_idx == 0 else self.knn_queries).update(out["feats"], y)

    def _validation_metrics(self) -> tuple[Metric, ...]:
        return (self.val_loss_mean, self.val_top1, self.val_top5, self.knn_memory, self.knn_queries)

    def on_validation_epoch_start(self) -> None:
        # Fresh states in this loop's grad mode: a reset at the end of trainer.validate() runs
        # under inference_mode, and torchmetrics 0.11 then cannot add to them in fit's no_grad.
        for metric in self._validation_metrics():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        accuracies = {"val_acc1": self.val_top1, "val_acc5": self.val_top5}
        stores = (self.knn_memory, self.knn_queries)
        try:
            if all(_updated(m) for m in accuracies.values()):
                # percent of the labelled validation images of all processes
                self.log_dict(
                    {name: 100 * float(m.compute()) for name, m in accuracies.items()},
                    add_dataloader_idx=False,
                )
            if _updated(self.val_loss_mean):  # NaN: no labelled validation image
                val_loss = float(self.val_loss_mean.compute())
                if not math.isnan(val_loss):
                    self.log("val_loss", val_loss, add_dataloader_idx=False)
            sanity = self.trainer.sanity_checking
            if self.knn_enabled and not sanity and all(_updated(s) for s in stores):
                self._log_knn(*self.knn_memory.gathered(), *self.knn_queries.gathered())
        finally:
            for metric in self._validation_metrics():
                metric.reset()  # frees the k-NN store until the next validation

    def _log_knn(
        self,
        train_f: torch.Tensor,
        train_t: torch.Tensor,
        val_f: torch.Tensor,
        val_t: torch.Tensor,
    ) -> None:
        """Log the k-NN monitor's top-1/top-5 (%) and k: memory ``train_f`` (N, D) /
        ``train_t`` (N,), queries ``val_f`` (M, D) / ``val_t`` (M,), gathered from all processes."""
        knn = self.engine.knn
        requested = knn.k
        k = knn_k_used(requested, train_t)
        # (a clamp to data.knn_train_subset was already announced by the start-up checks)
        announced = k == knn.memory
        if k < requested and k != self.knn_k and not announced and self.trainer.is_global_zero:
            warnings.warn(
                f"knn_eval.k={requested} is larger than the k-NN memory ({k} labelled images): "
                f"k-NN uses k={k} (reported as val_knn_k and knn_k)",
                ConfigWarning,
                stacklevel=3,
            )
        self.knn_k = k
        top1, top5 = knn_accuracy(
            train_f,
            train_t,
            val_f,
            val_t,
            self.num_classes,
            knn.k,
            knn.T,
            knn_matmul_dtype(self.engine.performance.knn_dtype, train_f.device),
        )
        self.log_dict(
            {"val_knn_acc1": top1, "val_knn_acc5": top5, "val_knn_k": float(k)},
            add_dataloader_idx=False,
        )

    # ------------------------------------------------------------ optimisation
    def scaled_lr(self, lr: float) -> float:
        """solo-learn's linear scaling: ``lr * batch_size * devices * nodes / 256``, times
        ``accumulate_grad_batches`` (the batches one optimiser step sums)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        return lr * self.engine.optimizer.batch_size * world * self._accumulated() / 256

    def _accumulated(self) -> int:
        """The trainer's ``accumulate_grad_batches`` (1 without a trainer)."""
        return int(self.trainer.accumulate_grad_batches) if self._trainer is not None else 1

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        scheduler = self._build_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of ``optimizer.*`` over :attr:`learnable_params` (scaled lr)."""
        opt_cfg = self.engine.optimizer
        groups = []
        for group in self.learnable_params:
            group = dict(group)
            group["lr"] = self.scaled_lr(group.get("lr", opt_cfg.lr))
            if opt_cfg.name == "lars" and opt_cfg.exclude_bias_n_norm:
                groups += _without_bias_n_norm(group)
            else:
                groups.append(group)
        kwargs = dict(opt_cfg.kwargs)
        name = opt_cfg.name
        kwargs.update(optimizer_impl_kwargs(self.engine.performance.optimizer_impl, name))
        optimizer: torch.optim.Optimizer
        if name == "sgd":
            optimizer = torch.optim.SGD(
                groups, lr=self.scaled_lr(opt_cfg.lr), weight_decay=opt_cfg.weight_decay, **kwargs
            )
        elif name == "lars":
            from timm.optim import Lars

            # solo-learn's LARS adapts every tensor it does not exclude, whatever its weight
            # decay; timm's only those whose group decays or says always_adapt
            kwargs.setdefault("always_adapt", True)
            optimizer = Lars(
                groups, lr=self.scaled_lr(opt_cfg.lr), weight_decay=opt_cfg.weight_decay, **kwargs
            )
        else:
            kwargs.pop("momentum", None)
            optimizer = torch.optim.AdamW(
                groups, lr=self.scaled_lr(opt_cfg.lr), weight_decay=opt_cfg.weight_decay, **kwargs
            )
        return optimizer

    def _build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """:func:`lr_scheduler` over the trainer's optimiser steps: all of them, and one epoch's
        (from the batches per epoch, so that ``max_steps`` does not shorten the epochs)."""
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)  # also sets num_training_batches up
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        else:  # a loader without a length
            per_epoch = total // max(int(trainer.max_epochs or 1), 1)
        sch = self.engine.scheduler
        # solo-learn scales the schedule's own rates by the accumulated batches too
        accumulated = self._accumulated()
        sch = dataclasses.replace(
            sch, min_lr=sch.min_lr * accumulated, warmup_start_lr=sch.warmup_start_lr * accumulated
        )
        warmup = int(sch.warmup_epochs * per_epoch)
        # (longer than max_epochs: warned at start-up already)
        if (
            sch.name == "warmup_cosine"
            and warmup > total
            and sch.warmup_epochs <= (trainer.max_epochs or 0)
        ):
            config_warning(
                "scheduler.warmup_epochs",
                sch.warmup_epochs,
                f"({warmup} steps) is longer than the {total} steps this run trains "
                f"(max_steps={trainer.max_steps}): the learning rate is still warming up "
                "(below optimizer.lr) when training ends",
            )
        return lr_scheduler(optimizer, sch, total, per_epoch)

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        scheduler.step_update(num_updates=self.global_step)
        keep_static_rates(scheduler.optimizer)


class BaseMomentumMethod(BaseMethod):
    """Adds a momentum (EMA) copy of the backbone, updated after every optimiser step.

    tau follows a cosine from ``momentum.base_tau`` to ``momentum.final_tau`` over all steps.
    """

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.momentum_backbone = copy.deepcopy(self.backbone)
        momentum_copy(self.backbone, self.momentum_backbone)
        # Which views go through the momentum network (None = all).
        self.momentum_views: list[int] | None = None

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) modules updated by EMA; subclasses append theirs."""
        return [(self.backbone, self.momentum_backbone)]

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        """``X`` (B,3,H,W) -> ``{"feats": (B,D)}`` from the momentum backbone."""
        return {"feats": self.backbone_features(self.momentum_backbone, X)}

    def training_step(self, batch: list[Any], batch_idx: int) -> Any:
        out: dict[str, Any] = super().training_step(batch, batch_idx)
        views = batch[1]
        chosen = self.momentum_views if self.momentum_views is not None else range(len(views))
        outs = [self.momentum_forward(views[i]) for i in chosen]
        for key in outs[0]:
            out[f"momentum_{key}"] = [o[key] for o in outs]
        return out

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """The optimiser step, then the EMA update of every momentum pair.

        Lightning calls this hook once per optimiser step (never for a batch whose gradients are
        only accumulated), so the momentum networks move once per step, and a checkpoint written
        afterwards in the batch's end hooks (Lightning's ``ModelCheckpoint(every_n_train_steps)``)
        holds the step's online and momentum weights together.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        # Lightning counts the step after this hook returns: global_step is still the index
        # (0-based) of the optimiser step just taken
        step = self.global_step
        momentum_spec = self.engine.momentum
        tau = cosine_tau(step, total, momentum_spec.base_tau, momentum_spec.final_tau)
        ema_update_pairs(self.momentum_pairs, tau, self.engine.performance.ema_foreach_lerp)
        self.log("tau", tau)
