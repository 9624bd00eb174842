"""BYOL + Un-Mix + MixMask: the two mixed branches of ``unmix_mixmask`` on BYOL.

As ``unmix_mixmask`` on MoCo (METHOD.md section 4), two mixed views of the first view's images
are ADDED to BYOL's unchanged loss (see ``byol_mixmask.py`` for the BYOL side): an Un-Mix view
(mixup / CutMix with the reversed batch) and a MixMask view (masks, with a random permutation
as partners), each regressing the momentum projections of the second views of both source images
with weights lambda and 1 - lambda:

    L = byol(p1, z2) + byol(p2, z1) + [lu byol(p_unmix, z2) + (1 - lu) byol(p_unmix, z2_partner)]
                                    + [lm byol(p_mask, z2) + (1 - lm) byol(p_mask, z2_partner)]

Config keys and checks are ``unmix_mixmask``'s. Cost: two extra online passes per step.
"""

from __future__ import annotations

from typing import Any

from solo_mixmask.methods.byol import BYOL, BYOL_DEFAULTS, BYOLMixedBranchLogic
from solo_mixmask.methods.mixmask import MASK_DEFAULTS
from solo_mixmask.methods.registry import MethodEntry, SoloName
from solo_mixmask.methods.unmix import UNMIX_DEFAULTS
from solo_mixmask.methods.unmix_mixmask import UnmixMaskMixingLogic


class BYOLUnmixMixMaskLogic(UnmixMaskMixingLogic, BYOLMixedBranchLogic):
    """Un-Mix and MixMask branches on a BYOL base (ours or solo-learn's)."""

    method_defaults: dict[str, Any] = {**BYOL_DEFAULTS, **MASK_DEFAULTS, **UNMIX_DEFAULTS}


class BYOLUnmixMixMask(BYOLUnmixMixMaskLogic, BYOL):
    """BYOL + Un-Mix + MixMask on the standalone engine."""


ENTRY = MethodEntry(
    "byol_unmix_mixmask",
    method=BYOLUnmixMixMask,
    logic=BYOLUnmixMixMaskLogic,
    solo_base="BYOL",
    solo_names=(SoloName("byol_unmix_mixmask", "BYOLUnmixMixMask"),),
)
