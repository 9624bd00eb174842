"""The engine's validation metrics (solo_mixmask.methods.base): top-k accuracy over labelled
images (torchmetrics) and the k-NN feature store, by hand and through Lightning's loop."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from solo_mixmask.core.knn import knn_accuracy
from solo_mixmask.errors import ConfigError
from solo_mixmask.methods import METHODS
from solo_mixmask.methods.base import (
    EpochMeans,
    LabelledFeatures,
    _masked_accuracy,
    _top_k_accuracy,
    _updated,
)
from tests.callbacks.helpers import quiet_trainer
from tests.conftest import synthetic_batch, tiny_cfg


def ranked_logits(targets: list[int], ranks: list[int], classes: int) -> torch.Tensor:
    """Logits (N, classes), distinct per row, that put class ``targets[i]`` at place
    ``ranks[i]`` (0 = the highest score) of row i."""
    rows = []
    for target, rank in zip(targets, ranks):
        order = [c for c in range(classes) if c != max(target, 0)]
        order.insert(rank, max(target, 0))
        row = torch.empty(classes)
        row[order] = torch.arange(classes, 0, -1, dtype=torch.float32)
        rows.append(row)
    return torch.stack(rows)


# six classes; image 4 is unlabelled (-1). Target ranks 0, 3, 5, 1, -, 4: top-1 hits image 0
# alone (1 of 5 labelled), top-5 every labelled image but image 2 (4 of 5).
TARGETS = [2, 0, 5, 1, -1, 3]
RANKS = [0, 3, 5, 1, 0, 4]
HAND = {1: 1 / 5, 5: 4 / 5}


@pytest.mark.parametrize("k", [1, 5])
def test_top_k_accuracy_counts_labelled_images_by_hand(k):
    logits, targets = ranked_logits(TARGETS, RANKS, 6), torch.tensor(TARGETS)
    metric = _top_k_accuracy(6, k)
    metric.update(logits[:2], targets[:2])  # two batches of one epoch, the -1 in the second
    metric.update(logits[2:], targets[2:])
    value = metric.compute()
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(HAND[k])
    # the training step's sync-free figure agrees
    assert _masked_accuracy(logits, targets, k).item() == pytest.approx(HAND[k])
    metric.reset()
    assert not _updated(metric)


def test_training_step_accuracy_is_in_percent_as_validation_and_solo_learn():
    """train_acc1 was a fraction (0.2) beside val_acc1 and solo-learn's train_acc1 in percent."""
    from solo_mixmask.methods import METHODS
    from tests.conftest import tiny_cfg

    model = METHODS["mocov2plus"](tiny_cfg("mocov2plus"))
    logits, targets = ranked_logits(TARGETS, RANKS, 6), torch.tensor(TARGETS)
    stats = model._classification(logits, targets)
    assert stats["acc1"].item() == pytest.approx(100 * HAND[1])
    assert stats["acc5"].item() == pytest.approx(100 * HAND[5])


def test_top_k_accuracy_edge_cases():
    unlabelled = _top_k_accuracy(6, 1)
    unlabelled.update(torch.randn(3, 6), torch.full((3,), -1))
    assert unlabelled.compute().item() == 0.0  # nothing labelled: 0, as the training step says
    assert _masked_accuracy(torch.randn(3, 6), torch.full((3,), -1), 1).item() == 0.0
    few_classes = _top_k_accuracy(3, 5)  # top-5 of 3 classes: every labelled image is a hit
    few_classes.update(torch.randn(4, 3), torch.tensor([0, 2, -1, 1]))
    assert few_classes.compute().item() == 1.0


