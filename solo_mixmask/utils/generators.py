"""Seeded random streams a method owns (saved in checkpoints, so that a resumed run draws the same
masks), and :func:`resolve_device`, the device a generator draws on."""

from __future__ import annotations

from typing import Any

import torch


def resolve_device(generator: torch.Generator, device: Any = None) -> torch.device:
    """The device to draw on: ``device`` if given, else the generator's; they must agree."""
    if device is None:
        return generator.device
    device = torch.device(device)
    if device.type != generator.device.type:
        raise ValueError(
            f"device={str(device)!r} is not allowed: the generator lives on "
            f"{str(generator.device)!r}; pass a generator created on the same device type"
        )
    return device


class SeededGenerators:
    """A ``torch.Generator`` on the batch's device and one on the host, created lazily.

    The device stream drives per-step tensors (masks, permutations) without host syncs; the host
    stream drives per-batch python scalars (Un-Mix's lambda and box). Seeds differ per rank.
    Objects drawn from these streams that hold draws of their own (a ``MaskBank``) are
    ``attach``-ed, so that their state is saved and restored with the generators.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.rank = 0
        self._device: torch.Generator | None = None
        self._host: torch.Generator | None = None
        self._pending: dict[str, torch.Tensor] = {}
        self._attached: dict[str, Any] = {}

    def attach(self, name: str, stream: Any) -> None:
        """Save ``stream`` (``state_dict``/``load_state_dict`` of tensors) under ``name.*``."""
        self._attached[name] = stream

    def _make(self, device: torch.device, offset: int, name: str) -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed * 1_000_003 + 7919 * self.rank + offset)
        if name in self._pending:
            gen.set_state(self._pending.pop(name))
        return gen

    def device(self, device: torch.device) -> torch.Generator:
        """The generator for ``device`` (re-created if the model moved)."""
        device = torch.device(device)
        if self._device is None or self._device.device != device:
            self._device = self._make(device, 1, "device")
        return self._device

    def host(self) -> torch.Generator:
        if self._host is None:
            self._host = self._make(torch.device("cpu"), 2, "host")
        return self._host

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = dict(self._pending)
        if self._device is not None:
            state["device"] = self._device.get_state()
        if self._host is not None:
            state["host"] = self._host.get_state()
        for name, stream in self._attached.items():
            state.update({f"{name}.{k}": v for k, v in stream.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore states; applied now, or when the generator is first created."""
        for name, stream in self._attached.items():
            prefix = f"{name}."
            stream.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        self._pending = {k: v.cpu() for k, v in state.items() if "." not in k}
        for name in ("device", "host"):
            gen = self._device if name == "device" else self._host
            if gen is not None and name in self._pending:
                gen.set_state(self._pending.pop(name))
