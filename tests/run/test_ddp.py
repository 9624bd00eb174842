"""Issue 6, part 5: 2-process DDP pretraining of MixMask on CPU (gloo), launched by Lightning.

``solo-mixmask pretrain accelerator=cpu devices=2 strategy=ddp`` runs through a small harness
that records, on each rank, the keys it computed in the last step (before the all-gather), the
gathered keys that went into the queue, and its final parameters and queue. Checked: both ranks
share one run folder; every rank's queue holds the keys of both ranks (rank order) and the
pointer advanced by world_size x batch per step; parameters and queue are identical on both
ranks; the k-NN monitor saw features gathered from both ranks; the checkpoint (written by rank 0)
holds every rank's own mask-generator stream for an exact resume. The k-NN memory and the
validation set hold an odd number of images: each is evaluated once (the ranks run unequal
numbers of validation batches), and the online k-NN and linear accuracies equal one process's.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.cli_helpers import TINY, error_lines, run

BATCH, QUEUE = 8, 40  # per-rank batch; 2 x 8 = 16 keys a step do not divide the 40-key queue
MEMORY, QUERIES = 33, 33  # odd: padded shares would repeat an image (a memory image votes twice)

HARNESS = """
import os, sys, torch
from lightning.pytorch.callbacks import Callback
from solo_mixmask.run import pretrain
from solo_mixmask.methods import base, mocov2plus

out = os.environ["DDP_DUMP_DIR"]
seen = {}
gather = mocov2plus.gather_no_grad
def recording_gather(x, dim=0):
    gathered = gather(x, dim)
    seen["local_keys"], seen["gathered_keys"] = x.detach().clone(), gathered.detach().clone()
    return gathered
mocov2plus.gather_no_grad = recording_gather
knn = base.knn_accuracy
def recording_knn(train_f, train_t, val_f, val_t, *args):
    seen["knn_train"], seen["knn_val"] = len(train_f), len(val_f)
    return knn(train_f, train_t, val_f, val_t, *args)
base.knn_accuracy = recording_knn

