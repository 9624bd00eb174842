"""The GPU fast path's CPU-testable parts: precision "auto" and the torch.compile option."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from solo_mixmask.config.run_specs import trainer_spec
from solo_mixmask.config.schema import BASE_DEFAULTS, fill_defaults
from solo_mixmask.errors import ConfigError
from solo_mixmask.methods import METHODS
from solo_mixmask.run.trainer import trainer_kwargs
from tests.conftest import synthetic_batch, tiny_cfg


def _precision(monkeypatch, precision, accelerator="auto", cuda=False, bf16=True) -> str:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    cfg = OmegaConf.create({"precision": precision, "accelerator": accelerator, "devices": 1})
    return trainer_kwargs(trainer_spec(cfg))["precision"]


def test_precision_defaults_to_auto():
    assert fill_defaults(OmegaConf.create({}), BASE_DEFAULTS).precision == "auto"


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_cpu(monkeypatch):
    assert _precision(monkeypatch, "auto", cuda=False) == "32-true"
    assert _precision(monkeypatch, "auto", cuda=True) == "bf16-mixed"
    assert _precision(monkeypatch, "auto", "gpu", cuda=True) == "bf16-mixed"
    assert _precision(monkeypatch, "auto", "cpu", cuda=True) == "32-true"  # asked for the CPU
    assert _precision(monkeypatch, "auto", cuda=True, bf16=False) == "16-mixed"  # e.g. V100
    assert _precision(monkeypatch, None, cuda=True) == "bf16-mixed"


def test_explicit_precision_is_kept(monkeypatch):
    assert _precision(monkeypatch, "32-true", cuda=True) == "32-true"
    assert _precision(monkeypatch, "bf16-mixed", "cpu", cuda=False) == "bf16-mixed"


def test_compile_backend_is_checked():
    with pytest.raises(ConfigError, match="performance.compile_backend='turbo'"):
        METHODS["mixmask"](
            tiny_cfg("mixmask", performance__compile=True, performance__compile_backend="turbo")
        )


@pytest.mark.parametrize("batched", [False, True])
def test_compiled_mixmask_trains_and_keeps_state_dict_keys(batched):
    """aot_eager traces forward and backward like inductor does, without the C++ build; with
    ``batch_online_forwards`` the online backbone traces the interleaved call."""
    torch.manual_seed(0)
    plain = METHODS["mixmask"](tiny_cfg("mixmask"))
    compiled = METHODS["mixmask"](
        tiny_cfg(
            "mixmask",
            performance__compile=True,
            performance__compile_backend="aot_eager",
            performance__batch_online_forwards=batched,
        )
    )
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    compiled.load_state_dict(plain.state_dict())
    compiled.generators.load_state_dict(plain.generators.state_dict())
    batch = synthetic_batch()
    loss_plain = plain.training_step(batch, 0)
    loss = compiled.training_step(batch, 0)
    loss.backward()
    # the online and the momentum backbone each went through their own compiled wrapper
    assert len(compiled._compiled) == 2
    assert all(
        isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in compiled._compiled.values()
    )
    assert compiled.state_dict().keys() == plain.state_dict().keys()  # nothing registered
    torch.testing.assert_close(loss, loss_plain, rtol=1e-4, atol=1e-4)
    grads = [p.grad for p in compiled.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("mode, marks", [("reduce-overhead", 2), ("default", 0)])
def test_cuda_graph_mode_marks_each_training_step(monkeypatch, mode, marks):
    """With CUDA graphs each step starts a new graph iteration (the compiled backbones run
    several times per step); other modes leave the marker alone."""
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(1))
    cfg = tiny_cfg(
        "mixmask",
        performance__compile=True,
        performance__compile_backend="eager",
        performance__compile_mode=mode,
    )
    model = METHODS["mixmask"](cfg)
    for step in range(2):
        model.training_step(synthetic_batch(), step)
    assert len(calls) == marks
