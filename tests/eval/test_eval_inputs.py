"""Issue 18 (no run may finish with exit 0 and a wrong number), the evaluation side: what the
evaluation commands accept, through the real CLI (in-process ``main``).

- a checkpoint with non-finite weights is refused by every command that loads one (one error
  line, exit 2), as is a file that only poses as a checkpoint;
- overrides and ``--preset`` files are checked like pretraining configs: an unknown key is one
  error line with a did-you-mean, a preset that is not plain YAML is refused, a preset that
  leaves a key out gets the default preset's value; ``show-masks`` checks its config as
  ``pretrain`` does;
- ``convert`` never writes over its own input or into a run's ``checkpoints/`` folder;
- ``--help`` describes the presets from their files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from solo_mixmask.cli import build_parser, main
from solo_mixmask.config.compose import configs_root
from tests.eval.helpers import method_checkpoint

TINY_RESNET = {"channels": [8, 16, 32, 64]}


def _error_line(capsys, argv) -> str:
    """The single ``error:`` line of ``solo-mixmask ARGV`` (exit 2, no traceback)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, captured.err[-3000:]
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny MoCo checkpoint outside a run folder (its config: Fashion-MNIST, 16-px crops)."""
    path = tmp_path_factory.mktemp("ckpt") / "m.ckpt"
    return method_checkpoint(path, kwargs=TINY_RESNET)[0]


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if a dataset is opened (the refusal must come first)."""
    from solo_mixmask.data import datasets

    def build(*args, **kwargs):
        raise AssertionError("a dataset was opened before the refusal")

    monkeypatch.setattr(datasets, "build_dataset", build)


class _Opened(Exception):
    """What :func:`files_opened` raises once a command opens its first dataset."""


@pytest.fixture
def files_opened(monkeypatch):
    """The ``data.format`` of the first dataset a command opens (then it stops)."""
    from solo_mixmask.data import datasets

    formats: list[str] = []

    def build(spec, *args, **kwargs):
        formats.append(spec.format)
        raise _Opened

    monkeypatch.setattr(datasets, "build_dataset", build)
    return formats


@pytest.mark.parametrize(
    ("command", "data_format"),
    # show-masks checks its config as pretrain does: DALI reads no Fashion-MNIST
    [(c, f) for c in ("linear", "finetune", "embed") for f in ("memory", "dali")]
    + [("show-masks", "memory")],
)
def test_commands_that_decode_files_read_a_memory_or_dali_run(
    checkpoint, tmp_path, files_opened, command, data_format
):
    """Once linear, finetune, embed and show-masks refused every run pretrained with
    data.format=memory or dali (exit 2); they decode the files with PIL whatever the format."""
    argv = (
        ["show-masks", "--out", "{tmp}/m.png"]
        if command == "show-masks"
        else EVAL_COMMANDS[command]
    )
    with pytest.raises(_Opened):
        main(
            [a.format(ckpt=checkpoint, tmp=tmp_path) for a in argv] + [f"data.format={data_format}"]
        )
    assert files_opened == ["image_folder"]


# --------------------------------------------------------------------------- non-finite weights