class Dump(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        seen.setdefault("indexes", []).append((trainer.current_epoch, batch[0].tolist()))

    def on_validation_epoch_start(self, trainer, pl_module):
        seen["val_images"], seen["val_batches"] = [0, 0], [0, 0]

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        seen["val_images"][dataloader_idx] += len(batch[1])
        seen["val_batches"][dataloader_idx] += 1

    def on_train_end(self, trainer, pl_module):
        torch.save({
            "rank": trainer.global_rank, "world": trainer.world_size, "steps": trainer.global_step,
            "params": {k: v.detach().clone() for k, v in pl_module.named_parameters()},
            "queue": pl_module.key_queue.queue.clone(), "ptr": pl_module.key_queue.ptr.clone(),
            "run_dir": str(pl_module.cfg.checkpoint.run_dir),
            "generators": pl_module.generators.state_dict(), **seen,
        }, os.path.join(out, f"rank{trainer.global_rank}.pt"))

build = pretrain.build_callbacks
pretrain.build_callbacks = lambda spec, run_dir: [*build(spec, run_dir), Dump()]
from solo_mixmask.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module", params=["image_folder", "memory"])
def ddp(tmp_path_factory, request):
    """One DDP run per data path: PIL loader workers, or the in-memory path (data.format)."""
    base = tmp_path_factory.mktemp(f"ddp_{request.param}")
    harness = base / "ddp_harness.py"
    harness.write_text(HARNESS)
    args = [
        "pretrain",
        *TINY,
        "accelerator=cpu",
        "devices=2",
        "strategy=ddp",
        f"method_kwargs.queue_size={QUEUE}",
        f"optimizer.batch_size={BATCH}",
        f"data.knn_train_subset={MEMORY}",
        f"data.val_subset={QUERIES}",
        f"checkpoint.dir={base / 'runs'}",  # no run_dir: the ranks must agree on one folder
        f"data.format={request.param}",
    ]
    result = run(
        args, prefix=[sys.executable, str(harness)], env={"DDP_DUMP_DIR": str(base)}, timeout=400
    )
    assert result.returncode == 0, result.stderr[-4000:]
    dumps = [torch.load(base / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return {"base": base, "result": result, "dumps": dumps}


def test_both_ranks_ran_one_run(ddp):
    r0, r1 = ddp["dumps"]
    assert (r0["rank"], r1["rank"], r0["world"], r1["world"]) == (0, 1, 2, 2)
    assert r0["steps"] == r1["steps"] == 64 // (2 * BATCH)  # the 64 images split between ranks
    assert r0["run_dir"] == r1["run_dir"]
    runs = list((ddp["base"] / "runs").iterdir())
    assert [str(p) for p in runs] == [r0["run_dir"]]
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["steps"] == r0["steps"]


def test_each_rank_trains_on_its_own_share_of_every_epoch(ddp):
    r0, r1 = ddp["dumps"]
    for epoch in {e for e, _ in r0["indexes"]}:
        shares = [{i for e, b in r["indexes"] if e == epoch for i in b} for r in (r0, r1)]
        assert len(shares[0]) == len(shares[1]) == 32 and not shares[0] & shares[1]


def test_queue_holds_keys_from_both_ranks(ddp):
    r0, r1 = ddp["dumps"]
    local0, local1 = r0["local_keys"], r1["local_keys"]  # (1 queue, B, d) each, before gather
    assert local0.shape == (1, BATCH, 16)
    assert not torch.allclose(local0, local1)  # different images on the two ranks
    assert torch.equal(r0["gathered_keys"], r1["gathered_keys"])
    assert torch.equal(r0["gathered_keys"], torch.cat([local0, local1], dim=1))  # rank order
    steps = r0["steps"]
    assert int(r0["ptr"]) == int(r1["ptr"]) == steps * 2 * BATCH % QUEUE
    assert torch.equal(r0["queue"], r1["queue"])
    # The last step's 16 keys sit, normalised, in the 16 columns before the pointer.
    cols = [(int(r0["ptr"]) - 2 * BATCH + j) % QUEUE for j in range(2 * BATCH)]
    expected = F.normalize(r0["gathered_keys"], dim=-1)[0].T
    torch.testing.assert_close(r0["queue"][0][:, cols], expected)


def test_ranks_end_with_identical_weights(ddp):
    p0, p1 = ddp["dumps"][0]["params"], ddp["dumps"][1]["params"]
    assert p0.keys() == p1.keys()
    assert any(k.startswith("momentum_backbone.") for k in p0)
    for key in p0:
        assert torch.equal(p0[key], p1[key]), key


def test_knn_monitor_gathers_features_from_both_ranks(ddp):
    r0, r1 = ddp["dumps"]
    # 33 k-NN training images and 33 validation images, split between the ranks, each once
    # (not padded to 34), gathered on each rank.
    assert (r0["knn_train"], r0["knn_val"]) == (r1["knn_train"], r1["knn_val"]) == (33, 33)
    assert [a + b for a, b in zip(r0["val_images"], r1["val_images"])] == [MEMORY, QUERIES]
    assert r0["val_batches"] != r1["val_batches"]  # 16 and 17 images: 2 and 3 batches of 8


def _last_validation(run_dir) -> dict[str, float]:
    import csv

    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    last = [row for row in rows if row.get("val_knn_acc1")][-1]
    keys = ("val_knn_acc1", "val_knn_acc5", "val_acc1", "val_acc5", "val_loss")
    return {key: float(last[key]) for key in keys}


def _one_process_validation(ddp) -> tuple[dict[str, float], dict[str, float]]:
    """(the DDP run's last online figures, one process's validation of its last checkpoint)."""
    import lightning as L
    from omegaconf import OmegaConf

    from solo_mixmask.checkpoints.io import safe_load_checkpoint
    from solo_mixmask.config.data_specs import data_spec
    from solo_mixmask.data.loaders import build_knn_loaders
    from solo_mixmask.run.pretrain import prepare_config

    run_dir = next((ddp["base"] / "runs").iterdir())
    online = _last_validation(run_dir)
    cls, cfg = prepare_config(OmegaConf.load(run_dir / "config.yaml"))
    model = cls(cfg)
    model.load_state_dict(safe_load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"])
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(ddp["base"]),
    )
    results = trainer.validate(model, dataloaders=list(build_knn_loaders(data_spec(cfg))))
    return online, {k: float(v) for r in results for k, v in r.items()}


def test_online_accuracies_equal_one_process_validation_of_the_same_weights(ddp):
    """A padded share would count an image twice (a k-NN memory image votes twice): the DDP
    run's last k-NN and linear figures are those of one process validating its checkpoint."""
    online, one = _one_process_validation(ddp)
    for key in ("val_knn_acc1", "val_knn_acc5", "val_acc1", "val_acc5"):
        assert online[key] == pytest.approx(one[key], abs=1e-4), key


def test_online_val_loss_is_the_mean_over_every_image(ddp):
    """Lightning's sync_dist epoch mean divides by the ranks' mean image count rounded down
    (33 images on 2 ranks: 16, a loss 33/32 too large); the engine sums it exactly."""
    online, one = _one_process_validation(ddp)
    assert online["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)


def test_checkpoint_keeps_each_ranks_random_streams(ddp):
    from solo_mixmask.checkpoints.io import safe_load_checkpoint

    run_dir = ddp["dumps"][0]["run_dir"]
    ckpt = safe_load_checkpoint(f"{run_dir}/checkpoints/last.ckpt")
    per_rank = ckpt["callbacks"]["ResumeState"]["per_rank"]
    assert len(per_rank) == 2
    for rank, dump in enumerate(ddp["dumps"]):
        assert torch.equal(per_rank[rank]["generators"]["device"], dump["generators"]["device"])
    # Seeded per rank: the two mask streams differ (rank 0's alone would be wrong for rank 1).
    assert not torch.equal(per_rank[0]["generators"]["device"], per_rank[1]["generators"]["device"])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"SOLO_MIXMASK_RUN_DIR": "/shared/parent-run", "LOCAL_RANK": "1", "WORLD_SIZE": "2"},
            "/shared/parent-run",
        ),  # a child started by Lightning: its parent's folder
        (
            {"SLURM_NTASKS": "16", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train"},
            "/runs/mm-slurm4242",
        ),
        ({"LOCAL_RANK": "3", "WORLD_SIZE": "8", "TORCHELASTIC_RUN_ID": "job7"}, "/runs/mm-job7"),
    ],
)
def test_processes_of_one_run_agree_on_its_folder(monkeypatch, env, expected):
    from omegaconf import OmegaConf

    from solo_mixmask.config.run_specs import folder_spec
    from solo_mixmask.run.folder import new_run_dir

    for key in (
        "SOLO_MIXMASK_RUN_DIR",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "TORCHELASTIC_RUN_ID",
        "SLURM_NTASKS",
        "SLURM_JOB_ID",
        "SLURM_JOB_NAME",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = OmegaConf.create({"name": "mm", "checkpoint": {"dir": "/runs", "run_dir": None}})
    assert str(new_run_dir(folder_spec(cfg))) == expected
    cfg.checkpoint.run_dir = "/given"
    assert str(new_run_dir(folder_spec(cfg))) == "/given"  # an explicit folder always wins


def test_torchrun_without_a_run_id_needs_a_run_dir(monkeypatch):
    from omegaconf import OmegaConf

    from solo_mixmask.config.run_specs import folder_spec
    from solo_mixmask.errors import ConfigError
    from solo_mixmask.run.folder import new_run_dir

    monkeypatch.delenv("SOLO_MIXMASK_RUN_DIR", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    cfg = OmegaConf.create({"name": "mm", "checkpoint": {"dir": "/runs", "run_dir": None}})
    with pytest.raises(ConfigError, match=r"checkpoint\.run_dir=None .*torchrun"):
        new_run_dir(folder_spec(cfg))


SHUFFLE_HARNESS = """
import os, sys, torch
from lightning.pytorch.callbacks import Callback
from solo_mixmask.run import pretrain

out = os.environ["DDP_DUMP_DIR"]
seen = {}

class Dump(Callback):
    def on_train_start(self, trainer, pl_module):
        def hook(module, args):
            seen["momentum_input"] = args[0].detach().clone()
        pl_module.momentum_backbone.register_forward_pre_hook(hook)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        seen["key_view"] = batch[1][-1].detach().clone()

    def on_train_end(self, trainer, pl_module):
        torch.save({"rank": trainer.global_rank, **seen},
                   os.path.join(out, f"shuffle{trainer.global_rank}.pt"))

build = pretrain.build_callbacks
pretrain.build_callbacks = lambda spec, run_dir: [*build(spec, run_dir), Dump()]
from solo_mixmask.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_shuffled_keys_are_shuffled_across_ranks(tmp_path):
    """``method_kwargs.shuffle_bn=true`` under DDP: the momentum backbones of the two ranks see
    one random split of both ranks' key images (the authors' cross-GPU shuffle), each image
    once, and the run trains to the end."""
    harness = tmp_path / "shuffle_harness.py"
    harness.write_text(SHUFFLE_HARNESS)
    args = [
        "pretrain",
        *TINY,
        "accelerator=cpu",
        "devices=2",
        "strategy=ddp",
        "method_kwargs.symmetric=false",
        "method_kwargs.shuffle_bn=true",
        f"optimizer.batch_size={BATCH}",
        f"checkpoint.dir={tmp_path / 'runs'}",
    ]
    result = run(
        args,
        prefix=[sys.executable, str(harness)],
        env={"DDP_DUMP_DIR": str(tmp_path)},
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"shuffle{r}.pt", weights_only=True) for r in (0, 1))
    keys = torch.cat([r0["key_view"], r1["key_view"]]).flatten(1)  # (2B, pixels), rank order
    seen = torch.cat([r0["momentum_input"], r1["momentum_input"]]).flatten(1)
    # each momentum input row is exactly one key image, and every key image is seen once
    match = (seen[:, None, :] == keys[None, :, :]).all(dim=2)  # (2B seen, 2B keys)
    assert match.sum(dim=1).eq(1).all() and match.sum(dim=0).eq(1).all()
    owner = match.float().argmax(dim=1) // BATCH  # the rank each seen image came from
    assert owner[:BATCH].eq(1).any() and owner[BATCH:].eq(0).any()  # shares crossed ranks


def _gather_on(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from solo_mixmask.utils.distributed import gather_no_grad

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        keys = torch.full((2, 3 + rank, 4), float(rank))  # rank 1 holds one key more
        torch.save(gather_no_grad(keys, dim=1), f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_keys_of_batches_of_different_sizes_are_gathered_whole(tmp_path):
    """A batch that lost an unreadable image has fewer keys than the other ranks' batches: the
    gather sends every rank's keys, each once, in rank order (a plain all_gather needs equal
    sizes)."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _gather_on,
        args=(2, str(tmp_path / "store"), str(tmp_path / "rank")),
        nprocs=2,
        start_method="spawn",
    )
    expected = torch.cat((torch.zeros(2, 3, 4), torch.ones(2, 4, 4)), dim=1)
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), expected)


