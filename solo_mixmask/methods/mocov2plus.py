"""MoCo v2 (asymmetric, the seed's baseline) and MoCo V2+ (symmetric, solo-learn's).

``MoCoV2PlusLogic`` is written against the method contract only, so it runs on our engine
(``MoCoV2Plus`` below) and on solo-learn's ``BaseMomentumMethod`` (see ``solo_mixmask.solo``).
Methods that add mixed queries (MixMask, Un-Mix) override :meth:`mixed_losses`.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from solo_mixmask.config import (
    check_bool,
    check_known_keys,
    check_number,
    config_warning,
    fill_defaults,
    select,
)
from solo_mixmask.core.queue import KeyQueue
from solo_mixmask.losses.moco import moco_loss
from solo_mixmask.methods.base import BaseMomentumMethod
from solo_mixmask.methods.heads import ProjectorLogic
from solo_mixmask.utils.distributed import gather_no_grad
from solo_mixmask.utils.generators import SeededGenerators

#: Warn when the InfoNCE loss of one sample can exceed this. Cosine similarities lie in [-1, 1],
#: so the logits lie in [-1/T, 1/T] and a sample's loss can reach 2/T + log(1 + queue size).
#: Past 1e6 (T < 2e-6) float32 keeps less than one decimal of such a loss (its spacing at 1e6
#: is 0.06), the softmax is one-hot, every gradient is either ~0 or ~1/T, and 16-bit autocast
#: (largest value 65504) has overflowed long before: the run cannot learn anything useful.
MAX_INFO_NCE_LOSS = 1e6


class MoCoV2PlusLogic(ProjectorLogic):
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
    }

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.temperature = float(kw.temperature)
        self.symmetric = bool(kw.symmetric)
        self.key_queue = KeyQueue(2 if self.symmetric else 1, kw.proj_output_dim, kw.queue_size)
        self.generators = SeededGenerators(select(cfg, "seed", 0))
        if not self.symmetric:  # our engine skips the unused passes; solo-learn's runs all views
            self.online_views, self.momentum_views = [0], [1]

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        cfg = super().add_and_assert_specific_cfg(cfg)  # type: ignore[misc]
        fill_defaults(cfg, {"method_kwargs": cls.method_defaults})
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
        return cfg

    def mixed_losses(
        self, batch: list[Any], out: dict[str, Any], queue: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Extra loss terms of mixed queries; ``{}`` for plain MoCo.

        The mixed branch mixes the first view's images and matches the second view's keys
        ``out["momentum_z"][-1]`` (B, d) against ``queue[-1]`` (d, K), the queue of those keys.
        """
        return {}

    def training_step(self, batch: list[Any], batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)  # type: ignore[misc]
        q, k = out["z"], out["momentum_z"]
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
        losses = {"train_nce_loss": nce, **self.mixed_losses(batch, out, queue)}
        self.key_queue.enqueue(
            torch.nn.functional.normalize(gather_no_grad(keys.detach(), dim=1), dim=-1)
        )
        self.log_dict(
            {name: value.detach() for name, value in losses.items()}, on_epoch=True, sync_dist=True
        )  # type: ignore[attr-defined]
        return out["loss"] + sum(losses.values())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint["method_generators"] = self.generators.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        if "method_generators" in checkpoint:
            self.generators.load_state_dict(checkpoint["method_generators"])

    def ranked_generators(self) -> SeededGenerators:
        """The method's generators, seeded for this process's rank when first drawn from."""
        self.generators.rank = int(getattr(self, "global_rank", 0))
        return self.generators

    def mixing_generator(self, device: torch.device) -> torch.Generator:
        """The seeded device generator for masks and permutations (seed + rank)."""
        return self.ranked_generators().device(device)


class MoCoV2Plus(MoCoV2PlusLogic, BaseMomentumMethod):
    """MoCo v2 / V2+ on the standalone engine."""