def _poisoned(checkpoint: Path, folder: Path, key: str, value: float) -> Path:
    """A copy of ``checkpoint`` with one entry of the tensor ``key`` set to ``value``."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"][key].view(-1)[0] = value
    path = folder / "poisoned.ckpt"
    torch.save(ckpt, path)
    return path


EVAL_COMMANDS = {
    "knn": ["knn", "{ckpt}"],
    "linear": ["linear", "{ckpt}", "--preset", "small"],
    "finetune": ["finetune", "{ckpt}", "--label-fraction", "0.01", "--out", "{tmp}/ft"],
    "embed": ["embed", "{ckpt}", "--out", "{tmp}/emb"],
    "convert": ["convert", "{ckpt}", "{tmp}/r18.pth", "--format", "timm"],
}


@pytest.mark.parametrize(
    ("key", "value"),
    [("backbone.layer4.1.bn2.running_var", float("nan")), ("backbone.conv1.weight", float("inf"))],
)
@pytest.mark.parametrize("command", list(EVAL_COMMANDS))
def test_non_finite_weights_are_refused_by_every_command(
    checkpoint, tmp_path, capsys, no_data, command, key, value
):
    # once: knn 9.375% at every k, linear/finetune "train_loss": NaN with an accuracy,
    # convert exported the NaN weights, embed died in scikit-learn
    poisoned = _poisoned(checkpoint, tmp_path, key, value)
    argv = [a.format(ckpt=poisoned, tmp=tmp_path) for a in EVAL_COMMANDS[command]]
    line = _error_line(capsys, argv)
    name = key.removeprefix("backbone.")
    assert str(poisoned) in line and "non-finite weights" in line and name in line, line
    assert not (tmp_path / "r18.pth").exists() and not (tmp_path / "ft").exists()


def test_a_text_file_posing_as_a_checkpoint_is_refused(tmp_path, capsys, no_data):
    fake = tmp_path / "last.ckpt"
    fake.write_text("hello, I am not a checkpoint\n")  # once a KeyError traceback
    line = _error_line(capsys, ["knn", fake])
    assert line.startswith(f"error: cannot read checkpoint '{fake}'"), line


# --------------------------------------------------------------------------- overrides, presets


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["linear", "{ckpt}", "linear.epochz=1"], ["linear.epochz=1", "did you mean 'epochs'"]),
        (
            ["knn", "{ckpt}", "data.knn_train_sbset=100"],
            ["data.knn_train_sbset=100", "did you mean 'knn_train_subset'"],
        ),
        (
            ["finetune", "{ckpt}", "finetune.epoch=1", "--out", "{tmp}/ft"],
            ["finetune.epoch=1", "did you mean 'epochs'"],
        ),
        (["embed", "{ckpt}", "seeed=1", "--out", "{tmp}/e"], ["seeed=1", "did you mean 'seed'"]),
        # a key of another command is no key of this one
        (["knn", "{ckpt}", "linear.epochs=1"], ["linear={'epochs': 1}", "no such key"]),
    ],
)
def test_unknown_override_keys_are_refused(checkpoint, tmp_path, capsys, no_data, argv, fragments):
    line = _error_line(capsys, [a.format(ckpt=checkpoint, tmp=tmp_path) for a in argv])
    for fragment in fragments:
        assert fragment in line, line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # once: accepted (knn reads data.val_subset) and ignored: every validation image
        (
            ["linear", "{ckpt}", "data.val_subset=20"],
            "data.val_subset=20 is not allowed: expected linear.val_subset=20 (linear does not "
            "read data.val_subset)",
        ),
        (
            ["linear", "{ckpt}", "--preset", "small", "data.train_subset=200"],
            "data.train_subset=200 is not allowed: expected linear.train_subset=200 (linear "
            "does not read data.train_subset)",
        ),
        (
            ["linear", "{ckpt}", "data.knn_train_subset=100"],
            "expected linear.train_subset=100 (linear does not read data.knn_train_subset)",
        ),
        (
            ["finetune", "{ckpt}", "data.val_subset=20", "--out", "{tmp}/ft"],
            "data.val_subset=20 is not allowed: expected finetune.val_subset=20 (finetune does "
            "not read data.val_subset)",
        ),
        (
            ["finetune", "{ckpt}", "data.train_subset=200", "--out", "{tmp}/ft"],
            "expected --label-fraction (a share of the labelled training images) (finetune "
            "does not read data.train_subset)",
        ),
        (
            ["knn", "{ckpt}", "precision=bf16-mixed"],
            "expected --precision (32-true, bf16-mixed, 16-mixed or run) (knn does not read "
            "precision)",
        ),
        # pretraining's settings, which no evaluation reads (optimizer.lr is not the probe's)
        (
            ["linear", "{ckpt}", "optimizer.lr=0.1"],
            "optimizer.lr=0.1 is not allowed: expected linear.* (its learning rates, "
            "weight_decay, momentum) (linear does not read optimizer.lr)",
        ),
        (
            ["finetune", "{ckpt}", "max_epochs=5", "--out", "{tmp}/ft"],
            "expected finetune.epochs (finetune does not read max_epochs)",
        ),
        (
            ["knn", "{ckpt}", "method_kwargs.temperature=0.5"],
            "expected nothing: this command trains nothing (method_kwargs is pretraining's) "
            "(knn does not read method_kwargs)",
        ),
        # once accepted and ignored: the backbone comes from the checkpoint, and every
        # evaluation runs in one process on --device
        (
            ["knn", "{ckpt}", "backbone.cifar_stem=false"],
            "backbone.cifar_stem=False is not allowed: expected nothing: the backbone is "
            "rebuilt from the checkpoint (knn does not read backbone)",
        ),
        (
            ["linear", "{ckpt}", "backbone.kwargs.channels=[8,16,32,64]"],
            "(linear does not read backbone)",
        ),
        (
            ["knn", "{ckpt}", "devices=2"],
            "devices=2 is not allowed: expected --device (an evaluation runs in one process, "
            "on one device) (knn does not read devices)",
        ),
        (["knn", "{ckpt}", "strategy=ddp"], "(knn does not read strategy)"),
        (["linear", "{ckpt}", "num_nodes=2"], "(linear does not read num_nodes)"),
        (
            ["finetune", "{ckpt}", "devices=2", "--out", "{tmp}/ft"],
            "(finetune does not read devices)",
        ),
        (
            ["finetune", "{ckpt}", "precision=bf16-mixed", "--out", "{tmp}/ft"],
            "expected nothing: finetune runs in float32 (finetune does not read precision)",
        ),
        (
            ["linear", "{ckpt}", "knn_eval.k=5"],
            "expected nothing: linear measures no k-NN (knn reads knn_eval) (linear does not "
            "read knn_eval)",
        ),
        # once accepted and ignored: the probes train with their own batch size and crops
        (
            ["finetune", "{ckpt}", "optimizer.batch_size=4", "--out", "{tmp}/ft"],
            "optimizer.batch_size=4 is not allowed: expected finetune.batch_size=4 (finetune "
            "does not read optimizer.batch_size)",
        ),
        (["linear", "{ckpt}", "optimizer.batch_size=4"], "expected linear.batch_size=4"),
        (
            ["finetune", "{ckpt}", "augmentations.0.rrc.crop_min_scale=0.9", "--out", "{tmp}/ft"],
            "augmentations.0.rrc.crop_min_scale=0.9 is not allowed: expected "
            "augmentations.0.crop_size, augmentations.0.mean, augmentations.0.std (evaluation "
            "centre-crops the images; finetune's training crops are RandomResizedCrop + flip: "
            "finetune.crop_min_scale) (finetune does not read augmentations.0.rrc)",
        ),
        (
            ["knn", "{ckpt}", "augmentations.0.horizontal_flip.prob=0"],
            "(evaluation centre-crops the images) (knn does not read "
            "augmentations.0.horizontal_flip)",
        ),
        (["linear", "{ckpt}", "augmentations.1.crop_size=16"], "(linear does not read "),
    ],
)
def test_keys_a_command_does_not_read_are_refused(
    checkpoint, tmp_path, capsys, no_data, argv, expected
):
    line = _error_line(capsys, [a.format(ckpt=checkpoint, tmp=tmp_path) for a in argv])
    assert expected in line, line
    assert not (tmp_path / "ft").exists()


def test_a_preset_that_sets_a_key_the_command_does_not_read_is_refused(
    checkpoint, tmp_path, capsys, no_data
):
    preset = tmp_path / "p.yaml"
    preset.write_text("linear:\n  epochs: 2\ndata:\n  val_subset: 50\n")
    line = _error_line(capsys, ["linear", checkpoint, "--preset", preset])
    assert "data.val_subset=50 is not allowed: expected linear.val_subset=50" in line, line
    assert f"(in --preset {preset})" in line, line


@pytest.mark.parametrize(
    ("command", "text", "fragments"),
    [
        ("linear", "linear:\n  lrr: 0.1\n", ["linear.lrr=0.1", "did you mean 'lr'", "--preset"]),
        ("finetune", "finetune:\n  head_rl: 1\n", ["finetune.head_rl=1", "'head_lr'"]),
        ("linear", "linear:\n  lr: [1\n", ["--preset=", "valid YAML", "line 2"]),
        (
            "linear",
            "linear:\n  lr: !!python/object/apply:os.system ['echo hi']\n",
            ["--preset=", "python tags", "!!python/object/apply:os.system"],
        ),
        ("finetune", "- 1\n- 2\n", ["--preset=", "a YAML mapping of config keys"]),
        # YAML 1.1 octal: 010 was read as 8 epochs
        ("linear", "linear:\n  epochs: 010\n", ["linear.epochs='010'", "octal 8", "preset.yaml"]),
    ],
)
def test_bad_preset_files_are_refused(
    checkpoint, tmp_path, capsys, no_data, command, text, fragments
):
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    argv = [command, checkpoint, "--preset", preset, "--out", tmp_path / "out"]
    line = _error_line(capsys, argv)
    for fragment in fragments:
        assert fragment in line, line


def test_a_preset_that_leaves_keys_out_gets_the_default_preset_values(
    checkpoint, tmp_path, capsys, fmnist_available
):
    # once: linear.batch_size=None is not allowed (the keys the file left out were None)
    preset = tmp_path / "short.yaml"
    preset.write_text("linear:\n  epochs: 1\n  lr: 0.5\n  train_subset: 64\n  val_subset: 32\n")
    out = tmp_path / "linear.json"
    argv = ["linear", checkpoint, "--preset", preset, "--out", out, "data.num_workers=0"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err[-3000:]
    settings = json.loads(out.read_text())["settings"]
    paper = yaml.safe_load((configs_root() / "linear" / "paper.yaml").read_text())["linear"]
    assert (settings["epochs"], settings["lr"], settings["train_subset"]) == (1, 0.5, 64)
    for key in ("batch_size", "momentum", "lr_decay_epochs", "lr_decay_rate", "init_std"):
        assert settings[key] == paper[key], key


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("method_kwargs.grid_sise=8", ["method_kwargs.grid_sise=8", "did you mean 'grid_size'"]),
        ("method_kwargs.grid_size=0", ["method_kwargs.grid_size=0", "[1, 28]"]),  # a traceback
    ],
)
def test_show_masks_checks_its_config_as_pretrain_does(
    tmp_path, capsys, monkeypatch, override, fragments
):
    from solo_mixmask.eval import pictures

    monkeypatch.setattr(pictures, "sample_images", lambda *a: pytest.fail("images were read"))
    line = _error_line(capsys, ["show-masks", "--out", tmp_path / "m.png", override])
    for fragment in fragments:
        assert fragment in line, line


# --------------------------------------------------------------------------- convert


def _run_folder(tmp_path: Path, checkpoint: Path) -> Path:
    """A run folder (config.yaml + checkpoints/last.ckpt) holding a copy of ``checkpoint``."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("method: mocov2plus\n")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(checkpoint.read_bytes())
    return last


