import math
from functools import partial

import pytest
import torch

from solo_mixmask.core import inverse_permutation, random_partner, reversed_partner
from solo_mixmask.losses import byol_loss, mixed_loss, moco_loss

#: BYOL's per-pair loss, as the BYOL host passes it to ``mixed_loss``.
BYOL_PAIR = partial(byol_loss, reduction="none")


def moco_pair(queue: torch.Tensor, t: float):
    """MoCo's per-pair loss against ``queue`` at temperature ``t``, as the MoCo host passes it."""
    return partial(moco_loss, queue=queue, temperature=t, reduction="none")


def infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> float:
    """One sample's InfoNCE written out in float64 python arithmetic."""
    q = (q / q.norm()).double()
    k = (k / k.norm()).double()
    pos = float(q @ k) / t
    negs = [float(q @ queue[:, m].double()) / t for m in range(queue.shape[1])]
    return -pos + math.log(math.exp(pos) + sum(math.exp(v) for v in negs))


def paper_form(q_mix, k, queue, lam, partner, t) -> float:
    """lam L(q_mix, k) + (1 - lam) L(q_mix_partner, k), realigned with the inverse permutation:
    for key i, the mixed image whose filler was i is j = inv[i], weighted by 1 - lam[j]."""
    n = q_mix.shape[0]
    lam = torch.as_tensor(lam, dtype=torch.float64).expand(n)
    inv = inverse_permutation(partner)
    total = 0.0
    for i in range(n):
        total += float(lam[i]) * infonce(q_mix[i], k[i], queue, t)
        j = int(inv[i])
        total += (1 - float(lam[j])) * infonce(q_mix[j], k[i], queue, t)
    return total / n


