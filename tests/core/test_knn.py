"""Weighted k-NN votes (solo_mixmask.core.knn) by hand."""

from __future__ import annotations

import math

import pytest
import torch

from solo_mixmask.core.knn import knn_matmul_dtype, topk_accuracy, weighted_knn_scores


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


def test_classes_without_votes_are_never_top_k_hits():
    # k = 1: one class gets the vote; the other 9 tie at 0. Whatever the true class's index,
    # a query whose class got no vote is a miss at top-5 too (topk's order of the tied zeros
    # used to count it as a hit for some indices and not for others)
    scores = torch.zeros(10, 10)
    scores[:, 9] = 1.0  # every query's one neighbour is of class 9
    targets = torch.arange(10)
    assert topk_accuracy(scores, targets, (1, 5)) == pytest.approx([10.0, 10.0])
    # with votes for 2 classes, both count at top-5 and nothing else does
    scores[:, 3] = 0.5
    assert topk_accuracy(scores, targets, (1, 2, 5)) == pytest.approx([10.0, 20.0, 20.0])


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


def test_a_vote_too_weak_for_float32_still_counts():
    # at T 0.005 the third neighbour's vote exp((0 - 1) / 0.005) = exp(-200) rounded to 0, and
    # its class, which had a vote, counted as a top-3 miss
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # similarities 1, 0.8, 0
    scores = weighted_knn_scores(train, torch.arange(3), train[:1], 4, ks=(3,), temperature=0.005)
    assert (scores[3][0, :3] > 0).all() and scores[3][0, 3] == 0  # class 3 had no neighbour
    assert topk_accuracy(scores[3], torch.tensor([2]), (1, 3)) == [0.0, 100.0]
    assert topk_accuracy(scores[3], torch.tensor([3]), (1, 3)) == [0.0, 0.0]


def test_bfloat16_similarities_pick_the_same_neighbours_on_a_clear_case():
    # 5 well-separated classes in 64 dimensions: the bf16 product chooses the neighbours, their
    # vote weights are recomputed in float32, so the scores match the float32 path closely
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 64, generator=gen)
    train = centres.repeat_interleave(40, 0) + 0.3 * torch.randn(200, 64, generator=gen)
    labels = torch.arange(5).repeat_interleave(40)
    test = centres.repeat_interleave(6, 0) + 0.3 * torch.randn(30, 64, generator=gen)
    exact = weighted_knn_scores(train, labels, test, 5, ks=(1, 20), temperature=0.1)
    low = weighted_knn_scores(
        train, labels, test, 5, ks=(1, 20), temperature=0.1, matmul_dtype=torch.bfloat16
    )
    assert low[1].dtype == torch.float32
    torch.testing.assert_close(low[1], exact[1], rtol=1e-5, atol=1e-6)
    # at k=20 a near-tie at rank 20 may swap the last neighbour: small weights, same votes
    torch.testing.assert_close(low[20], exact[20], rtol=1e-2, atol=1e-3)
    target = torch.arange(5).repeat_interleave(6)
    assert topk_accuracy(low[20], target, (1,)) == topk_accuracy(exact[20], target, (1,))


def test_knn_dtype_auto_is_bfloat16_only_on_cuda():
    assert knn_matmul_dtype("auto", "cpu") == torch.float32
    assert knn_matmul_dtype("auto", "cuda:0") == torch.bfloat16
    assert knn_matmul_dtype("bfloat16", "cpu") == torch.bfloat16
    assert knn_matmul_dtype("float32", "cuda") == torch.float32