def test_convert_never_writes_over_its_input(checkpoint, tmp_path, capsys):
    last = _run_folder(tmp_path, checkpoint)
    before = last.read_bytes()
    link = tmp_path / "link.pth"
    link.symlink_to(last)
    for out in (last, link):  # --force once destroyed the training checkpoint
        line = _error_line(capsys, ["convert", last, out, "--format", "timm", "--force"])
        assert f"out='{out}'" in line and "a file other than the checkpoint" in line, line
    assert last.read_bytes() == before


def test_convert_never_writes_into_a_run_checkpoints_folder(checkpoint, tmp_path, capsys):
    last = _run_folder(tmp_path, checkpoint)
    out = last.parent / "r18.pth"
    line = _error_line(capsys, ["convert", last, out, "--format", "timm", "--force"])
    assert "outside the run's checkpoints/ folder" in line, line
    assert not out.exists()
    beside = last.parents[1] / "r18.pth"  # beside the run is where an export goes
    assert main(["convert", str(last), str(beside), "--format", "timm"]) == 0
    assert beside.exists()


# --------------------------------------------------------------------------- --help


@pytest.mark.parametrize("command", ["linear", "finetune"])
def test_help_describes_each_preset_from_its_file(command, capsys):
    # once: finetune --help said small is 15 epochs, configs/finetune/small.yaml says 20
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for path in (configs_root() / command).glob("*.yaml"):
        section = yaml.safe_load(path.read_text())[command]
        assert f"{path.stem} ({section['epochs']} epochs, batch {section['batch_size']}" in text
