import pytest
import torch
import torch.nn.functional as F

from solo_mixmask.core import (
    block_masks,
    discrete_masks,
    mask_lambdas,
    upsample_masks,
)
from solo_mixmask.core.masks import BLOCK_PROPOSALS, MaskBank
from solo_mixmask.errors import ConfigWarning


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample_masks(n, grid_size, ratio, size, *, mask_type="block", per_sample=False, **kwargs):
    """Pixel masks from a bank that holds just what one call takes."""
    bank = MaskBank(grid_size, ratio, mask_type, capacity=n if per_sample else 1)
    return bank.sample(n, size, per_sample=per_sample, **kwargs)


@pytest.mark.parametrize("draw", [block_masks, discrete_masks])
def test_cell_masks_shape_dtype_device(draw):
    cells = draw(5, 4, 0.5, generator=gen())
    assert cells.shape == (5, 4, 4)
    assert cells.dtype == torch.bool
    assert cells.device == torch.device("cpu")


def test_block_masks_never_exceed_target():
    for g in range(1, 9):
        for ratio in (0.1, 0.25, 0.5, 0.6, 0.9):
            cells = block_masks(64, g, ratio, generator=gen(g))
            counts = cells.sum(dim=(1, 2))
            assert int(counts.max()) <= round(ratio * g * g), (g, ratio)


