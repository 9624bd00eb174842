"""Weighted k-nearest-neighbour classification of features (the k-NN monitor and offline k-NN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def weighted_knn_scores(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = (200,),
    temperature: float = 0.1,
    chunk_size: int = 512,
) -> dict[int, torch.Tensor]:
    """Class scores of each test feature from its k most cosine-similar training features.

    Each neighbour votes for its class with weight ``exp(similarity / temperature)``, computed
    as ``exp((similarity - best) / temperature)`` with ``best`` the row's top similarity: the
    same ranking (a per-row factor), without overflowing float32 for small temperatures.

    Args:
        train_features: (N, D) float. train_targets: (N,) long in [0, num_classes); negative
            targets (unlabelled images) are ignored.
        test_features: (M, D) float.
        ks: several k computed in one pass over the similarities.

    Returns:
        ``{k: scores (M, num_classes)}``, each row up to a positive factor.
    """
    keep = train_targets >= 0
    train = F.normalize(train_features[keep].float(), dim=1)
    targets = train_targets[keep]
    test = F.normalize(test_features.float(), dim=1)
    k_max = min(max(ks), train.shape[0])
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start : start + chunk_size] @ train.T
        top_sim, top_idx = sim.topk(k_max, dim=1)
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes = F.one_hot(targets[top_idx], num_classes).float() * weights.unsqueeze(-1)
        for k in ks:
            out[k].append(votes[:, : min(k, k_max)].sum(dim=1))
    return {k: torch.cat(v) for k, v in out.items()}


def topk_accuracy(
    scores: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)
) -> list[float]:
    """Top-k accuracies in percent of ``scores`` (M, C) against ``targets`` (M,)."""
    # Kept rather than torchmetrics': core is pure torch, and k-NN scores tie often (classes
    # without votes) where torchmetrics' top-1 (argmax) and top-k (topk) break ties apart.
    k_max = min(max(topk), scores.shape[1])
    pred = scores.topk(k_max, dim=1).indices
    hit = pred == targets.unsqueeze(1)
    return [100.0 * hit[:, : min(k, k_max)].any(dim=1).float().mean().item() for k in topk]


def knn_k_used(k: int, train_targets: torch.Tensor) -> int:
    """The k that :func:`weighted_knn_scores` votes with: ``k``, at most the number of labelled
    training features (the memory)."""
    return min(int(k), int((train_targets >= 0).sum()))


def knn_accuracy(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    test_targets: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> tuple[float, float]:
    """(top-1, top-5) weighted k-NN accuracy in percent."""
    scores = weighted_knn_scores(
        train_features, train_targets, test_features, num_classes, (k,), temperature
    )[k]
    top1, top5 = topk_accuracy(scores, test_targets, (1, 5))
    return top1, top5
