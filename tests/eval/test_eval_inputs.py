"""Issue 18 (no run may finish with exit 0 and a wrong number), the evaluation side: what the
evaluation commands accept, through the real CLI (in-process ``main``).

- a checkpoint with non-finite weights is refused by every command that loads one (one error
  line, exit 2), as is a file that only poses as a checkpoint;
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from solo_mixmask.cli import main
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
