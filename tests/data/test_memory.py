"""The in-memory data path (data.format=memory): decoding, batches, determinism, resume, DDP
shards, subsets, the k-NN loaders, bad inputs, and a killed-and-resumed run through the CLI."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from solo_mixmask.config.schema import BASE_DEFAULTS, fill_defaults, validate_base
from solo_mixmask.data import batched_augmentations as B
from solo_mixmask.data.augmentations import build_eval_transform
from solo_mixmask.data.datasets import BadImageWarning, build_dataset, load_image_rgb
from solo_mixmask.data.loaders import build_knn_loaders, build_train_loader
from solo_mixmask.data.memory import MemoryEvalLoader, MemoryTrainLoader, decode_split
from solo_mixmask.errors import ConfigError, DataError
from tests.cli_helpers import TINY, assert_killed_run_resumes_as_uninterrupted
from tests.data.helpers import make_spec, needs_fmnist

CLASSES = ("ant", "bee", "cat")


def _folder(root, per_class=6, size=32, seed=0):
    """Random-noise PNGs (lossless, so decoding is exact) in one folder per class."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:02d}.png")
    return root


def _spec(root, batch_size=4, seed=5, augmentations=None, **data):
    return make_spec(
        {
            "dataset": "custom",
            "train_path": str(root),
            "val_path": str(root),
            "format": "memory",
            "num_classes": len(CLASSES),
            **data,
        },
        augmentations=augmentations or [{"crop_size": 32, "num_crops": 2}],
        batch_size=batch_size,
        seed=seed,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("memory_images"))


def test_decoding_gives_the_pil_images_and_targets(folder):
    memory = decode_split(_spec(folder), "train")
    plain = build_dataset(_spec(folder, format="image_folder"), "train", None)
    assert memory.images.dtype == torch.uint8 and memory.images.shape == (18, 3, 32, 32)
    assert memory.targets.tolist() == plain.targets
    for i in (0, 7, 17):
        expected = np.asarray(load_image_rgb(plain.samples[i][0])).transpose(2, 0, 1)
        assert np.array_equal(memory.images[i].numpy(), expected)


def test_training_batches_have_the_pil_format(folder):
    loader = build_train_loader(_spec(folder))
    assert isinstance(loader, MemoryTrainLoader) and len(loader) == 4  # 18 // 4, drop last
    indexes, views, targets = next(iter(loader))
    assert indexes.dtype == torch.int64 and indexes.shape == (4,)
    assert len(views) == 2
    for v in views:
        assert v.dtype == torch.float32 and v.shape == (4, 3, 32, 32)
    assert torch.equal(targets, loader.memory.targets[indexes])
    assert not torch.equal(views[0], views[1])  # independent draws per view
    assert len(set(torch.cat([b[0] for b in loader]).tolist())) == 16  # each image once


def _epoch(loader):
    return [(b[0], [v.clone() for v in b[1]]) for b in loader]


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and all(torch.equal(u, v) for u, v in zip(x[1], y[1]))
        for x, y in zip(a, b)
    )


def test_compiled_augmentations_give_the_same_batches(folder):
    # performance.compile_augmentations reaches the loader's pipelines and changes no image
    spec = _spec(folder, augmentations=[{"crop_size": 32}, {"crop_size": 24, "num_crops": 1}])
    compiled = dataclasses.replace(spec, compile_augmentations="aot_eager")
    loader = build_train_loader(compiled)
    assert all(augment.pixels is not B._augment_pixels for augment, _ in loader.pipelines)
    assert _same(_epoch(loader), _epoch(build_train_loader(spec)))


def test_same_seed_same_batches_other_seed_other_batches(folder):
    first = _epoch(build_train_loader(_spec(folder)))
    assert _same(first, _epoch(build_train_loader(_spec(folder))))
    assert not _same(first, _epoch(build_train_loader(_spec(folder, seed=6))))
    state = torch.get_rng_state()
    _epoch(build_train_loader(_spec(folder)))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not used


def test_resumed_position_gives_the_uninterrupted_batches(folder):
    spec = _spec(folder)
    full = build_train_loader(spec)
    full.sampler.set_epoch(1)
    expected = _epoch(full)
    resumed = build_train_loader(spec)
    state = dict(full.state_dict(), epoch=1, batches_done=2)
    resumed.load_state_dict(state)
    assert _same(_epoch(resumed), expected[2:])


def test_ranks_split_each_epoch(folder):
    spec = _spec(folder, batch_size=2)
    shards = [_epoch(build_train_loader(spec, rank=r, world_size=2)) for r in (0, 1)]
    seen = [set(torch.cat([b[0] for b in s]).tolist()) for s in shards]
    assert len(shards[0]) == len(shards[1]) == 4 and not seen[0] & seen[1]
    assert _same(shards[1], _epoch(build_train_loader(spec, rank=1, world_size=2)))


def test_knn_loaders_give_the_eval_view_and_every_image_once_under_ddp(folder):
    spec = _spec(folder, knn_train_subset=None)
    knn_train, val = build_knn_loaders(spec)
    assert isinstance(knn_train, MemoryEvalLoader) and isinstance(val, MemoryEvalLoader)
    x, y = next(iter(val))
    plain = build_dataset(
        _spec(folder, format="image_folder"), "val", build_eval_transform(spec.crops[0])
    )
    for i in range(4):
        expected, target = plain[i]
        torch.testing.assert_close(x[i], expected, rtol=0, atol=1e-5)
        assert y[i] == target
    parts = [build_knn_loaders(spec, rank=r, world_size=4)[1] for r in range(4)]
    lengths = [len(p.indices) for p in parts]
    assert lengths == [4, 5, 4, 5]  # 18 images, none repeated: a repeated memory image votes twice
    covered = torch.cat([p.indices for p in parts])
    assert covered.tolist() == list(range(18))  # each once, in the one-process order
    whole = torch.cat([x for x, _ in val])
    assert torch.equal(torch.cat([x for p in parts for x, _ in p]), whole)


