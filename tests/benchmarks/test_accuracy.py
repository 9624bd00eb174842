"""benchmarks/accuracy.py --smoke: runs, table, paired differences and the k-NN plot."""

from __future__ import annotations

import sys

import pytest

from tests.benchmarks.helpers import REPO, load, run_script
from tests.data.helpers import needs_fmnist

sys.path.insert(0, str(REPO / "benchmarks"))

import accuracy  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("accuracy")
    run_script("accuracy.py", "--smoke", "--out-dir", str(out))
    return out


@needs_fmnist
def test_smoke_runs_both_methods(result):
    res = load(result / "accuracy_smoke.json")
    assert res["errors"] == []
    assert [(r["method"], r["seed"]) for r in res["runs"]] == [("mocov2plus", 1), ("mixmask", 1)]
    for run in res["runs"]:
        assert 0 <= run["knn_acc1"] <= 100
        assert run["train_images"] == 64 and run["steps"] == 4  # 64 images, batch 16, 1 epoch
        epochs = [e for e, _ in run["curve"]]
        assert epochs == [0, 1]  # k-NN at initialisation, then after the epoch
        assert run["curve"][-1][1] == pytest.approx(run["knn_acc1"], abs=1e-3)
        # the network as built (summary.json): the config's zero init under timm's name
        assert run["backbone_kwargs"] == {"channels": [8, 16, 32, 64], "zero_init_last": True}
    assert 0 < res["raw_pixel_knn"] <= 100
    # the profile records the subset that ran (same_seed.py compares profiles)
    assert res["profile"]["train_subset"] == res["plan"]["train_subset"] == 64
    for run in res["runs"]:  # the offline probe of the final checkpoint, smoke settings
        lin = run["offline_linear"]
        assert 0 <= lin["acc1"] <= 100 and lin["train_images"] == 64 and lin["val_images"] == 32


@needs_fmnist
def test_aggregate_and_paired_difference(result):
    res = load(result / "accuracy_smoke.json")
    agg = res["aggregate"]
    moco, mix = (
        next(r for r in res["runs"] if r["method"] == m) for m in ("mocov2plus", "mixmask")
    )
    assert agg["mixmask"]["knn_acc1"]["mean"] == pytest.approx(mix["knn_acc1"])
    assert agg["mixmask"]["knn_acc1"]["std"] is None  # one seed: no spread, not 0
    md = (result / "accuracy_smoke.md").read_text()
    assert f"{mix['knn_acc1']:.2f} (n=1)" in md and "± 0.00" not in md
    assert mix["images_per_sec_clock"] == moco["images_per_sec_clock"] == "host"
    assert "timed by: host (summary.json `images_per_sec_clock`)" in md
    diff = agg["mixmask"]["diff_to_mocov2plus"]
    assert diff["mean"] == pytest.approx(mix["knn_acc1"] - moco["knn_acc1"])
    assert "diff_to_mocov2plus" not in agg["mocov2plus"]
    lin = agg["mixmask"]["offline_linear_diff_to_mocov2plus"]
    assert lin["mean"] == pytest.approx(
        mix["offline_linear"]["acc1"] - moco["offline_linear"]["acc1"]
    )


def test_aggregate_leaves_out_unknown_speeds_and_times():
    # a run finished by resume from its checkpoint has images_per_sec / wall_seconds null
    import sys

    from tests.benchmarks.helpers import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    def run(method, seed, ips):
        return {
            "method": method,
            "seed": seed,
            "knn_acc1": 50.0 + seed,
            "images_per_sec": ips,
            "wall_seconds": None if ips is None else 10.0,
        }

    runs = [run("mocov2plus", 1, 100.0), run("mocov2plus", 2, None), run("mixmask", 1, None)]
    agg = accuracy.aggregate(runs, ("mocov2plus", "mixmask"))
    assert agg["mocov2plus"]["images_per_sec"]["n"] == 1
    assert agg["mocov2plus"]["images_per_sec"]["mean"] == 100.0
    assert agg["mixmask"]["images_per_sec"] is None and agg["mixmask"]["wall_seconds"] is None
    assert agg["mocov2plus"]["knn_acc1"]["n"] == 2  # the accuracies are kept


