"""The CIFAR-10 benchmarks in tiny mode on a handful of images from the shared JPEG tars:
accuracy.py's cifar_cpu profile, benchmarks/cifar_gpu.sh (memory_path.py + the cifar_gpu
profile) and augment_libs.py; the GPU profile's epoch planning, by hand."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.benchmarks.helpers import (
    REPO,
    load,
    needs_cifar,
    positive,
    run_gpu_script,
    run_script,
)

sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy  # noqa: E402


@needs_cifar
def test_cifar_cpu_profile_tiny_compares_both_methods_per_epoch(tmp_path):
    run_script("accuracy.py", "--profile", "cifar_cpu", "--tiny", "--out-dir", str(tmp_path))
    res = load(tmp_path / "accuracy_cifar_cpu_tiny.json")
    assert res["complete"] is True and res["errors"] == []
    assert [r["method"] for r in res["runs"]] == ["mocov2plus", "mixmask"]
    for run in res["runs"]:
        assert run["train_images"] == 80  # 8 images of each of the 10 classes
        assert [e for e, _ in run["curve"]] == [0, 1, 2]  # random init, then every epoch
        assert 0 <= run["knn_acc1"] <= 100
    assert 0 < res["raw_pixel_knn"] <= 100
    assert "method_kwargs.symmetric=false" in res["profile"]["recipe"]  # the shared recipe
    assert res["profile"]["data_format"] == "memory"
    md = (tmp_path / "accuracy_cifar_cpu_tiny.md").read_text()
    assert "| epoch | mocov2plus | mixmask | raw pixels |" in md
    assert (tmp_path / "accuracy_cifar_cpu_tiny.png").stat().st_size > 1000


@needs_cifar
def test_cifar_gpu_script_tiny_runs_on_cpu(tmp_path):
    # at most 8 files come back from a lent GPU machine (run_gpu_script checks): one log
    run_gpu_script("cifar_gpu.sh", "--tiny", out=tmp_path, timeout=400)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "accuracy_cifar_gpu_tiny.json",
        "accuracy_cifar_gpu_tiny.md",
        "accuracy_cifar_gpu_tiny.png",
        "cifar_gpu.log",
        "fresh_queue_loss_cifar_gpu_tiny.json",
        "fresh_queue_loss_cifar_gpu_tiny.md",
        "memory_path_gpu.json",
        "memory_path_gpu.md",
    ]
    log = (tmp_path / "cifar_gpu.log").read_text()
    for step in ("memory_path.py", "accuracy.py", "fresh_queue_loss.py"):
        assert f"cifar_gpu.sh: {step} exit status 0" in log
    acc = load(tmp_path / "accuracy_cifar_gpu_tiny.json")
    assert acc["complete"] and [r["method"] for r in acc["runs"]] == ["mocov2plus", "mixmask"]
    assert acc["profile"]["precision"] == "32-true"  # tiny: CPU
    fresh = load(tmp_path / "fresh_queue_loss_cifar_gpu_tiny.json")
    # both runs scored at initialisation and at their checkpoint (2 tiny epochs, one saved)
    runs = {r["method"]: r["epochs"] for r in fresh["runs"]}
    assert sorted(runs) == ["mixmask", "mocov2plus"]
    assert (
        [e["epoch"] for e in runs["mocov2plus"]] == [0, 2] == [e["epoch"] for e in runs["mixmask"]]
    )
    assert "mask_loss" in runs["mixmask"][1] and "mask_loss" not in runs["mocov2plus"][1]
    mem = load(tmp_path / "memory_path_gpu.json")
    assert mem["settings"]["device"] == "cpu"
    assert positive(mem["memory"]["images_per_s"]) and positive(mem["steps"]["mixmask"])
    assert mem["goals"]["data_over_step"] == pytest.approx(
        mem["memory"]["images_per_s"] / mem["steps"]["mixmask"]
    )
    assert positive(mem["end_to_end"]["memory_over_pil"])


#: A stand-in interpreter for cifar_gpu.sh ($PYTHON): answers gpu_env.sh's checks, logs each
#: benchmark script it is asked to run and exits with $STUB_<SCRIPT> (accuracy.py also makes a
#: run folder with checkpoints under --runs-dir, so that fresh_queue_loss.py runs).
STUB_PYTHON = r"""#!/usr/bin/env bash
[ "$1" = "-c" ] && { echo "torch stub"; exit 0; }
name=$(basename "$1" .py); echo "$name ${*:2}" >> "$STUB_CALLS"
if [ "$name" = accuracy ]; then
  while [ $# -gt 0 ]; do [ "$1" = --runs-dir ] && mkdir -p "$2/run/checkpoints"; shift; done
fi
var="STUB_${name^^}"; exit "${!var:-0}"
"""


@pytest.mark.parametrize(
    "codes, expected, tiny",
    [
        ({"MEMORY_PATH": "3", "FRESH_QUEUE_LOSS": "5"}, 3, True),
        ({"ACCURACY": "7"}, 7, True),
        ({"FRESH_QUEUE_LOSS": "5"}, 5, True),
        ({}, 0, False),
    ],
)
def test_cifar_gpu_script_runs_every_step_and_exits_with_the_first_failure(
    tmp_path, codes, expected, tiny
):
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    data = tmp_path / "cifar10"
    for split in ("train", "test"):
        (data / split).mkdir(parents=True)
    calls = tmp_path / "calls"
    env = {
        "PYTHON": str(stub),
        "STUB_CALLS": str(calls),
        "SOLO_MIXMASK_CIFAR10": str(data),
        **{f"STUB_{k}": v for k, v in codes.items()},
    }
    out = tmp_path / "out"
    args = ["--tiny"] if tiny else ["--epochs", "30"]
    proc = run_gpu_script("cifar_gpu.sh", *args, out=out, timeout=60, env=env, status=expected)
    lines = [line.split() for line in calls.read_text().splitlines()]
    assert [line[0] for line in lines] == ["memory_path", "accuracy", "fresh_queue_loss"]
    if not tiny:  # the training runs' budget: what is left of SLOT_S (570 s) less 60 s
        budget = lines[1][lines[1].index("--budget-minutes") + 1]
        assert 8.0 <= float(budget) <= 8.5 and lines[1][-2:] == ["--epochs", "30"]
    for script, code in (("memory_path", "MEMORY_PATH"), ("accuracy", "ACCURACY")):
        assert f"{script}.py exit status {codes.get(code, '0')}" in proc.stdout
    assert f"exit status {expected}" in proc.stdout.splitlines()[-1]


def test_augment_libs_tiny_times_our_batched_pipeline(tmp_path):
    run_script("augment_libs.py", "--tiny", "--out-dir", str(tmp_path))
    res = load(tmp_path / "augment_libs.json")
    assert positive(res["results"]["solo_mixmask"]["images_per_s"])
    assert ("kornia" in res["results"]) == res["kornia_installed"]


def test_gpu_profile_plans_epochs_from_the_budget():
    prof = replace(accuracy.PROFILES["cifar_gpu"], budget_minutes=10.0)
    # 97 steps per epoch of 50,000 images at batch 512, two methods: 0.02 + 0.03 s steps plus
    # 0.005 s of augmentation each, x1.35 Lightning overhead = 0.081 s per step-pair.
    cal = {
        "step_s": {"mocov2plus": 0.02, "mixmask": 0.03},
        "forward_img_s": 90_000.0,
        "device": "cuda",
        "data_batch_s": 0.005,
    }
    plan = accuracy.plan(prof, cal)
    eval_s = 1.5 * 60_000 / 90_000.0  # k-NN memory 50,000 + validation 10,000 images
    per_epoch = 97 * 1.35 * 0.06 + 2 * eval_s / 10
    fits = int((0.9 * 600 - 2 * (40 + eval_s)) // per_epoch)
    assert plan["epochs"] == min(100, fits // 10 * 10) == 50
    assert plan["eval_every"] == 10 and plan["steps_per_epoch"] == 97
    assert plan["estimated_s"] < 0.9 * 600
    fast = accuracy.plan(prof, {**cal, "step_s": {"mocov2plus": 0.002, "mixmask": 0.003}})
    assert fast["epochs"] == 100  # the target is the cap


@needs_cifar
def test_cifar_grid_tiny_reports_losses_and_collapse_per_condition(tmp_path):
    run_script(
        "cifar_grid.py",
        "--tiny",
        "--epochs",
        "1",
        "--conditions",
        "warmup_split_bn",
        "--parallel",
        "1",
        "--out-dir",
        str(tmp_path),
    )
    res = load(tmp_path / "cifar_grid_tiny.json")
    assert [(r["condition"], r["method"]) for r in res["runs"]] == [
        ("warmup_split_bn", "mocov2plus"),
        ("warmup_split_bn", "mixmask"),
    ]
    for run in res["runs"]:
        assert run["error"] is None and isinstance(run["collapsed"], bool)
        assert 0 < run["embedding_std"] <= 1 and run["series"]["nce_loss"]
        assert [e for e, _ in run["series"]["knn_acc1"]] == [1]  # not the init row
    mixmask = res["runs"][1]
    assert mixmask["series"]["mixed_loss"] and not res["runs"][0]["series"]["mixed_loss"]
    md = (tmp_path / "cifar_grid_tiny.md").read_text()
    assert "| warmup_split_bn | scheduler.warmup_epochs=2, method_kwargs.bn_splits=8" in md
    assert (tmp_path / "cifar_grid_tiny.png").stat().st_size > 1000


def test_grid_conditions_replace_the_base_recipe_keys():
    import cifar_grid

    merged = cifar_grid.with_overrides(("a=1", "b=2"), ("b=3", "c=4"))
    assert merged == ("a=1", "b=3", "c=4")
    for name, extra in cifar_grid.CONDITIONS.items():
        recipe = cifar_grid.with_overrides(cifar_grid.COLLAPSED_RECIPE, extra)
        keys = [o.split("=", 1)[0] for o in recipe]
        assert len(keys) == len(set(keys)), name  # hydra refuses a key given twice
    assert "scheduler.warmup_epochs=0" in cifar_grid.CONDITIONS["collapsed_recipe"]


def test_unpacked_copies_belong_to_their_source(tmp_path):
    # the unpacked folder was found by its name alone: a second source got the first one's images
    import tarfile

    from common import cifar10_folder

    def tars(name: str, payload: bytes):
        source = tmp_path / name
        source.mkdir()
        for split in ("train", "test"):
            image = tmp_path / f"{name}-{split}.jpg"
            image.write_bytes(payload)
            with tarfile.open(source / f"{split}.tar.gz", "w:gz") as tar:
                tar.add(image, arcname=f"{split}/cat/0.jpg")
        return source

    dest = tmp_path / "unpacked"
    first = cifar10_folder(tars("a", b"first"), 1, dest)
    assert (first / "train" / "cat" / "0.jpg").read_bytes() == b"first"
    again = cifar10_folder(tmp_path / "a", 1, dest)  # the same source: the copy is reused
    assert again == first
    second = cifar10_folder(tars("b", b"second"), 1, dest)
    assert (second / "train" / "cat" / "0.jpg").read_bytes() == b"second"


def _unpack_in_a_process(args: tuple[str, str]) -> list[bytes]:
    from common import cifar10_folder

    source, dest = args
    root = cifar10_folder(source, 40, Path(dest))
    return [p.read_bytes() for p in sorted((root / "train").glob("*/*.jpg"))]


def test_processes_unpacking_at_once_take_turns(tmp_path):
    # pytest-xdist workers unpacked the same copy at once: one deleted the files another was
    # deleting (FileNotFoundError), or read a file another was still writing
    import multiprocessing
    import tarfile

    source = tmp_path / "tars"
    source.mkdir()
    for split in ("train", "test"):
        with tarfile.open(source / f"{split}.tar.gz", "w:gz") as tar:
            for c in range(10):
                for i in range(60):
                    image = tmp_path / "image.jpg"
                    image.write_bytes(bytes([c, i]) * 2000)
                    tar.add(image, arcname=f"{split}/class{c}/{i:04d}.jpg")
    dest = tmp_path / "unpacked"
    for c in range(10):  # a copy of another source, to be replaced
        (dest / "train" / f"class{c}").mkdir(parents=True)
        for i in range(60):
            (dest / "train" / f"class{c}" / f"{i:04d}.jpg").write_bytes(b"old")
    (dest / ".complete").write_text("/another/source")

    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_unpack_in_a_process, [(str(source), str(dest))] * 4)
    expected = [bytes([c, i]) * 2000 for c in range(10) for i in range(40)]
    assert all(files == expected for files in results)
