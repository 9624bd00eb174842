"""``solo-mixmask embed``: a 2-D picture of the query backbone's features, coloured by class.

Features are the frozen backbone's pooled outputs on centre-cropped validation images (a seeded
subset of ``--num-images``, at most the split's size), L2-normalised (the geometry the k-NN monitor
uses). They are laid out in 2-D with UMAP (``umap-learn``, cosine metric) when it is installed,
else with t-SNE from scikit-learn (after PCA to 50 dimensions when the features are wider); the
PNG's title says which. The output folder gets ``embed.png`` (title also stored in the PNG's
``Title`` text chunk), ``embed.csv`` (``index,label,x,y``: one row per image, ``index`` into the
validation split; an unreadable image has no row, ``embed.json`` counts it in
``unreadable_images``) and ``embed.json`` (what was drawn and how). Overrides ``embed`` does not
read are refused (:data:`NOT_READ`).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solo_mixmask.config.eval_specs import knn_only, pretraining_only
from solo_mixmask.errors import ConfigError, DataError
from solo_mixmask.eval.features import (
    checkpoint_spec,
    eval_device,
    extract_indexed_features,
    make_loader,
    output_dir,
    prepare_backbone,
    seeded_subset,
    write_result,
)
from solo_mixmask.paths import check_output_dir

METHODS = ("auto", "umap", "tsne")
LABELS = {"umap": "UMAP (umap-learn)", "tsne": "t-SNE (scikit-learn)"}
INSTALL = {"umap": "pip install umap-learn", "tsne": "pip install scikit-learn"}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
PCA_DIMS = 50
#: Validation images embedded when ``--num-images`` is not given (all, when the split is smaller).
DEFAULT_IMAGES = 2000
_VAL_ONLY = "--num-images (embed draws validation images only)"
#: Keys the config knows that ``embed`` does not read, with what to use instead: refused,
#: never dropped (:func:`~solo_mixmask.config.eval_specs.check_not_read`).
NOT_READ = {
    "data.val_subset": "--num-images {value}",
    "data.train_subset": _VAL_ONLY,
    "data.knn_train_subset": _VAL_ONLY,
    "precision": "nothing: embed extracts its features in float32",
    **knn_only("embed"),
    **pretraining_only(None),
}
FIG_INCHES = 6.4
DPI = 100


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def pick_method(method: str) -> str:
    """``'umap'`` or ``'tsne'`` for ``--method`` ``auto|umap|tsne``: auto prefers UMAP.

    Raises ConfigError when the method is unknown or its package is missing, naming the pip
    command that installs it.
    """
    if method not in METHODS:
        raise ConfigError("--method", method, f"one of {', '.join(METHODS)}")
    wanted = ("umap", "tsne") if method == "auto" else (method,)
    modules = {"umap": "umap", "tsne": "sklearn"}
    for name in wanted:
        if _importable(modules[name]):
            return name
    if method == "auto":
        raise ConfigError(
            "--method",
            method,
            "umap-learn or scikit-learn installed (neither is): "
            "`pip install scikit-learn` (or `pip install 'solo-mixmask[embed]'`)",
        )
    raise ConfigError("--method", method, f"its package installed: `{INSTALL[method]}`")


def project_2d(features: torch.Tensor, method: str, seed: int) -> np.ndarray:
    """(N, D) features -> (N, 2) float coordinates with ``method`` ('umap' or 'tsne').

    Rows are L2-normalised first; t-SNE works on the first 50 principal components when
    D > 50 and uses perplexity ``min(30, (N - 1) / 3)``. Needs N >= 4 images.
    """
    n = features.shape[0]
    if n < 4:
        raise DataError(f"a 2-D embedding needs at least 4 images, got {n}")
    x = torch.nn.functional.normalize(features.float(), dim=1).numpy()
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_neighbors=min(15, n - 1), metric="cosine", random_state=seed)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if x.shape[1] > PCA_DIMS and n > PCA_DIMS:
        x = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
    return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def class_names(dataset: Any, name: str, classes: int) -> list[str]:
    """Display names of the classes: the dataset's ``classes`` when it has them, Fashion-MNIST's
    labels, else the class indices."""
    names = getattr(dataset, "classes", None)
    if names and len(names) >= classes:
        return [str(c) for c in names]
    if name == "fashion_mnist" and classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(classes)]


def draw(
    coords: np.ndarray, labels: np.ndarray, names: Sequence[str], title: str, out: Path
) -> Path:
    """Scatter ``coords`` (N, 2) coloured by ``labels`` (N,) into the PNG ``out``
    (FIG_INCHES square at DPI; legend for up to 20 classes); ``title`` also goes into the PNG's
    ``Title`` metadata."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_classes = len(names)
    cmap = plt.get_cmap("tab10" if n_classes <= 10 else "tab20" if n_classes <= 20 else "turbo")
    fig, ax = plt.subplots(figsize=(FIG_INCHES, FIG_INCHES), dpi=DPI)
    size = 4 if len(coords) > 2000 else 8
    for c in range(n_classes):
        mine = labels == c
        if mine.any():
            colour = cmap(c % cmap.N if n_classes <= 20 else c / max(n_classes - 1, 1))
            ax.scatter(
                coords[mine, 0], coords[mine, 1], s=size, color=colour, label=names[c], linewidths=0
            )
    if (labels < 0).any():
        rest = labels < 0
        ax.scatter(
            coords[rest, 0], coords[rest, 1], s=size, color="0.6", label="unlabelled", linewidths=0
        )
    if n_classes <= 20:
        ax.legend(loc="best", fontsize=7, markerscale=2, frameon=True, framealpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, metadata={"Title": title})
    plt.close(fig)
    return out