def test_reuse_reruns_a_run_whose_config_differs(tmp_path):
    import sys

    from tests.benchmarks.helpers import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy
    from omegaconf import OmegaConf

    prof = accuracy.PROFILES["smoke"]
    cfg = accuracy.run_cfg(prof, "mixmask", 1, 64, tmp_path)
    saved = tmp_path / "config.yaml"
    filled = accuracy.filled_config(cfg)  # as the run fills it
    assert accuracy.config_differences(filled, saved) == [f"{saved} is missing"]
    OmegaConf.save(filled, saved)  # as the run saves it
    assert accuracy.config_differences(filled, saved) == []
    other = accuracy.run_cfg(
        accuracy.replace(
            prof, user_extra=("method_kwargs.mask_ratio=0.75",), extra_methods=("mixmask",)
        ),
        "mixmask",
        1,
        64,
        tmp_path,
    )
    assert accuracy.config_differences(accuracy.filled_config(other), saved) == [
        "method_kwargs.mask_ratio: 0.5 != 0.75"
    ]
    # checkpoints every epoch (what fresh_queue_loss.py scores) change no training setting
    three = accuracy.replace(prof, epochs=3)
    last_only = accuracy.run_cfg(three, "mixmask", 1, 64, tmp_path)
    every = accuracy.run_cfg(
        accuracy.replace(three, checkpoint_every=1), "mixmask", 1, 64, tmp_path
    )
    assert (last_only.checkpoint.frequency, every.checkpoint.frequency) == (3, 1)
    OmegaConf.save(accuracy.filled_config(last_only), saved)
    assert accuracy.config_differences(accuracy.filled_config(every), saved) == []
    # a run whose residual blocks started otherwise is rerun, though its config agrees: a
    # summary without backbone_kwargs is from before 2026-12-07, built with timm's zero init,
    # which the shipped configs keep (zero_init_residual: true)
    built = {"channels": [8, 16, 32, 64]}
    assert accuracy.built_differences(filled, {}) == []
    assert (
        accuracy.built_differences(filled, {"backbone_kwargs": {**built, "zero_init_last": True}})
        == []
    )
    assert accuracy.built_differences(filled, {"backbone_kwargs": built}) == [
        "zero_init_last: '<absent>' != True (backbone_kwargs)"  # another model, without it
    ]
    torchvision_init = accuracy.run_cfg(
        accuracy.replace(prof, extra=(*prof.extra, "backbone.kwargs.zero_init_residual=false")),
        "mixmask",
        1,
        64,
        tmp_path,
    )
    assert accuracy.built_differences(accuracy.filled_config(torchvision_init), {}) == [
        "zero_init_last: True != False (backbone_kwargs)"
    ]
    baseline = accuracy.run_cfg(
        accuracy.replace(
            prof, user_extra=("method_kwargs.temperature=0.1",), extra_methods=("mixmask",)
        ),
        "mocov2plus",
        1,
        64,
        tmp_path,
    )
    assert baseline.method_kwargs.temperature == 0.2  # --extra-methods leaves it alone
    assert (
        accuracy.run_cfg(
            accuracy.replace(prof, user_extra=("method_kwargs.temperature=0.1",)),
            "mocov2plus",
            1,
            64,
            tmp_path,
        ).method_kwargs.temperature
        == 0.1
    )


