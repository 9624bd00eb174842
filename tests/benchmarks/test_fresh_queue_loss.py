"""benchmarks/fresh_queue_loss.py: a hand-computed score, then the script on a tiny run."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from tests.benchmarks.helpers import REPO, run_script
from tests.cli_helpers import TINY, run
from tests.data.helpers import needs_fmnist

sys.path.insert(0, str(REPO / "benchmarks"))

import fresh_queue_loss  # noqa: E402
from fresh_queue_loss import Batch  # noqa: E402

from solo_mixmask.methods.mixed_branch import Mix  # noqa: E402


class MeanColour(torch.nn.Module):
    """Embeds an image (B, 3, H, W) as its mean colour (B, 3), online and momentum alike."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": x.mean(dim=(2, 3))}

    def momentum_forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward(x)


def _images(*colours: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(colours).view(len(colours), 3, 1, 1).expand(-1, -1, 4, 4)


def test_the_first_batches_fill_the_queue_and_the_rest_are_scored():
    e1, e2, e3 = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
    fill = Batch(_images(e1, e2), _images(e3, e3), [])  # its keys e3, e3 become the queue
    # a mix of the scored batch: each image half its own, half the other's (lambda 0.5)
    half = Mix("mask", _images(e1, e2), torch.tensor([0.5, 0.5]), torch.tensor([1, 0]))
    scored = Batch(_images(e1, e2), _images((2.0, 0.0, 0.0), e2), [half])  # keys e1, e2
    out = fresh_queue_loss.fresh_queue_scores(MeanColour(), [fill, scored], 2, 1.0)
    # each query: positive cosine 1, two negatives of cosine 0; T = 1
    own = math.log(1 + 2 / math.e)
    assert out["loss"] == pytest.approx(own)
    assert out["pos_cos"] == pytest.approx(1.0)
    assert out["neg_cos"] == pytest.approx(0.0)
    # the mix: half its own key's loss, half the partner's key's (cosine 0 to all three)
    assert out["mask_loss"] == pytest.approx(0.5 * own + 0.5 * math.log(3))
    assert out["queries"] == 2


def test_too_few_batches_to_fill_the_queue_and_score_one_is_an_error():
    batch = Batch(_images((1.0, 0.0, 0.0)), _images((0.0, 1.0, 0.0)), [])
    with pytest.raises(SystemExit, match="raise --batches"):
        fresh_queue_loss.fresh_queue_scores(MeanColour(), [batch, batch], 2, 1.0)


@needs_fmnist
def test_scores_the_initialisation_and_every_saved_epoch(tmp_path):
    run_dir = tmp_path / "run"
    proc = run(
        [
            "pretrain",
            "--config-name",
            "mixmask",
            *TINY,
            "max_epochs=2",
            "checkpoint.frequency=1",
            f"checkpoint.run_dir={run_dir}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    run_script(
        "fresh_queue_loss.py",
        str(run_dir),
        "--batches",
        "2",
        "--threads",
        "1",
        "--out-dir",
        str(out),
        "--tag",
        "tiny",
    )
    res = json.loads((out / "fresh_queue_loss_tiny.json").read_text())
    (one,) = res["runs"]
    assert one["method"] == "mixmask" and one["queue_size"] == 20
    assert [r["epoch"] for r in one["epochs"]] == [0, 1, 2]
    logged = fresh_queue_loss.in_run_losses(run_dir)
    assert sorted(logged[2]) == ["loss", "mask_loss"]  # train_nce_loss, train_mask_loss
    assert [r["in_run"] for r in one["epochs"]] == [{}, logged[1], logged[2]]
    bound = math.log(21) + 2 / one["temperature"]  # InfoNCE of one sample is at most this
    for row in one["epochs"]:
        assert 0 < row["loss"] < bound and 0 < row["mask_loss"] < bound
        assert -1 <= row["neg_cos"] <= 1 and -1 <= row["pos_cos"] <= 1
        assert row["queries"] == 16  # 20 keys fill 3 batches of 8; 2 batches scored
    text = (out / "fresh_queue_loss_tiny.md").read_text()
    assert "mask loss, fresh queue" in text and "| 2 |" in text
    for path in (run_dir / "checkpoints").glob("epoch*.ckpt"):
        path.unlink()
    with pytest.raises(SystemExit, match="checkpoint.frequency=1"):
        fresh_queue_loss.one_run(run_dir, 2, torch.device("cpu"))
