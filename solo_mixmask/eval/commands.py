"""Sub-commands for evaluation, export and pictures (linear, knn, finetune, convert, show-masks,
embed, compare).

Heavy imports (torch, data, matplotlib) happen inside the command functions so that
``solo-mixmask --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json

from solo_mixmask.config.compose import add_config_arguments
from solo_mixmask.eval.presets import DEFAULT_PRESET, PRESET_ALIASES, describe_presets


class IntermixedParser(argparse.ArgumentParser):
    """A sub-parser that takes options and ``key=value`` overrides in any order
    (``linear CKPT --preset small linear.epochs=5`` as well as ``linear --preset small CKPT``)."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


class KsAction(argparse.Action):
    """``--k 10 20 100``: integers; ``key=value`` words caught after them are overrides."""

    def __call__(self, parser, namespace, values, option_string=None):
        ks, extra = [], []
        for value in values:
            if "=" in value:
                extra.append(value)
                continue
            try:
                ks.append(int(value))
            except ValueError:
                parser.error(f"argument --k: invalid int value: {value!r}")
        if not ks:
            parser.error("argument --k: expected at least one integer")
        setattr(namespace, self.dest, ks)  # a later --k replaces the ks, as argparse does
        # but not the overrides caught after an earlier one
        namespace.k_overrides = [*(getattr(namespace, "k_overrides", None) or []), *extra]


def _steps(section: dict) -> str:
    steps = "/".join(str(e) for e in section.get("lr_decay_epochs") or []) or "none"
    return f"lr x{section.get('lr_decay_rate')} at {steps}"


def _linear_preset(section: dict) -> str:
    """``--help`` words for a ``linear`` preset section (read from its file)."""
    images = section.get("train_subset")
    return (
        f"{section.get('epochs')} epochs, batch {section.get('batch_size')}, lr "
        f"{section.get('lr')}, {_steps(section)}, {images or 'all'} training images"
    )


def _finetune_preset(section: dict) -> str:
    """``--help`` words for a ``finetune`` preset section (read from its file)."""
    return (
        f"{section.get('epochs')} epochs, batch {section.get('batch_size')}, lr "
        f"{section.get('backbone_lr')} / head {section.get('head_lr')}, {_steps(section)}"
    )


PRESET_ALIASES_HELP = ", ".join(f"old name {old}: {new}" for old, new in PRESET_ALIASES.items())


