"""Checkpoints in the layouts solo-mixmask reads, built without training (tiny and fast)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from solo_mixmask.config.schema import to_container
from solo_mixmask.methods import METHODS
from tests.conftest import tiny_cfg

BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


@torch.no_grad()
def randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm distinct affine weights and running statistics, so that a
    mix-up of BN tensors in a conversion cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def method_checkpoint(
    path: Path,
    backbone: str = "resnet18",
    kwargs: dict | None = None,
    cifar_stem: bool = False,
    method: str = "mocov2plus",
    data: dict | None = None,
):
    """Save a Lightning-like checkpoint of an untrained method (``data``: its config's
    ``data.*`` settings besides tiny_cfg's); returns (path, model)."""
    cfg = tiny_cfg(method)
    cfg.data.update(data or {})
    cfg.backbone = OmegaConf.create(
        {"name": backbone, "kwargs": kwargs or {}, "cifar_stem": cifar_stem}
    )
    cfg.performance = OmegaConf.create({"channels_last": False, "compile": False})
    model = METHODS[method](cfg)
    randomise_batchnorm(model.backbone)
    torch.save(
        {
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": "2.6.0",
            "state_dict": model.state_dict(),
            "hyper_parameters": {"cfg": to_container(model.cfg)},
        },
        path,
    )
    return path, model


def authors_checkpoint(path: Path, seed: int = 0) -> tuple[Path, dict]:
    """The authors' release layout: torchvision ResNet-50 under 'module.encoder_q.' with the
    MoCo MLP head at fc.0 / fc.2, a key encoder and a queue. Returns (path, query backbone
    state dict in torchvision names, without fc)."""
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.resnet50()
    randomise_batchnorm(net, seed)
    backbone = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    sd = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
    sd["module.encoder_q.fc.0.weight"] = torch.randn(64, 2048)  # hidden width cut for speed
    sd["module.encoder_q.fc.0.bias"] = torch.zeros(64)
    sd["module.encoder_q.fc.2.weight"] = torch.randn(128, 64)
    sd["module.encoder_q.fc.2.bias"] = torch.zeros(128)
    # the key encoder: shares storage (small file) except conv1, which differs from the query
    sd.update({f"module.encoder_k.{k}": v for k, v in backbone.items()})
    sd["module.encoder_k.conv1.weight"] = backbone["conv1.weight"] + 1.0
    sd["module.queue"] = torch.randn(128, 16)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save(
        {
            "epoch": 200,
            "arch": "resnet50",
            "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": []}]},
        },
        path,
    )
    return path, backbone


def class_folder_tree(root: Path, counts: dict[str, int], size: int = 20, seed: int = 0) -> Path:
    """An ImageFolder tree ``root/<class>/<i>.png`` with ``counts[class]`` RGB images each; each
    class has its own mean colour (so a classifier can learn it) plus noise. Returns ``root``."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for c, (name, n) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        base = torch.tensor([(c * 80) % 256, (c * 150 + 60) % 256, (255 - c * 90) % 256])
        for i in range(n):
            noise = torch.randint(-40, 41, (size, size, 3), generator=g)
            pixels = (base + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels, mode="RGB").save(root / name / f"{i}.png")
    return root


def write_one_step_epoch_logs(run_dir: Path) -> None:
    """``logs/metrics.csv`` and ``init_metrics.json`` laid out as a real run of one optimiser
    step per epoch writes them (MixMask, 16 images at batch 16, 2 epochs, k-NN every epoch):
    the k-NN before training and the one after epoch 1 are both logged at epoch 0, step 0."""
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "logs" / "metrics.csv").write_text(
        "epoch,lr-SGD/backbone,step,train_class_loss_epoch,train_embedding_std,"
        "train_mask_loss_epoch,train_nce_loss_epoch,val_acc1,val_knn_acc1\n"
        "0,,0,,,,,9.0,28.0\n"
        ",0.006,0,,,,,,\n"
        "0,,0,,,,,8.0,21.0\n"
        "0,,0,2.3,0.07,1.6,1.5,,\n"
        ",0.003,1,,,,,,\n"
        "1,,1,,,,,6.0,37.0\n"
        "1,,1,2.4,0.06,3.0,2.9,,\n"
    )
    (run_dir / "init_metrics.json").write_text('{"knn_acc1_at_init": 28.0}')
