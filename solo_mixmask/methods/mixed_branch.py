"""The mixed branch, once for every momentum host (MoCo, BYOL) and mixer: a term per mixer of the
host's per-pair loss of mixed first-view images (``mixed_loss``), added to the host's loss.
Engine-free: a mixin of the hosts on our engine and on solo-learn's."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from omegaconf import DictConfig

from solo_mixmask.config.schema import (
    check_view_count,
    fill_defaults,
    seed_of,
    smallest_crop_size,
)
from solo_mixmask.core.mixing import Mixer, PartnerRule, draw_partner
from solo_mixmask.losses.mixed import PairLoss, mixed_loss
from solo_mixmask.methods.contract import LogicBase
from solo_mixmask.utils.generators import SeededGenerators

#: One mixed view of a method: its mixer's class and how its partners are drawn.
MixerRow = tuple[type[Mixer], PartnerRule]


class Mix(NamedTuple):
    """One mixer's mixed view of a batch: ``images`` (B,3,H,W), ``lam`` float32 (B,) (the share
    of each image's own pixels), ``partner`` long (B,) (whose pixels fill the rest)."""

    name: str
    images: torch.Tensor
    lam: torch.Tensor
    partner: torch.Tensor


class MixedBranchLogic(LogicBase):
    """Mixin of the momentum hosts: their mixers (built from ``method_kwargs`` by the registry
    row's ``mixer_rows``; none: the host alone), seeded generators and mixed-view terms."""

    #: The output that is scored: "z" (MoCo's query) or "p" (BYOL's prediction).
    mixed_output = "z"
    mixer_rows: ClassVar[tuple[MixerRow, ...]] = ()
    method_defaults: dict[str, Any] = {}

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.generators = SeededGenerators(seed_of(cfg))
        kw = cfg.method_kwargs
        self.mixers = [
            (mixer(**{key: kw[key] for key in mixer.DEFAULTS}), rule)
            for mixer, rule in self.mixer_rows
        ]
        for mixer, _ in self.mixers:
            for name, stream in mixer.saved_streams().items():
                self.generators.attach(name, stream)
        # (first-view images, their mixes) drawn by extra_online_inputs for this step
        self._drawn: tuple[torch.Tensor, list[Mix]] | None = None

    @classmethod
    def add_and_assert_specific_cfg(cls, cfg: DictConfig) -> DictConfig:
        # defaults first: solo-learn's BYOL only asserts that its keys are set
        fill_defaults(cfg, {"method_kwargs": cls.method_defaults})
        cfg = super().add_and_assert_specific_cfg(cfg)
        # (a third view was forwarded, left out of the loss, and the mixed branch scored
        # against its keys instead of the second view's)
        check_view_count(
            cfg,
            2,
            "MoCo V2+, BYOL and their mixed variants compare two views (multi-crop is not "
            "implemented)",
        )
        for mixer, _ in cls.mixer_rows:
            mixer.check(cfg.method_kwargs, smallest_crop_size(cfg))
        return cfg

    def draw_mixes(self, x: torch.Tensor) -> list[Mix]:
        """One :class:`Mix` per mixer of the images x (B,3,H,W), drawn from the method's streams."""
        mixes = []
        for mixer, rule in self.mixers:
            device_generator = self.ranked_generators().device(x.device)
            partner = draw_partner(rule, x.shape[0], device_generator)
            generator = device_generator if mixer.draws_on == "device" else self.generators.host()
            x_mix, lam = mixer.mix(x, partner, generator)
            mixes.append(Mix(mixer.name, x_mix, lam, partner))
        return mixes

    def extra_online_inputs(self, batch: list[Any]) -> list[torch.Tensor]:
        """The engine's hook: this step's mixed images of the first view, drawn now (the
        engine may then compute their features with the views'); ``mixed_losses`` scores them."""
        x = batch[1][0]
        self._drawn = (x, self.draw_mixes(x))
        return [mix.images for mix in self._drawn[1]]

    def mixed_losses(
        self, x: torch.Tensor, target: torch.Tensor, pair_loss: PairLoss
    ) -> dict[str, torch.Tensor]:
        """``{"train_<mixer>_loss": float32 scalar}`` for the first view's images x (B,3,H,W)
        against ``target`` (B, d), the unmixed images' stop-gradient targets; logs each term
        and each mixer's mean lambda. Cost: one online forward + backward of B images each.
        The mixes are those drawn for x by ``extra_online_inputs`` in this step, else new."""
        drawn, self._drawn = self._drawn, None
        mixes = drawn[1] if drawn is not None and drawn[0] is x else self.draw_mixes(x)
        losses, lambdas = {}, {}
        for mix in mixes:
            name, lam, partner = mix.name, mix.lam, mix.partner
            pred = self.forward(mix.images)[self.mixed_output]
            losses[f"train_{name}_loss"] = mixed_loss(pair_loss, pred, target, lam, partner)
            lambdas[f"train_{name}_lambda"] = lam.mean()
        if losses:
            logged = {name: loss.detach() for name, loss in losses.items()}
            self.log_dict({**logged, **lambdas}, on_epoch=True, sync_dist=True)
        return losses

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
