"""Shared fixtures: tiny configs and synthetic batches that run on CPU in seconds."""

from __future__ import annotations

import os

import lightning.pytorch  # noqa: F401
import pytest
import torch
from omegaconf import OmegaConf

# Lightning's log handler takes sys.stderr as it is when lightning is first imported: imported
# here, that is the session's stream, not the stream of one test's capsys (closed after that
# test, and a "Logging error" traceback in the stderr of every later in-process run).
torch.set_num_threads(min(2, os.cpu_count() or 1))

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
TINY_BACKBONE = {"name": "resnet18", "kwargs": {"channels": [8, 16, 32, 64]}}


def tiny_cfg(method: str = "mixmask", **overrides):
    """A config for 16-pixel crops, batch 8, a 20-key queue (8 does not divide 20), no workers."""
    cfg = OmegaConf.create(
        {
            "name": f"test-{method}",
            "method": method,
            "backbone": TINY_BACKBONE,
            "method_kwargs": {},
            "data": {"dataset": "fashion_mnist", "num_classes": 10, "num_workers": 0},
            "augmentations": [{"crop_size": 16, "num_crops": 2}],
            "optimizer": {"batch_size": 8, "lr": 0.1},
            "scheduler": {"warmup_epochs": 0},  # (the default, 10 epochs, outlasts the tests)
            "knn_eval": {"enabled": True, "k": 5},
            "max_epochs": 1,
            "accelerator": "cpu",
            "devices": 1,
            "progress_bar": False,
        }
    )
    if method.startswith("byol"):  # byol, byol_mixmask, byol_unmix_mixmask
        cfg.method_kwargs = {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32}
    else:
        cfg.method_kwargs = {"proj_hidden_dim": 32, "proj_output_dim": 16, "queue_size": 20}
    if method.endswith("mixmask"):
        cfg.method_kwargs.grid_size = 4
    for key, value in overrides.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return cfg


def synthetic_batch(n: int = 8, size: int = 16, views: int = 2, seed: int = 0):
    """``[indexes, [views], targets]`` of random images (solo-learn's training batch format)."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.arange(n),
        [torch.randn(n, 3, size, size, generator=g) for _ in range(views)],
        torch.randint(0, 10, (n,), generator=g),
    ]


@pytest.fixture
def fmnist_available():
    if not os.path.isdir(FMNIST_DIR):
        pytest.skip(
            f"Fashion-MNIST not installed at {FMNIST_DIR} (apt-get install dataset-fashion-mnist)"
        )
    return FMNIST_DIR


def mix_with(model, name: str, x, partner):
    """``(x_mix, lam)`` of the method's mixer ``name`` ("mask" / "unmix"), drawn from the
    model's own generators as its mixed branch draws them."""
    generators = model.ranked_generators()
    for mixer, _ in model.mixers:
        if mixer.name == name:
            on_device = mixer.draws_on == "device"
            return mixer.mix(
                x, partner, generators.device(x.device) if on_device else generators.host()
            )
    raise KeyError(name)
