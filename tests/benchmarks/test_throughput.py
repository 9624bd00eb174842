"""benchmarks/throughput.sh --tiny --end-to-end (CPU): every lever measured or said n/a, ratios
that agree with the img/s figures, FLOPs, the peak, and the results files with the command; the
rounds (an untimed warm-up round, figures from MIN_ROUNDS rounds only, a job that raises
dropped), the budget's priorities, the hard timeout and --end-to-end without data."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from tests.benchmarks.helpers import (
    CIFAR10_SOURCE,
    REPO,
    load,
    needs_cifar,
    positive,
    run_gpu_script,
)

sys.path.insert(0, str(REPO / "benchmarks"))

import throughput  # noqa: E402

GUARD = "solo_mixmask/callbacks/nonfinite.py"  # where the NaN/inf guard reads the loss
HAVE_CIFAR = not needs_cifar.args[0]


def test_throughput_script_parses():
    proc = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "throughput.sh")])
    assert proc.returncode == 0


def checked(r):
    """A result is a figure from MIN_ROUNDS rounds or more, or n/a / failed with its reason."""
    if r["status"] == "n/a":
        assert r["reason"], r
        assert "images_per_s" not in r and "ratio" not in r, r
        return
    assert r["status"] == "ok", r
    assert r["rounds"] >= throughput.MIN_ROUNDS
    assert positive(r["images_per_s"]) and math.isfinite(r["images_per_s"])
    assert r["ratio"] == pytest.approx(r["images_per_s"] / r["current_images_per_s"])


def test_throughput_tiny_measures_every_lever_on_cpu(tmp_path):
    # --end-to-end where the CIFAR-10 tars are (it is an error without them); the rest is
    # checked either way, and the test says it skipped the end-to-end part
    args = ["--tiny", *(["--end-to-end"] if HAVE_CIFAR else [])]
    start = time.perf_counter()
    stdout = run_gpu_script("throughput.sh", *args, out=tmp_path, timeout=400).stdout
    print(f"throughput.sh {' '.join(args)}: {time.perf_counter() - start:.0f} s")
    assert "mocov2plus img/s" in stdout and "of peak" in stdout
    res = load(tmp_path / "throughput_cpu_tiny.json")
    md = (tmp_path / "throughput_cpu_tiny.md").read_text()
    assert res["command"] in md and "--tiny" in res["command"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "throughput.log",
        "throughput_cpu_tiny.json",
        "throughput_cpu_tiny.md",
    ]
    assert res["device"] == "cpu" and res["settings"]["tiny"] is True and res["errors"] == []
    assert res["complete"] is True and "stopped" not in res
    assert res["settings"]["compile_backend"] == "eager"  # dynamo without code generation
    assert res["machine"]["load_average_1min"] is not None and res["machine"]["torch"]
    assert set(res["levers"]) == set(throughput.LEVERS)
    # every phase ran its untimed warm-up round, then the rounds a figure needs
    for phase in ("levers", "combined"):
        rounds = res["phase_rounds"].get(phase)
        if rounds:
            assert rounds["warm_up_round_s"] > 0
            assert rounds["timed_rounds"] >= throughput.MIN_ROUNDS
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
        # the same ops with next to no arithmetic; how it compares with the step is a timing
        # (a GPU figure), not checked here: on the tiny CPU network the two are alike
        floor = r["host_floor"]
        assert floor["status"] == "ok" and 0 < floor["step_ms"]
        assert floor["step_over_floor"] == pytest.approx(r["current"]["step_ms"] / floor["step_ms"])
    assert not set(res["winners"]) & throughput.REFERENCES  # recipe changes never win
    data = res["data_path"]  # the in-memory data path, eager and compiled (eager backend here)
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
        assert positive(knn[dtype]["images_per_s"]) and knn[dtype]["rounds"] >= 3
    assert knn["bfloat16"]["ratio"] == pytest.approx(
        knn["bfloat16"]["images_per_s"] / knn["float32"]["images_per_s"]
    )
    if not HAVE_CIFAR:
        assert "end_to_end" not in res
        pytest.skip(f"end-to-end part not run: CIFAR-10 JPEG tars absent from {CIFAR10_SOURCE}")
    e2e = res["end_to_end"]
    assert list(e2e) == [
        f"{label}/{m}" for m in throughput.E2E_ORDER for label in ("current", "combined")
    ]
    for m in throughput.METHODS:
        run = e2e[f"current/{m}"]
        assert run["status"] == "ok" and run["epochs"] == 2 and run["train_images"] == 80
        assert positive(run["images_per_s_whole_run"])
        assert run["training_batches_clock"] == "host"  # CUDA: "cuda events"
        # the images trained (whole batches), not epochs x dataset
        assert 0 < run["images_trained"] <= run["epochs"] * run["train_images"]
        assert run["images_per_s_whole_run"] == pytest.approx(
            run["images_trained"] / run["wall_seconds"]
        )
        # epoch 2's figures, read off its epoch line (tiny: the k-NN runs every epoch)
        assert run["steady_epoch"] == throughput.STEADY_EPOCH and run["steady_epoch_evaluated"]
        assert positive(run["steady_images_per_s_training_batches"])
        assert run["steady_images_per_s_wall"] == pytest.approx(
            run["images_trained"] / run["epochs"] / run["steady_epoch_wall_s"]
        )
        combined = e2e[f"combined/{m}"]
        if res["combined_settings"]:
            assert combined["status"] == "ok" and combined["settings"] == res["combined_settings"]
            assert combined["steady_images_per_s_wall_ratio"] == pytest.approx(
                combined["steady_images_per_s_wall"] / run["steady_images_per_s_wall"]
            )
        else:
            assert combined["status"] == "n/a" and "no lever won" in combined["reason"]
    assert "## End to end" in md and "ratio to current" in md


def jobs_counting(calls, slow_first=(), raises_on=None):
    """Jobs that count their calls; ``slow_first`` sleep 0.3 s on their first call (a
    recompile), ``raises_on`` = (name, call) raises on that call."""

    def job(name):
        def call():
            calls[name] = calls.get(name, 0) + 1
            if name in slow_first and calls[name] == 1:
                time.sleep(0.3)
            if raises_on == (name, calls[name]):
                raise RuntimeError("simulated CUDA error in a timed round")

        return call

    return {name: job(name) for name in ("current", "lever", "other")}


ROUNDS_BENCH = SimpleNamespace(args=SimpleNamespace(max_rounds=4))


def test_rounds_leave_the_first_call_out_of_the_figures():
    # compile + batch_online_forwards recompiled in the first interleaved round (23 s against
    # 1.4 s): it was timed, a ratio of 0.005 reported with exit status 0
    calls = {}
    jobs = jobs_counting(calls, slow_first=("lever",))
    rounds = throughput.timed_rounds(jobs, ROUNDS_BENCH, time.perf_counter() + 60)
    assert rounds.warm_up_s >= 0.3 and not rounds.failed
    assert [len(t) for t in rounds.times.values()] == [4, 4, 4]
    assert max(rounds.times["lever"]) < 0.1


def test_rounds_past_the_deadline_give_no_figure():
    # one round ran (and made the figure) even past the deadline; now none does, and fewer than
    # MIN_ROUNDS timed rounds make no figure
    calls = {}
    rounds = throughput.timed_rounds(jobs_counting(calls), ROUNDS_BENCH, time.perf_counter() - 1)
    assert all(t == [] for t in rounds.times.values())
    rates = throughput.rates(
        throughput.Rounds(
            {"a": [0.1, 0.1], "b": [0.1, 0.2, 0.1], "c": []}, {"c": "RuntimeError: x"}
        ),
        {"a": 10, "b": 10, "c": 10},
    )
    assert rates["a"] == {
        "status": "n/a",
        "reason": "too few rounds: 2 timed before the deadline, 3 needed",
    }
    assert rates["b"] == {"status": "ok", "images_per_s": pytest.approx(100.0), "rounds": 3}
    assert rates["c"] == {"status": "failed", "error": "RuntimeError: x"}


def test_a_job_that_raises_in_a_round_is_dropped_and_the_others_go_on():
    calls = {}
    jobs = jobs_counting(calls, raises_on=("lever", 3))  # the second timed round
    rounds = throughput.timed_rounds(jobs, ROUNDS_BENCH, time.perf_counter() + 60)
    assert rounds.failed == {"lever": "RuntimeError: simulated CUDA error in a timed round"}
    assert len(rounds.times["lever"]) == 1 and len(rounds.times["other"]) == 4
    assert calls["lever"] == 3 and calls["other"] == 5


def test_epoch_lines_give_each_epochs_figures():
    seen = []
    lines = throughput.EpochLines(SimpleNamespace(write=seen.append, flush=lambda: None))
    lines.write("epoch 1/3: nce_loss 6.8695, embedding_std 0.0505 (spread 0.0884), 5230 img/s")
    lines.write(", 10.4 s\nepoch 2/3: nce_loss 6.1, 26000 img/s, 2.2 s\nother line\n")
    lines.write("epoch 3/3: nce_loss 5.9, k-NN top-1 48.99%, 25000 img/s, 3.5 s\n")
    lines.write("epoch 4/4: 1.5 s\n")
    assert lines.epochs == {
        1: (5230.0, 10.4, False),
        2: (26000.0, 2.2, False),
        3: (25000.0, 3.5, True),
        4: (None, 1.5, False),
    }
    assert "".join(seen).count("\n") == 5  # passed on as it came


def test_budget_keeps_time_for_what_matters_more():
    # a compiled lever started only with 120 s left, and the end-to-end runs took half the
    # budget up front: compile and CUDA graphs were cut while the runs were kept. Now each
    # costly item keeps time for the items still to come that rank as high or higher: the
    # levers (they decide the recommendation), then the winners, then the runs end to end
    bench = throughput.Bench(throughput.parse_args(["--tiny", "--end-to-end"]))
    bench.step_s = {"mocov2plus": 0.5, "mixmask": 1.0}
    bench.compiled_measured(30.0)
    assert bench.compile_first_s == 30.0  # the first measure replaces --compile-reserve-s
    rounds = bench.estimate("lever_rounds")
    assert bench.estimate("compile") == bench.estimate("reduce_overhead") == 60.0
    e2e = bench.estimate("end_to_end")
    assert e2e > 4 * throughput.TINY_ESTIMATES["e2e_fixed_s"] + 2 * 30.0
    # the compile levers and the levers' rounds fit, not the winners' phase besides
    bench.deadline = time.perf_counter() + 60.0 + rounds + 5
    assert bench.affords("compile", 60.0) is None
    bench.pending.discard("compile")  # built
    assert bench.affords("reduce_overhead", 60.0) is None
    why = bench.affords("combined", 60.0)
    assert why.startswith("budget: ") and why.endswith("kept for lever_rounds, reduce_overhead")
    bench.pending -= {"lever_rounds", "reduce_overhead", "combined"}
    # time for MixMask's end-to-end pair, not for MoCo v2's: the data path keeps that one's
    mixmask_pair, moco_pair = bench.e2e_pairs()
    assert e2e == pytest.approx(mixmask_pair + moco_pair)
    bench.deadline = time.perf_counter() + mixmask_pair + 0.5
    assert bench.affords("data_path_compiled", 1.0).endswith(
        f"~{mixmask_pair:.0f} s kept for end_to_end"
    )
    assert bench.affords("end_to_end", mixmask_pair) is None
    # what can no longer fit keeps nothing: the data path goes first then
    bench.deadline = time.perf_counter() + mixmask_pair / 2
    assert bench.reserve(throughput.RANK["data_path_compiled"], but="data_path_compiled") == {}
    assert bench.affords("data_path_compiled", 1.0) is None


def test_a_lever_that_raises_in_a_round_keeps_the_run_and_markdown_renders_gpu_shapes(
    tmp_path, monkeypatch
):
    # an exception inside a timed round lost every result (exit 1, no JSON): now that variant
    # is failed, the run goes on, the results are written and the exit status is 2. Then what
    # only a GPU run produces (host-sync counts, CUDA-graph levers, end-to-end rows that failed
    # or did not fit) is rendered from the run's JSON, since no GPU runs the tests.
    levers = {n: throughput.LEVERS[n] for n in ("lagged_loss_check", "ema_two_foreach")}
    levers["reduce_overhead"] = throughput.LEVERS["reduce_overhead"]  # n/a on a CPU
    monkeypatch.setattr(throughput, "LEVERS", levers)
    built = throughput.Bench.step

    class Raising:
        """MixMask's lagged_loss_check step, raising on its 4th call: the build makes 2 (the
        warm-up step, the op count), the warm-up round 1, then comes a timed round."""

        def __init__(self, real):
            self.real, self.model, self.calls = real, real.model, 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 4:
                raise RuntimeError("simulated CUDA error in a timed round")
            return self.real(batch)

    def step(self, method, settings):
        real = built(self, method, settings)
        if settings.get("performance.loss_check_lag") == 2 and method == "mixmask":
            return Raising(real)
        return real

    monkeypatch.setattr(throughput.Bench, "step", step)
    threads = torch.get_num_threads()
    try:
        status = throughput.main(["--tiny", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # --tiny takes one thread
    assert status == throughput.FAILED
    res = load(tmp_path / "throughput_cpu_tiny.json")
    assert res["complete"] is True
    failed = res["levers"]["lagged_loss_check"]["mixmask"]
    assert failed["status"] == "failed" and "simulated CUDA error" in failed["error"]
    assert res["errors"] == [f"lagged_loss_check/mixmask: {failed['error']}"]
    checked(res["levers"]["ema_two_foreach"]["mixmask"])
    assert res["levers"]["lagged_loss_check"]["mocov2plus"]["status"] == "ok"
    assert positive(res["methods"]["mixmask"]["current"]["images_per_s"])
    for m in throughput.METHODS:
        res["methods"][m]["current"]["host_syncs"] = {"count": 0, "first": []}
        res["levers"]["reduce_overhead"][m] = {"status": "failed", "error": "RuntimeError: x"}
        res["combined"][m]["host_syncs"] = {"count": 2, "first": ["a", "b"]}
        prof = res["methods"][m]["profile"]
        prof.update(device_busy_ms=5.0, device_busy_share=0.25, kernel_launches=812.0)
        prof["clock"] = "device"
    res["end_to_end"] = {
        "current/mixmask": {"status": "failed", "error": "RuntimeError: no memory"},
        "current/mocov2plus": {"status": "n/a", "reason": "budget: 10 s left at its turn"},
    }
    res["errors"] = ["reduce_overhead/mixmask: RuntimeError: x"]
    res["methods"]["mixmask"]["host_floor"] = {
        "status": "failed",
        "error": "RuntimeError: cuDNN refused 2 channels",
    }
    res["complete"], res["stopped"] = False, "stopped by SIGTERM (the hard timeout)"
    md = throughput.markdown(res)
    assert "failed: RuntimeError: cuDNN refused 2 channels" in md  # a failed floor, not a crash
    assert "'current': 0" in md and "'combined': 2" in md
    assert "failed: RuntimeError: x" in md and "RuntimeError: no memory" in md
    assert "budget: 10 s left" in md and "Errors: reduce_overhead/mixmask" in md
    assert "| 5.00 (25%) | 812 |" in md  # the device's busy time against the step's
    assert "**Incomplete**: stopped by SIGTERM" in md
    # a run that reached only its first phase still renders
    partial = {k: res[k] for k in ("command", "device", "device_name", "machine", "settings")}
    partial.update(wall_s=3.0, phase_seconds={"current path": 3.0}, complete=False, errors=[])
    assert "Incomplete" in throughput.markdown(partial)


def test_winners_are_the_best_of_each_group_and_never_a_reference():
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


def test_end_to_end_without_data_is_an_error_before_any_work(tmp_path):
    # it skipped the end-to-end part (exit 0) when the tars were missing or did not unpack
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    start = time.perf_counter()
    proc = run_gpu_script(
        "throughput.sh",
        "--tiny",
        "--end-to-end",
        out=out,
        timeout=120,
        env={"SOLO_MIXMASK_CIFAR10": str(empty)},
        status=throughput.NO_DATA,
    )
    assert time.perf_counter() - start < 60
    assert f"error: no CIFAR-10 under {empty}" in proc.stderr
    assert not list(out.glob("throughput_*"))
    assert throughput.main(["--tiny", "--end-to-end", "--data", str(empty)]) == throughput.NO_DATA


def test_a_short_budget_cuts_items_as_na_and_writes_everything_in_time(tmp_path):
    # BUDGET_S covers the script, setting up included: what does not fit is "n/a: budget",
    # never a figure, and the results are complete before the hard timeout
    start = time.perf_counter()
    run_gpu_script("throughput.sh", "--tiny", out=tmp_path, timeout=150, env={"BUDGET_S": "60"})
    assert time.perf_counter() - start < 60 + 20  # the hard stop's SIGTERM comes at 80 s
    res = load(tmp_path / "throughput_cpu_tiny.json")
    assert res["complete"] is True and res["errors"] == []
    results = [r for per in res["levers"].values() for r in per.values()]
    results += list(res.get("combined", {}).values())
    for r in results:
        checked(r)
    assert any("budget" in r.get("reason", "") for r in results)


def test_sigterm_writes_the_results_so_far(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "benchmarks" / "throughput.py"),
            "--tiny",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("levers: building"):
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=60)
    assert proc.returncode == throughput.STOPPED
    res = load(tmp_path / "throughput_cpu_tiny.json")
    assert res["complete"] is False and "SIGTERM" in res["stopped"]
    assert positive(res["methods"]["mixmask"]["flops_per_step"])  # the phases done are kept
    for per in res["levers"].values():
        for r in per.values():
            checked(r)


def test_device_time_leaves_out_the_optimisers_range_mirrored_on_the_gpu(monkeypatch):
    """On CUDA the profiler mirrors ``Optimizer.step``'s record_function range on the GPU
    timeline; counting it would count the SGD kernels twice and list the range as a kernel."""
    from torch.autograd import DeviceType

    def event(key, us, annotation=False, device=DeviceType.CUDA):
        return SimpleNamespace(
            key=key,
            device_type=device,
            self_device_time_total=us,
            self_cpu_time_total=0.0,
            count=1,
            is_user_annotation=annotation,
        )

    events = [
        event("conv_kernel", 9600.0),
        event("multi_tensor_apply_kernel", 400.0),
        event("Optimizer.step#SGD.step", 420.0, annotation=True),
        event("cudaLaunchKernel", 0.0, device=DeviceType.CPU),
    ]

    class FakeProfile:
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def key_averages(self):
            return events

    monkeypatch.setattr(torch.profiler, "profile", FakeProfile)
    monkeypatch.setattr(throughput, "cuda_sync", lambda: None)
    step = SimpleNamespace(model=SimpleNamespace(compile_backend="inductor"))
    step_call = type("Step", (), {"model": step.model, "__call__": lambda self, batch: None})()
    out = throughput.step_profile(SimpleNamespace(cuda=True), step_call, None, steps=1)
    assert out["device_busy_ms"] == pytest.approx(10.0)
    assert [row["name"] for row in out["top"]] == ["conv_kernel", "multi_tensor_apply_kernel"]
