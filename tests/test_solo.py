"""solo_mixmask.solo: our methods inside real solo-learn (>= 1.0.6).

Tests marked ``needs_solo`` run only where ``import solo`` works (solo-learn installed from its
repository, with lightning 2.x and torchmetrics < 0.12 as it pins); elsewhere they are skipped
with that reason. The rest check the plug-in's behaviour without solo-learn and the shipped
configs/solo YAMLs, and run everywhere.
"""

from __future__ import annotations

import copy
import gzip
import math
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from solo_mixmask import cli
from solo_mixmask import solo as plugin
from solo_mixmask.core.batch_norm import SplitBatchNorm2d
from solo_mixmask.errors import ConfigError
from solo_mixmask.methods import ENTRIES
from solo_mixmask.methods import METHODS as ENGINE_METHODS
from solo_mixmask.methods.byol import BYOLLogic, BYOLOnSoloLogic
from solo_mixmask.methods.mixed_branch import MixedBranchLogic
from solo_mixmask.methods.mocov2plus import MoCoV2PlusLogic

try:
    import solo.methods  # noqa: F401

    SOLO_ERROR = ""
except Exception as err:  # ImportError, or a solo-learn that breaks on import
    SOLO_ERROR = repr(err)

needs_solo = pytest.mark.skipif(
    bool(SOLO_ERROR),
    reason=f"solo-learn is not importable here ({SOLO_ERROR}); install solo-learn >= 1.0.6 "
    "from its repository next to solo_mixmask (pip install -e ./solo-learn) to run this test",
)

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CONFIGS = plugin.solo_configs_root()
SHIPPED = sorted(f"{p.parent.name}/{p.stem}" for p in CONFIGS.glob("*/*.yaml"))
OUR_SOLO_METHODS = sorted(plugin.solo_methods())
#: ours on solo-learn's own BYOL (the rest are on its BaseMomentumMethod, with our MoCo step)
BYOL_SOLO_METHODS = sorted(n for n, entry in plugin.solo_methods().items() if entry[3] == "BYOL")
MOCO_SOLO_METHODS = sorted(set(OUR_SOLO_METHODS) - set(BYOL_SOLO_METHODS))
BYOL_SHIPPED = [n for n in SHIPPED if n.rpartition("/")[2] in BYOL_SOLO_METHODS]
MOCO_SHIPPED = [n for n in SHIPPED if n not in BYOL_SHIPPED]
BATCH, QUEUE, CLASSES = 10, 25, 5  # 25 is not a multiple of 10: the queue wraps mid-batch