@pytest.mark.parametrize("grid_size", [4, 8])
def test_block_mean_fraction_close_to_ratio(grid_size):
    # Documented figure: with BLOCK_PROPOSALS proposals the mean for G=8, ratio 0.5 is ~0.4998.
    cells = block_masks(1024, grid_size, 0.5, generator=gen(1))
    assert abs(cells.float().mean().item() - 0.5) < 0.05
    exact = (cells.sum(dim=(1, 2)) == grid_size**2 // 2).float().mean().item()
    assert exact > 0.9, (BLOCK_PROPOSALS, exact)


def test_block_masks_are_not_all_the_same_pattern():
    cells = block_masks(64, 8, 0.5, generator=gen(2))
    assert len({tuple(c.flatten().tolist()) for c in cells}) > 50


def test_block_single_cell_grid():
    assert block_masks(3, 1, 0.7, generator=gen()).all()  # target round(0.7) = 1
    assert not block_masks(3, 1, 0.3, generator=gen()).any()  # target 0


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_discrete_mean_fraction_close_to_ratio(ratio):
    cells = discrete_masks(1024, 8, ratio, generator=gen(3))
    assert abs(cells.float().mean().item() - ratio) < 0.05


@pytest.mark.parametrize("ratio", [0.01, 0.5, 0.99])
def test_discrete_masks_never_all_on_or_off(ratio):
    cells = discrete_masks(512, 2, ratio, generator=gen(4))
    counts = cells.sum(dim=(1, 2))
    assert bool(((counts > 0) & (counts < 4)).all())


def test_discrete_requires_grid_of_two():
    with pytest.raises(ValueError, match="grid_size=1"):
        discrete_masks(2, 1, 0.5, generator=gen())


@pytest.mark.parametrize("draw", [block_masks, discrete_masks])
def test_same_seed_same_masks_other_seed_other_masks(draw):
    a = draw(16, 8, 0.5, generator=gen(7))
    b = draw(16, 8, 0.5, generator=gen(7))
    c = draw(16, 8, 0.5, generator=gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_upsample_divisible_hand_case():
    cells = torch.tensor([[[True, False], [False, True]]])
    up = upsample_masks(cells, (4, 4))
    expected = torch.tensor(
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32
    )
    assert up.shape == (1, 1, 4, 4) and up.dtype == torch.float32
    assert torch.equal(up[0, 0], expected)


def test_upsample_non_divisible_hand_case():
    # 3 cells over 4 pixels: floor(y * 3 / 4) = 0, 0, 1, 2.
    cells = torch.tensor([[[True, False, True], [False, False, False], [True, True, False]]])
    up = upsample_masks(cells, (4, 4))
    expected = torch.tensor(
        [[1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float32
    )
    assert torch.equal(up[0, 0], expected)


@pytest.mark.parametrize("crop", [28, 32])
@pytest.mark.parametrize("mask_type", ["block", "discrete"])
def test_every_grid_size_reproduces_cell_pattern(crop, mask_type):
    for g in range(1 if mask_type == "block" else 2, 9):
        cells = (block_masks if mask_type == "block" else discrete_masks)(
            3, g, 0.5, generator=gen(g)
        )
        up = upsample_masks(cells, (crop, crop))
        cell_of = torch.tensor([y * g // crop for y in range(crop)])
        expected = cells[:, cell_of][:, :, cell_of].float()
        assert torch.equal(up[:, 0], expected), g
        ref = F.interpolate(cells[:, None].float(), size=(crop, crop), mode="nearest")
        assert torch.equal(up, ref), g
        # Every cell shows up on the pixel grid.
        assert torch.equal(torch.unique(cell_of), torch.arange(g))


def test_upsample_rectangular_size():
    cells = block_masks(2, 7, 0.5, generator=gen())
    up = upsample_masks(cells, (32, 20))
    rows = torch.arange(32) * 7 // 32
    cols = torch.arange(20) * 7 // 20
    assert torch.equal(up[:, 0], cells[:, rows][:, :, cols].float())


def test_sample_masks_per_batch_shared_per_sample_differ():
    shared = sample_masks(8, 8, 0.5, (32, 32), generator=gen(5))
    assert shared.shape == (8, 1, 32, 32)
    assert all(torch.equal(shared[0], m) for m in shared)
    own = sample_masks(8, 8, 0.5, (32, 32), per_sample=True, generator=gen(5))
    assert len({tuple(m.flatten().tolist()) for m in own}) > 1


def test_sample_masks_values_dtype_and_lambda():
    masks = sample_masks(
        4,
        7,
        0.5,
        (32, 32),
        mask_type="discrete",
        per_sample=True,
        generator=gen(6),
        dtype=torch.bfloat16,
    )
    assert masks.dtype == torch.bfloat16
    assert set(torch.unique(masks.float()).tolist()) <= {0.0, 1.0}
    lam = mask_lambdas(masks)
    assert lam.dtype == torch.float32 and lam.shape == (4,)
    assert torch.allclose(lam, (masks == 1).float().mean(dim=(1, 2, 3)))


def test_sample_masks_deterministic():
    a = sample_masks(4, 4, 0.5, (28, 28), per_sample=True, generator=gen(9))
    b = sample_masks(4, 4, 0.5, (28, 28), per_sample=True, generator=gen(9))
    assert torch.equal(a, b)


def test_mask_lambdas_hand_case():
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 0.0]]]])
    assert torch.equal(mask_lambdas(masks), torch.tensor([0.25, 0.75]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratio=0.0), "ratio=0.0"),
        (dict(ratio=1.0), "ratio=1.0"),
        (dict(grid_size=0), "grid_size=0"),
        (dict(grid_size=33), "grid_size=33"),
        (dict(n=0), "n=0"),
        (dict(mask_type="blocks"), "mask_type='blocks'.*'block', 'discrete'"),
    ],
)
def test_sample_masks_rejects_bad_arguments(kwargs, match):
    args = dict(n=2, grid_size=4, ratio=0.5, size=(32, 32), generator=gen())
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sample_masks(**args)


def test_block_masks_rejects_bad_shape_arguments():
    with pytest.raises(ValueError, match="min_aspect=0.0"):
        block_masks(2, 4, 0.5, generator=gen(), min_aspect=0.0)
    with pytest.raises(ValueError, match="min_cells=0"):
        block_masks(2, 4, 0.5, generator=gen(), min_cells=0)


def test_mask_bank_hands_out_one_bulk_draw_in_order():
    bank = MaskBank(4, 0.5, "block", capacity=10)
    g = gen(11)
    taken = [bank.take(3, generator=g) for _ in range(3)]  # 9 of the first 10 masks
    assert torch.equal(torch.cat(taken), block_masks(10, 4, 0.5, generator=gen(11))[:9])
    # one mask left < 3 asked: it is dropped and the next bulk draw of the same stream used
    g_ref = gen(11)
    block_masks(10, 4, 0.5, generator=g_ref)
    assert torch.equal(bank.take(3, generator=g), block_masks(10, 4, 0.5, generator=g_ref)[:3])