NAN_HARNESS = """
import os, sys
from solo_mixmask.methods import METHODS

method = METHODS["mixmask"]
training_step = method.training_step
def nan_on_rank_1(self, batch, batch_idx):
    out = training_step(self, batch, batch_idx)
    if self.trainer.global_rank == 1 and self.trainer.global_step == int(os.environ["NAN_AT"]):
        out = out * float("nan")  # the step's loss
    return out
method.training_step = nan_on_rank_1
from solo_mixmask.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_bad_loss_on_one_rank_stops_every_rank_at_its_step(tmp_path):
    """Rank 1's loss is NaN at step 1 of 8: both ranks stop, naming step 1, though the guard
    reads each loss 2 steps later (``performance.loss_check_lag``); a rank that went on would
    wait for ever in the next gradient all-reduce. (At lag 0 the same sum over processes is
    read at once: ``tests/callbacks/test_nonfinite.py``; the other DDP runs here take that
    path every step.)"""
    harness = tmp_path / "nan_harness.py"
    harness.write_text(NAN_HARNESS)
    args = [
        "pretrain",
        *TINY,
        "accelerator=cpu",
        "devices=2",
        "strategy=ddp",
        "max_epochs=2",
        f"optimizer.batch_size={BATCH}",
        "performance.loss_check_lag=2",
        f"checkpoint.dir={tmp_path / 'runs'}",
    ]
    result = run(args, prefix=[sys.executable, str(harness)], env={"NAN_AT": "1"}, timeout=400)
    assert result.returncode == 3, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    lines = error_lines(result.stderr)
    assert lines and all(" at step 1 (epoch 0); training stopped" in line for line in lines), lines
    assert any(line.startswith("error: the training loss is nan at step 1") for line in lines)
    assert any("not finite on another rank at step 1" in line for line in lines)  # rank 0
