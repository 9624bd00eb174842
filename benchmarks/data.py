"""Is the training data pipeline or the training step the bottleneck? And how much memory?

Measured in one run, with the demo config (``configs/pretrain/fashion_mnist/mixmask.yaml``):

1. loader images/s (two augmented views per image) for Fashion-MNIST and for a generated
   ImageFolder of JPEGs, with 0, 1 and 2 workers (steady state, after the first batch; the
   first batch's latency is reported apart);
2. the bare training step's images/s on synthetic batches of the same shape;
3. end to end: the same training steps fed by the real loader with the demo's default
   workers; a loader-bound run would be clearly slower than step 2;
4. the peak memory of a short demo-like run (``run_pretrain`` with the demo config for a few
   steps, k-NN monitor included) in a child process: the main process's peak RSS
   (``getrusage``), the largest worker's, and the peak footprint of the whole process tree
   (polled every 0.1 s: summed PSS, which splits shared pages among the processes, and summed
   RSS, which counts them once per process, an upper bound).

Results: ``benchmarks/results/data.{json,md}``. Note that on a 2-core machine the loader's
workers and the training step share the same cores: (3) is the figure that decides.

    python benchmarks/data.py
    python benchmarks/data.py --smoke --out-dir /tmp/x   # seconds, for tests
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO,
    RESULTS,
    TINY_BACKBONE,
    build_trainer,
    command_line,
    machine,
    make_jpeg_folder,
    synthetic_batch,
    table,
    write_results,
)
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from solo_mixmask.cli import compose_config  # noqa: E402
from solo_mixmask.config.data_specs import data_spec  # noqa: E402
from solo_mixmask.data.loaders import build_train_loader  # noqa: E402

DEMO = "fashion_mnist/mixmask"
GOAL_LOADER_FACTOR = 2.0  # loader images/s >= 2x training images/s
GOAL_PEAK_GB = 4.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-name", default=DEMO)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=20, help="timed loader batches per setting")
    p.add_argument("--steps", type=int, default=6, help="timed training steps")
    p.add_argument("--jpegs", type=int, default=500)
    p.add_argument("--jpeg-size", type=int, default=96, help="side of the generated JPEGs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rss-steps", type=int, default=10, help="training batches of the RSS run")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--smoke", action="store_true", help="tiny everything (a test that it runs)")
    args = p.parse_args(argv)
    if args.smoke:
        args.workers, args.batches, args.steps, args.jpegs = [0, 1], 2, 2, 40
        args.jpeg_size, args.threads, args.rss_steps = 32, 1, 2
    return args


def smoke_overrides(smoke: bool) -> list[str]:
    if not smoke:
        return []
    return [
        f"backbone.kwargs.channels={TINY_BACKBONE['kwargs']['channels']}",
        "optimizer.batch_size=16",
        "method_kwargs.queue_size=64",
        "method_kwargs.proj_hidden_dim=32",
        "data.train_subset=64",
        "data.knn_train_subset=64",
        "data.val_subset=32",
    ]


def demo_cfg(args: argparse.Namespace, extra: list[str] | None = None) -> DictConfig:
    return compose_config(None, args.config_name, smoke_overrides(args.smoke) + (extra or []))


# --------------------------------------------------------------------------- loaders


def loader_speed(cfg: DictConfig, workers: int, batches: int) -> dict[str, float]:
    """Images/s of ``build_train_loader(cfg)`` over ``batches`` batches after the first one."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(cfg):
        cfg.data.num_workers = workers
    start = time.perf_counter()
    loader = build_train_loader(data_spec(cfg))
    it, epoch_batches = iter(loader), len(loader)
    first = next(it)
    first_s = time.perf_counter() - start
    batch_size, views = first[0].shape[0], len(first[1])
    seen, begin, used = 0, time.perf_counter(), 1
    while seen < batches:
        if used == epoch_batches:  # small sets (the JPEG folder): go on with the next epoch
            it, used = iter(loader), 0
        next(it)
        used += 1
        seen += 1
    seconds = time.perf_counter() - begin
    del it, loader
    return {
        "workers": workers,
        "images_per_s": seen * batch_size / seconds,
        "views_per_image": views,
        "first_batch_s": first_s,
        "timed_batches": seen,
        "batch_size": batch_size,
    }


# --------------------------------------------------------------------------- training