@needs_fmnist
def test_table_and_plot_written(result):
    md = (result / "accuracy_smoke.md").read_text()
    assert "| mocov2plus | 1 |" in md and "| mixmask | 1 |" in md
    assert "one seed only" in md and "Raw pixels" in md
    # the k the runs used: knn_eval.k (200) clamped to the 64-image memory, not "k=200"
    assert "k-NN (k=64, T=0.1): 32 validation images against a memory of 64" in md
    png = result / "accuracy_smoke.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_plan_fits_the_budget():
    """The budget arithmetic: subset = whole batches, within the dataset, time estimated."""
    import sys

    from tests.benchmarks.helpers import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    prof = accuracy.PROFILES["quick"]
    cal = {"step_s": {m: 0.5 for m in prof.methods}, "forward_img_s": 3000.0}
    p = accuracy.plan(prof, cal)
    assert p["train_subset"] % prof.batch_size == 0
    assert prof.batch_size * 2 <= p["train_subset"] <= 60_000
    # 12 runs x (10 s start + 4 evals of 6,000 images at 3000 / 1.5 img/s + a linear probe of
    # 10,000 + 10,000 images at the same speed) = 12 x (10 + 12 + 10) = 384 s fixed;
    # (0.9 x 1800 - 384) / (3 epochs x 1.25 x 3 seeds x 4 methods x 0.5 s) = 54.9 -> 54 steps
    assert accuracy.linear_images(prof) == 20_000
    assert p["steps_per_epoch"] == 54 and p["train_subset"] == 54 * 128
    assert p["estimated_s"] == pytest.approx(384 + 3 * 54 * 1.25 * 3 * 4 * 0.5)
    assert p["estimated_s"] <= 0.9 * 30 * 60
    # the results' profile is the planned one: its subset, not "all" (None)
    ran = accuracy.planned(prof, p)
    assert prof.train_subset is None and ran.train_subset == p["train_subset"]
    assert (ran.epochs, ran.eval_every) == (p["epochs"], p["eval_every"])


def test_byol_variants_are_paired_with_byol():
    """byol_* rows get a seed-by-seed difference to byol (k-NN and offline linear) and a line
    under the table; seeds without a byol run are left out of the pairs."""
    import sys

    from tests.benchmarks.helpers import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    def run(method, seed, knn, lin):
        return {
            "method": method,
            "seed": seed,
            "knn_acc1": knn,
            "offline_linear": {"acc1": lin},
            "wall_seconds": 1.0,
            "images_per_sec": 1.0,
        }

    runs = [
        run("byol", 1, 50.0, 60.0),
        run("byol", 2, 52.0, 61.0),
        run("byol_mixmask", 1, 51.0, 59.0),
        run("byol_mixmask", 2, 55.0, 63.0),
        run("byol_mixmask", 3, 99.0, 99.0),  # no byol run for seed 3: not paired
    ]
    agg = accuracy.aggregate(runs, ("byol", "byol_mixmask"))
    diff = agg["byol_mixmask"]["diff_to_byol"]
    assert (diff["n"], diff["mean"]) == (2, pytest.approx(2.0))  # (+1, +3)
    lin = agg["byol_mixmask"]["offline_linear_diff_to_byol"]
    assert (lin["n"], lin["mean"]) == (2, pytest.approx(0.5))  # (-1, +2)
    assert "diff_to_byol" not in agg["byol"] and "diff_to_mocov2plus" not in agg["byol_mixmask"]
    assert accuracy.own_baseline("mixmask") is None


