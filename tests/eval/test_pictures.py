"""show-masks: the rows hold what the core functions make, and the PNG has the promised size."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from solo_mixmask.cli import main
from solo_mixmask.eval.pictures import ROW_LABELS, figure_pixels, mask_rows


def test_rows_match_the_mixing_rules():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=g)
    rows = mask_rows(x, grid_size=4, ratio=0.5, alpha=1.0, seed=3)
    assert list(rows) == list(ROW_LABELS)
    partner = x.flip(0)  # the reversed batch
    assert torch.equal(rows["partner"][0], partner)
    for kind in ("block", "discrete"):
        masks, _ = rows[f"{kind} mask"]
        mixed, lams = rows[f"{kind} mix"]
        assert masks.shape == (4, 1, 16, 16)
        assert torch.allclose(mixed, masks * x + (1 - masks) * partner)
        assert lams == masks.mean(dim=(1, 2, 3)).tolist()  # measured, not requested
    mixed, lams = rows["Un-Mix mixup"]
    for j, lam in enumerate(lams):
        assert torch.allclose(mixed[j], lam * x[j] + (1 - lam) * partner[j], atol=1e-6)
    mixed, lams = rows["Un-Mix CutMix"]
    for j, lam in enumerate(lams):
        from_partner = (mixed[j] != x[j]).any(dim=0).float().mean().item()
        assert abs((1 - lam) - from_partner) < 1e-6  # lambda = 1 - pasted box area


def test_show_masks_png_on_real_images(tmp_path, fmnist_available):
    out = tmp_path / "pics" / "masks.png"
    assert main(["show-masks", "--out", str(out), "--num-images", "4"]) == 0
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG"
        assert img.size == figure_pixels(4)
        # a real picture, not a blank canvas
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


def test_show_masks_rejects_one_column(tmp_path, capsys):
    assert main(["show-masks", "--out", str(tmp_path / "m.png"), "--num-images", "1"]) == 2
    assert "error: --num-images=1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=1", "seed=1 is not allowed: expected --seed 1 (show-masks does not read seed)"),
        ("data.val_subset=20", "expected --num-images (show-masks picks its columns"),
        ("data.train_subset=20", "(show-masks does not read data.train_subset)"),
        ("data.val_path=/x", "expected data.train_path (show-masks draws training images)"),
        ("optimizer.lr=0.1", "(show-masks does not read optimizer.lr)"),
        ("max_steps=3", "(show-masks does not read max_steps)"),
        ("method_kwargs.mask_type=discrete", "draws both mask kinds, block and discrete"),
        ("augmentations.0.horizontal_flip.prob=0", "expected augmentations.0.crop_size"),
        ("backbone.cifar_stem=false", "(show-masks does not read backbone.cifar_stem)"),
    ],
)
def test_keys_show_masks_does_not_read_are_refused(
    tmp_path, capsys, monkeypatch, override, expected
):
    """Once: accepted and ignored (seed=1 and seed=2 drew byte-identical PNGs)."""
    from solo_mixmask.eval import pictures

    monkeypatch.setattr(pictures, "sample_images", lambda *a: pytest.fail("images were read"))
    out = tmp_path / "m.png"
    assert main(["show-masks", "--out", str(out), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not out.exists()


def test_show_masks_reads_its_masks_crop_and_images_settings(tmp_path, monkeypatch):
    from solo_mixmask.eval import pictures

    seen = {}

    def sample(spec, n, seed):
        seen.update(dataset=spec.dataset, crop=spec.crops[0].crop_size, seed=seed)
        return torch.rand(n, 3, 24, 24), list(range(n))

    monkeypatch.setattr(pictures, "sample_images", sample)
    out = tmp_path / "m.png"
    argv = ["show-masks", "--out", str(out), "--num-images", "2", "--seed", "3"]
    keys = ["method_kwargs.grid_size=4", "method_kwargs.mask_ratio=0.3", "data.dataset=cifar10"]
    assert main([*argv, *keys, "augmentations.0.crop_size=24", "data.download=false"]) == 0
    assert seen == {"dataset": "cifar10", "crop": 24, "seed": 3} and out.is_file()
