"""Pure-torch core of MixMask / Un-Mix: masks, mixing and the key queue."""

from solo_mixmask.core.masks import (
    MASK_TYPES,
    block_masks,
    discrete_masks,
    mask_lambdas,
    sample_masks,
    upsample_masks,
)
from solo_mixmask.core.mixing import (
    UnmixParams,
    inverse_permutation,
    mix_with_masks,
    random_partner,
    reversed_partner,
    sample_unmix_params,
    unmix,
)
from solo_mixmask.core.queue import KeyQueue

__all__ = [
    "MASK_TYPES",
    "KeyQueue",
    "UnmixParams",
    "block_masks",
    "discrete_masks",
    "inverse_permutation",
    "mask_lambdas",
    "mix_with_masks",
    "random_partner",
    "reversed_partner",
    "sample_masks",
    "sample_unmix_params",
    "unmix",
    "upsample_masks",
]
