"""LARS with solo-learn's argument names (eta, clip_lr, exclude_bias_n_norm): one step of the
engine's optimiser against the rule written out by hand."""

from __future__ import annotations

import pytest
import torch

from solo_mixmask.methods import METHODS
from tests.conftest import synthetic_batch, tiny_cfg

LR, WD, ETA = 1.0, 1e-5, 0.02
SCALE = 8 / 256  # batch 8


def one_step(weight_decay: float = WD, **kwargs):
    """(parameters before, gradients, parameters after, optimiser) of one BYOL step."""
    torch.manual_seed(0)
    cfg = tiny_cfg(
        "byol",
        optimizer__name="lars",
        optimizer__lr=LR,
        optimizer__weight_decay=weight_decay,
        optimizer__kwargs={"momentum": 0.9, **kwargs},
    )
    model = METHODS["byol"](cfg)
    opt = model.build_optimizer()
    out = model.training_step(synthetic_batch(), 0)
    (out if isinstance(out, torch.Tensor) else out["loss"]).backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    return before, grads, after, opt


def expected_update(
    w: torch.Tensor, g: torch.Tensor, lr: float, adapt: bool, wd: float = WD
) -> torch.Tensor:
    """The first LARS step (momentum buffer = the step itself): w - lr * d, with
    d = (g + wd w) * min(eta |w| / (|g| + wd |w|) / lr, 1) when adapted, else d = g."""
    if not adapt:
        return w - lr * g
    ratio = ETA * w.norm() / (g.norm() + wd * w.norm() + 1e-8)
    return w - lr * (g + wd * w) * torch.clamp(ratio / lr, max=1.0)


def test_solo_learn_names_run_solo_learns_rule():
    before, grads, after, opt = one_step(eta=ETA, clip_lr=True, exclude_bias_n_norm=True)
    group = opt.param_groups[0]
    assert (group["trust_coeff"], group["trust_clip"]) == (ETA, True)
    lr = LR * SCALE
    checked = {1: 0, 2: 0}
    for name in ("backbone.conv1.weight", "backbone.bn1.weight", "projector.0.bias"):
        w, g = before[name], grads[name]
        expected = expected_update(w, g, lr, adapt=w.ndim > 1)
        torch.testing.assert_close(after[name], expected, rtol=1e-5, atol=1e-7)
        checked[min(w.ndim, 2)] += 1
    assert checked == {1: 2, 2: 1}
    flat = [g for g in opt.param_groups if g["name"].endswith("_bias_n_norm")]
    assert flat and all(g["weight_decay"] == 0.0 for g in flat)
    assert all(p.ndim == 1 for g in flat for p in g["params"])
    assert all(p.ndim > 1 for g in opt.param_groups if g not in flat for p in g["params"])


def test_without_exclusion_biases_are_adapted_and_decayed():
    before, grads, after, _ = one_step(eta=ETA, clip_lr=True)
    w, g = before["backbone.bn1.weight"], grads["backbone.bn1.weight"]
    expected = expected_update(w, g, LR * SCALE, adapt=True)
    torch.testing.assert_close(after["backbone.bn1.weight"], expected, rtol=1e-5, atol=1e-7)


def test_groups_without_weight_decay_are_adapted_as_in_solo_learn():
    """solo-learn's LARS adapts every tensor it does not exclude, weight decay or not: with
    ``optimizer.weight_decay: 0`` and for the online classifier (weight decay 0 in every
    config). timm's Lars alone would take plain SGD steps there."""
    before, grads, after, opt = one_step(
        weight_decay=0.0, eta=ETA, clip_lr=True, exclude_bias_n_norm=True
    )
    for name in ("backbone.conv1.weight", "classifier.weight", "backbone.bn1.weight"):
        w, g = before[name], grads[name]
        prefix = name.split(".")[0]
        lr = next(g["lr"] for g in opt.param_groups if g["name"] == prefix)
        expected = expected_update(w, g, lr, adapt=w.ndim > 1, wd=0.0)
        torch.testing.assert_close(after[name], expected, rtol=1e-5, atol=1e-7)
    # conv1's ratio is below the clip: not the plain SGD step timm's rule alone takes
    w, g = before["backbone.conv1.weight"], grads["backbone.conv1.weight"]
    assert not torch.allclose(after["backbone.conv1.weight"], w - LR * SCALE * g)
    flat = [g for g in opt.param_groups if g["name"].endswith("_bias_n_norm")]
    assert all(g["always_adapt"] is (g not in flat) for g in opt.param_groups)


def test_always_adapt_false_keeps_timms_rule():
    before, grads, after, _ = one_step(weight_decay=0.0, eta=ETA, always_adapt=False)
    w, g = before["backbone.conv1.weight"], grads["backbone.conv1.weight"]
    expected = expected_update(w, g, LR * SCALE, adapt=False)
    torch.testing.assert_close(after["backbone.conv1.weight"], expected, rtol=1e-5, atol=1e-7)


def test_timm_names_give_the_same_step():
    _, _, solo, _ = one_step(eta=ETA, clip_lr=True)
    _, _, timm, _ = one_step(trust_coeff=ETA, trust_clip=True)
    for name in solo:
        assert torch.equal(solo[name], timm[name]), name


@pytest.mark.parametrize("impl", ["for_loop", "foreach"])
def test_lars_loop_and_foreach_agree(impl):
    def stepped(name):
        torch.manual_seed(0)
        cfg = tiny_cfg("byol", optimizer__name="lars", performance__optimizer_impl=name)
        model = METHODS["byol"](cfg)
        opt = model.build_optimizer()
        assert opt.param_groups[0]["foreach"] is (name == "foreach")
        out = model.training_step(synthetic_batch(), 0)
        (out if isinstance(out, torch.Tensor) else out["loss"]).backward()
        opt.step()
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    reference, other = stepped("for_loop"), stepped(impl)
    for key, value in reference.items():
        torch.testing.assert_close(other[key], value, rtol=1e-5, atol=1e-6)