def run_embed(
    checkpoint: str | Path,
    out: str | Path | None = None,
    method: str = "auto",
    num_images: int | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> dict[str, Any]:
    """Embed ``num_images`` validation images (0 = all; None: :data:`DEFAULT_IMAGES`, or all
    when the split is smaller) of ``checkpoint``'s dataset in 2-D. A number above the split's
    size is a ConfigError naming ``--num-images``.

    Writes ``embed.png``, ``embed.csv`` and ``embed.json`` into ``out`` (default
    ``<run>/embed/``) and returns the ``embed.json`` content plus its path.
    """
    from solo_mixmask.data.augmentations import build_eval_transform
    from solo_mixmask.data.datasets import build_dataset, image_folder_spec, num_classes
    from solo_mixmask.data.loaders import IndexedDataset

    start = time.perf_counter()
    if num_images is not None and (
        isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0
    ):
        raise ConfigError("--num-images", num_images, "an integer >= 0 (0 = all images)")
    dev = eval_device(device)
    lb, spec = checkpoint_spec(checkpoint, overrides, dev, not_read=NOT_READ, command="embed")
    chosen = pick_method(method)  # before the features: a missing package fails at once
    folder = check_output_dir("--out", output_dir(checkpoint, "embed", out))
    seed, channels_last = spec.seed, spec.channels_last
    files = image_folder_spec(spec.data)  # decoded with PIL, whatever the run's data.format
    val_all = build_dataset(files, "val", build_eval_transform(spec.data.crops[0]))
    split = len(val_all)  # type: ignore[arg-type]
    if num_images is None:
        num_images = min(DEFAULT_IMAGES, split)
    if num_images > split:
        raise ConfigError(
            "--num-images",
            num_images,
            f"0 (all) or an int in [1, {split}] (the validation split has {split} images)",
        )
    # each image carries its index through the loader, which leaves unreadable ones out
    val = seeded_subset(IndexedDataset(val_all), num_images or None, seed)
    loader = make_loader(val, spec.batch_size, spec.num_workers, False, seed)
    model = prepare_backbone(lb, dev, channels_last)
    indices, feats, targets = extract_indexed_features(model, loader, dev, channels_last)
    t0 = time.perf_counter()
    coords = project_2d(feats, chosen, seed)
    project_seconds = time.perf_counter() - t0

    dataset = spec.data.dataset
    names = class_names(val_all, dataset, num_classes(spec.data))
    labels = targets.numpy()
    title = (
        f"{LABELS[chosen]} of {lb.arch} features ({lb.source} checkpoint)\n"
        f"{dataset} validation, {len(labels)} images, coloured by class"
    )
    png = draw(coords, labels, names, title, folder / "embed.png")
    table = folder / "embed.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "x", "y"])
        for i, y, (px, py) in zip(indices.tolist(), labels.tolist(), coords.tolist(), strict=True):
            writer.writerow([i, y, f"{px:.5f}", f"{py:.5f}"])
    fields = {
        "method": LABELS[chosen],
        "title": title,
        "images": len(labels),
        "unreadable_images": len(val) - len(labels),  # type: ignore[arg-type]
        "features_dim": int(feats.shape[1]),
        "png": str(png),
        "coordinates": str(table),
        "project_seconds": round(project_seconds, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    return write_result(folder / "embed.json", checkpoint, lb, spec, fields)