def data(n: int, d: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q_mix = torch.randn(n, d, generator=g)
    k = torch.randn(n, d, generator=g)
    queue = torch.nn.functional.normalize(torch.randn(d, size, generator=g), dim=0)
    return q_mix, k, queue, g


def test_hand_case_n2_d2_k1():
    # k0 = (1, 0), k1 = (0, 1), queued key (-1, 0), T = 1, partner = reversed, lam = (.75, .25).
    # q_mix0 = (1, 0): own pos 1, partner pos 0, neg -1
    #   -> l_own = log(1 + e^-2) = 0.126928, l_partner = log(1 + e^-1) = 0.313262.
    # q_mix1 = (0, 1): own pos 1, partner pos 0, neg 0
    #   -> l_own = log(1 + e^-1) = 0.313262, l_partner = log(2) = 0.693147.
    # loss = (.75 * 0.126928 + .25 * 0.313262 + .25 * 0.313262 + .75 * 0.693147) / 2 = 0.385844
    q_mix = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue = torch.tensor([[-1.0], [0.0]])
    lam = torch.tensor([0.75, 0.25])
    loss = mixed_loss(moco_pair(queue, 1.0), q_mix, k, lam, reversed_partner(2))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(0.385844, abs=1e-6)


def test_scalar_lambda_with_reversed_partner():
    q_mix, k, queue, _ = data(6, 5, 7, seed=0)
    partner = reversed_partner(6)
    got = mixed_loss(moco_pair(queue, 0.2), q_mix, k, 0.4, partner)
    assert got.item() == pytest.approx(paper_form(q_mix, k, queue, 0.4, partner, 0.2), rel=1e-5)
    # With a scalar lambda it is the seed's lam * L(q_mix, k) + (1 - lam) * L(q_mix[::-1], k).
    seed_form = 0.4 * moco_loss(q_mix, k, queue, 0.2) + 0.6 * moco_loss(
        q_mix.flip(0), k, queue, 0.2
    )
    assert got.item() == pytest.approx(seed_form.item(), rel=1e-5)


def test_per_sample_lambda_with_random_permutations():
    for seed in range(5):
        q_mix, k, queue, g = data(8, 4, 9, seed=seed)
        partner = random_partner(8, generator=g)
        lam = torch.rand(8, generator=g)
        got = mixed_loss(moco_pair(queue, 0.5), q_mix, k, lam, partner)
        assert got.item() == pytest.approx(paper_form(q_mix, k, queue, lam, partner, 0.5), rel=1e-5)


def test_non_involutive_permutation():
    partner = torch.tensor([1, 2, 3, 0, 4])  # a 4-cycle and a fixed point: inverse != itself
    assert not torch.equal(inverse_permutation(partner), partner)
    q_mix, k, queue, _ = data(5, 3, 4, seed=11)
    lam = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    got = mixed_loss(moco_pair(queue, 0.3), q_mix, k, lam, partner)
    assert got.item() == pytest.approx(paper_form(q_mix, k, queue, lam, partner, 0.3), rel=1e-5)
    # Realigning with the partner itself instead of its inverse gives a different number.
    wrong = paper_form(q_mix, k, queue, lam, inverse_permutation(partner), 0.3)
    assert abs(got.item() - wrong) > 1e-4


def test_lambda_one_is_plain_moco():
    q_mix, k, queue, g = data(4, 3, 5, seed=3)
    partner = random_partner(4, generator=g)
    got = mixed_loss(moco_pair(queue, 0.2), q_mix, k, torch.ones(4), partner)
    assert got.item() == pytest.approx(moco_loss(q_mix, k, queue, 0.2).item(), rel=1e-6)


def test_gradient_flows_to_q_mix_only():
    q_mix, k, queue, _ = data(4, 3, 5, seed=4)
    q_mix.requires_grad_(True)
    k.requires_grad_(True)
    queue.requires_grad_(True)
    lam = torch.full((4,), 0.5, requires_grad=False)
    mixed_loss(moco_pair(queue, 0.2), q_mix, k, lam, reversed_partner(4)).backward()
    assert q_mix.grad is not None and q_mix.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def test_bfloat16_queries():
    q_mix, k, queue, _ = data(4, 3, 5, seed=5)
    ref = mixed_loss(moco_pair(queue, 0.2), q_mix, k, 0.5, reversed_partner(4))
    low = mixed_loss(
        moco_pair(queue, 0.2), q_mix.bfloat16(), k.bfloat16(), 0.5, reversed_partner(4)
    )
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=5e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lam=torch.ones(3)), r"lam.shape=\(3,\)"),
        (dict(partner=torch.arange(3)), r"partner.shape=\(3,\)"),
        (dict(temperature=-1.0), "temperature=-1.0"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    q_mix, k, queue, _ = data(4, 3, 5, seed=6)
    args = dict(lam=0.5, partner=reversed_partner(4), temperature=0.2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mixed_loss(moco_pair(queue, args.pop("temperature")), q_mix, k, **args)


# ------------------------------------------------------------------ any per-pair loss, BYOL
def byol_mixed_float64(p_mix, z, lam, partner) -> float:
    """The paper's form for BYOL written out per sample in float64 python arithmetic:
    1/n sum_i [lam_i r(p_mix_i, z_i) + (1 - lam_j) r(p_mix_j, z_i)], j = inv[i] the mixed image
    whose filler was image i, with r(p, z) = 2 - 2 cos(p, z)."""
    n = p_mix.shape[0]
    lam = torch.as_tensor(lam, dtype=torch.float64).expand(n)
    inv = inverse_permutation(partner)

    def regression(p, t) -> float:
        p, t = p.double(), t.double()
        return 2.0 - 2.0 * float(p @ t) / (float(p.norm()) * float(t.norm()))

    total = 0.0
    for i in range(n):
        j = int(inv[i])
        total += float(lam[i]) * regression(p_mix[i], z[i])
        total += (1 - float(lam[j])) * regression(p_mix[j], z[i])
    return total / n


def test_mixed_byol_hand_case_n2_d2():
    # z0 = (1, 0), z1 = (0, 2), partner = reversed, lam = (.75, .25).
    # p0 = (1, 0): own cos 1 -> 0; filler z1: cos 0 -> 2.
    # p1 = (1, 1): own z1: cos 1/sqrt2 -> 2 - sqrt2; filler z0: cos 1/sqrt2 -> 2 - sqrt2.
    # loss = (.75 * 0 + .25 * 2 + .25 * (2 - sqrt2) + .75 * (2 - sqrt2)) / 2 = 0.5428932
    p_mix = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    loss = mixed_loss(BYOL_PAIR, p_mix, z, torch.tensor([0.75, 0.25]), reversed_partner(2))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx((0.5 + 2 - math.sqrt(2)) / 2, abs=1e-6)


def test_mixed_byol_matches_float64_per_sample_with_any_permutation():
    partners = [torch.tensor([1, 2, 3, 0, 4, 6, 5, 7])]  # a 4-cycle, a swap, fixed points
    for seed in range(4):
        p_mix, z, _, g = data(8, 6, 1, seed=20 + seed)
        partners.append(random_partner(8, generator=g))
    for seed, partner in enumerate(partners):
        p_mix, z, _, g = data(8, 6, 1, seed=30 + seed)
        lam = torch.rand(8, generator=g)
        got = mixed_loss(BYOL_PAIR, p_mix, z, lam, partner)
        assert got.item() == pytest.approx(byol_mixed_float64(p_mix, z, lam, partner), rel=1e-5)
    # a scalar lambda is the same lambda for every sample
    got = mixed_loss(BYOL_PAIR, p_mix, z, 0.3, partner)
    assert got.item() == pytest.approx(byol_mixed_float64(p_mix, z, 0.3, partner), rel=1e-5)
    # realigning with the partner itself instead of its inverse gives another number
    wrong = byol_mixed_float64(p_mix, z, lam, inverse_permutation(partners[0]))
    got = mixed_loss(BYOL_PAIR, p_mix, z, lam, partners[0])
    assert abs(got.item() - wrong) > 1e-4


def test_mixed_byol_lambda_one_is_byol_and_gradient_reaches_predictions_only():
    p_mix, z, _, g = data(5, 4, 1, seed=7)
    partner = random_partner(5, generator=g)
    one = mixed_loss(BYOL_PAIR, p_mix, z, torch.ones(5), partner)
    assert one.item() == pytest.approx(byol_loss(p_mix, z).item(), rel=1e-6)
    p_mix.requires_grad_(True)
    z.requires_grad_(True)
    mixed_loss(BYOL_PAIR, p_mix, z, 0.5, partner).backward()
    assert p_mix.grad is not None and p_mix.grad.abs().sum() > 0
    assert z.grad is None


def test_mixed_loss_weights_any_per_pair_loss():
    """The generic form with a squared distance as the per-pair loss, against a direct sum."""
    p_mix, z, _, g = data(6, 3, 1, seed=9)
    partner, lam = random_partner(6, generator=g), torch.rand(6, generator=g)

    def squared(pred, target):
        return ((pred - target) ** 2).sum(dim=1)

    expected = sum(
        float(lam[j]) * float(((p_mix[j] - z[j]) ** 2).sum())
        + (1 - float(lam[j])) * float(((p_mix[j] - z[int(partner[j])]) ** 2).sum())
        for j in range(6)
    )
    got = mixed_loss(squared, p_mix, z, lam, partner)
    assert got.item() == pytest.approx(expected / 6, rel=1e-5)


def test_mixed_loss_refuses_a_reduced_pair_loss():
    p_mix, z, _, _ = data(4, 3, 1, seed=10)
    with pytest.raises(ValueError, match=r"pair_loss returned shape \(\): expected .*\(4,\)"):
        mixed_loss(byol_loss, p_mix, z, 0.5, reversed_partner(4))  # mean, not per sample
