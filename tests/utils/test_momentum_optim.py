"""EMA as one foreach lerp (solo_mixmask.utils.momentum) and performance.optimizer_impl
(solo_mixmask.utils.optim) against the former paths."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from solo_mixmask.errors import ConfigError
from solo_mixmask.methods import METHODS
from solo_mixmask.utils.momentum import ema_update_pairs
from solo_mixmask.utils.optim import optimizer_impl_kwargs
from tests.conftest import synthetic_batch, tiny_cfg


def _old_ema(online: nn.Module, momentum: nn.Module, tau: float) -> None:
    # the formula before the foreach lerp, written out parameter by parameter
    with torch.no_grad():
        for o, m in zip(online.parameters(), momentum.parameters()):
            m.copy_(tau * m + (1 - tau) * o)


def _pairs(seed: int) -> list[tuple[nn.Module, nn.Module]]:
    torch.manual_seed(seed)
    pairs = []
    for width in (7, 3):
        online = nn.Sequential(nn.Linear(5, width), nn.BatchNorm1d(width), nn.Linear(width, 2))
        momentum = copy.deepcopy(online)
        for p in momentum.parameters():
            p.data.normal_()
        pairs.append((online, momentum))
    return pairs


@pytest.mark.parametrize("foreach_lerp", [True, False])
@pytest.mark.parametrize("tau", [0.0, 0.99, 0.996, 1.0])
def test_ema_of_all_pairs_equals_the_old_formula(tau, foreach_lerp):
    new, old = _pairs(0), _pairs(0)
    for _ in range(3):
        ema_update_pairs(new, tau, foreach_lerp=foreach_lerp)
        for online, momentum in old:
            _old_ema(online, momentum, tau)
    for (_, m_new), (o_old, m_old) in zip(new, old):
        for a, b in zip(m_new.parameters(), m_old.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        if tau == 0.0:
            for a, b in zip(m_new.parameters(), o_old.parameters()):
                torch.testing.assert_close(a, b)


def test_ema_foreach_lerp_moves_every_pair_and_no_buffer():
    pairs = _pairs(1)
    before = [copy.deepcopy(m) for _, m in pairs]
    ema_update_pairs(pairs, 0.5)
    for (online, momentum), old in zip(pairs, before):
        for p, q, o in zip(momentum.parameters(), old.parameters(), online.parameters()):
            torch.testing.assert_close(p, (q + o) / 2)
        for b, c in zip(momentum.buffers(), old.buffers()):
            assert torch.equal(b, c)


@pytest.mark.parametrize(
    ("impl", "name", "expected"),
    [
        ("auto", "sgd", {"foreach": True}),
        ("auto", "adamw", {"foreach": True}),
        ("auto", "lars", {"foreach": True}),
        ("default", "sgd", {}),
        ("default", "lars", {}),
        ("for_loop", "sgd", {"foreach": False}),
        ("for_loop", "lars", {"foreach": False}),  # timm's default would be foreach
        ("foreach", "adamw", {"foreach": True}),
        ("fused", "sgd", {"fused": True}),
    ],
)
def test_optimizer_impl_arguments(impl, name, expected):
    assert optimizer_impl_kwargs(impl, name) == expected


@pytest.mark.parametrize(("impl", "name"), [("fused", "lars"), ("fast", "sgd")])
def test_optimizer_impl_refused_where_it_does_not_exist(impl, name):
    with pytest.raises(ConfigError) as info:
        optimizer_impl_kwargs(impl, name)
    message = str(info.value)
    assert "performance.optimizer_impl" in message and impl in message and "\n" not in message


def test_lars_on_a_timm_without_its_foreach_option(monkeypatch):
    """timm < 1.0.31's Lars has no foreach argument: auto passes none, explicit loop/foreach are
    refused with the reason (they crashed in configure_optimizers with a TypeError)."""
    from solo_mixmask.utils import optim

    assert optim.lars_takes_foreach()  # the timm this project installs
    monkeypatch.setattr(optim, "lars_takes_foreach", lambda: False)
    assert optimizer_impl_kwargs("auto", "lars") == {}
    assert optimizer_impl_kwargs("auto", "sgd") == {"foreach": True}
    for impl in ("for_loop", "foreach"):
        with pytest.raises(ConfigError, match="Lars has no foreach option"):
            optimizer_impl_kwargs(impl, "lars")


@pytest.mark.parametrize("impl", ["foreach", "for_loop", "fused"])
def test_engine_optimizer_impl_gives_the_same_step(impl):
    # one SGD step of a method built from the config: foreach / fused against the for-loop
    def stepped(impl_name: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = METHODS["mocov2plus"](tiny_cfg("mocov2plus", performance__optimizer_impl=impl_name))
        opt = model.build_optimizer()
        if impl_name != "for_loop":
            group = opt.param_groups[0]
            assert group.get("foreach" if impl_name == "foreach" else "fused") is True
        out = model.training_step(synthetic_batch(), 0)
        (out if isinstance(out, torch.Tensor) else out["loss"]).backward()
        opt.step()
        return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}

    reference, other = stepped("for_loop"), stepped(impl)
    for key in reference:
        torch.testing.assert_close(other[key], reference[key], rtol=1e-5, atol=1e-6)
