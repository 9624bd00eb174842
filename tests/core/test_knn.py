"""Weighted k-NN votes (solo_mixmask.core.knn) by hand."""

from __future__ import annotations

import math

import torch

from solo_mixmask.core.knn import topk_accuracy, weighted_knn_scores


def test_weighted_votes_by_hand():
    # three training points on the unit circle; one query at angle 0
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])  # cosine similarity ignores the norm
    scores = weighted_knn_scores(train, labels, query, 2, ks=(1, 2, 3), temperature=0.5)
    e = math.exp
    top = e(1 / 0.5)  # the weight of the most similar neighbour: each row is divided by it
    assert torch.allclose(scores[1], torch.tensor([[e(1 / 0.5), 0.0]]) / top)
    assert torch.allclose(scores[2], torch.tensor([[e(2.0), e(0.0)]]) / top)  # sims 1 and 0
    assert torch.allclose(scores[3], torch.tensor([[e(2.0), e(0.0) + e(-2.0)]]) / top)
    assert topk_accuracy(scores[3], torch.tensor([1]), (1, 2)) == [0.0, 100.0]


def test_small_temperatures_do_not_overflow_into_wrong_answers():
    # exp(1 / 0.005) overflows float32: the votes were inf, then 0 * inf = NaN, and every
    # prediction came out as class 0. Two tight clusters must still be told apart.
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    train = centres.repeat_interleave(20, 0) + 0.01 * torch.randn(40, 3, generator=gen)
    labels = torch.arange(2).repeat_interleave(20)
    scores = weighted_knn_scores(train, labels, train, 2, ks=(10,), temperature=0.005)
    assert torch.isfinite(scores[10]).all()
    assert topk_accuracy(scores[10], labels, (1,)) == [100.0]
