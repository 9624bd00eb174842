"""The mixed query branch, written once for every momentum method.

A mixed method mixes the first view's images with partner images of the same batch, passes the
mixed images through the online network, and weights the method's own per-pair loss by lambda
(against the image's own target) and 1 - lambda (against its filler's target):
:func:`solo_mixmask.losses.mixed.mixed_loss`. What differs between methods is only

- how the images are mixed: MixMask's grid masks (``MaskMixingLogic`` in ``mixmask.py``) or
  Un-Mix's mixup / CutMix (``UnmixMixingLogic`` in ``unmix.py``), both ``mix(x, partner) ->
  (x_mix, lam)``;
- which output is compared with which target under which per-pair loss: MoCo's query ``z`` with
  InfoNCE against the queue, BYOL's prediction ``p`` with its normalised regression to the
  momentum projection.

:class:`MixedBranchLogic` holds what they share: the seeded generators (saved in checkpoints)
and :meth:`MixedBranchLogic.mixed_branch`. It is engine-free, a mixin placed before either
engine's base class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from solo_mixmask.config import DEFAULT_SEED, select
from solo_mixmask.losses.mixed import PairLoss, mixed_loss
from solo_mixmask.methods.contract import LogicBase
from solo_mixmask.utils.generators import SeededGenerators

#: ``mix(x (B,3,H,W), partner long (B,)) -> (x_mix (B,3,H,W), lam float32 (B,))``.
Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class MixedBranchLogic(LogicBase):
    """Mixin: seeded generators and the one mixed-branch helper.

    ``mixed_output``: the key of ``forward``'s output that the mixed view's loss compares with
    the targets ("z" for MoCo, "p" for BYOL). Subclasses that add mixed views override
    :meth:`mixed_losses`.
    """

    mixed_output = "z"

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.generators = SeededGenerators(select(cfg, "seed", DEFAULT_SEED))

    def mixed_branch(
        self,
        x: torch.Tensor,
        partner: torch.Tensor,
        mix: Mixer,
        target: torch.Tensor,
        pair_loss: PairLoss,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of one mixed view: ``mix`` images x (B,3,H,W) with ``x[partner]`` (partner long
        (B,), any permutation), forward the mixed images, and weight ``pair_loss`` of their
        ``mixed_output`` (B, d) against ``target`` (B, d, the unmixed images' stop-gradient
        targets) by lambda and 1 - lambda (:func:`mixed_loss`). Returns (loss float32 scalar,
        lambda float32 (B,)). Cost: one online forward + backward of B images."""
        x_mix, lam = mix(x, partner)
        pred = self.forward(x_mix)[self.mixed_output]
        return mixed_loss(pair_loss, pred, target, lam, partner), lam

    def mixed_losses(
        self, x: torch.Tensor, target: torch.Tensor, pair_loss: PairLoss
    ) -> dict[str, torch.Tensor]:
        """Extra loss terms of mixed views of the images x (B,3,H,W) (the first view), against
        ``target`` (B, d) (the second view's momentum outputs); ``{}`` without mixing."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["method_generators"] = self.generators.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "method_generators" in checkpoint:
            self.generators.load_state_dict(checkpoint["method_generators"])

    def ranked_generators(self) -> SeededGenerators:
        """The method's generators, seeded for this process's rank when first drawn from."""
        self.generators.rank = int(getattr(self, "global_rank", 0))
        return self.generators

    def mixing_generator(self, device: torch.device) -> torch.Generator:
        """The seeded device generator for masks and permutations (seed + rank)."""
        return self.ranked_generators().device(device)
