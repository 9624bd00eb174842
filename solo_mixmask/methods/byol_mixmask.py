"""BYOL + MixMask: the MixMask branch of ``mixmask`` on BYOL instead of MoCo.

BYOL's own step is unchanged: predictor, symmetric loss ``byol(p1, z2) + byol(p2, z1)`` with
``byol(p, z) = 2 - 2 cos(p, z)``, momentum projector and backbone on the cosine tau schedule. As
MixMask on MoCo (METHOD.md section 2: ``L = L(q, k) + lam L(q_mix, k) + (1 - lam)
L(q_mix_partner, k)``, the mixed term ADDED to the unchanged loss, queries mixed from the first
view, keys of the second view), the first view's images x1 are filled from the reversed batch,
``x_mix = M * x1 + (1 - M) * x1[partner]``, and the predictor output of the mixed view
``p_mix`` regresses the targets of both source images:

    L = byol(p1, z2) + byol(p2, z1) + 1/B sum_j [ lam_j byol(p_mix_j, z2_j)
                                                + (1 - lam_j) byol(p_mix_j, z2_partner(j)) ]

The targets ``z2`` are the momentum projections of the two source images' SECOND views (the
key views, as MoCo's keys), already computed by BYOL's step. The mixed term is added with
weight 1, the weight of each of BYOL's two regression terms (MoCo: of its one InfoNCE term).
Masks, lambda and config keys (grid_size, mask_ratio, mask_type, per_sample_masks) and their
checks are ``mixmask``'s. Cost: one extra online forward + backward per step.
"""

from __future__ import annotations

from typing import Any

from solo_mixmask.methods.byol import BYOL, BYOL_DEFAULTS, BYOLMixedBranchLogic
from solo_mixmask.methods.mixmask import MASK_DEFAULTS, MaskMixingLogic
from solo_mixmask.methods.registry import MethodEntry, SoloName


class BYOLMixMaskLogic(MaskMixingLogic, BYOLMixedBranchLogic):
    """The MixMask branch on a BYOL base (ours or solo-learn's); see the module docstring."""

    method_defaults: dict[str, Any] = {**BYOL_DEFAULTS, **MASK_DEFAULTS}


class BYOLMixMask(BYOLMixMaskLogic, BYOL):
    """BYOL + MixMask on the standalone engine."""


ENTRY = MethodEntry(
    "byol_mixmask",
    method=BYOLMixMask,
    logic=BYOLMixMaskLogic,
    solo_base="BYOL",
    solo_names=(SoloName("byol_mixmask", "BYOLMixMask"),),
)
