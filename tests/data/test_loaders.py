"""Tests of solo_mixmask/data/loaders.py: batch format, subsets, k-NN loaders, errors."""

from __future__ import annotations

import pytest
import torch

from solo_mixmask.config.data_specs import data_spec
from solo_mixmask.data import loaders as L
from solo_mixmask.errors import ConfigError, DataError
from tests.data.helpers import make_cfg, make_spec, needs_fmnist, save_rgb

TWO_PIPELINES = [{"crop_size": 32, "num_crops": 1}, {"crop_size": 16, "num_crops": 2}]


@needs_fmnist
def test_train_batch_format():
    cfg = make_cfg({"train_subset": 64}, augmentations=TWO_PIPELINES, batch_size=16)
    loader = L.build_train_loader(data_spec(cfg))
    assert loader.drop_last and loader.batch_size == 16 and len(loader) == 4
    indexes, views, targets = next(iter(loader))
    assert indexes.dtype == torch.long and indexes.shape == (16,)
    assert targets.dtype == torch.long and targets.shape == (16,)
    assert len(indexes.unique()) == 16 and int(indexes.max()) < 64
    assert [tuple(v.shape) for v in views] == [(16, 3, 32, 32), (16, 3, 16, 16), (16, 3, 16, 16)]
    assert all(v.dtype == torch.float32 for v in views)
    subset = loader.dataset.dataset  # IndexedDataset -> Subset of the Fashion-MNIST set
    full_targets = subset.dataset.targets
    assert targets.tolist() == [full_targets[subset.indices[i]] for i in indexes.tolist()]


@needs_fmnist
def test_subsets_are_fixed_by_seed():
    def first_batch(seed):
        loader = L.build_train_loader(make_spec({"train_subset": 100}, seed=seed))
        return loader.dataset.dataset.indices, next(iter(loader))[0].tolist()

    idx_a, batch_a = first_batch(5)
    idx_b, batch_b = first_batch(5)
    idx_c, _ = first_batch(6)
    assert idx_a == idx_b and batch_a == batch_b
    assert idx_a != idx_c
    assert len(idx_a) == 100 and idx_a == sorted(idx_a)


@needs_fmnist
def test_knn_loaders():
    cfg = make_cfg({"knn_train_subset": 40, "val_subset": 24}, batch_size=16)
    train, val = L.build_knn_loaders(data_spec(cfg))
    assert (len(train.dataset), len(val.dataset)) == (40, 24)
    x, y = next(iter(val))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.long
    assert [len(b[1]) for b in val] == [16, 8]  # no drop_last
    x2, y2 = next(iter(val))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # fixed order, no augmentation
    assert L.build_knn_loaders(data_spec(cfg))[0].dataset.indices == train.dataset.indices


@needs_fmnist
def test_knn_train_subset_default_and_null():
    cfg = make_cfg()
    del cfg.data["knn_train_subset"]
    assert len(L.build_knn_loaders(data_spec(cfg))[0].dataset) == 10000
    assert len(L.build_knn_loaders(make_spec({"knn_train_subset": None}))[0].dataset) == 60000


@needs_fmnist
def test_subset_larger_than_split():
    with pytest.raises(ConfigError, match=r"data.val_subset=20000 .*\[1, 10000\]"):
        L.build_knn_loaders(make_spec({"val_subset": 20000}))
    # knn_train_subset is clamped: asking for more than the split gives the whole split
    assert len(L.build_knn_loaders(make_spec({"knn_train_subset": 10**6}))[0].dataset) == 60000


def test_batch_size_one_is_a_config_error():
    with pytest.raises(ConfigError, match=r"optimizer.batch_size=1 .*partner"):
        L.build_train_loader(make_spec(batch_size=1))


def test_bad_num_workers():
    with pytest.raises(ConfigError, match="data.num_workers=-1"):
        L.build_train_loader(make_spec({"num_workers": -1}))


def _folder(root, n):
    for i in range(n):
        save_rgb(root / ("a" if i % 2 else "b") / f"{i}.png", (i * 10, 0, 0), size=20)
    return root


def test_fewer_images_than_a_batch(tmp_path):
    cfg = make_cfg({"dataset": "custom", "train_path": str(_folder(tmp_path, 6))}, batch_size=8)
    with pytest.raises(DataError, match=r"6 images.*optimizer.batch_size=8"):
        L.build_train_loader(data_spec(cfg))


def test_image_folder_loader_with_a_worker(tmp_path):
    cfg = make_cfg(
        {"dataset": "custom", "train_path": str(_folder(tmp_path, 6)), "num_workers": 1},
        batch_size=4,
    )
    loader = L.build_train_loader(data_spec(cfg))
    assert loader.persistent_workers
    batches = list(loader)
    assert len(batches) == 1  # 6 images, batch 4, drop_last
    indexes, views, targets = batches[0]
    assert len(views) == 2 and views[0].shape == (4, 3, 32, 32)
    assert set(targets.tolist()) <= {0, 1}


def test_knn_needs_labels(tmp_path):
    save_rgb(tmp_path / "x.png", (1, 1, 1))
    cfg = make_cfg({"dataset": "custom", "train_path": str(tmp_path), "no_labels": True})
    with pytest.raises(ConfigError, match="data.no_labels=True is not allowed.*knn_eval.enabled"):
        L.build_knn_loaders(data_spec(cfg))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_evaluation_shares_hold_every_image_once(tmp_path, world):
    """No image padded in twice (a repeated k-NN memory image votes twice): the ranks' batches,
    in rank order, are the one-process loader's images."""
    root = str(_folder(tmp_path, 7))
    cfg = make_cfg({"dataset": "custom", "train_path": root, "val_path": root}, batch_size=2)
    spec = data_spec(cfg)
    for build in (L.build_knn_train_loader, L.build_val_loader):
        whole = torch.cat([x for x, _ in build(spec)])
        shares = [build(spec, rank, world) for rank in range(world)]
        assert all(len(loader.dataset) == 7 for loader in shares)
        assert torch.equal(torch.cat([x for loader in shares for x, _ in loader]), whole)


def test_fewer_evaluation_images_than_processes_is_a_config_error(tmp_path):
    root = str(_folder(tmp_path, 7))
    cfg = make_cfg({"dataset": "custom", "train_path": root, "val_path": root, "val_subset": 2})
    with pytest.raises(ConfigError, match=r"data.val_subset=2 .*at least 3 .*3 processes"):
        L.build_val_loader(data_spec(cfg), 0, 3)
    assert len(L.build_val_loader(data_spec(cfg), 1, 2).dataset) == 2