def test_feature_store_concatenates_in_order_and_resets():
    store = LabelledFeatures()
    assert not _updated(store)
    a, b = torch.randn(2, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    store.update(a, torch.tensor([4, -1]))
    store.update(b, torch.tensor([7]))
    feats, targets = store.gathered()
    assert feats.dtype == torch.float32 and targets.dtype == torch.int64
    assert torch.equal(feats, torch.cat([a, b]).float())
    assert torch.equal(targets, torch.tensor([4, -1, 7]))
    store.reset()
    assert not _updated(store) and store.feats == [] and store.targets == []
    store.update(torch.ones(1, 1), torch.tensor([3]))  # one image: not squeezed to a scalar
    feats, targets = store.gathered()
    assert feats.shape == (1, 1) and targets.shape == (1,)
    assert store.state_dict() == {}


def test_metrics_left_by_validate_still_update_in_fits_validation():
    # trainer.validate() (the pretrain's at-init figures) ends, and resets, under inference_mode;
    # fit's validation runs under no_grad, where torchmetrics 0.11 could not add to those states
    model = METHODS["mocov2plus"](tiny_cfg("mocov2plus"))
    with torch.inference_mode():
        for metric in model._validation_metrics():
            metric.reset()
    with torch.no_grad():
        model.on_validation_epoch_start()
        model.val_top1.update(torch.eye(10)[:4], torch.tensor([0, 1, 5, -1]))
        model.val_top1.update(torch.eye(10)[:2], torch.tensor([0, 2]))
    assert model.val_top1.compute().item() == pytest.approx(3 / 5)


def test_validation_metrics_stay_out_of_checkpoints():
    model = METHODS["mocov2plus"](tiny_cfg("mocov2plus"))
    model.knn_memory.update(torch.randn(2, model.features_dim), torch.tensor([1, 2]))
    model.val_top1.update(torch.randn(2, 10), torch.tensor([1, 2]))
    state = model.state_dict()
    names = ("val_loss_mean", "val_top1", "val_top5", "knn_memory", "knn_queries")
    assert not [key for key in state if key.startswith(names)]  # old checkpoints load strictly
    fresh = METHODS["mocov2plus"](tiny_cfg("mocov2plus"))
    fresh.load_state_dict(state, strict=True)


def test_validation_logs_hand_checked_accuracies_and_resets_every_epoch():
    torch.manual_seed(0)
    model = METHODS["mocov2plus"](tiny_cfg("mocov2plus")).eval()  # k-NN with k=5, 10 classes
    g = torch.Generator().manual_seed(3)
    memory_x = torch.randn(23, 3, 16, 16, generator=g)
    memory_y = torch.randint(0, 10, (23,), generator=g)
    memory_y[[1, 7]] = -1  # unlabelled images: left out of the k-NN vote
    val_x = torch.randn(12, 3, 16, 16, generator=g)

    def batches(x: torch.Tensor) -> list[dict[str, torch.Tensor]]:  # as validation runs them
        model.eval()  # (Lightning 2.1 leaves the model in training mode after validate)
        with torch.no_grad():
            return [model.forward(chunk) for chunk in x.split(5)]  # uneven last batches

    # validation targets at chosen places of the (untrained) classifier's ranking; three
    # unlabelled: top-1 hits images 0, 3, 8, 10 (4 of 9), top-5 also 2 and 9 (6 of 9)
    ranks = [0, 0, 2, 0, 7, 0, 2, 7, 0, 2, 0, 9]
    order = torch.cat([o["logits"] for o in batches(val_x)]).argsort(dim=1, descending=True)
    val_y = order[torch.arange(12), torch.tensor(ranks)]
    val_y[[1, 5, 6]] = -1
    hand = {1: 100 * 4 / 9, 5: 100 * 6 / 9}
    # the classifier's loss: the mean over the 9 labelled images (batches of 5, 5 and 2 with
    # 4, 3 and 2 labelled: a mean of batch means, weighted by batch size, is not it)
    logits = torch.cat([o["logits"] for o in batches(val_x)])
    labelled = val_y >= 0
    hand_loss = torch.nn.functional.cross_entropy(logits[labelled], val_y[labelled]).item()
    loaders = [
        DataLoader(TensorDataset(memory_x, memory_y), batch_size=5),
        DataLoader(TensorDataset(val_x, val_y), batch_size=5),
    ]
    trainer = quiet_trainer()
    epochs = []
    for _ in range(2):
        results = trainer.validate(model, dataloaders=loaders, verbose=False)
        epochs.append({k: v for r in results for k, v in r.items()})

    # the k-NN figures the pre-torchmetrics engine computed from the same batches
    memory_f = torch.cat([o["feats"] for o in batches(memory_x)])
    val_f = torch.cat([o["feats"] for o in batches(val_x)])
    knn1, knn5 = knn_accuracy(memory_f, memory_y, val_f, val_y, 10, 5, model.cfg.knn_eval.T)
    assert 0 < knn5  # a figure that can tell a wrong store from the right one
    for metrics in epochs:  # the same figures every epoch; the metrics are reset after each
        assert metrics["val_acc1"] == pytest.approx(hand[1], rel=1e-6)
        assert metrics["val_acc5"] == pytest.approx(hand[5], rel=1e-6)
        assert metrics["val_loss"] == pytest.approx(hand_loss, rel=1e-5)
        assert metrics["val_knn_acc1"] == pytest.approx(knn1, rel=1e-6)
        assert metrics["val_knn_acc5"] == pytest.approx(knn5, rel=1e-6)
    assert model.knn_k == 5
    assert not _updated(model.knn_memory) and not _updated(model.val_top1)
    assert not _updated(model.val_loss_mean)


def test_epoch_means_go_on_from_restored_sums_bit_for_bit():
    """A resumed process restores the partial sums of the epoch so far (ResumeState) and ends
    with the mean the uninterrupted process logs."""
    values = torch.rand(5, generator=torch.Generator().manual_seed(0))
    sizes = [8, 8, 8, 8, 3]
    whole = EpochMeans()
    for value, size in zip(values, sizes):
        whole.batch_size = size
        mean = whole.update("train_x", value, None, sync=True)
    expected = float((values * torch.tensor(sizes)).sum() / sum(sizes))
    assert float(mean.compute()) == pytest.approx(expected, rel=1e-6)
    before = EpochMeans()
    for value, size in zip(values[:2], sizes[:2]):
        before.batch_size = size
        before.update("train_x", value, None, sync=True)
    after = EpochMeans()
    after.restore(before.sums())
    for value, size in zip(values[2:], sizes[2:]):
        resumed = after.update("train_x", value, size, sync=True)
    assert torch.equal(resumed.compute(), mean.compute())
    assert whole.sums()["train_x"]["weight"] == sum(sizes)


def test_training_logs_epoch_means_under_lightnings_names_fresh_every_epoch():
    """The engine logs its per-step values' epoch means itself (EpochMeans, so that a
    checkpoint can carry them): same names as Lightning's, the mean of each epoch's steps
    weighted by batch size (an uneven last batch), none carried into the next epoch."""
    from tests.methods.test_methods import RandomViews

    class Record(L.Callback):
        def __init__(self):
            self.steps, self.epochs = [[], []], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = float(trainer.callback_metrics["train_nce_loss_step"])
            self.steps[trainer.current_epoch].append((step, len(batch[2])))

        def on_train_epoch_end(self, trainer, pl_module):
            self.epochs.append(dict(trainer.callback_metrics))

    torch.manual_seed(0)
    model = METHODS["mocov2plus"](tiny_cfg("mocov2plus"))
    record = Record()
    trainer = quiet_trainer(
        max_epochs=2,
        limit_val_batches=0,
        callbacks=[record],
    )
    train = DataLoader(RandomViews(19), batch_size=8)  # batches of 8, 8 and 3 images
    trainer.fit(model, train_dataloaders=train)
    for steps, logged in zip(record.steps, record.epochs, strict=True):
        assert [size for _, size in steps] == [8, 8, 3]
        mean = sum(value * size for value, size in steps) / 19
        assert float(logged["train_nce_loss_epoch"]) == pytest.approx(mean, rel=1e-5)
        assert {"train_class_loss_epoch", "train_acc1_epoch", "train_embedding_std"} <= set(logged)
        assert "train_embedding_std_epoch" not in logged
    assert float(record.epochs[0]["train_nce_loss_epoch"]) != float(
        record.epochs[1]["train_nce_loss_epoch"]
    )


@pytest.mark.parametrize(
    "method, overrides",
    [
        # asymmetric MoCo v2 + MixMask (the CIFAR recipe): view 1 and the mixed view
        ("mixmask", {"method_kwargs.symmetric": False, "method_kwargs.bn_splits": 4}),
        ("mixmask", {}),  # MoCo V2+: both views and the mixed view, one BatchNorm group each
        ("unmix_mixmask", {"method_kwargs.bn_splits": 2, "method_kwargs.shuffle_bn": True}),
        ("byol_mixmask", {}),  # BYOL's projector and predictor hold BatchNorm1d: per input
    ],
)
def test_batched_online_forwards_compute_the_same_step(method, overrides):
    """``performance.batch_online_forwards``: one online backbone call for the views and mixed
    views, and the same loss, gradients and BatchNorm statistics as one call per input."""
    models = []
    for batched in (False, True):
        cfg = tiny_cfg(method, performance__batch_online_forwards=batched)
        for key, value in overrides.items():
            OmegaConf.update(cfg, key, value)
        models.append(METHODS[method](cfg).train())
    apart, together = models
    together.load_state_dict(apart.state_dict())
    calls = []
    for model in models:
        model.backbone.register_forward_hook(lambda m, i, o, model=model: calls.append(model))
    losses = []
    for model in models:
        out = model.training_step(synthetic_batch(), 0)
        loss = out["loss"] if isinstance(out, dict) else out
        loss.backward()
        losses.append(loss)
    online = 1 + len(apart.mixers) if apart.online_views else 2 + len(apart.mixers)
    assert calls.count(apart) == online and calls.count(together) == 1
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(together.named_parameters(), apart.parameters()):
        if q.grad is not None:  # float32 sums in another order: errors grow with the gradient
            atol = 1e-4 * max(1.0, float(q.grad.abs().max()))  # (measured: <= 1.9e-5 of it)
            torch.testing.assert_close(p.grad, q.grad, atol=atol, rtol=1e-4, msg=name)
    for (name, b), c in zip(together.named_buffers(), apart.buffers()):
        torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-5, msg=name)
    assert not together._online_features  # every input's features were used


def test_batched_online_forwards_refuse_a_backbone_whose_batch_norm_is_not_split():
    model = METHODS["mixmask"](tiny_cfg("mixmask", performance__batch_online_forwards=True))
    model.backbone.add_module("extra_norm", torch.nn.SyncBatchNorm(3))
    with pytest.raises(ConfigError) as info:
        model.training_step(synthetic_batch(), 0)
    assert info.value.key == "performance.batch_online_forwards"
    assert "SyncBatchNorm" in str(info.value)


def test_the_online_classifier_takes_the_width_the_backbone_outputs():
    """mobilenetv3_small_050 outputs 1024 features (timm's num_features: 288): the classifier
    and the projector are built for 1024, and a step trains."""
    cfg = tiny_cfg("mixmask", performance__channels_last=False)
    cfg.backbone = OmegaConf.create(
        {"name": "mobilenetv3_small_050", "kwargs": {}, "cifar_stem": False}
    )
    model = METHODS["mixmask"](cfg).train()
    assert model.features_dim == 1024 and model.classifier.in_features == 1024
    out = model.training_step(synthetic_batch(), 0)
    assert torch.isfinite(out["loss"] if isinstance(out, dict) else out)
