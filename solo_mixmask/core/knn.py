"""Weighted k-nearest-neighbour classification of features (the k-NN monitor and offline k-NN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_TINY = torch.finfo(torch.float32).tiny


@torch.no_grad()
def weighted_knn_scores(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = (200,),
    temperature: float = 0.1,
    chunk_size: int = 512,
    matmul_dtype: torch.dtype = torch.float32,
) -> dict[int, torch.Tensor]:
    """Class scores of each test feature from its k most cosine-similar training features.

    Each neighbour votes for its class with weight ``exp(similarity / temperature)``, computed
    as ``exp((similarity - best) / temperature)`` with ``best`` the row's top similarity: the
    same ranking (a per-row factor), without overflowing float32 for small temperatures. A
    vote too weak for float32 (``exp`` below 1.2e-38) counts as 1.2e-38, never as no vote.

    Args:
        train_features: (N, D) float. train_targets: (N,) long in [0, num_classes); negative
            targets (unlabelled images) are ignored.
        test_features: (M, D) float.
        ks: several k computed in one pass over the similarities.
        matmul_dtype: dtype of the (chunk, N) similarity product and of the top-k over it.
            torch.bfloat16 (GPU tensor cores; half the memory traffic) picks the neighbours
            from bf16 similarities (about 3 significant digits), then recomputes their
            similarities in float32 for the vote weights: only near-ties at rank k can differ.

    Returns:
        ``{k: scores (M, num_classes)}``, each row up to a positive factor.
    """
    keep = train_targets >= 0
    train = F.normalize(train_features[keep].float(), dim=1)
    targets = train_targets[keep]
    test = F.normalize(test_features.float(), dim=1)
    low = matmul_dtype != torch.float32
    train_mm = train.to(matmul_dtype) if low else train
    k_max = min(max(ks), train.shape[0])
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, test.shape[0], chunk_size):
        query = test[start : start + chunk_size]
        sim = (query.to(matmul_dtype) if low else query) @ train_mm.T
        top_sim, top_idx = sim.topk(k_max, dim=1)
        if low:  # exact float32 similarities of the chosen neighbours, in descending order
            top_sim = torch.einsum("md,mkd->mk", query, train[top_idx])
            top_sim, order = top_sim.sort(dim=1, descending=True)
            top_idx = top_idx.gather(1, order)
        # at least float32's smallest normal: a vote far below the best (past ~103 T) would
        # round to 0 and count as no vote, a miss in top-5 (T below ~0.01)
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp().clamp_min(_TINY)
        votes = F.one_hot(targets[top_idx], num_classes).float() * weights.unsqueeze(-1)
        for k in ks:
            out[k].append(votes[:, : min(k, k_max)].sum(dim=1))
    return {k: torch.cat(v) for k, v in out.items()}


def topk_accuracy(
    scores: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)
) -> list[float]:
    """Top-k accuracies in percent of k-NN vote sums ``scores`` (M, C), >= 0, against
    ``targets`` (M,). A class without votes (score 0) is never a hit: where fewer than k classes
    got votes, the others tie at 0 and ``topk`` fills the places in an arbitrary order, which
    would count the true class or not by its index."""
    # Kept rather than torchmetrics': core is pure torch, and k-NN scores tie often (classes
    # without votes) where torchmetrics' top-1 (argmax) and top-k (topk) break ties apart.
    k_max = min(max(topk), scores.shape[1])
    top, pred = scores.topk(k_max, dim=1)
    hit = (pred == targets.unsqueeze(1)) & (top > 0)
    return [100.0 * hit[:, : min(k, k_max)].any(dim=1).float().mean().item() for k in topk]


def knn_matmul_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The similarity dtype of ``performance.knn_dtype`` (float32, bfloat16, or auto: bfloat16
    on CUDA, float32 elsewhere, where bf16 matmuls are not faster) for features on ``device``."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


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
    matmul_dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """(top-1, top-5) weighted k-NN accuracy in percent (``matmul_dtype``: see
    :func:`weighted_knn_scores`)."""
    scores = weighted_knn_scores(
        train_features,
        train_targets,
        test_features,
        num_classes,
        (k,),
        temperature,
        matmul_dtype=matmul_dtype,
    )[k]
    top1, top5 = topk_accuracy(scores, test_targets, (1, 5))
    return top1, top5
