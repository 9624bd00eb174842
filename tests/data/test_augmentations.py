"""Tests of solo_mixmask/data/augmentations.py: view count/shape, hand-computed values, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from solo_mixmask.config.augmentation_specs import parse_augmentations
from solo_mixmask.config.data_specs import data_spec
from solo_mixmask.data import augmentations as A
from solo_mixmask.errors import ConfigError
from tests.data.helpers import make_cfg, make_spec

OFF = {
    "rrc": {"enabled": False},
    "color_jitter": {"prob": 0.0},
    "grayscale": {"prob": 0.0},
    "gaussian_prob": 0.0,
    "horizontal_flip": {"prob": 0.0},
}


def _gray(value: int, size: int = 28) -> Image.Image:
    return Image.new("RGB", (size, size), (value, value, value))


def test_aug_plus_gives_two_normalised_views():
    transform = A.build_pretrain_transform(make_spec(augmentations=[{}]).crops)  # all defaults
    views = transform(_gray(128))
    assert transform.num_views == 2 and len(views) == 2
    for v in views:
        assert v.shape == (3, 32, 32) and v.dtype == torch.float32
    spec = parse_augmentations(make_cfg(augmentations=[{}]))[0]
    assert (spec.crop_min_scale, spec.color_jitter_prob, spec.gaussian_prob) == (0.2, 0.8, 0.5)
    assert (spec.brightness, spec.saturation, spec.hue, spec.grayscale_prob) == (0.4, 0.4, 0.1, 0.2)


def test_two_pipelines_in_order():
    augs = [
        {"crop_size": 32, "num_crops": 1, "gaussian_prob": 1.0},
        {
            "crop_size": 16,
            "num_crops": 2,
            "gaussian_blur": {"prob": 0.1},
            "solarization": {"prob": 0.2},
        },
    ]
    transform = A.build_pretrain_transform(make_spec(augmentations=augs).crops)
    views = transform(_gray(90, 40))
    assert [tuple(v.shape) for v in views] == [(3, 32, 32), (3, 16, 16), (3, 16, 16)]
    specs = parse_augmentations(make_cfg(augmentations=augs))
    assert [s.gaussian_prob for s in specs] == [1.0, 0.1]
    assert [s.solarization_prob for s in specs] == [0.0, 0.2]


def test_values_are_normalised_by_hand():
    # no randomness: resize a constant image; value = (128/255 - 0.2860) / 0.3530
    view = A.build_pretrain_transform(make_spec(augmentations=[{**OFF, "num_crops": 1}]).crops)(
        _gray(128)
    )[0]
    expected = (128 / 255 - 0.2860) / 0.3530
    assert torch.allclose(view, torch.full((3, 32, 32), expected), atol=1e-5)
    # solarization always on: 200 >= 128 is inverted to 55
    solar = {**OFF, "num_crops": 1, "solarization": {"prob": 1.0}}
    view = A.build_pretrain_transform(make_spec(augmentations=[solar]).crops)(_gray(200))[0]
    assert torch.allclose(view, torch.full((3, 32, 32), (55 / 255 - 0.2860) / 0.3530), atol=1e-5)


def test_mean_std_overrides():
    cfg = make_cfg(
        {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}, augmentations=[{**OFF, "num_crops": 1}]
    )
    view = A.build_pretrain_transform(data_spec(cfg).crops)(_gray(255))[0]
    assert torch.allclose(view[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    with pytest.raises(ConfigError, match="data.std"):
        A.build_pretrain_transform(make_spec({"std": [0.2, 0.0, 0.2]}).crops)


def test_eval_transform_sizes_and_determinism():
    small = A.build_eval_transform(make_spec().crops[0])
    out = small(_gray(128))
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.2860) / 0.3530), atol=1e-5)
    big = A.build_eval_transform(make_spec({"dataset": "imagenet"}, [{"crop_size": 224}]).crops[0])
    img = Image.new("RGB", (400, 300), (10, 20, 30))
    a, b = big(img), big(img)
    assert a.shape == (3, 224, 224) and torch.equal(a, b)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_is_as_strong_as_pil_gaussian_blur_at_32_px(sigma):
    # MoCo v2 and solo-learn blur with PIL's GaussianBlur(radius=sigma). The window of 10% of
    # the crop (3 taps at 32 px) stopped growing above sigma 1: on noise, sigma 2 left 12x the
    # sharpness PIL's leaves. Sharpness: mean |Laplacian| of the blurred image.
    from PIL import ImageFilter

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)

    def sharpness(x: torch.Tensor) -> float:
        inner = x[:, 4:-4, 4:-4]  # away from the border, where the paddings differ
        lap = 4 * inner[:, 1:-1, 1:-1] - inner[:, :-2, 1:-1] - inner[:, 2:, 1:-1]
        lap = lap - inner[:, 1:-1, :-2] - inner[:, 1:-1, 2:]
        return float(lap.abs().mean())

    ours = T.GaussianBlur(A.BLUR_WINDOW, sigma=(sigma, sigma))(TF.to_tensor(img))
    pil = TF.to_tensor(img.filter(ImageFilter.GaussianBlur(radius=sigma)))
    assert sharpness(ours) == pytest.approx(sharpness(pil), rel=0.25)


@pytest.mark.parametrize(
    ("entry", "key", "value"),
    [
        ({"color_jitter": {"prob": 1.5}}, "augmentations[0].color_jitter.prob", 1.5),
        ({"grayscale": {"prob": -0.1}}, "augmentations[0].grayscale.prob", -0.1),
        ({"gaussian_prob": "often"}, "augmentations[0].gaussian_prob", "often"),
        ({"horizontal_flip": {"prob": True}}, "augmentations[0].horizontal_flip.prob", True),
        ({"rrc": {"crop_min_scale": 0.0}}, "augmentations[0].rrc.crop_min_scale", 0.0),
        (
            {"rrc": {"crop_min_scale": 0.9, "crop_max_scale": 0.5}},
            "augmentations[0].rrc.crop_min_scale",
            0.9,
        ),
        ({"crop_size": 4}, "augmentations[0].crop_size", 4),
        ({"num_crops": 0}, "augmentations[0].num_crops", 0),
        ({"color_jitter": {"hue": 0.7}}, "augmentations[0].color_jitter.hue", 0.7),
        ({"solarisation": {"prob": 0.2}}, "augmentations[0].solarisation", {"prob": 0.2}),
        ({"rrc": {"min_scale": 0.2}}, "augmentations[0].rrc.min_scale", 0.2),
        (
            {"gaussian_prob": 0.5, "gaussian_blur": {"prob": 0.1}},
            "augmentations[0].gaussian_blur.prob",
            0.1,
        ),
    ],
)
def test_bad_values_raise_config_error(entry, key, value):
    with pytest.raises(ConfigError) as info:
        A.build_pretrain_transform(make_spec(augmentations=[entry]).crops)
    assert info.value.key == key and info.value.value == value
    assert str(info.value).startswith(f"{key}={value!r} is not allowed: expected ")


def test_error_names_the_right_pipeline():
    with pytest.raises(ConfigError, match=r"augmentations\[1\]\.num_crops=-1"):
        A.build_pretrain_transform(make_spec(augmentations=[{}, {"num_crops": -1}]).crops)
    with pytest.raises(ConfigError, match="augmentations=\\[\\]"):
        A.build_pretrain_transform(make_spec(augmentations=[]).crops)


def test_disabled_blocks():
    spec = parse_augmentations(
        make_cfg(
            augmentations=[
                {"grayscale": {"enabled": False, "prob": 0.2}, "gaussian_blur": {"enabled": False}}
            ]
        )
    )[0]
    assert spec.grayscale_prob == 0.0 and spec.gaussian_prob == 0.0