def step_speed(cfg: DictConfig, steps: int, loader_cfg: DictConfig | None = None) -> float:
    """Images/s of bare training steps of the demo model; fed by the real loader when
    ``loader_cfg`` is given, else by one synthetic batch of the same shape."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    trainer = build_trainer(cfg)
    size = int(cfg.augmentations[0].crop_size)
    batch_size = int(cfg.optimizer.batch_size)
    views = sum(int(a.num_crops) for a in cfg.augmentations)
    if loader_cfg is None:
        batch = synthetic_batch(batch_size, size, views)

        def batches():
            while True:
                yield batch
    else:
        loader = build_train_loader(data_spec(loader_cfg))

        def batches():
            while True:
                yield from loader

    source = batches()
    trainer.step(next(source))  # warm-up (and the workers' start-up)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(next(source))
    return steps * batch_size / (time.perf_counter() - start)


# --------------------------------------------------------------------------- memory

_RSS_CHILD = textwrap.dedent("""
    import json, resource, sys
    from solo_mixmask.cli import compose_config
    from solo_mixmask.run.pretrain import run_pretrain
    cfg = compose_config(None, sys.argv[1], sys.argv[2:])
    summary = run_pretrain(cfg)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("RSS_RESULT " + json.dumps({"self_kb": self_kb, "children_kb": child_kb,
                                      "steps": summary["steps"]}))
