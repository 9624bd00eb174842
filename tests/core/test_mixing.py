import math
from functools import partial

import numpy as np
import pytest
import torch

from solo_mixmask.core import (
    UnmixParams,
    inverse_permutation,
    mix_with_masks,
    random_partner,
    reversed_partner,
    sample_unmix_params,
    unmix,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[5.0, 6.0], [7.0, 8.0]]]])  # (2, 1, 2, 2)


def test_reversed_partner():
    assert reversed_partner(4).tolist() == [3, 2, 1, 0]
    assert reversed_partner(1).tolist() == [0]
    assert reversed_partner(3).dtype == torch.long


def test_random_partner_is_reproducible_permutation():
    p = random_partner(10, generator=gen(1))
    assert sorted(p.tolist()) == list(range(10))
    assert torch.equal(p, random_partner(10, generator=gen(1)))
    assert not torch.equal(p, random_partner(10, generator=gen(2)))


def test_inverse_permutation():
    perm = torch.tensor([2, 0, 3, 1])
    inv = inverse_permutation(perm)
    assert inv.tolist() == [1, 3, 0, 2]
    assert torch.equal(perm[inv], torch.arange(4)) and torch.equal(inv[perm], torch.arange(4))
    rev = reversed_partner(5)
    assert torch.equal(inverse_permutation(rev), rev)  # the reversal is its own inverse


def test_mix_with_shared_mask_hand_case():
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # (1, 1, 2, 2)
    x_mix, lam = mix_with_masks(X, mask, reversed_partner(2))
    expected = torch.tensor([[[[1.0, 6.0], [7.0, 4.0]]], [[[5.0, 2.0], [3.0, 8.0]]]])
    assert torch.equal(x_mix, expected)
    assert lam.dtype == torch.float32 and lam.tolist() == [0.5, 0.5]


def test_mix_with_per_sample_masks_hand_case():
    masks = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]], [[[0.0, 1.0], [0.0, 0.0]]]])
    x_mix, lam = mix_with_masks(X, masks, torch.tensor([1, 0]))
    expected = torch.tensor([[[[1.0, 2.0], [3.0, 8.0]]], [[[1.0, 6.0], [3.0, 4.0]]]])
    assert torch.equal(x_mix, expected)
    assert lam.tolist() == [0.75, 0.25]


def test_mix_single_sample_with_itself():
    x = X[:1]
    x_mix, lam = mix_with_masks(x, torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]]), torch.tensor([0]))
    assert torch.equal(x_mix, x) and lam.tolist() == [0.5]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mix_low_precision(dtype):
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=dtype)
    x_mix, lam = mix_with_masks(X.to(dtype), mask, reversed_partner(2))
    assert x_mix.dtype == dtype and lam.dtype == torch.float32
    assert x_mix.float().tolist() == [[[[1.0, 6.0], [7.0, 4.0]]], [[[5.0, 2.0], [3.0, 8.0]]]]


def test_mix_rejects_bad_shapes():
    with pytest.raises(ValueError, match="masks.shape"):
        mix_with_masks(X, torch.ones(2, 1, 3, 3), reversed_partner(2))
    with pytest.raises(ValueError, match="partner.shape"):
        mix_with_masks(X, torch.ones(1, 1, 2, 2), reversed_partner(3))


def test_unmix_mixup_hand_case():
    params = UnmixParams(kind="mixup", lam=0.25)
    x_mix, lam = unmix(X, reversed_partner(2), params)
    expected = torch.tensor([[[[4.0, 5.0], [6.0, 7.0]]], [[[2.0, 3.0], [4.0, 5.0]]]])
    assert torch.allclose(x_mix, expected)
    assert lam.dtype == torch.float32 and lam.tolist() == [0.25, 0.25]


def test_unmix_cutmix_hand_case():
    x = torch.arange(12.0).view(2, 1, 2, 3)  # sample 0: 0..5, sample 1: 6..11
    params = UnmixParams(kind="cutmix", lam=2 / 3, box=(0, 1, 1, 3))  # row 0, columns 1-2
    x_mix, lam = unmix(x, torch.tensor([1, 0]), params)
    expected = torch.tensor(
        [[[[0.0, 7.0, 8.0], [3.0, 4.0, 5.0]]], [[[6.0, 1.0, 2.0], [9.0, 10.0, 11.0]]]]
    )
    assert torch.equal(x_mix, expected)
    assert torch.allclose(lam, torch.full((2,), 2 / 3))
    assert torch.equal(x, torch.arange(12.0).view(2, 1, 2, 3))  # input untouched


def test_unmix_params_validation():
    with pytest.raises(ValueError, match="kind='cut'"):
        UnmixParams(kind="cut", lam=0.5)
    with pytest.raises(ValueError, match="box=None"):
        UnmixParams(kind="cutmix", lam=0.5)
    with pytest.raises(ValueError, match="box="):
        unmix(X, reversed_partner(2), UnmixParams(kind="cutmix", lam=0.5, box=(0, 3, 0, 1)))