def test_mask_bank_draws_at_least_what_is_asked():
    bank = MaskBank(4, 0.5, "discrete", capacity=2)
    cells = bank.take(5, generator=gen(1))
    assert cells.shape == (5, 4, 4)
    assert torch.equal(cells, discrete_masks(5, 4, 0.5, generator=gen(1)))


def test_mask_bank_sample_per_batch_and_per_sample():
    bank = MaskBank(8, 0.5)
    assert bank.capacity == 4096
    shared = bank.sample(6, (32, 32), per_sample=False, generator=gen(3), dtype=torch.bfloat16)
    assert shared.shape == (6, 1, 32, 32) and shared.dtype == torch.bfloat16
    assert all(torch.equal(shared[0], m) for m in shared)
    own = bank.sample(6, (32, 32), per_sample=True, generator=gen(3))
    assert len({tuple(m.flatten().tolist()) for m in own}) > 1
    assert MaskBank(224, 0.5).capacity == (4 << 20) // 224**2  # 4 MiB of cells at most


def test_mask_bank_state_round_trip_continues_the_sequence():
    g = gen(4)
    bank = MaskBank(4, 0.5, capacity=8)
    bank.take(5, generator=g)
    state, g_state = bank.state_dict(), g.get_state()
    assert state["cells"].shape == (3, 4, 4)
    expected = [bank.take(2, generator=g), bank.take(2, generator=g)]  # the 2nd one refills
    other, g2 = MaskBank(4, 0.5, capacity=8), gen(0)
    other.load_state_dict(state)
    g2.set_state(g_state)
    assert all(torch.equal(e, other.take(2, generator=g2)) for e in expected)


def test_mask_bank_state_drawn_with_other_settings_is_dropped():
    """A resume with another mask_ratio must not hand out the old ratio's leftover masks."""
    old = MaskBank(8, 0.5, "block")
    old.take(6, generator=gen(5))
    state = old.state_dict()
    assert state["ratio"] == 0.5 and state["grid_size"] == 8 and state["mask_type"] == "block"
    bank = MaskBank(8, 0.3, "block")
    with pytest.warns(ConfigWarning, match=r"drawn with ratio=0\.5.*drawn with ratio=0\.3"):
        bank.load_state_dict(state)
    lambdas = mask_lambdas(bank.sample(512, (32, 32), per_sample=True, generator=gen(6)))
    assert lambdas.mean().item() == pytest.approx(0.3, abs=0.02)
    # another grid or mask type: dropped too, with a warning instead of a ValueError
    for other in (MaskBank(4, 0.5, "block"), MaskBank(8, 0.5, "discrete")):
        with pytest.warns(ConfigWarning, match="dropped"):
            other.load_state_dict(state)
        assert other.take(3, generator=gen(7)).shape == (3, other.grid_size, other.grid_size)


def test_mask_bank_state_without_settings_is_kept_when_its_grid_fits():
    """States written before the settings were saved: same grid kept (as resumed runs did),
    another grid dropped with a warning."""
    cells = block_masks(5, 4, 0.5, generator=gen(8))
    bank = MaskBank(4, 0.5)
    bank.load_state_dict({"cells": cells})
    assert torch.equal(bank.take(5, generator=gen(9)), cells)
    with pytest.warns(ConfigWarning, match=r"grid_size=4.*grid_size=8"):
        MaskBank(8, 0.5).load_state_dict({"cells": cells})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(grid_size=0), "grid_size=0"),
        (dict(ratio=1.5), "ratio=1.5"),
        (dict(mask_type="blob"), "mask_type='blob'"),
        (dict(capacity=0), "capacity=0"),
    ],
)
def test_mask_bank_rejects_bad_arguments(kwargs, match):
    args = dict(grid_size=4, ratio=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MaskBank(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_on_cuda_without_host_sync():
    g = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        b = sample_masks(256, 8, 0.5, (224, 224), per_sample=True, generator=g)
        d = sample_masks(256, 8, 0.5, (224, 224), mask_type="discrete", generator=g)
        lam = mask_lambdas(b)
        bank = MaskBank(8, 0.5, capacity=300)
        banked = [bank.sample(256, (224, 224), per_sample=True, generator=g) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert b.is_cuda and d.is_cuda and all(m.is_cuda for m in banked)
    assert abs(lam.mean().item() - 0.5) < 0.05