@needs_fmnist
def test_sigterm_stops_the_benchmark_with_143(tmp_path):
    """A scheduler's SIGTERM ends the benchmark (exit 143) instead of starting the next run."""
    import os
    import signal
    import subprocess
    import sys

    from tests.benchmarks.helpers import REPO

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("OUT", None)
    cmd = [sys.executable, str(REPO / "benchmarks" / "accuracy.py"), "--smoke", "--epochs", "6"]
    proc = subprocess.Popen(
        [*cmd, "--no-linear", "--out-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch 1/6"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=180)
    output = "".join(seen) + rest
    assert proc.returncode == 143, output[-3000:]
    assert "run mocov2plus seed 1" in output and "run mixmask" not in output
    assert "error:" in output


def test_explicit_epochs_turn_off_the_budget_planning():
    import sys

    from tests.benchmarks.helpers import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    planned = accuracy.resolve_profile(accuracy.parse_args(["--profile", "cifar_gpu"]))
    assert planned.epochs_from_budget and planned.budget_minutes
    fixed = accuracy.resolve_profile(
        accuracy.parse_args(["--profile", "cifar_gpu", "--epochs", "30"])
    )
    assert (fixed.epochs, fixed.epochs_from_budget, fixed.budget_minutes) == (30, False, None)
    assert accuracy.plan(fixed, None)["epochs"] == 30


def test_explicit_epochs_with_a_budget_are_honoured_and_checked(capsys):
    # cifar_gpu.sh always passes a budget: --epochs 30 is then trained exactly (it planned 10
    # with the H200's fixed-recipe step times), and the budget only says whether it fits
    import sys

    from tests.benchmarks.helpers import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    args = ["--profile", "cifar_gpu", "--epochs", "30", "--budget-minutes", "7.5"]
    prof = accuracy.resolve_profile(accuracy.parse_args(args))
    assert prof.epochs == 30 and prof.budget_minutes == 7.5
    h200 = {  # calibrate()'s shape; step times of the committed H200 fixed-recipe run
        "device": "cuda",
        "forward_img_s": 100_000.0,
        "step_s": {"mocov2plus": 0.042, "mixmask": 0.066},
        "data_batch_s": 512 / 60_297,
    }
    slow = accuracy.plan(prof, h200)
    assert slow["epochs"] == 30 and slow["eval_every"] == 10
    assert slow["estimated_s"] > 0.9 * 60 * 7.5 and slow["over_budget"] is True
    fast = accuracy.plan(prof, {**h200, "step_s": {"mocov2plus": 0.021, "mixmask": 0.033}})
    assert fast["epochs"] == 30 and fast["over_budget"] is False
    # planned from the budget without --epochs, as before
    auto = accuracy.resolve_profile(accuracy.parse_args(args[:2] + args[4:]))
    assert accuracy.plan(auto, h200)["epochs"] == 10
    assert "over_budget" not in accuracy.plan(auto, h200)
    accuracy.warn_over_budget(prof, slow)
    err = capsys.readouterr().err
    assert err.startswith("warning: --epochs 30 ") and "7.5" in err and "\n" == err[-1]


@needs_fmnist
def test_same_seed_again_matches_its_baseline_exactly(result):
    # the same settings and seed on the CPU train bit for bit alike: every difference is 0
    run_script(
        "accuracy.py",
        "--smoke",
        "--no-linear",
        "--tag",
        "again",
        "--baseline",
        str(result / "accuracy_smoke.json"),
        "--out-dir",
        str(result),
    )
    res = load(result / "accuracy_smoke_again.json")
    same = res["same_seed"]
    assert same["differences"] == [] and same["unpaired"] == []  # --no-linear: not training
    assert [(p["method"], p["seed"]) for p in same["pairs"]] == [("mocov2plus", 1), ("mixmask", 1)]
    for pair in same["pairs"]:
        assert [e for e, *_ in pair["knn"]] == [0, 1]
        assert all(d == 0.0 for *_, d in pair["knn"])
        metrics = pair["last_epoch_metrics"]
        assert {"train_nce_loss", "train_embedding_std"} <= set(metrics)
        assert all(a == b for a, b in metrics.values())
    assert same["largest_knn_difference"] == 0.0
    md = (result / "accuracy_smoke_again.md").read_text()
    assert "## Same seed against `accuracy_smoke.json`" in md
    assert "Differs from the baseline in: nothing." in md


def test_a_baseline_that_is_not_an_accuracy_result_is_refused_before_training(tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text('{"levers": {}}')
    import subprocess
    import sys

    from tests.benchmarks.helpers import REPO

    proc = subprocess.run(
        [sys.executable, "benchmarks/accuracy.py", "--smoke", "--baseline", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert f"error: --baseline {bad} is not an accuracy.py result (.json)" in proc.stderr
    assert "plan:" not in proc.stderr  # nothing was planned or trained


def test_settings_from_a_throughput_result_become_overrides_the_config_accepts(tmp_path):
    import json
    import sys

    from tests.benchmarks.helpers import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import accuracy

    result = tmp_path / "throughput_h200.json"
    result.write_text(
        json.dumps(
            {
                "combined_settings": {
                    "performance.compile": True,
                    "performance.optimizer_impl": "fused",
                    "performance.channels_last": False,
                }
            }
        )
    )
    args = accuracy.parse_args(["--smoke", "--settings-from", str(result), "--extra", "seed=3"])
    prof = accuracy.resolve_profile(args)
    assert prof.user_extra == (
        "seed=3",
        "performance.compile=true",
        "performance.optimizer_impl=fused",
        "performance.channels_last=false",
    )
    cfg = accuracy.run_cfg(prof, "mixmask", 1, None)
    assert cfg.performance.compile is True and cfg.performance.channels_last is False
    assert cfg.performance.optimizer_impl == "fused"
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit, match="--settings-from .*other.json: not a throughput.py"):
        accuracy.winning_settings(tmp_path / "other.json")


def _save_run_config(tmp_path, extra):
    """A smoke mocov2plus run's config.yaml as the run writes it: filled by prepare_config,
    the classes found in the data and the run folder recorded. Returns its path."""
    from omegaconf import OmegaConf

    from solo_mixmask.run.pretrain import prepare_config

    prof = accuracy.PROFILES["smoke"]
    cfg = accuracy.run_cfg(accuracy.replace(prof, extra=prof.extra + extra), "mocov2plus", 1, 64)
    _, filled = prepare_config(cfg)
    OmegaConf.update(filled, "data.num_classes", 10, force_add=True)
    OmegaConf.update(filled, "checkpoint.run_dir", str(tmp_path / "elsewhere"), force_add=True)
    OmegaConf.save(filled, tmp_path / "config.yaml")
    return tmp_path / "config.yaml"


def test_reuse_compares_the_defaults_a_run_filled_in(tmp_path):
    # a run made with settings this invocation leaves at their defaults is not the plain run,
    # though the composed config (before the defaults are filled in) has none of their keys
    plain = accuracy.filled_config(
        accuracy.run_cfg(accuracy.PROFILES["smoke"], "mocov2plus", 1, 64, tmp_path)
    )
    assert accuracy.config_differences(plain, _save_run_config(tmp_path, ())) == []
    other = ("method_kwargs.bn_splits=4", "performance.knn_dtype=bfloat16")
    assert accuracy.config_differences(plain, _save_run_config(tmp_path, other)) == [
        "method_kwargs.bn_splits: 4 != 1",
        "performance.knn_dtype: 'bfloat16' != 'float32'",
    ]
    wider = ("+backbone.kwargs.drop_path_rate=0.5",)
    assert accuracy.config_differences(plain, _save_run_config(tmp_path, wider)) == [
        "backbone.kwargs.drop_path_rate: 0.5 != '<absent>'"
    ]


def test_reuse_compares_every_backbone_argument_the_run_was_built_with(tmp_path):
    cfg = accuracy.filled_config(
        accuracy.run_cfg(accuracy.PROFILES["smoke"], "mixmask", 1, 64, tmp_path)
    )
    built = {"channels": [8, 16, 32, 64], "zero_init_last": True}
    assert accuracy.built_differences(cfg, {"backbone_kwargs": built}) == []
    assert accuracy.built_differences(
        cfg, {"backbone_kwargs": {**built, "drop_path_rate": 0.5}}
    ) == ["drop_path_rate: 0.5 != '<absent>' (backbone_kwargs)"]
    assert accuracy.built_differences(cfg, {"backbone_kwargs": {**built, "channels": [8] * 4}}) == [
        "channels: [8, 8, 8, 8] != [8, 16, 32, 64] (backbone_kwargs)"
    ]


def test_the_profile_overrides_stay_with_every_method_under_extra_methods():
    # --extra-methods limits the user's --extra, never the profile's own overrides
    args = ["--smoke", "--extra", "method_kwargs.grid_size=4", "--extra-methods", "mixmask"]
    prof = accuracy.resolve_profile(accuracy.parse_args(args))
    moco, mix = (accuracy.run_cfg(prof, m, 1, 64) for m in ("mocov2plus", "mixmask"))
    for cfg in (moco, mix):  # the smoke profile's queue and projector
        assert (cfg.method_kwargs.queue_size, cfg.method_kwargs.proj_hidden_dim) == (64, 32)
    assert mix.method_kwargs.grid_size == 4
    gpu = accuracy.resolve_profile(accuracy.parse_args(["--profile", "cifar_gpu", *args[1:]]))
    assert "benchmark=true" in accuracy.overrides(gpu, "mocov2plus", 1, None)
    assert "method_kwargs.grid_size=4" not in accuracy.overrides(gpu, "mocov2plus", 1, None)
    typo = accuracy.parse_args([*args[:-1], "mixmsk"])
    with pytest.raises(accuracy.ConfigError, match="--extra-methods='mixmsk' is not allowed"):
        accuracy.resolve_profile(typo)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--extra", "method_kwargs.grid_sise=7"], "method_kwargs.grid_sise=7"),
        (["--methods", "mocov2plus", "mixmsk"], "mixmsk"),
        (["--plan", "--extra", "method_kwargs.grid_sise=7"], "method_kwargs.grid_sise=7"),
        (["--extra", "x=1", "--extra-methods", "mixmsk"], "--extra-methods='mixmsk'"),
    ],
)
def test_a_bad_setting_is_one_error_line_before_anything_runs(tmp_path, capsys, argv, named):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        accuracy.main(["--smoke", "--no-linear", "--out-dir", str(out), *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0] and "is not allowed" in errors[0], err
    assert "plan:" not in err and "Traceback" not in err and not out.exists()


def test_failed_runs_exit_1_after_the_others_are_written(tmp_path, monkeypatch, capsys):
    """A run that fails leaves the others' table (which says so) and exit status 1; the header
    shows the settings each method ran with, after every override."""

    def one_run(prof, method, seed, train_subset, run_dir, reuse):
        if method == "mixmask":
            raise RuntimeError("boom")
        return {
            "method": method,
            "seed": seed,
            "knn_acc1": 40.0,
            "knn_k": 200,
            "curve": [(0, 10.0), (1, 40.0)],
            "images_per_sec": 100.0,
            "wall_seconds": 1.0,
            "reused": False,
        }

    monkeypatch.setattr(accuracy, "one_run", one_run)
    monkeypatch.setattr(accuracy, "raw_pixel_knn", lambda *a: 50.0)
    monkeypatch.setattr(accuracy.torch, "set_num_threads", lambda n: None)
    argv = ["--profile", "quick", "--methods", "mocov2plus", "mixmask", "--seeds", "1"]
    argv += ["--epochs", "1", "--train-subset", "256", "--no-linear", "--out-dir", str(tmp_path)]
    argv += ["--extra", "optimizer.batch_size=64", "--extra-methods", "mixmask"]
    with pytest.raises(SystemExit) as stop:
        accuracy.main(argv)
    assert stop.value.code == 1
    assert "error: 1 of 2 runs failed" in capsys.readouterr().err
    res = load(tmp_path / "accuracy_quick.json")
    assert res["errors"] == ["mixmask seed 1: RuntimeError: boom"] and res["complete"]
    assert [r["method"] for r in res["runs"]] == ["mocov2plus"]
    md = (tmp_path / "accuracy_quick.md").read_text()
    assert "**1 of 2 runs failed**" in md and "| mocov2plus | 1 |" in md
    assert "mocov2plus: Backbone resnet18" in md and "batch 128, 1 epochs on 256" in md
    assert "mixmask: Backbone resnet18" in md and "batch 64, 1 epochs on 256" in md
    assert "Profile overrides (every method): none" in md
    assert (
        "Overrides given (--extra, --settings-from): ['optimizer.batch_size=64'] (for mixmask only)"
        in md
    )
    assert (tmp_path / "accuracy_quick.png").is_file()
