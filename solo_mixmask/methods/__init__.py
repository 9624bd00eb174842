"""Method registry: ``METHODS[name](cfg)`` builds a method, as in solo-learn.

A method is a row: a momentum host (MoCo v2 / V2+, BYOL) and the mixers of its mixed views
(``core.mixing.MaskMixer``, ``core.unmix.UnmixMixer``), each with the rule that draws its
partners. Adding "MixMask on another momentum method" is one row; a new host is a class with
``MixedBranchLogic`` in its chain that calls ``mixed_losses`` from its step.

- mixmask: ``L = L(q, k) + lam L(q_mix, k) + (1 - lam) L(q_mix_partner, k)`` (METHOD.md
  section 2), the first view filled from the reversed batch through grid masks;
- unmix: the same lambda-weighted term with mixup / CutMix of the reversed batch;
- unmix_mixmask ("both" in the seed, METHOD.md section 4): an Un-Mix view with the reversed
  batch and a MixMask view with a random permutation, so the two views mix different pairs;
- byol_*: those views on BYOL, scored with BYOL's regression (see ``methods/byol.py``).
"""

from solo_mixmask.core.mixing import MaskMixer
from solo_mixmask.core.unmix import UnmixMixer
from solo_mixmask.methods.base import BaseMethod, BaseMomentumMethod
from solo_mixmask.methods.byol import BYOL, BYOLOnSoloLogic
from solo_mixmask.methods.mixed_branch import MixerRow
from solo_mixmask.methods.mocov2plus import MoCoV2Plus, MoCoV2PlusLogic
from solo_mixmask.methods.registry import Host, MethodRow, SoloName

MOCO = Host(MoCoV2Plus, solo_logic=MoCoV2PlusLogic, solo_base="BaseMomentumMethod")
BYOL_HOST = Host(BYOL, solo_logic=BYOLOnSoloLogic, solo_base="BYOL")
MASK_VIEW: MixerRow = (MaskMixer, "reversed")
UNMIX_VIEW: MixerRow = (UnmixMixer, "reversed")
BOTH_VIEWS: tuple[MixerRow, ...] = (UNMIX_VIEW, (MaskMixer, "random"))

#: The methods, in the order ``--help`` and the docs list them. solo-learn has its own
#: mocov2plus and byol (used as they are); it lacks MoCo v2 with the seed's asymmetric loss.
ROWS = (
    MethodRow(
        "mocov2plus", "MoCoV2Plus", MOCO, (), (SoloName("mocov2", "MoCoV2", {"symmetric": False}),)
    ),
    MethodRow("mixmask", "MixMask", MOCO, (MASK_VIEW,), (SoloName("mixmask", "MixMask"),)),
    MethodRow("unmix", "Unmix", MOCO, (UNMIX_VIEW,), (SoloName("unmix", "Unmix"),)),
    MethodRow(
        "unmix_mixmask",
        "UnmixMixMask",
        MOCO,
        BOTH_VIEWS,
        (SoloName("unmix_mixmask", "UnmixMixMask"),),
    ),
    MethodRow("byol", "BYOL", BYOL_HOST),
    MethodRow(
        "byol_mixmask",
        "BYOLMixMask",
        BYOL_HOST,
        (MASK_VIEW,),
        (SoloName("byol_mixmask", "BYOLMixMask"),),
    ),
    MethodRow(
        "byol_unmix_mixmask",
        "BYOLUnmixMixMask",
        BYOL_HOST,
        BOTH_VIEWS,
        (SoloName("byol_unmix_mixmask", "BYOLUnmixMixMask"),),
    ),
)

ENTRIES: dict[str, MethodRow] = {row.name: row for row in ROWS}
METHODS: dict[str, type[BaseMethod]] = {
    row.name: row.build((row.host.engine_class,), row.class_name, __name__) for row in ROWS
}
# the built classes are attributes of this module, so that they pickle
globals().update({cls.__name__: cls for cls in METHODS.values() if cls.__module__ == __name__})

__all__ = ["ENTRIES", "METHODS", "ROWS", "BaseMethod", "BaseMomentumMethod", "MethodRow"]
