"""Weighted k-NN by hand, and the offline k-NN of a real run against its online monitor."""

from __future__ import annotations

import json
import math

import pytest
import torch

from solo_mixmask.eval.knn import topk_accuracy, weighted_knn_scores
from solo_mixmask.eval.offline_knn import run_knn


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


def test_offline_knn_agrees_with_the_online_monitor(tiny_runs):
    for method, run in tiny_runs.items():
        summary = json.loads((run / "summary.json").read_text())
        result = run_knn(run / "checkpoints" / "last.ckpt", device="cpu")
        assert result["train_images"] == 64 and result["val_images"] == 32  # the run's subsets
        assert set(result["k"]) == {"5", "10", "20", "100", "200"}  # defaults + knn_eval.k
        online = result["online"]
        assert (online["k"], online["temperature"], online["acc1"]) == (5, 0.1, summary["knn_acc1"])
        assert abs(online["offline_minus_online_acc1"]) <= 1.0, method
        assert abs(result["k"]["5"]["acc1"] - summary["knn_acc1"]) <= 1.0
        saved = json.loads((run / "knn.json").read_text())
        assert saved["k"] == result["k"]


def test_bad_k_and_temperature(tiny_runs):
    from solo_mixmask.errors import ConfigError

    ckpt = tiny_runs["mixmask"] / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="--k"):
        run_knn(ckpt, ks=[0])
    with pytest.raises(ConfigError, match="--temperature"):
        run_knn(ckpt, ks=[5], temperature=0.0)
