"""MoCo v2 (asymmetric, the seed's baseline) and MoCo V2+ (symmetric, solo-learn's).

``MoCoV2PlusLogic`` is written against the method contract only, so it runs on our engine
(``MoCoV2Plus`` below) and on solo-learn's ``BaseMomentumMethod`` (see ``solo_mixmask.solo``).
It is the host of MixMask, Un-Mix and Un-Mix + MixMask: their registry rows add mixers, whose
mixed queries :meth:`~solo_mixmask.methods.mixed_branch.MixedBranchLogic.mixed_losses` scores
with :meth:`MoCoV2PlusLogic.info_nce` against the keys of the second view.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig

from solo_mixmask.config.schema import (
    check_bool,
    check_fits_in_memory,
    check_known_keys,
    check_number,
    config_warning,
)
from solo_mixmask.core.queue import KeyQueue
from solo_mixmask.losses.mixed import PairLoss
from solo_mixmask.losses.moco import moco_loss
from solo_mixmask.methods.base import BaseMomentumMethod
from solo_mixmask.methods.batch_norm import BN_DEFAULTS, SplitBNLogic
from solo_mixmask.methods.heads import ProjectorLogic, log_embedding_std
from solo_mixmask.methods.mixed_branch import MixedBranchLogic
from solo_mixmask.utils.distributed import gather_no_grad

#: Warn when the InfoNCE loss of one sample can exceed this. Cosine similarities lie in [-1, 1],
#: so the logits lie in [-1/T, 1/T] and a sample's loss can reach 2/T + log(1 + queue size).
#: Past 1e6 (T < 2e-6) float32 keeps less than one decimal of such a loss (its spacing at 1e6
#: is 0.06), the softmax is one-hot, every gradient is either ~0 or ~1/T, and 16-bit autocast
#: (largest value 65504) has overflowed long before: the run cannot learn anything useful.
MAX_INFO_NCE_LOSS = 1e6


class MoCoV2PlusLogic(MixedBranchLogic, SplitBNLogic, ProjectorLogic):
    """Projector + momentum projector + key queue + InfoNCE against the queue.

    ``method_kwargs.symmetric``: false = MoCo v2 (q from view 1, k from view 2, one queue);
    true = MoCo V2+ ((L(q1,k2) + L(q2,k1)) / 2, one queue per view).
    """

    method_defaults: dict[str, Any] = {
        "proj_hidden_dim": 2048,
        "proj_output_dim": 128,
        "queue_size": 65536,
        "temperature": 0.2,
        "symmetric": True,
        **BN_DEFAULTS,
    }

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature = float(kw.temperature)
        self.symmetric = bool(kw.symmetric)
        self.key_queue = KeyQueue(2 if self.symmetric else 1, kw.proj_output_dim, kw.queue_size)
        if not self.symmetric:  # our engine skips the unused passes; solo-learn's runs all views
            self.online_views, self.momentum_views = [0], [1]

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        cfg = super().add_and_assert_specific_cfg(cfg)  # defaults filled by MixedBranchLogic
        check_known_keys(cfg, "method_kwargs", cls.method_defaults)
        check_number(cfg, "method_kwargs.temperature", low=0, low_open=True)
        check_bool(cfg, "method_kwargs.symmetric")
        temperature = cfg.method_kwargs.temperature
        if 2 / temperature > MAX_INFO_NCE_LOSS:
            config_warning(
                "method_kwargs.temperature",
                temperature,
                f"is so small that one sample's InfoNCE loss can reach 2/T = {2 / temperature:.3g} "
                f"(> {MAX_INFO_NCE_LOSS:.0e}): the softmax is one-hot and training degenerates; "
                "MoCo uses 0.07-0.2",
            )
        check_number(cfg, "method_kwargs.queue_size", low=1, integer=True)
        check_number(cfg, "method_kwargs.proj_hidden_dim", low=1, integer=True)
        check_number(cfg, "method_kwargs.proj_output_dim", low=1, integer=True)
        kw = cfg.method_kwargs
        queues = 2 if kw.symmetric else 1
        check_fits_in_memory(
            cfg,
            "method_kwargs.queue_size",
            4 * queues * kw.proj_output_dim * kw.queue_size,
            f"{queues} queue(s) of {kw.queue_size} keys x {kw.proj_output_dim} float32",
        )
        return cfg

    def info_nce(self, queue: torch.Tensor) -> PairLoss:
        """MoCo's per-pair loss for the mixed branch: ``(q (B, d), k (B, d)) -> (B,)``, the
        InfoNCE of each query against its positive key and the negatives ``queue`` (d, K)."""
        return partial(moco_loss, queue=queue, temperature=self.temperature, reduction="none")

    def training_step(self, batch: list[Any], batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        q, k = out["z"], out["momentum_z"]
        log_embedding_std(self, q[0])
        queue = self.key_queue.queue.clone().detach()
        if self.symmetric:
            nce = (
                moco_loss(q[0], k[1], queue[1], self.temperature)
                + moco_loss(q[1], k[0], queue[0], self.temperature)
            ) / 2
            keys = torch.stack((k[0], k[1]))
        else:
            nce = moco_loss(q[0], k[-1], queue[0], self.temperature)
            keys = k[-1].unsqueeze(0)
        # mixed views of the first view's images match the second view's keys k[-1] (B, d)
        # against queue[-1] (d, K), the queue of those keys
        mixed = self.mixed_losses(batch[1][0], k[-1], self.info_nce(queue[-1]))
        self.key_queue.enqueue(
            torch.nn.functional.normalize(gather_no_grad(keys.detach(), dim=1), dim=-1)
        )
        self.log("train_nce_loss", nce.detach(), on_epoch=True, sync_dist=True)
        return out["loss"] + sum([nce, *mixed.values()])


class MoCoV2Plus(MoCoV2PlusLogic, BaseMomentumMethod):
    """MoCo v2 / V2+ on the standalone engine."""
