"""benchmarks/throughput.sh --tiny --end-to-end (CPU): every lever measured or said n/a, ratios
that agree with the img/s figures, FLOPs, the peak, and the results files with the command."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from tests.benchmarks.helpers import REPO, load, positive, run_gpu_script

sys.path.insert(0, str(REPO / "benchmarks"))

import throughput  # noqa: E402

GUARD = "solo_mixmask/callbacks/nonfinite.py"  # where the NaN/inf guard reads the loss


def test_throughput_script_parses():
    proc = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "throughput.sh")])
    assert proc.returncode == 0


def test_throughput_tiny_measures_every_lever_on_cpu(tmp_path):
    stdout = run_gpu_script("throughput.sh", "--tiny", "--end-to-end", out=tmp_path, timeout=300)
    assert "mocov2plus img/s" in stdout and "of peak" in stdout
    res = load(tmp_path / "throughput_cpu_tiny.json")
    md = (tmp_path / "throughput_cpu_tiny.md").read_text()
    assert res["command"] in md and "--tiny" in res["command"]
    assert (tmp_path / "throughput.log").is_file()
    assert res["device"] == "cpu" and res["settings"]["tiny"] is True and res["errors"] == []
    assert res["machine"]["load_average_1min"] is not None and res["machine"]["torch"]
    assert set(res["levers"]) == set(throughput.LEVERS)

    def checked(r):
        if r["status"] == "n/a":
            assert r["reason"], r
            return
        assert r["status"] == "ok", r
        assert positive(r["images_per_s"]) and math.isfinite(r["images_per_s"])
        assert r["ratio"] == pytest.approx(r["images_per_s"] / r["current_images_per_s"])

    for name, per_method in res["levers"].items():
        assert set(per_method) == set(throughput.METHODS), name
        for r in per_method.values():
            checked(r)
    for r in res["combined"].values():
        checked(r)
    assert res["levers"]["reduce_overhead"]["mixmask"]["status"] == "n/a"  # no CUDA graphs
    assert res["levers"]["compile"]["mixmask"]["status"] == "ok"
    # winners follow the rule, and their settings are the combination's
    for name in res["winners"]:
        assert res["levers"][name]["mixmask"]["geomean_ratio"] > throughput.WIN
        for key, value in throughput.LEVERS[name][0].items():
            assert res["combined_settings"][key] == value
    for m in throughput.METHODS:
        r = res["methods"][m]
        assert r["flops_per_step"] > 0 and positive(r["current"]["images_per_s"])
        assert r["current"]["tflops"] == pytest.approx(
            r["flops_per_image"] * r["current"]["images_per_s"] / 1e12
        )
        assert (
            0
            < r["current"]["peak_fraction"]
            == pytest.approx(r["current"]["tflops"] / res["peak"]["tflops"])
        )
        assert r["current"]["host_syncs"].startswith("n/a")
        prof = r["profile"]  # where the step's time goes
        assert prof["clock"] == "host (CPU)" and "device_busy_ms" not in prof
        assert prof["dispatched_ops"] > 100
        # the one read of a step is the NaN/inf guard's (performance.loss_check_lag=0); lagged,
        # it reads a host copy
        assert [r.split(" at ")[1].split(":")[0] for r in prof["syncing_ops"]] == [GUARD]
        assert res["levers"]["lagged_loss_check"][m]["syncing_ops"] == []
        assert prof["top"] and all(t["ms"] > 0 and t["calls"] > 0 for t in prof["top"])
        assert r["best"]["variant"] not in throughput.REFERENCES
        # the best by its ratio in its own rounds (the phases' current paths run at other
        # speeds), scaled to the levers phase's current img/s
        best, ips = r["best"]["variant"], r["current"]["images_per_s"]
        variants = {"combined": res["combined"][m], **{n: v[m] for n, v in res["levers"].items()}}
        ratios = {
            n: v.get("ratio", 0.0) for n, v in variants.items() if n not in throughput.REFERENCES
        }
        assert r["best"]["tflops"] == pytest.approx(
            r["flops_per_image"] * max(1.0, *ratios.values()) * ips / 1e12
        )
        assert best == "current" or ratios[best] == max(ratios.values())
        floor = r["host_floor"]  # the same ops with next to no arithmetic: cheaper than the step
        assert 0 < floor["step_ms"] < r["current"]["step_ms"]
        assert floor["step_over_floor"] == pytest.approx(r["current"]["step_ms"] / floor["step_ms"])
    assert not set(res["winners"]) & throughput.REFERENCES  # recipe changes never win
    data = res["data_path"]  # the in-memory data path, eager and compiled (aot_eager here)
    assert data["eager"]["status"] == data["compiled"]["status"] == "ok"
    assert data["eager"]["aten_ops_per_batch"] > 50 and positive(data["eager"]["images_per_s"])
    ratio = data["compiled"]["images_per_s"] / data["eager"]["images_per_s"]
    assert data["compiled"]["ratio"] == pytest.approx(ratio)
    wins = data["compiled"]["wins"]
    assert wins == (ratio > throughput.WIN)
    assert (res["combined_settings"].get("performance.compile_augmentations") is True) == wins
    assert "In-memory data path" in md
    assert "mixmask aten ops/step" in md and "host floor ms" in md
    for m in throughput.METHODS:  # ops per step (a GPU step bound by dispatch scales with them)
        ops = res["methods"][m]["profile"]["dispatched_ops"]
        assert res["levers"]["no_split_bn"][m]["dispatched_ops"] < 0.6 * ops  # split BN doubles
        assert res["levers"]["ema_two_foreach"][m]["dispatched_ops"] > ops  # mul_ + add_ > lerp_
        assert "dispatched_ops" not in res["levers"]["compile"][m]  # not countable compiled
    # one online backbone call for MixMask's two online inputs; MoCo v2 has one input
    batched = {
        m: res["levers"]["batch_online_forwards"][m]["dispatched_ops"] for m in throughput.METHODS
    }
    assert batched["mixmask"] < 0.8 * res["methods"]["mixmask"]["profile"]["dispatched_ops"]
    assert batched["mocov2plus"] == res["methods"]["mocov2plus"]["profile"]["dispatched_ops"]
    assert (
        res["methods"]["mixmask"]["flops_per_step"] > res["methods"]["mocov2plus"]["flops_per_step"]
    )
    assert res["peak"]["dtype"] == "float32" and "CPU" in res["peak"]["note"]
    knn = res["knn"]
    for dtype in ("float32", "bfloat16"):
        assert positive(knn[dtype]["images_per_s"])
    assert knn["bfloat16"]["ratio"] == pytest.approx(
        knn["bfloat16"]["images_per_s"] / knn["float32"]["images_per_s"]
    )
    e2e = res["end_to_end"]
    if "skipped" in e2e:  # no CIFAR-10 tars on this machine
        assert "CIFAR-10" in e2e["skipped"]
    else:
        for m in throughput.METHODS:
            run = e2e[f"current/{m}"]
            assert run["epochs"] == 1 and run["train_images"] == 80
            assert positive(run["images_per_s_whole_run"])
            assert run["training_batches_clock"] == "host"  # CUDA: "cuda events"
            # the images trained (whole batches), not epochs x dataset
            assert 0 < run["images_trained"] <= run["epochs"] * run["train_images"]
            assert run["images_per_s_whole_run"] == pytest.approx(
                run["images_trained"] / run["wall_seconds"]
            )


def test_markdown_renders_gpu_shaped_results(tmp_path):
    # what only a GPU run produces (host-sync counts, CUDA-graph levers, end-to-end rows that
    # failed or did not fit) rendered from a tiny run's JSON, since no GPU runs the tests
    threads = torch.get_num_threads()
    try:
        assert throughput.main(["--tiny", "--max-rounds", "1", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)  # --tiny takes one thread
    res = load(tmp_path / "throughput_cpu_tiny.json")
    for m in throughput.METHODS:
        res["methods"][m]["current"]["host_syncs"] = {"count": 0, "first": []}
        res["levers"]["reduce_overhead"][m] = {"status": "failed", "error": "RuntimeError: x"}
        res["combined"][m]["host_syncs"] = {"count": 2, "first": ["a", "b"]}
        prof = res["methods"][m]["profile"]
        prof.update(device_busy_ms=5.0, device_busy_share=0.25, kernel_launches=812.0)
        prof["clock"] = "device"
    res["end_to_end"] = {
        "current/mocov2plus": {"error": "RuntimeError: no memory"},
        "current/mixmask": {"skipped": "budget: 10 s left, ~80 s needed"},
    }
    res["errors"] = ["reduce_overhead/mixmask: RuntimeError: x"]
    res["methods"]["mixmask"]["host_floor"] = {"error": "RuntimeError: cuDNN refused 2 channels"}
    md = throughput.markdown(res)
    assert "failed: RuntimeError: cuDNN refused 2 channels" in md  # a failed floor, not a crash
    assert "{'current': 0, 'combined': 2}" in md
    assert "failed: RuntimeError: x" in md and "RuntimeError: no memory" in md
    assert "budget: 10 s left" in md and "Errors: reduce_overhead/mixmask" in md
    assert "| 5.00 (25%) | 812 |" in md  # the device's busy time against the step's
    assert throughput.winners({"compile": {"a": {"ratio": 1.1}, "b": {"ratio": 0.99}}}) == (
        {"performance.compile": True},
        ["compile"],
    )
    assert throughput.winners({"compile": {"a": {"ratio": 1.1}, "b": {"status": "n/a"}}}) == (
        {},
        [],
    )
    assert throughput.winners({"no_split_bn": {"a": {"ratio": 1.8}, "b": {"ratio": 1.9}}}) == (
        {},
        [],
    )
