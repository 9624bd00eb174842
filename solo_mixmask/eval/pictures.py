"""``solo-mixmask show-masks``: what MixMask and Un-Mix do to real images, as one PNG grid.

Columns are images of the chosen dataset (centre-cropped like evaluation); rows:

1. originals x; 2. partners x[partner] (the batch reversed, as in the seed);
3. block masks M (white = keep x); 4. block-mixed views M*x + (1-M)*x[partner];
5. discrete masks; 6. discrete-mixed views;
7. Un-Mix mixup lambda*x + (1-lambda)*x[partner]; 8. Un-Mix CutMix (a box pasted from the partner).

Mixed views carry their measured lambda (share of x) in the title. Masks are drawn per sample
(``per_sample=True``) so the columns differ; Un-Mix draws one lambda ~ Beta(alpha, alpha) per
column. Grid size, mask ratio and Un-Mix alpha come from ``method_kwargs`` when the config has
them, else MixMask's and Un-Mix's defaults (8, 0.5, 1.0; the grid capped to the crop), read by
:func:`~solo_mixmask.config.eval_specs.mask_picture_spec`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from solo_mixmask.config.data_specs import DataSpec
from solo_mixmask.config.eval_specs import MaskPictureSpec

ROW_LABELS = (
    "original",
    "partner",
    "block mask",
    "block mix",
    "discrete mask",
    "discrete mix",
    "Un-Mix mixup",
    "Un-Mix CutMix",
)
CELL_INCHES = 1.4  # width and height of one image cell
LABEL_INCHES = 1.2  # left margin for the row labels
TOP_INCHES = 0.5  # room for the suptitle
DPI = 100


def figure_pixels(n_images: int, dpi: int = DPI) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for ``n_images`` columns."""
    width = LABEL_INCHES + CELL_INCHES * n_images
    height = TOP_INCHES + CELL_INCHES * len(ROW_LABELS)
    return round(width * dpi), round(height * dpi)


def sample_images(spec: DataSpec, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """``n`` random training images of ``spec``'s dataset, eval transform of its first crop
    pipeline: (n, 3, H, W) float, targets."""
    from solo_mixmask.data.augmentations import build_eval_transform
    from solo_mixmask.data.datasets import build_dataset, image_folder_spec
    from solo_mixmask.errors import DataError

    files = image_folder_spec(spec)  # decoded with PIL, whatever the run's data.format
    dataset = build_dataset(files, "train", build_eval_transform(spec.crops[0]))
    total = len(dataset)  # type: ignore[arg-type]
    if total < n:
        raise DataError(f"the dataset has {total} images, fewer than --num-images={n}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    items = []
    for i in order:  # unreadable images (None) are skipped, never shown twice
        item = dataset[i]
        if item is not None:
            items.append(item)
        if len(items) == n:
            break
    if len(items) < n:
        raise DataError(
            f"the dataset has {len(items)} readable images, fewer than --num-images={n}"
        )
    return torch.stack([x for x, _ in items]), [int(y) for _, y in items]


def mask_rows(
    x: torch.Tensor, grid_size: int, ratio: float, alpha: float, seed: int
) -> dict[str, tuple[torch.Tensor, list[float] | None]]:
    """The grid's rows for images ``x`` (n, 3, H, W): ``{label: (images (n, C, H, W), lambdas)}``.

    Mask rows hold (n, 1, H, W) masks and no lambdas. Uses solo_mixmask.core only.
    """
    from solo_mixmask.core.masks import MASK_TYPES, MaskBank
    from solo_mixmask.core.mixing import mix_with_masks, reversed_partner
    from solo_mixmask.core.unmix import sample_unmix_params, unmix

    n, _, height, width = x.shape
    gen = torch.Generator().manual_seed(seed)
    partner = reversed_partner(n)
    rows: dict[str, tuple[torch.Tensor, list[float] | None]] = {
        "original": (x, None),
        "partner": (x[partner], None),
    }
    for kind in MASK_TYPES:
        grid = max(grid_size, 2) if kind == "discrete" else grid_size
        bank = MaskBank(grid, ratio, kind, capacity=n)
        masks = bank.sample(n, (height, width), per_sample=True, generator=gen)
        mixed, lam = mix_with_masks(x, masks, partner)
        rows[f"{kind} mask"] = (masks, None)
        rows[f"{kind} mix"] = (mixed, lam.tolist())
    for label, prob in (("Un-Mix mixup", 1.0), ("Un-Mix CutMix", 0.0)):
        images, lams = [], []
        for j in range(n):
            params = sample_unmix_params(alpha, prob, height, width, generator=gen)
            mixed, lam = unmix(x, partner, params)
            images.append(mixed[j])
            lams.append(float(lam[j]))
        rows[label] = (torch.stack(images), lams)
    return rows


def _to_display(img: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """(3, H, W) normalised -> (H, W, 3) in [0, 1]; a (1, H, W) mask -> (H, W)."""
    if img.shape[0] == 1:
        return img[0].float()
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (img.float() * s + m).clamp(0, 1).permute(1, 2, 0)


def show_masks(
    spec: MaskPictureSpec, out: str | Path, n_images: int = 6, seed: int = 0, dpi: int = DPI
) -> Path:
    """Draw the grid (see the module docstring) for ``spec``'s dataset and masks into the PNG
    ``out``; images are shown as their first crop pipeline normalised them.

    The PNG measures :func:`figure_pixels` ``(n_images, dpi)``. Returns the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from solo_mixmask.paths import check_output_file

    if n_images < 2:
        raise ValueError(f"n_images={n_images!r} is not allowed: expected an integer >= 2")
    check_output_file("--out", out, suffixes=(".png",))  # before the images are read
    x, _ = sample_images(spec.data, n_images, seed)
    crop = min(x.shape[-2:])
    grid, ratio, alpha = min(spec.grid_size, crop), spec.mask_ratio, spec.unmix_alpha
    rows = mask_rows(x, grid, ratio, alpha, seed)
    mean, std = spec.data.crops[0].mean, spec.data.crops[0].std

    width_px, height_px = figure_pixels(n_images, dpi)
    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    left = LABEL_INCHES / (width_px / dpi)
    top = 1 - TOP_INCHES / (height_px / dpi)
    axes = fig.subplots(
        len(ROW_LABELS),
        n_images,
        gridspec_kw={
            "left": left,
            "right": 0.99,
            "bottom": 0.01,
            "top": top,
            "hspace": 0.35,
            "wspace": 0.08,
        },
    )
    for r, label in enumerate(ROW_LABELS):
        images, lams = rows[label]
        for c in range(n_images):
            ax = axes[r][c]
            shown = _to_display(images[c], mean, std)
            ax.imshow(
                shown.numpy(),
                cmap="gray" if shown.dim() == 2 else None,
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if lams is not None:
                ax.set_title(f"λ={lams[c]:.2f}", fontsize=8, pad=2)
            if c == 0:
                ax.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center", labelpad=8)
    fig.suptitle(
        f"{spec.data.dataset}: grid {grid}, mask ratio {ratio}, Un-Mix alpha {alpha} "
        "(λ = share of the original)",
        fontsize=10,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
