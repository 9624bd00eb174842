"""show-masks: the rows hold what the core functions make, and the PNG has the promised size."""

from __future__ import annotations

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
    assert main(["show-masks", "--out", str(out), "--num-images", "4", "data.num_workers=0"]) == 0
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG"
        assert img.size == figure_pixels(4)
        # a real picture, not a blank canvas
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


def test_show_masks_rejects_one_column(tmp_path, capsys):
    assert main(["show-masks", "--out", str(tmp_path / "m.png"), "--num-images", "1"]) == 2
    assert "error: --num-images=1" in capsys.readouterr().err