def test_subsets_pick_the_pil_paths_images(folder):
    spec = _spec(folder, train_subset=8, val_subset=5, knn_train_subset=7)
    pil_spec = _spec(
        folder, train_subset=8, val_subset=5, knn_train_subset=7, format="image_folder"
    )
    memory = build_train_loader(spec).memory
    pil = build_train_loader(pil_spec)
    assert memory.targets.tolist() == [pil.dataset[i][2] for i in range(8)]
    pil_knn, pil_val = build_knn_loaders(pil_spec)
    knn, val = build_knn_loaders(spec)
    assert knn.memory.targets.tolist() == [int(t) for _, t in pil_knn.dataset]
    assert val.memory.targets.tolist() == [int(t) for _, t in pil_val.dataset]


def test_subsets_pick_the_pil_paths_files_when_some_do_not_decode(tmp_path):
    # an unreadable file first in the list: subsets are drawn over the PIL path's items (bad
    # files included), so the following files keep their positions and both paths pick the
    # same files; the memory path leaves out the bad ones the PIL path would skip
    root = _folder(tmp_path / "imgs")
    (root / "ant" / "000_broken.png").write_bytes(b"not an image")
    sizes = {"train_subset": 9, "val_subset": 8, "knn_train_subset": 7}
    with pytest.warns(BadImageWarning):
        knn, val = build_knn_loaders(_spec(root, **sizes))
        train = build_train_loader(_spec(root, **sizes)).memory
    pil_spec = _spec(root, **sizes, format="image_folder")
    pil_loaders = [*build_knn_loaders(pil_spec), build_train_loader(pil_spec)]
    for memory, pil in zip((knn.memory, val.memory, train), pil_loaders):
        subset = pil.dataset
        subset = subset.dataset if not hasattr(subset, "indices") else subset  # IndexedDataset
        files = [subset.dataset.samples[i] for i in subset.indices]
        readable = [(path, target) for path, target in files if "broken" not in path]
        assert len(readable) < len(files) or memory is train  # the bad file was drawn
        assert memory.targets.tolist() == [target for _, target in readable]
        for image, (path, _) in zip(memory.images, readable):
            assert np.array_equal(
                image.numpy(), np.asarray(load_image_rgb(path)).transpose(2, 0, 1)
            )


def test_unreadable_images_are_left_out_and_counted_or_stop_the_run(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=3)
    (root / "bee" / "broken.png").write_bytes(b"not an image")
    with pytest.warns(BadImageWarning, match="broken.png"):
        loader = build_train_loader(_spec(root, seed=11))
    assert len(loader.memory) == 9 and loader.dataset.dataset.bad_files[0].endswith("broken.png")
    with pytest.raises(DataError, match="broken.png"):
        build_train_loader(_spec(root, seed=12, strict=True))


def test_images_of_several_sizes_are_refused_naming_two_files(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=2)
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "cat" / "zz_small.png")
    with pytest.raises(DataError, match=r"zz_small.png.*24x20 px.*32x32 px"):
        build_train_loader(_spec(root))


def test_unknown_format_and_equalization_are_config_errors(folder):
    cfg = OmegaConf.create({"data": {"format": "memmory"}})
    fill_defaults(cfg, BASE_DEFAULTS)
    with pytest.raises(ConfigError, match=r"data.format.*memmory.*image_folder, dali, memory"):
        validate_base(cfg)
    augs = [{"crop_size": 32, "num_crops": 2, "equalization": {"prob": 0.5}}]
    with pytest.raises(ConfigError, match=r"augmentations\[0\].equalization.prob"):
        build_train_loader(_spec(folder, augmentations=augs))


def test_a_set_smaller_than_a_batch_per_device_is_refused(folder):
    with pytest.raises(DataError, match="fewer than one batch"):
        build_train_loader(_spec(folder, batch_size=10), rank=0, world_size=2)


@needs_fmnist
def test_fashion_mnist_stays_one_channel_in_memory():
    memory = decode_split(make_spec({"format": "memory"}), "val")
    assert memory.images.shape == (10_000, 1, 28, 28) and memory.images.dtype == torch.uint8
    loader = build_train_loader(
        make_spec(
            {"format": "memory", "train_subset": 32},
            augmentations=[{"crop_size": 16, "num_crops": 2}],
        )
    )
    _, views, _ = next(iter(loader))
    assert views[0].shape == (16, 3, 16, 16)


# --------------------------------------------------------------------------- through the CLI

MEMORY_RUN = [*TINY, "data.format=memory", "max_epochs=2", "checkpoint.every_n_steps=3"]


@needs_fmnist
def test_memory_run_killed_mid_epoch_resumes_to_the_uninterrupted_state(tmp_path):
    assert_killed_run_resumes_as_uninterrupted(tmp_path, MEMORY_RUN, 16)
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["train_images"] == 64


def test_no_warning_about_workers_or_shuffling_from_the_memory_loader(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = build_train_loader(_spec(folder))
        next(iter(loader))
