"""Pure-torch core of MixMask / Un-Mix: masks, mixing, the mixers and the key queue."""

from solo_mixmask.core.masks import (
    MASK_TYPES,
    block_masks,
    discrete_masks,
    mask_lambdas,
    upsample_masks,
)
from solo_mixmask.core.mixing import (
    MaskMixer,
    Mixer,
    inverse_permutation,
    mix_with_masks,
    random_partner,
    reversed_partner,
)
from solo_mixmask.core.queue import KeyQueue
from solo_mixmask.core.unmix import UnmixMixer, UnmixParams, sample_unmix_params, unmix

__all__ = [
    "MASK_TYPES",
    "KeyQueue",
    "MaskMixer",
    "Mixer",
    "UnmixMixer",
    "UnmixParams",
    "block_masks",
    "discrete_masks",
    "inverse_permutation",
    "mask_lambdas",
    "mix_with_masks",
    "random_partner",
    "reversed_partner",
    "sample_unmix_params",
    "unmix",
    "upsample_masks",
]