def _intermixed(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    if type(p) is argparse.ArgumentParser:
        p.__class__ = IntermixedParser
    return p


def _print_json(result: dict) -> None:
    print(json.dumps(result, indent=2))


def _linear(args: argparse.Namespace) -> None:
    from solo_mixmask.eval.linear import run_linear

    result = run_linear(
        args.checkpoint, args.preset, args.overrides, args.cached_features, args.out, args.device
    )
    _print_json(result)


def _knn(args: argparse.Namespace) -> None:
    from solo_mixmask.eval.offline_knn import run_knn

    overrides = [*args.overrides, *getattr(args, "k_overrides", [])]
    result = run_knn(
        args.checkpoint,
        args.k,
        args.temperature,
        overrides,
        args.out,
        args.device,
        args.precision,
    )
    _print_json(result)


def _finetune(args: argparse.Namespace) -> None:
    from solo_mixmask.eval.finetune import run_finetune

    result = run_finetune(
        args.checkpoint,
        args.label_fraction,
        args.preset,
        args.overrides,
        args.out,
        args.device,
        args.random_init,
    )
    _print_json({k: v for k, v in result.items() if k != "history"})


def _embed(args: argparse.Namespace) -> None:
    from solo_mixmask.eval.embed import run_embed

    result = run_embed(
        args.checkpoint, args.out, args.method, args.num_images, args.overrides, args.device
    )
    _print_json(result)


def _convert(args: argparse.Namespace) -> None:
    from solo_mixmask.eval.convert import convert_checkpoint

    _print_json(convert_checkpoint(args.checkpoint, args.out, args.format, args.force))


def _show_masks(args: argparse.Namespace) -> None:
    from solo_mixmask.config.compose import compose_config
    from solo_mixmask.config.eval_specs import mask_picture_spec, refuse_unread_mask_picture_keys
    from solo_mixmask.errors import ConfigError
    from solo_mixmask.eval.pictures import show_masks
    from solo_mixmask.run.pretrain import prepare_config

    if args.num_images < 2:
        raise ConfigError("--num-images", args.num_images, "an integer >= 2")
    # checked as pretrain checks it: unknown keys (did-you-mean), grid sizes, mask ratios ...
    _, cfg = prepare_config(compose_config(args.config_path, args.config_name, args.overrides))
    refuse_unread_mask_picture_keys(args.overrides)  # seed=1 is --seed 1, never dropped
    spec = mask_picture_spec(cfg)
    print(f"wrote {show_masks(spec, args.out, args.num_images, args.seed)}")


def _compare(args: argparse.Namespace) -> None:
    from solo_mixmask.eval.compare import compare_runs

    result = compare_runs(args.run_dirs, args.out)
    print(result["table"])
    if result["notes"]:
        print(f"\n{result['notes']}")
    written = (result["report"], result["json"], result["knn_plot"], result["loss_plot"])
    print(f"\nwrote {', '.join(written)}")


def _common_eval_args(p: argparse.ArgumentParser, out_help: str | None = None) -> None:
    p.add_argument(
        "checkpoint",
        help="a .ckpt of a run, the authors' .pth.tar, a solo-learn "
        "checkpoint or a torchvision state dict",
    )
    p.add_argument(
        "--out",
        default=None,
        help=out_help or "result JSON (default: <run>/<command>.json beside the run)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value config overrides, e.g. data.dataset=cifar10 data.train_path=X",
    )


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    """Register this module's sub-commands on the ``solo-mixmask`` parser."""
    p = _intermixed(sub.add_parser("linear", help="offline linear probe on a frozen backbone"))
    _common_eval_args(p)
    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"{describe_presets('linear', _linear_preset)} | path to a YAML file; "
        f"{PRESET_ALIASES_HELP} (default: {DEFAULT_PRESET})",
    )
    p.add_argument(
        "--cached-features",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="extract features once (centre crop, no augmentation) and train the "
        "linear layer on them (default: on for CPU, off for GPU)",
    )
    p.set_defaults(func=_linear)

    p = _intermixed(sub.add_parser("knn", help="offline weighted k-NN on the run's k-NN subsets"))
    _common_eval_args(p)
    p.add_argument(
        "--k",
        nargs="+",
        action=KsAction,
        default=None,
        help="one or more k (default: 10 20 100 200 and the run's knn_eval.k)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="vote temperature (default: the run's knn_eval.T, 0.1)",
    )
    p.add_argument(
        "--precision",
        default="32-true",
        help="what the features are extracted in: 32-true (float32), bf16-mixed or 16-mixed "
        "(autocast, as Lightning validates), or run: the run's own, so that the online k-NN "
        "is compared (default: 32-true)",
    )
    p.set_defaults(func=_knn)

    p = _intermixed(
        sub.add_parser(
            "finetune", help="fine-tune the whole backbone + a new head on a fraction of the labels"
        )
    )
    _common_eval_args(
        p, "output folder (default: <run>/finetune-<fraction>[-random-init]/ beside the run)"
    )
    p.add_argument(
        "--label-fraction",
        type=float,
        default=0.1,
        help="share of the labelled training images, class-balanced, in (0, 1]: 0.01, 0.1, "
        "1.0 ... (default: 0.1)",
    )
    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"{describe_presets('finetune', _finetune_preset)} | path to a YAML file "
        f"(default: {DEFAULT_PRESET})",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="the checkpoint's architecture with fresh weights: the same recipe from scratch",
    )
    p.set_defaults(func=_finetune)

    p = sub.add_parser("convert", help="export the query backbone (torchvision|timm|detectron2)")
    p.add_argument("checkpoint")
    p.add_argument("out", help="output file (.pth for torchvision/timm, .pkl for detectron2)")
    p.add_argument("--format", required=True, choices=("torchvision", "timm", "detectron2"))
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_convert)

    p = _intermixed(
        sub.add_parser("show-masks", help="PNG grid of masks and mixed views on real images")
    )
    add_config_arguments(p)
    p.add_argument("--out", default="masks.png", help="output PNG (default: masks.png)")
    p.add_argument("--num-images", type=int, default=6, help="columns (default: 6)")
    p.add_argument("--seed", type=int, default=0, help="picks images, masks and lambdas")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. method_kwargs.grid_size=8")
    p.set_defaults(func=_show_masks)

    p = _intermixed(
        sub.add_parser("embed", help="2-D UMAP / t-SNE picture of validation features by class")
    )
    _common_eval_args(p, "output folder (default: <run>/embed/ beside the run)")
    p.add_argument(
        "--method",
        default="auto",
        help="auto (UMAP when umap-learn is installed, else t-SNE) | umap | tsne (default: auto)",
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=None,
        help="validation images drawn, picked with the run's seed; 0 = all, at most the "
        "split's size (default: 2000, or all when the split is smaller)",
    )
    p.set_defaults(func=_embed)

    p = sub.add_parser("compare", help="Markdown table + plots for several run folders")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="compare", help="output folder (default: ./compare)")
    p.set_defaults(func=_compare)
