"""BatchNorm as MoCo trains it on one device: split statistics and shuffled keys.

With one BatchNorm over the whole device batch, the batch statistics tell the network which
images share a batch, and a contrastive loss whose positives share the batch and whose
negatives (the queue) do not can be lowered through them instead of through the images
(MoCo, "Shuffling BN"). Multi-GPU MoCo avoids it with per-GPU BatchNorm and keys shuffled across
GPUs; on one device the same is had by

- :class:`SplitBatchNorm2d`: training statistics per group of ``B / num_splits`` images,
  running statistics averaged over the groups; in eval mode an ordinary ``BatchNorm2d``. Its parameters and buffers are those of
  ``nn.BatchNorm2d`` (same ``state_dict`` keys and shapes), so checkpoints and exports see an
  ordinary BatchNorm. A subclass of BatchNorm2d whose forward does more (timm's
  ``BatchNormAct2d``: an activation after the BatchNorm) is split only by a split class of its
  own, given to :func:`split_batch_norms`; :func:`unsplit_batch_norms` names what is left;
- :func:`shuffled_forward`: the key images go through the momentum network in a random order
  (across every process's batch under DDP), so that a query and its key fall into different
  groups, and the outputs are put back in the original order.

:func:`interleaved_forward` sends several inputs (the two views, a mixed view) through a network
in one call while each is normalised as in a call of its own: fewer, larger kernels, the same
numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from solo_mixmask.core.mixing import inverse_permutation

__all__ = [
    "SplitBatchNorm2d",
    "UnsplitBatchNormError",
    "interleaved_forward",
    "shuffled_forward",
    "split_batch_norms",
    "unsplit_batch_norms",
]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are taken over ``num_splits`` groups of images.

    Input (B, C, H, W) with B divisible by s = ``num_splits`` (a batch that is not, such as one
    that lost unreadable images, uses gcd(B, s) groups); group j holds the images
    ``j, j + s, j + 2s, ...`` (so that the reshape to (B/s, s*C, H, W) is free for contiguous
    inputs). Each group is normalised with its own mean and biased variance, then scaled by the
    shared ``weight`` and ``bias`` (one ``F.batch_norm`` call over all groups). The running mean
    and unbiased variance move towards the groups' averages with ``momentum``, as one
    ``BatchNorm2d`` call per group followed by averaging would. Eval mode (or
    ``num_splits == 1``) is ``BatchNorm2d``. The output keeps the input's memory format.

    ``views`` (set by :func:`interleaved_forward`, else 1): the batch is V = ``views`` inputs
    interleaved (row ``b * V + v`` is image b of input v); each input gets its own s groups
    (group ``V * j + v`` is input v's group j), and the running statistics move as by V calls,
    one per input in order.

    The forward is BatchNorm2d's normalisation alone, whatever class comes after this one in
    the method resolution order: a split class of a BatchNorm2d subclass (``class
    SplitX(SplitBatchNorm2d, X)``) calls ``super().forward`` and adds what X does after it.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs: Any):
        super().__init__(num_features, **kwargs)
        if not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f"num_splits={num_splits!r} is not allowed: expected an int >= 1")
        self.num_splits = num_splits
        self.views = 1

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d, num_splits: int) -> SplitBatchNorm2d:
        """A split copy of ``bn`` with its settings, sharing (not copying) its tensors and
        submodules (a ``BatchNormAct2d``'s activation)."""
        split = cls(
            bn.num_features,
            num_splits,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
        )
        for name, tensor in [*bn.named_parameters(recurse=False), *bn.named_buffers(recurse=False)]:
            setattr(split, name, tensor)
        for name, child in bn.named_children():
            setattr(split, name, child)
        split.train(bn.training)
        return split

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = self.views
        if not self.training or self.num_splits * views == 1:
            return nn.BatchNorm2d.forward(self, x)
        if x.dim() != 4:
            raise ValueError(f"input shape {tuple(x.shape)} is not allowed: expected (B, C, H, W)")
        n, c = x.shape[0], x.shape[1]
        if n % views:
            raise ValueError(f"a batch of {n} images is not {views} interleaved inputs")
        # a batch that lost unreadable images may not divide: gcd(B, num_splits) groups then
        s = views * _gcd(n // views, self.num_splits)
        if s == 1:
            return nn.BatchNorm2d.forward(self, x)
        running_mean, running_var = self.running_mean, self.running_var
        mean = var = None
        factors = [0.0]  # of each input's update of the running statistics
        if self.track_running_stats and running_mean is not None and running_var is not None:
            assert self.num_batches_tracked is not None
            if self.momentum is None:  # cumulative moving average, as BatchNorm2d
                calls = float(self.num_batches_tracked)
                factors = [1.0 / (calls + v + 1) for v in range(views)]
            else:
                factors = [float(self.momentum)] * views
            self.num_batches_tracked.add_(views)
            mean, var = running_mean.repeat(s), running_var.repeat(s)
        y = F.batch_norm(
            x.reshape(n // s, s * c, *x.shape[2:]),
            mean,
            var,
            self.weight.repeat(s) if self.affine else None,
            self.bias.repeat(s) if self.affine else None,
            True,
            factors[0],
            self.eps,
        ).reshape(x.shape)
        if running_mean is not None and running_var is not None and mean is not None:
            assert var is not None
            with torch.no_grad():
                if views == 1:  # the groups' average, written in place (one op each)
                    torch.mean(mean.view(s, c), dim=0, out=running_mean)
                    torch.mean(var.view(s, c), dim=0, out=running_var)
                else:
                    start_weight, weights = _in_order_weights(factors)
                    for running, moved in ((running_mean, mean), (running_var, var)):
                        # (views, C): each input's groups averaged, (1 - f0) r + f0 * its stat
                        per_input = moved.view(s // views, views, c).mean(dim=0)
                        running.mul_(start_weight)
                        for updated, weight in zip(per_input, weights):
                            running.add_(updated, alpha=weight)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last)
        return y


def _gcd(a: int, b: int) -> int:
    """The greatest common divisor of ``a`` and ``b``, written out (Euclid) so that
    ``torch.compile`` traces it: ``math.gcd`` breaks its graph."""
    while b:
        a, b = b, a % b
    return a


def _in_order_weights(factors: list[float]) -> tuple[float, list[float]]:
    """``(a, [w_v])`` such that ``a * r + sum_v w_v * u_v`` is a running statistic r after one
    update per input in order (input v moves it by ``factors[v]`` towards its statistic x_v),
    where ``u_v = (1 - f0) * r + f0 * x_v`` is input v's update alone with the first factor."""
    first = factors[0]
    start = 1.0
    weights: list[float] = []
    for f in factors:  # r <- (1 - f) r + (f / f0) (u_v - (1 - f0) r), in closed form
        scale = f / first if f != first else 1.0  # (f0 > 0 whenever the factors differ)
        start = (1 - f) * start - scale * (1 - first)
        weights = [(1 - f) * w for w in weights] + [scale]
    return start, weights


#: The split class of each BatchNorm class that :func:`split_batch_norms` replaces by default.
SPLIT_CLASSES: Mapping[type[nn.BatchNorm2d], type[SplitBatchNorm2d]] = {
    nn.BatchNorm2d: SplitBatchNorm2d
}


def split_batch_norms(
    module: nn.Module,
    num_splits: int,
    split_classes: Mapping[type[nn.BatchNorm2d], type[SplitBatchNorm2d]] = SPLIT_CLASSES,
) -> int:
    """Replace every layer inside ``module`` whose class (exactly) is a key of
    ``split_classes`` by its split class, built by ``from_batch_norm`` (sharing its tensors, so
    an optimiser or EMA built before still sees them); returns how many were replaced. Other
    BatchNorm layers stay: see :func:`unsplit_batch_norms`. With ``num_splits == 1`` the
    layers compute what the replaced ones do, and can take one group per input in
    :func:`interleaved_forward`."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.BatchNorm2d):
                continue
            split_class = split_classes.get(type(child))
            if split_class is not None:
                setattr(parent, name, split_class.from_batch_norm(child, num_splits))
                replaced += 1
    return replaced


def unsplit_batch_norms(module: nn.Module) -> list[str]:
    """``"name (class)"`` of each BatchNorm layer inside ``module`` that is not a
    :class:`SplitBatchNorm2d`: it normalises the whole batch in training mode."""
    return [
        f"{name} ({type(m).__name__})"
        for name, m in module.named_modules()
        if isinstance(m, _BatchNorm) and not isinstance(m, SplitBatchNorm2d)
    ]


class UnsplitBatchNormError(ValueError):
    """:func:`interleaved_forward`'s network holds a BatchNorm layer that is not a
    :class:`SplitBatchNorm2d`: it would normalise the inputs of the one call together."""


def interleaved_forward(
    forward: Callable[[torch.Tensor], torch.Tensor], network: nn.Module, xs: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``[forward(x) for x in xs]`` from one call of ``forward`` on the inputs interleaved.

    ``xs``: V tensors of one shape (B, ...); ``forward`` runs ``network`` on (N, ...) and returns
    (N, ...). The call sees (V*B, ...) whose row ``b * V + v`` is ``xs[v][b]``; meanwhile every
    :class:`SplitBatchNorm2d` of ``network`` takes its groups per input (``views = V``), so each
    input is normalised with the statistics of its own call and the running statistics move as
    by V calls in order. Returns V tensors (B, ...): strided views of the one output. Raises
    ValueError when the shapes differ, :class:`UnsplitBatchNormError` when ``network`` holds
    another BatchNorm (which would normalise the inputs together).
    """
    if len({tuple(x.shape) for x in xs}) != 1:
        shapes = [tuple(x.shape) for x in xs]
        raise ValueError(f"input shapes {shapes} are not allowed: expected one shape")
    views = len(xs)
    if views == 1:
        return [forward(xs[0])]
    mixing = unsplit_batch_norms(network)
    if mixing:
        raise UnsplitBatchNormError(
            f"the network's BatchNorm layer {mixing[0]} would normalise the {views} inputs "
            "together: interleaved_forward needs its BatchNorm layers to be SplitBatchNorm2d"
        )
    splits = [m for m in network.modules() if isinstance(m, SplitBatchNorm2d)]
    for norm in splits:
        norm.views = views
    try:
        y = forward(torch.stack(list(xs), dim=1).flatten(0, 1))
    finally:
        for norm in splits:
            norm.views = 1
    return list(y.unflatten(0, (-1, views)).unbind(1))


def shuffled_forward(
    forward: Callable[[torch.Tensor], dict[str, Any]],
    x: torch.Tensor,
    generator: torch.Generator,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """``forward`` of the images x (B, ...) taken in a random order, outputs in x's order.

    Every tensor of ``forward``'s dict whose first dimension is the batch is un-shuffled;
    other values pass through. Single process (``world == 1``): x is permuted with
    ``generator``. Under DDP: ``gather(t)`` concatenates every process's t along dim 0 in rank
    order (the processes may hold different B); ``generator`` must draw the same permutation on
    every process; each process forwards as many images of the shuffled global batch as it
    holds, and gets its own images' outputs back.
    """
    n = x.shape[0]
    if world == 1:
        perm = torch.randperm(n, device=x.device, generator=generator)
        inverse = inverse_permutation(perm)
        out = forward(x[perm])
        return {k: v[inverse] if _batched(v, n) else v for k, v in out.items()}
    if gather is None:
        raise ValueError(f"world={world} needs a gather function")
    owners = gather(torch.full((n,), rank, device=x.device, dtype=torch.long))
    start = int((owners < rank).sum())  # where this process's images sit in the global batch
    perm = torch.randperm(owners.numel(), device=x.device, generator=generator)
    mine = slice(start, start + n)
    out = forward(gather(x)[perm[mine]])
    inverse = inverse_permutation(perm)
    return {k: gather(v)[inverse[mine]] if _batched(v, n) else v for k, v in out.items()}


def _batched(value: Any, n: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n