def test_sample_unmix_params_reproducible():
    g1, g2 = gen(3), gen(3)
    a = [sample_unmix_params(1.0, 0.5, 32, 32, generator=g1) for _ in range(20)]
    b = [sample_unmix_params(1.0, 0.5, 32, 32, generator=g2) for _ in range(20)]
    assert a == b
    c = [sample_unmix_params(1.0, 0.5, 32, 32, generator=gen(4)) for _ in range(20)]
    assert a != c
    assert {p.kind for p in a} == {"mixup", "cutmix"}
    assert all(isinstance(p.lam, float) for p in a)


def test_sample_unmix_params_follow_the_recipe():
    """Replays the documented recipe: seed -> numpy Beta, coin, centre; box clipped."""
    g, replay = gen(5), gen(5)
    height, width, clipped = 20, 30, 0
    for _ in range(200):
        p = sample_unmix_params(1.0, 0.0, height, width, generator=g)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=replay)))
        raw = rng.beta(1.0, 1.0)
        rng.random()
        cut_h = round(math.sqrt(1 - raw) * height)
        cut_w = round(math.sqrt(1 - raw) * width)
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        y0, x0 = cy - cut_h // 2, cx - cut_w // 2
        box = (max(y0, 0), min(y0 + cut_h, height), max(x0, 0), min(x0 + cut_w, width))
        assert p.kind == "cutmix" and p.box == box
        area = (box[1] - box[0]) * (box[3] - box[2])
        assert p.lam == pytest.approx(1 - area / (height * width))
        clipped += area < cut_h * cut_w
    assert clipped > 20  # many boxes were clipped, so lambda was recomputed above raw


def test_sample_unmix_params_probability_and_beta():
    g = gen(6)
    mix = [sample_unmix_params(1.0, 1.0, 8, 8, generator=g) for _ in range(400)]
    assert all(p.kind == "mixup" and p.box is None for p in mix)
    lams = np.array([p.lam for p in mix])
    assert abs(lams.mean() - 0.5) < 0.05 and lams.min() >= 0 and lams.max() <= 1  # Beta(1, 1)
    cut = [sample_unmix_params(1.0, 0.0, 8, 8, generator=g) for _ in range(50)]
    assert all(p.kind == "cutmix" for p in cut)
    half = [sample_unmix_params(1.0, 0.5, 8, 8, generator=g).kind for _ in range(400)]
    assert 150 < half.count("mixup") < 250


@pytest.mark.parametrize(
    "alpha, prob, match", [(0.0, 0.5, "alpha=0.0"), (1.0, 1.5, "prob=1.5"), (1.0, -0.1, "prob")]
)
def test_sample_unmix_params_validation(alpha, prob, match):
    with pytest.raises(ValueError, match=match):
        sample_unmix_params(alpha, prob, 8, 8, generator=gen())


def test_sampled_cutmix_lam_matches_pixels():
    g = gen(7)
    x = torch.zeros(2, 1, 16, 16)
    x[1] = 1.0  # the partner of sample 0 is all ones: pasted share = 1 - lam
    for _ in range(20):
        p = sample_unmix_params(1.0, 0.0, 16, 16, generator=g)
        x_mix, lam = unmix(x, torch.tensor([1, 0]), p)
        assert lam[0].item() == pytest.approx(p.lam)
        assert x_mix[0].mean().item() == pytest.approx(1 - p.lam)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixing_step_on_cuda_without_host_sync():
    from solo_mixmask.core import KeyQueue
    from solo_mixmask.core.masks import MaskBank
    from solo_mixmask.losses import mixed_loss, moco_loss

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    params = sample_unmix_params(1.0, 0.5, 32, 32, generator=gen(0))  # host-side, before
    x = torch.randn(16, 3, 32, 32, device=dev)
    q = torch.randn(16, 8, device=dev, requires_grad=True)
    k = torch.randn(16, 8, device=dev)
    queue = KeyQueue(1, 8, 40).to(dev)
    torch.cuda.set_sync_debug_mode("error")
    try:
        partner = random_partner(16, generator=g)
        masks = MaskBank(4, 0.5).sample(16, (32, 32), per_sample=True, generator=g, device=dev)
        x_mix, lam = mix_with_masks(x, masks, partner)
        x_un, lam_un = unmix(x, reversed_partner(16, device=dev), params)
        inverse_permutation(partner)
        snapshot = queue.get(0)
        nce = partial(moco_loss, queue=snapshot, temperature=0.2, reduction="none")
        loss = moco_loss(q, k, snapshot, 0.2) + mixed_loss(nce, q, k, lam, partner)
        loss = loss + mixed_loss(nce, q, k, 0.3, partner)
        queue.enqueue(k[None])
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x_mix.is_cuda and x_un.is_cuda and lam_un.is_cuda and q.grad is not None
