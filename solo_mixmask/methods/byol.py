"""BYOL: online projector + predictor regress the momentum projection of the other view.

``byol(p, z) = 2 - 2 cos(p, z)``, symmetric ``byol(p1, z2) + byol(p2, z1)``, momentum projector
and backbone on the cosine tau schedule. BYOL hosts ``byol_mixmask`` and ``byol_unmix_mixmask``:
as MixMask on MoCo (METHOD.md section 2), each mixed view of the first view's images is ADDED to
the unchanged loss with weight 1 (the weight of each of BYOL's two terms), its predictor output
``p_mix`` regressing the momentum projections ``z2`` of both source images' second views:

    L = byol(p1, z2) + byol(p2, z1) + 1/B sum_j [ lam_j byol(p_mix_j, z2_j)
                                                + (1 - lam_j) byol(p_mix_j, z2_partner(j)) ]

``BYOLLogic`` is that host on our engine; ``BYOLOnSoloLogic`` adds the same mixed terms to
solo-learn's own ``solo.methods.BYOL``, whose step is used unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig

from solo_mixmask.config.schema import check_known_keys, check_number
from solo_mixmask.losses.byol import byol_loss
from solo_mixmask.methods.base import BaseMomentumMethod
from solo_mixmask.methods.batch_norm import BN_DEFAULTS, SplitBNLogic
from solo_mixmask.methods.heads import ProjectorLogic, log_embedding_std, mlp_head
from solo_mixmask.methods.mixed_branch import MixedBranchLogic

#: BYOL's ``method_kwargs`` and their defaults (solo-learn's CIFAR recipe).
BYOL_DEFAULTS: dict[str, Any] = {
    "proj_hidden_dim": 4096,
    "proj_output_dim": 256,
    "pred_hidden_dim": 4096,
    **BN_DEFAULTS,
}


def check_byol_config(cfg: DictConfig, allowed: dict[str, Any]) -> None:
    """``method_kwargs`` has only the ``allowed`` keys, and BYOL's head widths (proj_hidden_dim,
    proj_output_dim, pred_hidden_dim) are integers >= 1; ConfigError otherwise."""
    check_known_keys(cfg, "method_kwargs", allowed)
    for key in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
        check_number(cfg, f"method_kwargs.{key}", low=1, integer=True)


class BYOLLogic(MixedBranchLogic, SplitBNLogic, ProjectorLogic):
    """Symmetric BYOL loss: byol(p1, k2) + byol(p2, k1), with BatchNorm in the heads, plus the
    row's mixed views (their output is the predictor's ``p``)."""

    projector_batch_norm = True
    mixed_output = "p"
    method_defaults: dict[str, Any] = dict(BYOL_DEFAULTS)

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        kw = cfg.method_kwargs
        self.predictor = mlp_head(
            kw.proj_output_dim, kw.pred_hidden_dim, kw.proj_output_dim, batch_norm=True
        )

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        cfg = super().add_and_assert_specific_cfg(cfg)  # defaults filled by MixedBranchLogic
        check_byol_config(cfg, cls.method_defaults)
        return cfg

    @property
    def learnable_params(self) -> list[dict[str, Any]]:
        predictor = {"name": "predictor", "params": self.predictor.parameters()}
        return super().learnable_params + [predictor]

    def forward(self, X: torch.Tensor) -> dict[str, Any]:
        out = super().forward(X)
        out["p"] = self.predictor(out["z"])
        return out

    def training_step(self, batch: list[Any], batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)
        p, k = out["p"], out["momentum_z"]
        log_embedding_std(self, out["z"][0])
        loss = byol_loss(p[0], k[1]) + byol_loss(p[1], k[0])
        self.log("train_byol_loss", loss.detach(), on_epoch=True, sync_dist=True)
        # mixed views of the first view's images regress the second view's projections k[1]
        mixed = self.mixed_losses(batch[1][0], k[1], partial(byol_loss, reduction="none"))
        return out["loss"] + loss + sum(mixed.values())


class BYOL(BYOLLogic, BaseMomentumMethod):
    """BYOL on the standalone engine."""


class BYOLOnSoloLogic(MixedBranchLogic, SplitBNLogic):
    """The mixed views on solo-learn's own BYOL (``byol_*`` rows in solo-learn).

    solo-learn's BYOL step is unchanged (its predictor, symmetric loss and tau schedule); its
    loss gets the mixed terms of the first view's images x1 (B,3,H,W) against z2 (B, d), the
    momentum projections of the second view, recorded from its own ``momentum_forward`` calls
    (its ``training_step`` returns only the loss), so no extra momentum pass is made. The
    collapse measure is taken, as on our engine, from the first view's online projections,
    recorded from its ``forward`` calls.
    """

    mixed_output = "p"
    method_defaults: dict[str, Any] = dict(BYOL_DEFAULTS)

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self._momentum_z: list[torch.Tensor] | None = None  # recorded during training_step
        self._online_z: list[torch.Tensor] | None = None  # likewise

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        cfg = super().add_and_assert_specific_cfg(cfg)  # defaults filled by MixedBranchLogic
        check_byol_config(cfg, cls.method_defaults)
        return cfg

    def forward(self, X: torch.Tensor) -> dict[str, Any]:
        out = super().forward(X)
        if self._online_z is not None:
            self._online_z.append(out["z"])
        return out

    @torch.no_grad()
    def momentum_forward(self, X: torch.Tensor) -> dict[str, Any]:
        out = super().momentum_forward(X)
        if self._momentum_z is not None:
            self._momentum_z.append(out["z"])
        return out

    def training_step(self, batch: list[Any], batch_idx: int) -> Any:
        """The host BYOL's loss tensor plus the mixed-view terms (typed as the contract's)."""
        self._momentum_z, self._online_z = [], []
        try:
            loss = super().training_step(batch, batch_idx)
            momentum_z, online_z = self._momentum_z, self._online_z
        finally:
            self._momentum_z = self._online_z = None
        # the first view's online projections (B, d), as every method on our engine logs them
        # (the momentum network's would lag a collapse by the EMA)
        log_embedding_std(self, online_z[0])
        # the second view's momentum projections (B, d), as BYOL's own p1 -> z2 term uses them
        mixed = self.mixed_losses(batch[1][0], momentum_z[-1], partial(byol_loss, reduction="none"))
        return loss + sum(mixed.values())
