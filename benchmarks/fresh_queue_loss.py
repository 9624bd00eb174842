"""Does a climbing InfoNCE loss mean a worse model, or only fresher negatives?

The loss a MoCo-family run logs scores each query against a queue of keys written during the
last ``queue_size / batch`` steps, by momentum encoders that were older than the current one.
While the encoder moves fast (high learning rate) those keys drift away from the current
embeddings: stale negatives that are easy to tell apart from the positive, which lowers the
logged loss. As the learning rate falls, the queue catches up and the logged loss can rise,
even though the model has not got worse.

This script separates the two. It scores the random initialisation of the run's seed, then each
saved checkpoint (``checkpoints/epoch*.ckpt``; ``checkpoint.frequency=1`` saves one per epoch),
on the same training batches. Each model is frozen (no step, no EMA update), in train mode as in
training. Its own momentum encoder first fills a queue of ``queue_size`` keys from other
training images, so no key is stale. For MixMask and Un-Mix it also scores each mixed term
(lambda-weighted, on the same masks for every model). The mean cosines of the positives
(``q.k``) and of the negatives (``q.queue``) are reported too, and beside each loss the
epoch mean the run logged (``train_nce_loss``, ``train_<mixer>_loss`` in ``logs/metrics.csv``).

    python benchmarks/fresh_queue_loss.py RUN_DIR [RUN_DIR ...] --tag cifar_cpu

Results: ``benchmarks/results/fresh_queue_loss[_<tag>].{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, command_line, machine, publish, table  # noqa: E402

from solo_mixmask.checkpoints.io import safe_load_checkpoint  # noqa: E402
from solo_mixmask.config.data_specs import data_spec  # noqa: E402
from solo_mixmask.data.loaders import build_train_loader  # noqa: E402
from solo_mixmask.eval.compare import epoch_curves  # noqa: E402
from solo_mixmask.eval.features import eval_device  # noqa: E402
from solo_mixmask.losses.mixed import mixed_loss  # noqa: E402
from solo_mixmask.losses.moco import moco_loss  # noqa: E402
from solo_mixmask.methods.mixed_branch import Mix  # noqa: E402
from solo_mixmask.run.pretrain import prepare_config, seed_quietly  # noqa: E402
from solo_mixmask.run.resume import epoch_checkpoints  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders of MoCo-family methods")
    p.add_argument(
        "--batches", type=int, default=16, help="batches of queries scored per model (default 16)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.batches < 1:
        p.error(f"--batches={args.batches} is not allowed: expected an integer >= 1")
    return args


class Batch(NamedTuple):
    """One training batch's two views ``(B, 3, H, W)`` and the mixes of the first view that
    the method's mixers draw (none for MoCo v2), kept so that every model is scored on the
    same images, augmentations and masks."""

    first: torch.Tensor
    second: torch.Tensor
    mixes: list[Mix]


def take_batches(model: Any, loader: Any, count: int, device: torch.device) -> list[Batch]:
    """The first ``count`` training batches, with the mixes ``model`` draws for each."""
    out: list[Batch] = []
    for _, views, _ in loader:
        first = views[0].to(device)
        mixes = model.draw_mixes(first) if getattr(model, "mixers", None) else []
        out.append(Batch(first, views[1].to(device), mixes))
        if len(out) == count:
            return out
    raise SystemExit(f"error: the training loader gave {len(out)} batches, {count} are needed")


@torch.no_grad()
def fresh_queue_scores(
    model: Any, batches: list[Batch], queue_size: int, temperature: float
) -> dict[str, float]:
    """``model`` frozen in train mode: its momentum keys of the first batches fill a queue of
    ``queue_size`` keys, then each later batch's queries (view 0) are scored against their keys
    (view 1) and that queue. Returns the mean InfoNCE ``loss`` (nats), the mean positive and
    negative cosines, and for each mix ``<mixer>_loss``: its lambda-weighted InfoNCE against the
    same keys and queue, as in training (means over the scored batches)."""
    model.train()
    keys: list[torch.Tensor] = []
    sums: dict[str, float] = {}
    scored = queries = 0
    for batch in batches:
        k = F.normalize(model.momentum_forward(batch.second)["z"].float(), dim=1)
        if sum(len(x) for x in keys) >= queue_size:
            queue = torch.cat(keys)[-queue_size:].T.contiguous()
            q = F.normalize(model.forward(batch.first)["z"].float(), dim=1)
            values = {
                "loss": moco_loss(q, k, queue, temperature),
                "pos_cos": (q * k).sum(dim=1).mean(),
                "neg_cos": (q @ queue).mean(),
            }
            pair_loss = partial(moco_loss, queue=queue, temperature=temperature, reduction="none")
            for mix in batch.mixes:
                pred = model.forward(mix.images)["z"].float()
                values[f"{mix.name}_loss"] = mixed_loss(pair_loss, pred, k, mix.lam, mix.partner)
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value.item()
            scored, queries = scored + 1, queries + len(q)
        keys.append(k)
    if not scored:
        raise SystemExit(
            f"error: {len(batches)} batches do not fill a queue of {queue_size} keys and leave "
            "one to score: raise --batches"
        )
    return {**{name: total / scored for name, total in sums.items()}, "queries": queries}


def in_run_losses(run_dir: Path) -> dict[int, dict[str, float]]:
    """Epochs trained -> the epoch-mean losses the run logged, named as
    :func:`fresh_queue_scores` names them: ``loss`` (``train_nce_loss``) and ``<mixer>_loss``
    (``train_<mixer>_loss``); empty without a CSV log."""
    out: dict[int, dict[str, float]] = {}
    for column, points in epoch_curves(run_dir).items():
        name = column.removeprefix("train_").removesuffix("_loss_epoch")
        if column.startswith("train_") and column.endswith("_loss_epoch") and name != "class":
            for epochs, value in points.items():
                out.setdefault(epochs, {})["loss" if name == "nce" else f"{name}_loss"] = value
    return out


def one_run(run_dir: Path, batches_scored: int, device: torch.device) -> dict[str, Any]:
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise SystemExit(f"error: {run_dir} has no config.yaml: is it a run folder?")
    method_cls, cfg = prepare_config(OmegaConf.load(cfg_path))
    seed_quietly(int(cfg.seed))
    model = method_cls(cfg).to(device)
    if not hasattr(model, "key_queue"):
        raise SystemExit(f"error: {run_dir} is a {cfg.method} run: it has no queue of keys")
    checkpoints = epoch_checkpoints(run_dir / "checkpoints")[::-1]  # oldest first
    if not checkpoints:
        raise SystemExit(
            f"error: {run_dir / 'checkpoints'} holds no epochNNN.ckpt to score: train with "
            "checkpoint.frequency=1 (one per epoch) or N (every N epochs)"
        )
    queue_size, temperature = model.key_queue.size, model.temperature
    spec = data_spec(cfg)
    loader = build_train_loader(spec)
    if hasattr(loader, "to_device"):
        loader.to_device(device)
    fill = math.ceil(queue_size / spec.batch_size)
    batches = take_batches(model, loader, fill + batches_scored, device)
    logged = in_run_losses(run_dir)
    rows = [
        {
            "epoch": 0,
            "in_run": {},
            **fresh_queue_scores(model, batches, queue_size, temperature),
        }
    ]
    for path in checkpoints:
        checkpoint = safe_load_checkpoint(path)
        model.load_state_dict(checkpoint["state_dict"])
        trained = int(checkpoint["epoch"]) + 1  # written at the end of epoch "epoch" (0-based)
        scores = fresh_queue_scores(model, batches, queue_size, temperature)
        rows.append({"epoch": trained, "in_run": logged.get(trained, {}), **scores})
    return {
        "run_dir": str(run_dir),
        "method": str(cfg.method),
        "seed": int(cfg.seed),
        "queue_size": queue_size,
        "temperature": temperature,
        "ln_queue_plus_1": math.log(queue_size + 1),
        "epochs": rows,
    }


def run_table(run: dict[str, Any]) -> str:
    """One row per scored model: the in-run and fresh-queue value of each loss, and the
    cosines."""
    losses = [name for name in run["epochs"][0] if name.endswith("loss")]

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    header = ["after epoch"]
    for name in losses:
        label = "nce loss" if name == "loss" else name.replace("_", " ")
        header += [f"{label}, in run (epoch mean)", f"{label}, fresh queue"]
    rows = []
    for r in run["epochs"]:
        row = [r["epoch"]]
        for name in losses:
            row += [fmt(r["in_run"].get(name)), fmt(r[name])]
        rows.append([*row, fmt(r["pos_cos"]), fmt(r["neg_cos"])])
    return table([*header, "pos cos", "neg cos"], rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = eval_device(args.device)
    runs = [one_run(r, args.batches, device) for r in args.runs]
    lines = [
        "# InfoNCE against a fresh queue, per saved epoch",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Machine: {machine()}.",
        "",
        "Each model frozen in train mode; its own momentum encoder fills the queue from other "
        "training images just before; the same batches for every model of a run. Epoch 0 is "
        "the random initialisation of the run's seed.",
    ]
    for run in runs:
        lines += [
            "",
            f"## {Path(run['run_dir']).name} ({run['method']}, seed {run['seed']}, queue "
            f"{run['queue_size']}, T {run['temperature']}; ln(K+1) = "
            f"{run['ln_queue_plus_1']:.2f}; {run['epochs'][0]['queries']} queries)",
            "",
            run_table(run),
        ]
    res = {"command": command_line(), "machine": machine(), "runs": runs}
    publish("fresh_queue_loss", args.tag, res, "\n".join(lines), args.out_dir)
    return res


if __name__ == "__main__":
    main()
