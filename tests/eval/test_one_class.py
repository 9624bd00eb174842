"""Issue 18, item 10: labelled data of one class makes every k-NN vote and linear prediction
right, so pretraining (at initialisation and after), ``knn`` and ``linear`` report 100%: each
says so in one ``warning:`` line (the run itself goes on)."""

from __future__ import annotations

import json

import pytest

from solo_mixmask.cli import main
from tests.cli_helpers import TINY, custom_data, run
from tests.eval.helpers import class_folder_tree

WARNING = "data.num_classes=1 is one class"


@pytest.fixture(scope="module")
def one_class_run(tmp_path_factory):
    """A tiny run (subprocess) on an ImageFolder whose train and val trees hold one class."""
    base = tmp_path_factory.mktemp("one_class")
    train = class_folder_tree(base / "train", {"shirt": 16}, size=16)
    val = class_folder_tree(base / "val", {"shirt": 8}, size=16, seed=1)
    result = run(
        [
            "pretrain",
            *TINY,
            *custom_data(train, val),
            f"checkpoint.run_dir={base / 'run'}",
        ]
    )
    return base / "run", result


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:") and WARNING in line]


def test_pretraining_on_one_class_warns(one_class_run):
    run_dir, result = one_class_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_warnings(result.stderr)) == 1, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["knn_acc1_at_init"] == summary["knn_acc1"] == 100.0  # what it warns about


@pytest.mark.parametrize(
    "argv", [["knn", "--k", "5"], ["linear", "--preset", "small", "linear.epochs=1"]]
)
def test_offline_evaluation_on_one_class_warns(one_class_run, tmp_path, capsys, argv):
    run_dir, _ = one_class_run
    checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
    out = tmp_path / "result.json"
    code = main([argv[0], checkpoint, *argv[1:], "--out", str(out), "data.num_workers=0"])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert len(_warnings(err)) == 1, err[-3000:]
    result = json.loads(out.read_text())
    acc1 = result["k"]["5"]["acc1"] if argv[0] == "knn" else result["acc1"]
    assert acc1 == 100.0  # what it warns about
