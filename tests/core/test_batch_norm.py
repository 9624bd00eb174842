"""Split BatchNorm and the shuffled momentum forward, against per-group BatchNorm and by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from solo_mixmask.core.batch_norm import (
    SplitBatchNorm2d,
    interleaved_forward,
    shuffled_forward,
    split_batch_norms,
    unsplit_batch_norms,
)


def _groups(x: torch.Tensor, s: int) -> list[torch.Tensor]:
    """Group j of a split BatchNorm: images j, j + s, j + 2s, ..."""
    return [x[j::s] for j in range(s)]


@pytest.mark.parametrize("channels_last", [False, True])
def test_split_bn_normalises_each_group_as_its_own_batch_norm(channels_last):
    torch.manual_seed(0)
    s, c = 4, 3
    x = torch.randn(8, c, 5, 5) * torch.tensor([1.0, 3.0, 0.5]).view(1, c, 1, 1) + 2.0
    x[1::4] += 5.0  # group 1 has another mean: one BatchNorm over the batch would not remove it
    split = SplitBatchNorm2d(c, s, momentum=0.1)
    with torch.no_grad():
        split.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        split.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    reference = nn.BatchNorm2d(c, momentum=0.1)
    reference.load_state_dict(split.state_dict())
    inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = split(inp)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    means, variances = [], []
    for j, group in enumerate(_groups(x, s)):
        one = nn.BatchNorm2d(c, momentum=0.1)
        one.load_state_dict(reference.state_dict())
        torch.testing.assert_close(y[j::s], one(group), atol=1e-5, rtol=1e-5)
        means.append(one.running_mean)
        variances.append(one.running_var)
    torch.testing.assert_close(split.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack(variances).mean(0))
    assert int(split.num_batches_tracked) == 1
    # by hand: each group's channel mean is 0 and biased std 1 before the affine map
    normed = (y[1::4] - split.bias.view(1, c, 1, 1)) / split.weight.view(1, c, 1, 1)
    torch.testing.assert_close(normed.mean(dim=(0, 2, 3)), torch.zeros(c), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        normed.var(dim=(0, 2, 3), unbiased=False), torch.ones(c), atol=1e-3, rtol=0
    )


def test_split_bn_gradients_match_per_group_batch_norm():
    torch.manual_seed(1)
    x = torch.randn(6, 2, 3, 3, requires_grad=True)
    split = SplitBatchNorm2d(2, 3)
    split(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    one = nn.BatchNorm2d(2)
    sum(one(g).square().sum() for g in _groups(x2, 3)).backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.weight.grad, one.weight.grad, atol=1e-4, rtol=1e-5)


def test_split_bn_in_eval_mode_and_state_dict_are_batch_norms():
    split = SplitBatchNorm2d(3, 2)
    plain = nn.BatchNorm2d(3)
    assert split.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        split.running_mean.fill_(1.0)
        split.running_var.fill_(4.0)
    plain.load_state_dict(split.state_dict())
    x = torch.randn(3, 3, 2, 2)  # any batch size in eval mode
    torch.testing.assert_close(split.eval()(x), plain.eval()(x))
    # 3 images do not divide into 2 groups (a batch that lost an unreadable image): gcd = 1
    reference = nn.BatchNorm2d(3).train()
    reference.load_state_dict(split.state_dict())
    torch.testing.assert_close(split.train()(x), reference(x))
    with pytest.raises(ValueError, match="expected \\(B, C, H, W\\)"):
        split(torch.randn(4, 3))
    with pytest.raises(ValueError, match="num_splits=0"):
        SplitBatchNorm2d(3, 0)


def test_split_batch_norms_swaps_in_place_sharing_tensors():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    weight = net[1].weight
    keys = net.state_dict().keys()
    assert split_batch_norms(net, 2) == 2
    assert isinstance(net[1], SplitBatchNorm2d) and isinstance(net[2][0], SplitBatchNorm2d)
    assert net[1].weight is weight and net.state_dict().keys() == keys
    assert split_batch_norms(net, 2) == 0  # already split


class _NormThenAct(nn.BatchNorm2d):
    """A BatchNorm2d subclass with more to its forward: BatchNorm, then its own activation."""

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.act = nn.Hardtanh(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class _SplitNormThenAct(SplitBatchNorm2d, _NormThenAct):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def test_a_subclass_is_split_by_the_class_it_is_given_and_keeps_its_modules():
    """Another BatchNorm2d class is never taken for a BatchNorm2d (its own forward would be
    lost): it stays, and is named, unless the caller gives its split class."""
    net = nn.Sequential(nn.BatchNorm2d(3), _NormThenAct(3), nn.Sequential(_NormThenAct(3)))
    assert split_batch_norms(net, 2) == 1
    assert unsplit_batch_norms(net) == ["1 (_NormThenAct)", "2.0 (_NormThenAct)"]
    reference = _NormThenAct(3)
    act = net[1].act
    splits = {nn.BatchNorm2d: SplitBatchNorm2d, _NormThenAct: _SplitNormThenAct}
    assert split_batch_norms(net, 2, splits) == 2 and unsplit_batch_norms(net) == []
    assert net[1].act is act and isinstance(net[2][0], _NormThenAct)
    x = torch.randn(4, 3, 2, 2) * 3
    y = net[1](x)
    for j in range(2):
        torch.testing.assert_close(y[j::2], reference(x[j::2]))
    assert y.abs().max() <= 0.5  # the activation ran after the split normalisation
    reference.load_state_dict(net[1].state_dict())
    torch.testing.assert_close(net[1].eval()(x), reference.eval()(x))
    assert unsplit_batch_norms(nn.Sequential(nn.BatchNorm1d(2))) == ["0 (BatchNorm1d)"]


def test_one_split_is_batch_norm():
    torch.manual_seed(3)
    net = nn.Sequential(nn.BatchNorm2d(3))
    reference = nn.BatchNorm2d(3)
    assert split_batch_norms(net, 1) == 1 and net[0].num_splits == 1
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(net(x), reference(x))
    torch.testing.assert_close(net[0].running_var, reference.running_var)


def _network(num_splits: int, momentum: float | None) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4, momentum=momentum),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2),
        nn.BatchNorm2d(5, momentum=momentum),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    split_batch_norms(net, num_splits)
    return net


@pytest.mark.parametrize(
    "views, num_splits, momentum, channels_last",
    [(2, 1, 0.1, False), (2, 2, 0.1, True), (3, 2, None, False), (3, 4, 0.3, True)],
)
def test_interleaved_forward_is_one_call_per_input(views, num_splits, momentum, channels_last):
    torch.manual_seed(4)
    together, apart = _network(num_splits, momentum), _network(num_splits, momentum)
    apart.load_state_dict(together.state_dict())
    if momentum is None:  # the cumulative average after 5 earlier calls
        for net in (together, apart):
            for bn in (net[1], net[4]):
                bn.num_batches_tracked.fill_(5)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # each input with its own offset: normalising them together would not remove it
    xs = [(torch.randn(8, 3, 6, 6) + 3 * v).contiguous(memory_format=layout) for v in range(views)]
    out = interleaved_forward(together, together, xs)
    ref = [apart(x) for x in xs]
    for y, r in zip(out, ref):
        torch.testing.assert_close(y, r, atol=1e-5, rtol=1e-5)
    sum((y * torch.arange(5.0)).sum() * (v + 1) for v, y in enumerate(out)).backward()
    sum((r * torch.arange(5.0)).sum() * (v + 1) for v, r in enumerate(ref)).backward()
    for (name, p), q in zip(together.named_parameters(), apart.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)
    for (name, b), c in zip(together.named_buffers(), apart.buffers()):
        torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-5, msg=name)
    assert int(together[1].num_batches_tracked) == (5 if momentum is None else 0) + views
    assert together[1].views == 1  # reset after the call


def test_interleaved_forward_refuses_what_it_cannot_keep_apart():
    plain = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    xs = [torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)]
    with pytest.raises(
        ValueError, match=r"BatchNorm layer 1 \(BatchNorm2d\) would normalise the 2 inputs"
    ):
        interleaved_forward(plain, plain, xs)
    split = _network(2, 0.1)
    with pytest.raises(ValueError, match="expected one shape"):
        interleaved_forward(split, split, [xs[0], torch.randn(2, 3, 2, 2)])
    with pytest.raises(ValueError, match="not 2 interleaved inputs"):
        interleaved_forward(lambda x: split(x[:-1]), split, xs)
    assert split[1].views == 1  # reset when the call fails
    # one input: the plain call, whatever the network holds
    torch.testing.assert_close(interleaved_forward(plain, plain, xs[:1])[0], plain(xs[0]))


def test_shuffled_forward_returns_outputs_in_input_order():
    x = torch.arange(8.0).view(8, 1)
    seen = {}

    def forward(batch):
        seen["order"] = batch.flatten().tolist()
        return {"z": batch * 10, "n": torch.tensor(3)}

    out = shuffled_forward(forward, x, torch.Generator().manual_seed(0))
    assert seen["order"] != list(range(8)) and sorted(seen["order"]) == list(range(8))
    torch.testing.assert_close(out["z"], x * 10)
    assert int(out["n"]) == 3


@pytest.mark.parametrize("sizes", [(3, 3), (3, 2)])
def test_shuffled_forward_across_processes_by_hand(sizes):
    """Two processes (the second may hold fewer images, after an unreadable one): each forwards
    as many images of one global permutation as it holds and gets its own images' outputs
    back. The processes' forwards are computed first (as they would run in parallel); the
    gather returns both processes' owner ids, then inputs, then outputs."""
    batches = [torch.arange(sizes[0], dtype=torch.float32).view(-1, 1)]
    batches.append(torch.arange(sizes[0], sum(sizes), dtype=torch.float32).view(-1, 1))
    owners = torch.cat([torch.full((n,), r) for r, n in enumerate(sizes)])
    perm = torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(5))
    starts = (0, sizes[0])
    shares = [torch.cat(batches)[perm[starts[r] : starts[r] + sizes[r]]] for r in (0, 1)]
    outputs = torch.cat([share * 10 + 1 for share in shares])

    for rank in (0, 1):
        gathered = iter([owners, torch.cat(batches), outputs])
        seen = {}

        def forward(share, seen=seen):
            seen["share"] = share
            return {"z": share * 10 + 1}

        out = shuffled_forward(
            forward,
            batches[rank],
            torch.Generator().manual_seed(5),
            gather=lambda t, it=gathered: next(it),
            rank=rank,
            world=2,
        )
        torch.testing.assert_close(seen["share"], shares[rank])
        torch.testing.assert_close(out["z"], batches[rank] * 10 + 1)
    assert set(shares[0].flatten().tolist()) != set(batches[0].flatten().tolist())


def test_split_batch_norm_of_interleaved_inputs_compiles_without_graph_breaks():
    """performance.compile with batch_online_forwards: the split forward of V interleaved
    inputs is one graph (math.gcd and list[float]() each broke it)."""
    import torch._dynamo

    layer = SplitBatchNorm2d(4, 2)
    layer.views = 2
    explained = torch._dynamo.explain(layer.train())(torch.randn(8, 4, 3, 3))
    assert explained.graph_break_count == 0, explained.break_reasons