""")


def _field_kb(text: str, name: str) -> int:
    return next(
        (int(line.split()[1]) for line in text.splitlines() if line.startswith(name + ":")), 0
    )


def _tree_memory_kb(pid: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) in kB of ``pid`` and all its descendants (Linux /proc).

    PSS shares each page among the processes that map it, so its sum is the tree's real
    footprint; the RSS sum counts pages shared by forked workers once per worker.
    """
    rss = pss = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            rss += _field_kb(Path(f"/proc/{p}/status").read_text(), "VmRSS")
            pss += _field_kb(Path(f"/proc/{p}/smaps_rollup").read_text(), "Pss")
            for task in Path(f"/proc/{p}/task").iterdir():
                stack.extend(int(k) for k in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return rss, pss


def peak_memory(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Run a short demo-like pretraining in a child process and measure its memory."""
    overrides = (
        smoke_overrides(args.smoke)
        + [
            "max_epochs=1",
            f"limit_train_batches={args.rss_steps}",
            "progress_bar=false",
            f"checkpoint.dir={run_dir}",
        ]
        + (["data.num_workers=0"] if args.smoke else [])
    )
    cmd = [sys.executable, "-c", _RSS_CHILD, args.config_name, *overrides]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = _tree_memory_kb(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.1)
    out, err = proc.communicate()
    line = next((ln for ln in out.splitlines() if ln.startswith("RSS_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"the demo-like run failed ({proc.returncode}):\n{err[-3000:]}")
    res = json.loads(line.split(" ", 1)[1])
    return {
        "command": " ".join(cmd[:2] + ["<script>"] + cmd[3:]),
        "steps": res["steps"],
        "seconds": time.perf_counter() - start,
        "peak_rss_main_mb": res["self_kb"] / 1024,
        "peak_rss_largest_worker_mb": res["children_kb"] / 1024,
        "peak_rss_tree_mb": peak_rss / 1024,
        "peak_pss_tree_mb": peak_pss / 1024,
    }


# --------------------------------------------------------------------------- report


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Data pipeline vs training step (demo config)",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Config: {res['settings']['config']} (batch {res['settings']['batch_size']}, "
        f"{res['settings']['crop']} px, {res['settings']['views']} views), "
        f"{res['settings']['threads']} torch threads. Machine: {res['machine']}.",
        "",
    ]
    rows = []
    for name, runs in res["loaders"].items():
        for r in runs:
            rows.append(
                [
                    name,
                    r["workers"],
                    f"{r['images_per_s']:.0f}",
                    f"{r['first_batch_s']:.2f}",
                    f"{r['images_per_s'] / res['training']['images_per_s_synthetic']:.1f}x",
                ]
            )
    lines.append(
        table(["data", "workers", "loader img/s", "first batch s", "vs training img/s"], rows)
    )
    t = res["training"]
    lines += [
        "",
        f"Training step (bare, synthetic batches): {t['images_per_s_synthetic']:.1f} "
        f"img/s; fed by the Fashion-MNIST loader with {t['workers']} workers: "
        f"{t['images_per_s_with_loader']:.1f} img/s "
        f"({100 * t['images_per_s_with_loader'] / t['images_per_s_synthetic']:.0f}% of "
        "synthetic).",
    ]
    if res.get("memory"):
        m = res["memory"]
        lines += [
            "",
            f"Demo-like run ({m['steps']} steps + k-NN monitor, {m['seconds']:.0f} s): "
            f"peak RSS main process {m['peak_rss_main_mb']:.0f} MB, largest worker "
            f"{m['peak_rss_largest_worker_mb']:.0f} MB; whole process tree: "
            f"{m['peak_pss_tree_mb']:.0f} MB PSS (shared pages split among processes), "
            f"{m['peak_rss_tree_mb']:.0f} MB summed RSS (shared pages counted per "
            "process, an upper bound).",
        ]
    g = res["goals"]
    configured = g.get("configured_default_workers", g["default_workers"])
    workers = (
        f"the default {g['default_workers']} workers"
        if configured == g["default_workers"]
        else f"{g['default_workers']} workers (the default, {configured}, was not measured)"
    )
    lines += [
        "",
        "## Goals",
        "",
        f"- Fashion-MNIST loader >= 2x training images/s with {workers}: "
        f"{'met' if g['loader_2x_training'] else 'NOT met'} ({g['loader_over_training']:.1f}x)",
    ]
    if "peak_under_4gb" in g:
        lines.append(
            f"- peak memory under 4 GB: {'met' if g['peak_under_4gb'] else 'NOT met'} "
            f"({g['peak_gb']:.2f} GB PSS of the process tree; summed RSS "
            f"{g['peak_rss_sum_gb']:.2f} GB)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = demo_cfg(args)
    default_workers = int(cfg.data.num_workers)
    loaders: dict[str, list[dict[str, float]]] = {"fashion_mnist": [], "jpeg_folder": []}
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        folder = make_jpeg_folder(Path(tmp) / "jpegs", args.jpegs, args.jpeg_size)
        jpeg_cfg = demo_cfg(
            args,
            [
                "data.dataset=custom",
                f"data.train_path={folder}",
                f"data.val_path={folder}",
                "data.train_subset=null",
            ],
        )
        for w in args.workers:
            print(f"loader speed, {w} workers", file=sys.stderr, flush=True)
            loaders["fashion_mnist"].append(loader_speed(cfg, w, args.batches))
            loaders["jpeg_folder"].append(loader_speed(jpeg_cfg, w, args.batches))
        print("training step speed", file=sys.stderr, flush=True)
        synthetic = step_speed(cfg, args.steps)
        fed = step_speed(cfg, args.steps, loader_cfg=cfg)
        memory = None
        if not args.skip_rss:
            print("peak memory of a demo-like run", file=sys.stderr, flush=True)
            memory = peak_memory(args, Path(tmp) / "runs")
    default = next(
        (r for r in loaders["fashion_mnist"] if r["workers"] == default_workers),
        loaders["fashion_mnist"][-1],
    )
    goals: dict[str, Any] = {
        "default_workers": default["workers"],
        "configured_default_workers": default_workers,  # measured when equal to the above
        "loader_over_training": default["images_per_s"] / synthetic,
        "loader_2x_training": default["images_per_s"] >= GOAL_LOADER_FACTOR * synthetic,
    }
    if memory:
        goals["peak_gb"] = memory["peak_pss_tree_mb"] / 1024
        goals["peak_rss_sum_gb"] = memory["peak_rss_tree_mb"] / 1024
        goals["peak_under_4gb"] = goals["peak_gb"] < GOAL_PEAK_GB
    res = {
        "command": command_line(),
        "settings": {
            "config": args.config_name,
            "batch_size": int(cfg.optimizer.batch_size),
            "crop": int(cfg.augmentations[0].crop_size),
            "views": sum(int(a.num_crops) for a in cfg.augmentations),
            "threads": args.threads,
            "jpegs": args.jpegs,
            "jpeg_size": args.jpeg_size,
            "timed_loader_batches": args.batches,
            "timed_steps": args.steps,
            "smoke": args.smoke,
        },
        "machine": machine(),
        "loaders": loaders,
        "training": {
            "images_per_s_synthetic": synthetic,
            "images_per_s_with_loader": fed,
            "workers": default_workers,
        },
        "memory": memory,
        "goals": goals,
    }
    text = markdown(res)
    paths = write_results("data", res, text, args.out_dir)
    print(text)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return res


if __name__ == "__main__":
    main()
