"""The DALI pretraining loader (data.format=dali) on a tiny generated JPEG tree, on the CPU.

The pipeline tests run when NVIDIA DALI is importable (``pip install solo-mixmask[dali]``) and
skip with that reason otherwise; the error-message tests run everywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from solo_mixmask.config.data_specs import data_spec
from solo_mixmask.data.dali import INSTALL_HINT, dali_available
from solo_mixmask.data.loaders import build_knn_loaders, build_train_loader
from solo_mixmask.errors import ConfigError, DataError
from tests.data.helpers import make_cfg

needs_dali = pytest.mark.skipif(
    not dali_available(),
    reason=f"NVIDIA DALI is not installed (`{INSTALL_HINT}`; CUDA 12 wheels, Linux only)",
)

# Solid colours per class: JPEG keeps a flat colour within +-2 levels.
COLOURS = {"a_red": (200, 100, 50), "b_blue": (30, 60, 220)}
PLAIN = {  # every random augmentation off: only resize + centre crop + normalise
    "rrc": {"enabled": False},
    "color_jitter": {"prob": 0.0},
    "grayscale": {"prob": 0.0},
    "gaussian_prob": 0.0,
    "solarization": {"prob": 0.0},
    "equalization": {"prob": 0.0},
    "horizontal_flip": {"prob": 0.0},
    "crop_size": 16,
    "num_crops": 2,
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
}
TOL = 3 / 255  # JPEG and cubic resizing of a flat colour


def _tree(root: Path, per_class: int = 5) -> Path:
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.fromarray(np.full((24, 20, 3), colour, dtype=np.uint8))
            img.save(root / name / f"{i}.jpg", quality=95)
    return root


def _cfg(root: Path, augmentation: dict, batch_size: int = 4, **data):
    return make_cfg(
        {
            "dataset": "custom",
            "train_path": str(root),
            "val_path": str(root),
            "format": "dali",
            "dali_device": "cpu",
            "num_workers": 1,
            **data,
        },
        augmentations=[augmentation],
        batch_size=batch_size,
    )


def _first_batch(cfg) -> list:
    return next(iter(build_train_loader(data_spec(cfg))))


def test_dali_missing_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali -> ImportError
    with pytest.raises(DataError, match=r"pip install solo-mixmask\[dali\]"):
        build_train_loader(data_spec(_cfg(_tree(tmp_path), PLAIN)))


def test_dali_format_needs_an_image_folder_dataset():
    cfg = make_cfg({"format": "dali", "dali_device": "cpu"})
    with pytest.raises(ConfigError, match="data.format='dali'.*ImageFolder"):
        build_train_loader(data_spec(cfg))


def test_dali_device_value_is_checked(tmp_path):
    if not dali_available():
        pytest.skip(f"NVIDIA DALI is not installed (`{INSTALL_HINT}`)")
    with pytest.raises(ConfigError, match="data.dali_device='tpu'"):
        build_train_loader(data_spec(_cfg(_tree(tmp_path), PLAIN, dali_device="tpu")))


@needs_dali
def test_dali_batches_follow_solo_learn_format(tmp_path):
    loader = build_train_loader(data_spec(_cfg(_tree(tmp_path), PLAIN)))
    assert len(loader) == 2 and len(loader.dataset) == 10  # 10 images, batches of 4, drop last
    seen = []
    for epoch in range(2):  # the loader starts a new epoch by itself
        batches = list(loader)
        assert len(batches) == 2, epoch
        for ids, views, targets in batches:
            assert ids.dtype == torch.int64 and targets.dtype == torch.int64
            assert ids.shape == targets.shape == (4,)
            assert len(views) == 2
            for v in views:
                assert v.shape == (4, 3, 16, 16) and v.dtype == torch.float32
            # files are sorted per class: ids 0-4 are a_red (0), 5-9 b_blue (1)
            torch.testing.assert_close(targets, (ids >= 5).long())
            for j, t in enumerate(targets.tolist()):
                colour = torch.tensor(list(COLOURS.values())[t], dtype=torch.float32) / 255
                pixels = views[0][j].permute(1, 2, 0).reshape(-1, 3)
                assert (pixels - colour).abs().max() <= TOL
        epoch_ids = torch.cat([b[0] for b in batches]).tolist()
        assert len(set(epoch_ids)) == 8  # no image twice within an epoch
        seen.append(epoch_ids)
    assert seen[0] != seen[1]  # reshuffled between epochs


@needs_dali
def test_dali_solarization_and_grayscale(tmp_path):
    root = _tree(tmp_path)
    solar = _first_batch(_cfg(root, {**PLAIN, "solarization": {"prob": 1.0}}))
    gray = _first_batch(_cfg(root, {**PLAIN, "grayscale": {"prob": 1.0}}))
    for ids, _views, targets in (solar, gray):
        assert torch.equal(targets, (ids >= 5).long())
    for j, t in enumerate(solar[2].tolist()):
        rgb = np.array(list(COLOURS.values())[t], dtype=np.float32)
        expected = np.where(rgb >= 128, 255 - rgb, rgb) / 255  # (200,100,50) -> (55,100,50)
        pixel = solar[1][0][j, :, 8, 8].numpy()
        np.testing.assert_allclose(pixel, expected, atol=TOL)
    for j, t in enumerate(gray[2].tolist()):
        r, g, b = list(COLOURS.values())[t]
        luma = (0.299 * r + 0.587 * g + 0.114 * b) / 255  # (200,100,50) -> 124.2
        pixel = gray[1][1][j, :, 8, 8].numpy()
        np.testing.assert_allclose(pixel, [luma] * 3, atol=TOL)


@needs_dali
def test_dali_moco_v2_recipe_gives_two_different_views(tmp_path):
    root = _tree(tmp_path)
    noisy = tmp_path / "noisy" / "c"  # textured images, so that crops and flips differ
    noisy.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(noisy / f"{i}.jpg")
    aug = {
        "crop_size": 16,
        "num_crops": 2,
        "gaussian_prob": 0.5,  # aug-plus + the rest
        "solarization": {"prob": 0.5},
        "equalization": {"prob": 0.5},
    }
    ids, views, targets = _first_batch(_cfg(noisy.parent, aug))
    assert views[0].shape == views[1].shape == (4, 3, 16, 16)
    assert torch.isfinite(views[0]).all() and torch.isfinite(views[1]).all()
    assert not torch.allclose(views[0], views[1])
    assert torch.equal(targets, torch.zeros(4, dtype=torch.int64))
    assert root.exists()


@needs_dali
def test_dali_shards_follow_the_trainers_rank_and_world_size(tmp_path):
    # the shard comes from the Trainer (which reads devices="2", [0, 1], -1 ...), not from the
    # config's devices, which a string or a list used to turn into one shard per process
    spec = data_spec(_cfg(_tree(tmp_path), PLAIN, batch_size=2))
    epochs = []
    for rank in (0, 1):
        loader = build_train_loader(spec, rank, 2)
        assert len(loader) == 2  # 5 of the 10 images per process, batches of 2
        epochs.append({i for ids, _, _ in loader for i in ids.tolist()})
    assert len(epochs[0]) == len(epochs[1]) == 4 and not epochs[0] & epochs[1]


@needs_dali
def test_dali_subset_and_knn_loaders(tmp_path):
    cfg = _cfg(_tree(tmp_path), PLAIN, train_subset=8, knn_train_subset=6)
    loader = build_train_loader(data_spec(cfg))
    assert len(loader.dataset) == 8 and len(loader) == 2
    knn_train, val = build_knn_loaders(data_spec(cfg))  # plain PyTorch loaders over the same tree
    x, y = next(iter(knn_train))
    assert x.shape[1:] == (3, 16, 16) and len(knn_train.dataset) == 6
    assert len(val.dataset) == 10


@needs_dali
def test_dali_pretrain_run_on_cpu(tmp_path):
    from omegaconf import OmegaConf

    from solo_mixmask.run.pretrain import run_pretrain
    from tests.conftest import tiny_cfg

    root = _tree(tmp_path / "data", per_class=8)
    cfg = tiny_cfg("mixmask")
    cfg.data = OmegaConf.create(
        {
            "dataset": "custom",
            "train_path": str(root),
            "val_path": str(root),
            "format": "dali",
            "dali_device": "cpu",
            "num_workers": 1,
            "knn_train_subset": 16,
        }
    )
    cfg.augmentations = [{"crop_size": 16, "num_crops": 2, "gaussian_prob": 0.0}]
    cfg.checkpoint = {"dir": str(tmp_path / "runs")}
    summary = run_pretrain(cfg)
    assert summary["steps"] == 2 and summary["train_images"] == 16  # 16 images, batch 8
    assert summary["knn_acc1"] is not None


def _textured(root: Path, count: int, same: bool = False, name: str = "c", seed: int = 0) -> Path:
    """``count`` textured PNGs in the class folder ``name`` (one picture ``count`` times with
    ``same``)."""
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    picture = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    for i in range(count):
        pixels = picture if same else rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


MOCO = {"crop_size": 16, "num_crops": 2}  # the MoCo v2 recipe: every random augmentation on


def _epoch(loader) -> list:
    return [(ids.clone(), [v.clone() for v in views]) for ids, views, _ in loader]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and all(torch.equal(u, v) for u, v in zip(x[1], y[1], strict=True))
        for x, y in zip(a, b, strict=True)
    )


@needs_dali
def test_dali_ranks_draw_their_own_augmentations(tmp_path):
    # 16 copies of one picture: with the same seed on every rank, rank 0's and rank 1's views
    # were equal position by position, although the ranks read different files
    spec = data_spec(_cfg(_textured(tmp_path, 16, same=True), MOCO, batch_size=4))
    ranks = [build_train_loader(spec, rank, 2) for rank in (0, 1)]
    firsts = [next(iter(loader)) for loader in ranks]
    for v in range(2):
        for j in range(4):  # every position of the batch: its own crop, flip, jitter...
            assert not torch.equal(firsts[0][1][v][j], firsts[1][1][v][j]), (v, j)
    # the shards are still disjoint slices of one permutation: the epoch reads each file once
    for epoch in range(2):
        seen = []
        for loader in ranks:
            loader.sampler.set_epoch(epoch)
            seen += [i for ids, _, _ in loader for i in ids.tolist()]
        assert sorted(seen) == list(range(16)), epoch


@needs_dali
def test_dali_loader_resumes_the_saved_epoch_and_position(tmp_path):
    from solo_mixmask.utils.resumable import ResumableLoader

    spec = data_spec(_cfg(_textured(tmp_path, 20), MOCO, batch_size=4))
    full = build_train_loader(spec)
    assert isinstance(full, ResumableLoader)  # the engine hands it to ResumeState
    epochs = [_epoch(full), _epoch(full), _epoch(full)]  # a new epoch every pass by itself
    assert len(epochs[0]) == 5
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])  # reshuffled
    # a pass that handed out its last batch moves the next pass on, also if left unexhausted
    fresh = build_train_loader(spec)
    first_pass = iter(fresh)
    for _ in range(len(fresh)):
        next(first_pass)
    assert _same(_epoch(fresh), epochs[1])
    # a loader built for epoch 1 (as Lightning does: set_epoch) gives epoch 1's batches
    rebuilt = build_train_loader(spec)
    rebuilt.sampler.set_epoch(1)
    assert _same(_epoch(rebuilt), epochs[1])
    # a resume from an epoch-end checkpoint of epoch 0 starts at epoch 1 ...
    full.sampler.set_epoch(0)
    full.batches_done = len(full)
    resumed = build_train_loader(spec)
    resumed.load_state_dict(full.state_dict())
    assert _same(_epoch(resumed), epochs[1])
    # ... and one from the middle of epoch 2 skips the batches already trained, exactly
    resumed = build_train_loader(spec)
    resumed.load_state_dict(dict(full.state_dict(), epoch=2, batches_done=2))
    assert _same(_epoch(resumed), epochs[2][2:])
    later = build_train_loader(spec)
    later.sampler.set_epoch(3)
    assert _same(_epoch(resumed), _epoch(later))  # and then goes on with epoch 3


@needs_dali
def test_dali_run_killed_mid_epoch_resumes_to_the_uninterrupted_state(tmp_path):
    # 2 epochs of 8 steps, a checkpoint every 3: killed after step 11 (epoch 1, batch 3), it
    # resumes from step 9 (epoch 1 after 1 batch); a DALI run used to restart at epoch 0's
    # order and draws
    from tests.cli_helpers import TINY, assert_killed_run_resumes_as_uninterrupted, custom_data

    root = tmp_path / "data"
    for seed, name in enumerate(COLOURS):
        _textured(root, 32, name=name, seed=seed)
    args = [
        *TINY,
        *custom_data(root),
        "data.format=dali",
        "data.dali_device=cpu",
        "augmentations.0.gaussian_prob=0.0",
        "max_epochs=2",
        "checkpoint.every_n_steps=3",
        "check_val_every_n_epoch=3",
    ]
    assert_killed_run_resumes_as_uninterrupted(tmp_path, args, 16)
