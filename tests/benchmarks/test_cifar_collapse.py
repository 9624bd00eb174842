"""MixMask's early collapse on CIFAR-10, reproduced on the CPU (issue 17).

The first H200 comparison (batch 512, lr 0.06, no warm-up) collapsed MixMask inside its first
epoch: both of its losses went to ln(K + 1) and its projector outputs stopped depending on the
image. The same signature appears here after the first optimiser step of an eighth-width
ResNet-18 at batch 256 (lr 0.03 by the linear scaling rule, the GPU run's schedule otherwise) on
4,100 CIFAR-10 training images with the in-memory path's augmentations. The recipe we ship for
one device (``CIFAR_RECIPE``: a 2-epoch warm-up, split BatchNorm, shuffled keys) must keep
MixMask's outputs spread like MoCo v2's; the collapsed recipe (main e3fee5b's ``CIFAR_RECIPE``)
is the negative control that shows the test can see a collapse.

Margins: a collapse is ``embedding_std`` below 10% of 1/sqrt(d) (mean pairwise cosine about
0.99 or more; ``core.collapse``). Measured after each of 16 steps (2026-12-08): the collapsed
recipe's MixMask at 9.7% of the spread value after step 1 and 4-6% from step 3 to 16; the
shipped recipe's MoCo v2 at 27-32% and MixMask at 28-33% throughout. The test takes 8 steps
(4.0%, 31.4% and 31.9% there; 16 steps gave 5.2%, 30.5% and 27.6%, at twice the time). We
require the collapsed one below 10%, the shipped MixMask above 20% and at least half of MoCo v2's.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from accuracy import (  # noqa: E402
    CIFAR_RECIPE,
    PROFILES,
    UNMIX_CIFAR_BASE,
    data_overrides,
    run_cfg,
)
from common import cifar10_folder, cifar10_source  # noqa: E402

from solo_mixmask.config.data_specs import data_spec  # noqa: E402
from solo_mixmask.core.collapse import embedding_std, spread_std  # noqa: E402
from solo_mixmask.data.batched_augmentations import BatchAugment  # noqa: E402
from solo_mixmask.methods import METHODS  # noqa: E402
from solo_mixmask.methods.base import lr_scheduler  # noqa: E402
from solo_mixmask.utils.momentum import cosine_tau, ema_update  # noqa: E402

STEPS = 8
BATCH = 256
CHANNELS = (8, 16, 32, 64)  # an eighth of ResNet-18's widths
PER_CLASS = 410  # 4,100 training images
#: The H200 run's schedule: 30 epochs of 97 steps (50,000 images, batch 512).
GPU_EPOCHS, GPU_STEPS_PER_EPOCH = 30, 50_000 // BATCH
COLLAPSED_RECIPE = (*UNMIX_CIFAR_BASE, "scheduler.warmup_epochs=0")


def _cifar_available() -> bool:
    try:
        source = cifar10_source(None)
    except SystemExit:  # its error line when nothing is there
        return False
    return (source / "train.tar.gz").is_file() or (source / "train").is_dir()


pytestmark = pytest.mark.skipif(
    not _cifar_available(),
    reason="CIFAR-10 not found ($SOLO_MIXMASK_CIFAR10 or ../shared/data/cifar10)",
)


@pytest.fixture(scope="module")
def cifar_images() -> tuple[Path, torch.Tensor]:
    """(folder of the 4,100-image sample, its training images uint8 (N, 3, 32, 32))."""
    root = cifar10_folder(None, PER_CLASS)
    files = sorted((root / "train").glob("*/*.jpg"))
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return root, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _spread_after_steps(recipe: tuple[str, ...], method: str, images: torch.Tensor) -> float:
    """embedding_std / (1/sqrt(d)) of one held-out batch (eval mode) after STEPS steps."""
    prof = replace(
        PROFILES["cifar_cpu"],
        channels=CHANNELS,
        batch_size=BATCH,
        recipe=(*recipe, "performance.channels_last=false"),  # NCHW is faster on the CPU
        data=data_overrides(replace(PROFILES["cifar_cpu"], per_class=PER_CLASS), None),
    )
    cfg = run_cfg(prof, method, 1, None)
    crops = data_spec(cfg).crops
    augment = BatchAugment(crops[0])
    torch.manual_seed(0)
    model = METHODS[method](cfg).train()
    optimizer = model.build_optimizer()
    total = GPU_EPOCHS * GPU_STEPS_PER_EPOCH
    scheduler = lr_scheduler(optimizer, model.engine.scheduler, total, GPU_STEPS_PER_EPOCH)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(images.shape[0], generator=gen)
    held_out = augment(images[order[-BATCH:]], gen)
    train = order[: -BATCH // 4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        for step in range(STEPS):
            idx = train[torch.randint(0, train.numel(), (BATCH,), generator=gen)]
            x = images[idx]
            batch = [idx, [augment(x, gen), augment(x, gen)], torch.zeros(BATCH, dtype=torch.long)]
            out = model.training_step(batch, step)
            loss = out["loss"] if isinstance(out, dict) else out
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step_update(num_updates=step + 1)
            tau = cosine_tau(step, total, cfg.momentum.base_tau, cfg.momentum.final_tau)
            for online, momentum in model.momentum_pairs:
                ema_update(online, momentum, tau)
    model.eval()
    with torch.no_grad():
        z = model(held_out)["z"]
    return float(embedding_std(z)) / spread_std(z.shape[1])


def test_shipped_recipe_keeps_mixmask_spread_like_moco(cifar_images):
    _, images = cifar_images
    moco = _spread_after_steps(CIFAR_RECIPE, "mocov2plus", images)
    mixmask = _spread_after_steps(CIFAR_RECIPE, "mixmask", images)
    collapsed = _spread_after_steps(COLLAPSED_RECIPE, "mixmask", images)
    print(f"spread / (1/sqrt d): moco {moco:.3f}, mixmask {mixmask:.3f}, collapsed {collapsed:.3f}")
    assert collapsed < 0.1, "the negative control did not collapse: the test cannot see one"
    assert mixmask > 0.2, f"MixMask collapsed under the shipped recipe ({mixmask:.3f})"
    assert mixmask >= 0.5 * moco, f"MixMask {mixmask:.3f} fell far below MoCo v2 {moco:.3f}"
