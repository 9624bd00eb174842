"""Fixtures of tests/eval: two real (tiny) pretraining runs on Fashion-MNIST, made once per test
session, and one_thread."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import FMNIST_DIR, tiny_cfg


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """``{"mocov2plus": run_dir, "mixmask": run_dir}``: 1 epoch of 2 steps (32 images, batch 16,
    16-px crops, a 4-channel-wide ResNet-18), k-NN monitor on 64 train / 32 val images."""
    if not os.path.isdir(FMNIST_DIR):
        pytest.skip(f"Fashion-MNIST not installed at {FMNIST_DIR}")
    from solo_mixmask.run.pretrain import run_pretrain

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for method in ("mocov2plus", "mixmask"):
        cfg = tiny_cfg(
            method,
            name=method,
            data__train_subset=32,
            data__knn_train_subset=64,
            data__val_subset=32,
            optimizer__batch_size=16,
            precision="32-true",
            checkpoint__dir=str(root),
            checkpoint__run_dir=str(root / method),
        )
        summary = run_pretrain(cfg)
        runs[method] = Path(summary["run_dir"])
    return runs


@pytest.fixture
def one_thread():
    """Torch (and, where installed, scikit-learn's OpenMP/BLAS pools) on one thread: tiny
    models' steps are too small to share, and on a busy 2-core machine two threads were
    measured 30x slower (5.6 s vs 0.17 s per batch-8 step of a tiny ResNet; t-SNE of 12 points
    2.3 s vs 0.27 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(1)
    with limits:
        yield
    torch.set_num_threads(previous)