# ----------------------------------------------------------------------------------- helpers
def compose(name: str, overrides: list[str] | None = None):
    """Compose ``configs/solo/<name>.yaml`` with hydra, as solo-learn's main does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    folder, _, stem = name.rpartition("/")
    with initialize_config_dir(config_dir=str(CONFIGS / folder), version_base="1.2"):
        cfg = hydra_compose(config_name=f"{stem}.yaml", overrides=overrides or [])
    OmegaConf.set_struct(cfg, False)
    return cfg


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Real Fashion-MNIST test images as RGB PNGs: train 6 x 5 classes, val 2 x 5 classes.

    Five classes because solo-learn's linear model asks for top-5 accuracy; the 10 validation
    images fit one batch, so even one validation batch holds every class (solo-learn's k-NN
    sizes its one-hot by the classes seen in validation).
    """
    if not FMNIST_DIR.is_dir():
        pytest.skip(
            f"Fashion-MNIST not installed at {FMNIST_DIR} (apt-get install dataset-fashion-mnist)"
        )
    root = tmp_path_factory.mktemp("fmnist")
    with gzip.open(FMNIST_DIR / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FMNIST_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for split, first, count in (("train", 0, 6), ("val", 6, 2)):
        for c in range(CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[first : first + count]:
                Image.fromarray(images[i]).convert("RGB").save(folder / f"{i}.png")
    return root


def cpu_overrides(data: Path, devices: int = 1, strategy: str = "auto") -> list[str]:
    """Overrides that turn a shipped GPU config into a small CPU run on ``data``."""
    return [
        "data.dataset=custom",
        f"data.train_path={data / 'train'}",
        f"data.val_path={data / 'val'}",
        "data.num_workers=0",
        f"optimizer.batch_size={BATCH}",
        f'devices="{devices}"',  # solo-learn calls len(devices); Lightning's CPU wants no list
        "accelerator=cpu",
        f"strategy={strategy}",
        "precision=32",
        "sync_batchnorm=False",
        "max_epochs=1",
        "auto_resume.enabled=False",
        "+enable_progress_bar=False",
        "+enable_model_summary=False",
        f"method_kwargs.queue_size={QUEUE}",
    ]


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HYDRA_FULL_ERROR": "1"}
    env.pop(plugin.SCRIPT_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", "solo_mixmask.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------------- without solo-learn
def test_register_without_solo_learn_says_what_to_install(monkeypatch):
    for name in ("solo", "solo.methods", "solo.methods.base"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import solo` fail
    with pytest.raises(plugin.SoloLearnError, match=r"solo-learn >= 1\.0\.6 from its repository"):
        plugin.register()
    with pytest.raises(plugin.SoloLearnError, match="solo-learn is not installed"):
        plugin.find_solo_script("pretrain")


def test_version_check_names_found_and_needed_versions(tmp_path):
    with pytest.raises(plugin.SoloLearnError, match=r"solo-learn 1\.0\.2 found at /x.*>= 1\.0\.6"):
        plugin.check_solo_version("1.0.2", "/x")
    for ok in ("1.0.6", "1.0.10", "1.1.0", "2.0.0.dev1"):
        plugin.check_solo_version(ok, "/x")
    (tmp_path / "setup.py").write_text('setup(\n    name="solo-learn",\n    version="1.0.6",\n)\n')
    assert plugin.solo_checkout_version(tmp_path) == "1.0.6"
    assert plugin.solo_checkout_version(tmp_path / "missing") is None


def test_cli_reports_a_folder_without_solo_learn_scripts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["solo-pretrain", "--solo-learn-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --solo-learn-dir") and "has no main_pretrain.py" in err


def test_cli_lists_configs_for_an_unknown_config_name(tmp_path, capsys):
    (tmp_path / "main_pretrain.py").write_text("raise SystemExit('must not run')\n")
    code = cli.main(
        ["solo-pretrain", "--solo-learn-dir", str(tmp_path), "--config-name", "cifar10/mixmak"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "--config-name='cifar10/mixmak' is not allowed" in err
    assert "mixmask.yaml, unmix.yaml, unmix_mixmask.yaml" in err


def test_hydra_args_resolve_shipped_and_user_configs(tmp_path):
    args = plugin.hydra_args("pretrain", None, "imagenet-100/unmix", ["max_epochs=2"])
    assert args == [
        "--config-path",
        str(CONFIGS / "imagenet-100"),
        "--config-name",
        "unmix.yaml",
        "max_epochs=2",
    ]
    (tmp_path / "lin.yaml").write_text("name: x\n")
    assert plugin.hydra_args("linear", str(tmp_path), "lin", [])[-1] == "lin.yaml"
    with pytest.raises(ConfigError, match="--config-path"):
        plugin.hydra_args("linear", None, "lin", [])


def test_ddp_child_entry_needs_the_script_variable(monkeypatch, capsys):
    monkeypatch.delenv(plugin.SCRIPT_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        plugin._child_main()
    assert exit_info.value.code == 2
    assert plugin.SCRIPT_ENV in capsys.readouterr().err


def test_only_solo_learns_config_asserts_become_one_line(tmp_path):
    """An AssertionError of solo-learn's config checks (its script's ``main``, ``parse_cfg``,
    ``add_and_assert_*``) becomes one line; one from anywhere else is a bug and keeps its
    traceback (None)."""
    script = tmp_path.resolve() / "main_pretrain.py"
    script.write_text(
        'def main():\n    assert 1 == 2, "Choose from a, b"\n\n\ndef fit():\n    assert 0\n'
    )
    args_module = script.parent / "solo" / "args" / "pretrain.py"
    args_module.parent.mkdir(parents=True)
    args_module.write_text("def parse_cfg():\n    assert 1 == 2\n")

    def raised(path: Path, function: str) -> AssertionError:
        namespace: dict = {}
        exec(compile(path.read_text(), str(path), "exec"), namespace)
        with pytest.raises(AssertionError) as info:
            namespace[function]()
        return info.value

    assert plugin.solo_config_error(raised(script, "main"), script) == (
        "solo-learn refused the config: Choose from a, b "
        '(main_pretrain.py:2: assert 1 == 2, "Choose from a, b")'
    )
    assert plugin.solo_config_error(raised(args_module, "parse_cfg"), script) == (
        "solo-learn refused the config: assertion failed (pretrain.py:2: assert 1 == 2)"
    )
    assert plugin.solo_config_error(raised(script, "fit"), script) is None
    assert plugin.solo_config_error(RuntimeError("a bug"), script) is None


def test_hydra_composition_error_is_one_line_naming_the_keys():
    from hydra.errors import HydraException

    with pytest.raises(HydraException) as info:
        compose("cifar10/mixmask", ["method_kwargs.mask_ratoi=0.3"])
    message = plugin.solo_config_error(info.value, CONFIGS / "main_pretrain.py")
    assert message is not None and "\n" not in message
    assert message.startswith(
        "Could not override 'method_kwargs.mask_ratoi': Key 'mask_ratoi' is not in struct "
        "(did you mean 'mask_ratio'?); keys there: "
    )
    assert "grid_size, mask_ratio, mask_type" in message
    assert message.endswith("To append to your config use +method_kwargs.mask_ratoi=0.3")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_use_solo_learn_schema(name):
    folder, _, method = name.rpartition("/")
    cfg = compose(name)
    assert cfg.method == method and cfg.name == f"{method}-{folder.replace('-', '')}"
    assert cfg.data.dataset == {"cifar10": "cifar10", "cifar100": "cifar100"}.get(
        folder, "imagenet100"
    )
    for key in (
        "backbone.name", "data.train_path", "data.val_path", "data.format", "optimizer.name",
        "optimizer.batch_size", "optimizer.lr", "optimizer.classifier_lr",
        "optimizer.weight_decay", "scheduler.name", "checkpoint.enabled", "auto_resume.enabled",
        "max_epochs", "devices", "accelerator", "strategy", "precision", "wandb.enabled",
    ):  # fmt: skip
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key
    assert set(cfg.method_kwargs) <= set(ENGINE_METHODS[method].method_defaults)
    assert cfg.wandb.enabled is False
    # solo-learn's main_pretrain asserts exactly two large crops for every non-wmse/mae method
    crops = [(a.crop_size, a.num_crops) for a in cfg.augmentations]
    assert crops == [({"imagenet-100": 224}.get(folder, 32), 2)]
    if "grid_size" in cfg.method_kwargs:
        assert 1 <= cfg.method_kwargs.grid_size <= crops[0][0]


# ----------------------------------------------------------------------- with solo-learn
@needs_solo
def test_register_adds_ours_once_and_keeps_solo_learns_own(monkeypatch):
    from solo.methods import BYOL, METHODS, MoCoV2Plus
    from solo.methods.base import BaseMomentumMethod

    first = plugin.register()
    assert plugin.register() == first  # idempotent: the same classes
    assert sorted(first) == OUR_SOLO_METHODS
    assert METHODS["mocov2plus"] is MoCoV2Plus and METHODS["byol"] is BYOL
    for name, cls in first.items():
        assert METHODS[name] is cls and issubclass(cls, BaseMomentumMethod)
        assert issubclass(cls, ENTRIES[plugin.solo_methods()[name][0]].host.solo_logic)
        # one implementation of the method step, shared with the standalone engine
        shared = {"BaseMomentumMethod": MoCoV2PlusLogic, "BYOL": BYOLOnSoloLogic}
        assert cls.training_step is shared[plugin.solo_methods()[name][3]].training_step
        assert pickle.loads(pickle.dumps(cls)) is cls
    assert METHODS["mixmask"].mixed_losses is MixedBranchLogic.mixed_losses
    assert METHODS["mixmask"].mixer_rows == ENTRIES["mixmask"].mixers
    assert METHODS["mocov2"].method_defaults["symmetric"] is False
    assert METHODS["mixmask"].method_defaults["symmetric"] is True
    # a name solo-learn uses itself is never replaced
    monkeypatch.setitem(METHODS, "mocov2", MoCoV2Plus)
    with pytest.warns(UserWarning, match="solo-learn's own MoCoV2Plus"):
        added = plugin.register()
    assert "mocov2" not in added and METHODS["mocov2"] is MoCoV2Plus


@needs_solo
def test_config_error_inside_solo_learn_is_one_error_line(monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    argv, main_module = list(sys.argv), sys.modules["__main__"]
    code = cli.main(
        ["solo-pretrain", "--config-name", "cifar10/mixmask", "method_kwargs.grid_size=100"]
        + ['devices="1"', "accelerator=cpu"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "error: method_kwargs.grid_size=100 is not allowed: expected an integer in [1, 32]" in err
    )
    assert sys.argv == argv and sys.modules["__main__"] is main_module
    assert "HYDRA_FULL_ERROR" not in os.environ and plugin.SCRIPT_ENV not in os.environ


@needs_solo
@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "method_kwargs.mask_ratoi=0.3",
            "error: Could not override 'method_kwargs.mask_ratoi': Key 'mask_ratoi' is not in "
            "struct (did you mean 'mask_ratio'?)",
        ),
        ("method=mixmaks", "error: solo-learn refused the config: Choose from dict_keys(["),
    ],
)
def test_hydra_and_solo_learn_config_errors_are_one_error_line(
    override, expected, monkeypatch, capsys
):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            ["solo-pretrain", "--config-name", "cifar10/mixmask", override]
            + ['devices="1"', "accelerator=cpu"]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(expected)
    if override.startswith("method="):
        assert "'mixmask'" in line and "assert cfg.method in METHODS" in line


@needs_solo
@pytest.mark.parametrize("name", MOCO_SHIPPED)
def test_builds_from_each_shipped_config_through_parse_cfg(name):
    from solo.args.pretrain import parse_cfg
    from solo.methods import METHODS

    plugin.register()
    cfg = parse_cfg(compose(name))
    model = METHODS[cfg.method](cfg)
    kw = cfg.method_kwargs
    assert cfg.data.num_large_crops == 2 and cfg.data.num_small_crops == 0
    # solo-learn scaled the lr by batch * len(devices) / 256 (devices [0] or [0, 1] here)
    assert math.isclose(cfg.optimizer.lr, 0.3 * cfg.optimizer.batch_size * len(cfg.devices) / 256)
    assert tuple(model.key_queue.queue.shape) == (2, kw.proj_output_dim, kw.queue_size)
    assert int(model.key_queue.ptr) == 0
    cifar = cfg.data.dataset.startswith("cifar")
    assert model.backbone.conv1.kernel_size == ((3, 3) if cifar else (7, 7))
    assert model.classifier.out_features == cfg.data.num_classes
    # solo-learn's own mocov2plus built from the same file has the same networks
    base = compose(name)
    base.method = "mocov2plus"
    shared = ("proj_hidden_dim", "proj_output_dim", "queue_size", "temperature")
    base.method_kwargs = {k: v for k, v in base.method_kwargs.items() if k in shared}
    reference = METHODS["mocov2plus"](parse_cfg(base))
    for ours, theirs in (
        (model.backbone, reference.backbone),
        (model.projector, reference.projector),
    ):
        assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]


def probe_class(base: type) -> type:
    """``base`` plus a record of what every training step did to the queue and momentum nets.

    The expected keys of a step come from copies of the momentum networks taken before it.
    """

    class Probe(base):
        instances: list = []

        def __init__(self, cfg):
            super().__init__(cfg)
            self.records: list[dict] = []
            self.final_metrics: dict[str, float] = {}
            Probe.instances.append(self)

        def training_step(self, batch, batch_idx):
            nets = copy.deepcopy(
                torch.nn.Sequential(self.momentum_backbone, self.momentum_projector)
            )
            with torch.no_grad():
                views = [v.to(memory_format=torch.channels_last) for v in batch[1]]
                keys = [F.normalize(nets(v), dim=-1) for v in views]
            record = {"ptr": int(self.key_queue.ptr), "queue": self.key_queue.queue.clone()}
            loss = super().training_step(batch, batch_idx)
            record.update(keys=keys, ptr_after=int(self.key_queue.ptr))
            record["queue_after"] = self.key_queue.queue.clone()
            self.records.append(record)
            return loss

        def on_train_batch_end(self, outputs, batch, batch_idx):
            def some(module):  # first and last parameter of a module
                params = list(module.parameters())
                return [params[0].detach().clone(), params[-1].detach().clone()]

            record = self.records[-1]
            record["tau"] = self.momentum_updater.cur_tau
            record["online"] = [some(online) for online, _ in self.momentum_pairs]
            record["before"] = [some(momentum) for _, momentum in self.momentum_pairs]
            super().on_train_batch_end(outputs, batch, batch_idx)
            record["after"] = [some(momentum) for _, momentum in self.momentum_pairs]
            record["max_steps"] = self.trainer.estimated_stepping_batches

        def on_train_end(self):
            super().on_train_end()
            self.final_metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()}

    return Probe


MOCO_V2_OVERRIDES = [
    f"~method_kwargs.{key}" for key in ("grid_size", "mask_ratio", "mask_type", "per_sample_masks")
] + ["method_kwargs.symmetric=False"]


@needs_solo
@pytest.mark.parametrize("method", MOCO_SOLO_METHODS)
def test_trains_inside_solo_learn_main_pretrain(method, image_folder, tmp_path, monkeypatch):
    """Three steps through solo-learn's own main_pretrain (its data pipeline, Trainer set-up,
    online classifier and k-NN), then the queue, the EMA and the monitors are checked."""
    from solo.methods import METHODS

    plugin.register()
    probe = probe_class(METHODS[method])
    monkeypatch.setitem(METHODS, f"{method}_probe", probe)
    monkeypatch.chdir(tmp_path)
    config = "mixmask" if method == "mocov2" else method
    overrides = cpu_overrides(image_folder) + [
        f"method={method}_probe",
        "knn_eval.enabled=True",
        "knn_eval.k=5",
        "checkpoint.enabled=False",
        "+num_sanity_val_steps=0",
        f"+default_root_dir={tmp_path}",
    ]
    if method == "mocov2":
        overrides += MOCO_V2_OVERRIDES
    args = plugin.hydra_args("pretrain", None, f"cifar10/{config}", overrides)
    plugin.run_solo_script(plugin.find_solo_script("pretrain"), args)

    (model,) = probe.instances
    records = model.records
    assert len(records) == 3  # 30 training images, batch 10, drop_last
    assert [(r["ptr"], r["ptr_after"]) for r in records] == [(0, 10), (10, 20), (20, 5)]
    symmetric = method != "mocov2"
    sources = [0, 1] if symmetric else [1]  # the view whose keys feed queue v
    for r in records:
        assert r["queue_after"].shape == (len(sources), 256, QUEUE)
        written = [(r["ptr"] + j) % QUEUE for j in range(BATCH)]
        kept = [c for c in range(QUEUE) if c not in written]
        for v, view in enumerate(sources):
            got = r["queue_after"][v][:, written].T  # (BATCH, 256)
            torch.testing.assert_close(got, r["keys"][view], atol=1e-5, rtol=1e-4)
            assert torch.equal(r["queue_after"][v][:, kept], r["queue"][v][:, kept])
        assert len(r["after"]) == 2  # (backbone, projector) pairs
        for online, before, after in zip(r["online"], r["before"], r["after"]):
            for o, b, a in zip(online, before, after):
                torch.testing.assert_close(a, r["tau"] * b + (1 - r["tau"]) * o)
                assert not torch.equal(a, b)
    base_tau, final_tau, steps = 0.99, 0.999, records[0]["max_steps"]
    assert steps == 3
    expected = [base_tau] + [
        final_tau - (final_tau - base_tau) * (math.cos(math.pi * s / steps) + 1) / 2 for s in (1, 2)
    ]
    assert [r["tau"] for r in records] == pytest.approx(expected)

    metrics = model.final_metrics
    for key in ("val_knn_acc1", "val_knn_acc5", "val_acc1", "val_acc5"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert metrics["val_knn_acc5"] >= metrics["val_knn_acc1"]
    assert math.isfinite(metrics["train_nce_loss_epoch"]) and metrics["train_nce_loss_epoch"] > 0
    branches = {"mixmask": ["mask"], "unmix": ["unmix"], "unmix_mixmask": ["unmix", "mask"]}
    for branch in branches.get(method, []):
        assert metrics[f"train_{branch}_loss_epoch"] > 0
        assert 0.0 <= metrics[f"train_{branch}_lambda_epoch"] <= 1.0


LINEAR_YAML = """defaults:
  - _self_
  - override hydra/hydra_logging: disabled
  - override hydra/job_logging: disabled
hydra:
  output_subdir: null
  run:
    dir: .
name: "linear-probe"
pretrained_feature_extractor: "{ckpt}"
backbone:
  name: "resnet18"
pretrain_method: "mixmask"
data:
  dataset: "custom"
  train_path: "{data}/train"
  val_path: "{data}/val"
  format: "image_folder"
  num_workers: 0
optimizer:
  name: "sgd"
  batch_size: {batch}
  lr: 0.1
  weight_decay: 0
scheduler:
  name: "none"
checkpoint:
  enabled: False
auto_resume:
  enabled: False
max_epochs: 1
devices: "1"
accelerator: "cpu"
strategy: "auto"
precision: 32
"""


@needs_solo
def test_solo_pretrain_then_solo_linear_end_to_end(image_folder, tmp_path):
    """`solo-mixmask solo-pretrain` (fast_dev_run, k-NN on) then `solo-linear` on its checkpoint."""
    from solo.backbones import resnet18

    ckpt_dir = tmp_path / "ckpt"
    pretrain = run_cli(
        ["solo-pretrain", "--config-name", "cifar10/mixmask", *cpu_overrides(image_folder)]
        + [f"checkpoint.dir={ckpt_dir}", "knn_eval.enabled=True", "knn_eval.k=5"]
        + ["+fast_dev_run=1"],
        cwd=tmp_path,
    )
    assert pretrain.returncode == 0, pretrain.stderr[-4000:]
    (ckpt,) = (ckpt_dir / "mixmask").glob("*.ckpt")
    assert (ckpt_dir / "mixmask" / "args.json").is_file()
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = saved["state_dict"]
    assert int(state["key_queue.ptr"]) == BATCH % QUEUE
    assert "method_generators" in saved
    # what main_linear keeps: the online backbone, which must load completely
    backbone = resnet18("mixmask")
    backbone.fc = torch.nn.Identity()
    weights = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    backbone.load_state_dict(weights)  # strict

    config_dir = tmp_path / "linear_cfg"
    config_dir.mkdir()
    (config_dir / "linear.yaml").write_text(
        LINEAR_YAML.format(ckpt=ckpt, data=image_folder, batch=BATCH)
    )
    linear = run_cli(
        ["solo-linear", "--config-path", str(config_dir), "--config-name", "linear.yaml"]
        + ["+fast_dev_run=1", "+enable_progress_bar=False"],
        cwd=tmp_path,
    )
    assert linear.returncode == 0, linear.stderr[-4000:]
    assert "Traceback" not in linear.stderr


@needs_solo
def test_ddp_children_reenter_with_our_methods(image_folder, tmp_path):
    """strategy=ddp on 2 CPU processes: Lightning restarts the command for rank 1 as
    `python -m solo_mixmask.solo ...`, which must register the methods again."""
    ckpt_dir = tmp_path / "ckpt"
    run = run_cli(
        ["solo-pretrain", "--config-name", "cifar10/mixmask"]
        + cpu_overrides(image_folder, devices=2, strategy="ddp")
        + [f"checkpoint.dir={ckpt_dir}", "knn_eval.enabled=False", "+fast_dev_run=1"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    (ckpt,) = (ckpt_dir / "mixmask").glob("*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    # keys of both ranks were gathered into the queue: 2 x 10 of them
    assert int(state["key_queue.ptr"]) == (2 * BATCH) % QUEUE


@needs_solo
def test_auto_resume_needs_the_same_method_kwargs(image_folder, tmp_path, monkeypatch, capsys):
    """The shipped configs auto-resume; a run that changes only ``method_kwargs`` (here
    mask_ratio) must train anew, not resume the other run's checkpoint."""
    monkeypatch.chdir(tmp_path)
    ckpt_dir = tmp_path / "ckpt"
    overrides = [o for o in cpu_overrides(image_folder) if not o.startswith("auto_resume")] + [
        "auto_resume.enabled=True",
        "checkpoint.enabled=True",
        f"checkpoint.dir={ckpt_dir}",
        "knn_eval.enabled=False",
        "+limit_train_batches=1",
        "+limit_val_batches=0",
        "+num_sanity_val_steps=0",
    ]
    for ratio in (0.5, 0.3):
        code = cli.main(
            ["solo-pretrain", "--config-name", "cifar10/mixmask", *overrides]
            + [f"method_kwargs.mask_ratio={ratio}"]
        )
        assert code == 0
        assert "Resuming" not in capsys.readouterr().out, ratio
    assert len(list((ckpt_dir / "mixmask").glob("*/*.ckpt"))) == 2


# ------------------------------------------------------------ BYOL + MixMask on solo-learn's BYOL
def test_register_puts_byol_variants_on_solo_learns_byol(monkeypatch, tmp_path):
    """With a stand-in ``solo`` package (so this runs without solo-learn): the ``byol_*`` entries
    subclass its BYOL with only our mixed branch on top, the others its BaseMomentumMethod."""
    package = tmp_path / "solo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (tmp_path / "setup.py").write_text('setup(name="solo-learn", version="1.0.6")\n')

    class BaseMomentumMethod:
        pass

    class BYOL(BaseMomentumMethod):
        pass

    solo_module = types.ModuleType("solo")
    solo_module.__file__ = str(package / "__init__.py")
    methods = types.ModuleType("solo.methods")
    methods.BYOL, methods.METHODS = BYOL, {"byol": BYOL}
    base = types.ModuleType("solo.methods.base")
    base.BaseMomentumMethod = BaseMomentumMethod
    solo_module.methods, methods.base = methods, base
    for name, module in (
        ("solo", solo_module),
        ("solo.methods", methods),
        ("solo.methods.base", base),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(plugin, "_BUILT", {})

    added = plugin.register()
    assert sorted(added) == OUR_SOLO_METHODS and methods.METHODS["byol"] is BYOL
    assert BYOL_SOLO_METHODS == ["byol_mixmask", "byol_unmix_mixmask"]
    for name in BYOL_SOLO_METHODS:
        cls = methods.METHODS[name]
        assert issubclass(cls, BYOL) and issubclass(cls, BYOLOnSoloLogic)
        assert BYOLLogic not in cls.__mro__  # solo-learn's BYOL recipe underneath, not ours
        assert cls.training_step is BYOLOnSoloLogic.training_step
        assert cls.mixed_losses is MixedBranchLogic.mixed_losses
    for name in MOCO_SOLO_METHODS:
        cls = methods.METHODS[name]
        assert issubclass(cls, BaseMomentumMethod) and not issubclass(cls, BYOL)


@needs_solo
def test_register_puts_byol_variants_on_solo_learns_own_byol():
    from solo.methods import BYOL, METHODS

    added = plugin.register()
    for name in BYOL_SOLO_METHODS:
        cls = METHODS[name]
        assert cls is added[name] and issubclass(cls, BYOL) and BYOLLogic not in cls.__mro__
        # solo-learn's projector and predictor, under our recording of the online projections
        owners = [k for k in cls.__mro__ if "forward" in vars(k)]
        assert owners[:2] == [BYOLOnSoloLogic, BYOL]
        assert pickle.loads(pickle.dumps(cls)) is cls


MIXING_KEYS = (
    "grid_size",
    "mask_ratio",
    "mask_type",
    "per_sample_masks",
    "unmix_alpha",
    "unmix_prob",
)


@needs_solo
@pytest.mark.parametrize("name", BYOL_SHIPPED)
def test_builds_byol_variants_from_shipped_configs_through_parse_cfg(name):
    """The configs/solo byol_* files build solo-learn's BYOL networks plus our mask bank."""
    from solo.args.pretrain import parse_cfg
    from solo.methods import BYOL, METHODS

    plugin.register()
    cfg = parse_cfg(compose(name))
    model = METHODS[cfg.method](cfg)
    assert isinstance(model, BYOL)
    mask = next(mixer for mixer, _ in model.mixers if mixer.name == "mask")
    assert mask.bank.grid_size == cfg.method_kwargs.grid_size == 8
    assert cfg.data.num_large_crops == 2 and cfg.data.num_small_crops == 0
    base = compose(name)
    base.method = "byol"
    base.method_kwargs = {k: v for k, v in base.method_kwargs.items() if k not in MIXING_KEYS}
    reference = METHODS["byol"](parse_cfg(base))
    for part in ("backbone", "projector", "predictor", "momentum_projector"):
        ours, theirs = getattr(model, part), getattr(reference, part)
        assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]


def byol_probe_class(base: type) -> type:
    """``base`` plus a record of each step's mixed-branch inputs and of the momentum update; the
    expected targets come from copies of the momentum networks taken before the step."""

    class Probe(base):
        instances: list = []

        def __init__(self, cfg):
            super().__init__(cfg)
            self.records: list[dict] = []
            self.final_metrics: dict[str, float] = {}
            Probe.instances.append(self)

        def training_step(self, batch, batch_idx):
            nets = copy.deepcopy(
                torch.nn.Sequential(self.momentum_backbone, self.momentum_projector)
            )
            online = copy.deepcopy(torch.nn.Sequential(self.backbone, self.projector))
            with torch.no_grad():
                expected = nets(batch[1][1].to(memory_format=torch.channels_last))
                expected_online = online(batch[1][0].to(memory_format=torch.channels_last))
            self.records.append(
                {"x1": batch[1][0], "expected_target": expected, "expected_online": expected_online}
            )
            return super().training_step(batch, batch_idx)

        def mixed_losses(self, x, target, pair_loss):
            losses = super().mixed_losses(x, target, pair_loss)
            self.records[-1].update(x=x, target=target.clone())
            self.records[-1]["losses"] = {k: float(v.detach()) for k, v in losses.items()}
            return losses

        def on_train_batch_end(self, outputs, batch, batch_idx):
            record = self.records[-1]
            record["before"] = [m.weight.detach().clone() for _, m in self._last_linears()]
            super().on_train_batch_end(outputs, batch, batch_idx)
            record["after"] = [m.weight.detach().clone() for _, m in self._last_linears()]

        def _last_linears(self):
            return [(o[-1], m[-1]) for o, m in [(self.projector, self.momentum_projector)]]

        def on_train_end(self):
            super().on_train_end()
            self.final_metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()}

    return Probe


@needs_solo
@pytest.mark.parametrize("method", BYOL_SOLO_METHODS)
def test_byol_variants_train_inside_solo_learn_main_pretrain(
    method, image_folder, tmp_path, monkeypatch
):
    """Three steps through solo-learn's main_pretrain on its own BYOL: the mixed branch mixes
    the first view and regresses the momentum projections of the second view that solo-learn's
    BYOL step computed; every loss term and lambda is logged; the momentum heads move."""
    from solo.methods import METHODS

    plugin.register()
    probe = byol_probe_class(METHODS[method])
    monkeypatch.setitem(METHODS, f"{method}_probe", probe)
    from solo_mixmask.methods import byol as byol_module

    measured: list[torch.Tensor] = []  # what the collapse measure was taken of, per step
    log_std = byol_module.log_embedding_std

    def recording(method, z):
        measured.append(z.detach().clone())
        log_std(method, z)

    monkeypatch.setattr(byol_module, "log_embedding_std", recording)
    monkeypatch.chdir(tmp_path)
    overrides = [o for o in cpu_overrides(image_folder) if "queue_size" not in o] + [
        f"method={method}_probe",
        "method_kwargs.proj_hidden_dim=64",
        "method_kwargs.pred_hidden_dim=64",
        "knn_eval.enabled=True",
        "knn_eval.k=5",
        "checkpoint.enabled=False",
        "+num_sanity_val_steps=0",
        f"+default_root_dir={tmp_path}",
    ]
    args = plugin.hydra_args("pretrain", None, f"cifar10/{method}", overrides)
    plugin.run_solo_script(plugin.find_solo_script("pretrain"), args)

    (model,) = probe.instances
    assert len(model.records) == 3  # 30 training images, batch 10, drop_last
    branches = ["unmix", "mask"] if "unmix" in method else ["mask"]
    # the collapse measure is of the first view's online projections (it was of the momentum
    # network's, which lag a collapse by the EMA)
    assert len(measured) == 3
    for z, r in zip(measured, model.records):
        torch.testing.assert_close(z, r["expected_online"], atol=1e-5, rtol=1e-4)
    for r in model.records:
        assert torch.equal(r["x"], r["x1"])
        assert r["target"].shape == (BATCH, 256)
        torch.testing.assert_close(r["target"], r["expected_target"], atol=1e-5, rtol=1e-4)
        assert sorted(r["losses"]) == sorted(f"train_{b}_loss" for b in branches)
        assert all(v > 0 for v in r["losses"].values())
        assert not any(torch.equal(b, a) for b, a in zip(r["before"], r["after"]))
    metrics = model.final_metrics
    assert math.isfinite(metrics["train_neg_cos_sim_epoch"])  # solo-learn's own BYOL loss
    for key in ("val_knn_acc1", "val_acc1"):
        assert 0.0 <= metrics[key] <= 100.0, key
    for branch in branches:
        assert metrics[f"train_{branch}_loss_epoch"] > 0
        assert 0.0 <= metrics[f"train_{branch}_lambda_epoch"] <= 1.0


# ------------------------------------------------ split BatchNorm and shuffled keys in solo-learn
#: nn.BatchNorm2d and its split version (any other subclass would be a layer we did not expect)
BATCH_NORMS_2D = {torch.nn.BatchNorm2d, SplitBatchNorm2d}


def split_bn_probe_class(base: type) -> type:
    """``base`` plus a record of each step's views and of the images the momentum backbone got,
    and of the BatchNorm layers of both backbones once training starts."""

    class Probe(base):
        instances: list = []

        def __init__(self, cfg):
            super().__init__(cfg)
            self.records: list[dict] = []
            self.bn_layers: dict[str, list] = {}
            self.final_metrics: dict[str, float] = {}
            self._momentum_inputs: list | None = None
            self.momentum_backbone.register_forward_pre_hook(self._record_momentum_input)
            Probe.instances.append(self)

        def _record_momentum_input(self, module, args):
            if self._momentum_inputs is not None:
                self._momentum_inputs.append(args[0].detach().clone())

        def on_train_start(self):
            super().on_train_start()
            # what solo-learn's main_pretrain and Lightning left in place, after their set-up
            self.bn_layers = {
                part: [m for m in getattr(self, part).modules() if type(m) in BATCH_NORMS_2D]
                for part in ("backbone", "momentum_backbone")
            }

        def training_step(self, batch, batch_idx):
            self._momentum_inputs = []
            try:
                loss = super().training_step(batch, batch_idx)
            finally:
                inputs, self._momentum_inputs = self._momentum_inputs, None
            self.records.append({"views": [v.detach().clone() for v in batch[1]], "inputs": inputs})
            return loss

        def on_train_end(self):
            super().on_train_end()
            self.final_metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()}

    return Probe


def matching_order(shuffled: torch.Tensor, images: torch.Tensor) -> list[int]:
    """For each image of ``shuffled`` (B, ...), the index of the equal image in ``images``."""
    return [next(j for j in range(len(images)) if torch.equal(row, images[j])) for row in shuffled]


@needs_solo
@pytest.mark.parametrize("method", ["mixmask", "byol_mixmask"])
def test_split_bn_and_shuffled_keys_train_inside_solo_learn_main_pretrain(
    method, image_folder, tmp_path, monkeypatch
):
    """bn_splits=2 and shuffle_bn=true on a MoCo-based and a BYOL-based method, one step
    through solo-learn's main_pretrain: every BatchNorm2d of both backbones is a split one
    (still after solo-learn's and Lightning's set-up), the momentum backbone gets each view's
    images in a shuffled order, and the collapse measure train_embedding_std is logged."""
    from solo.backbones import resnet18
    from solo.methods import METHODS

    plugin.register()
    probe = split_bn_probe_class(METHODS[method])
    monkeypatch.setitem(METHODS, f"{method}_probe", probe)
    monkeypatch.chdir(tmp_path)
    overrides = [o for o in cpu_overrides(image_folder) if "queue_size" not in o] + [
        f"method={method}_probe",
        "method_kwargs.bn_splits=2",  # in the shipped configs (bn_splits: 1, shuffle_bn: False)
        "method_kwargs.shuffle_bn=True",
        "knn_eval.enabled=False",
        "checkpoint.enabled=False",
        "+num_sanity_val_steps=0",
        "+limit_train_batches=1",  # one step (two momentum passes) is enough here, and fast
        "+limit_val_batches=0",
        f"+default_root_dir={tmp_path}",
    ]
    if method in MOCO_SOLO_METHODS:
        overrides.append(f"method_kwargs.queue_size={QUEUE}")
    else:
        overrides += ["method_kwargs.proj_hidden_dim=64", "method_kwargs.pred_hidden_dim=64"]
    args = plugin.hydra_args("pretrain", None, f"cifar10/{method}", overrides)
    plugin.run_solo_script(plugin.find_solo_script("pretrain"), args)

    (model,) = probe.instances
    assert model.bn_splits == 2 and model.shuffle_bn is True
    for part, layers in model.bn_layers.items():
        assert len(layers) == 20, part  # resnet18's BatchNorm2d layers
        assert all(type(m) is SplitBatchNorm2d and m.num_splits == 2 for m in layers), part
        assert all(m.training for m in layers), part
        assert not torch.equal(layers[0].running_mean, torch.zeros_like(layers[0].running_mean))
    # the swapped layers keep BatchNorm's state_dict keys: checkpoints hold an ordinary resnet18
    plain = resnet18(method)
    plain.fc = torch.nn.Identity()
    assert set(model.backbone.state_dict()) == set(plain.state_dict())
    assert set(model.momentum_backbone.state_dict()) == set(plain.state_dict())

    assert len(model.records) == 1
    orders = []
    for r in model.records:
        # one momentum pass per view (solo-learn's own), each over a shuffled copy of the view
        assert len(r["inputs"]) == len(r["views"]) == 2
        for shuffled, view in zip(r["inputs"], r["views"]):
            order = matching_order(shuffled, view)
            assert sorted(order) == list(range(BATCH))
            assert order != list(range(BATCH))
            orders.append(order)
    assert orders[0] != orders[1]  # a fresh permutation per momentum pass

    metrics = model.final_metrics
    std = metrics["train_embedding_std"]
    assert math.isfinite(std) and 0.0 < std <= 1.0
    assert model.embedding_dim == 256
    loss_key = "train_nce_loss_epoch" if method in MOCO_SOLO_METHODS else "train_neg_cos_sim_epoch"
    assert math.isfinite(metrics[loss_key])
    assert metrics["train_mask_loss_epoch"] > 0
