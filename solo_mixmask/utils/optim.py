"""How the optimiser updates its parameters: ``performance.optimizer_impl``.

torch's SGD and AdamW update a list of tensors either one tensor at a time ("for_loop"), with
multi-tensor kernels over all of them ("foreach": a few launches per step instead of a few per
parameter), or with one fused kernel per dtype/device group ("fused"). They compute the same
update; "fused" may round differently in the last bit. timm's LARS has only its own loop.
"""

from __future__ import annotations

from typing import Any

from solo_mixmask.errors import ConfigError

#: ``performance.optimizer_impl`` values. "auto": "foreach" where the optimiser has it (sgd,
#: adamw), the optimiser's own loop otherwise (lars); "default": whatever torch picks (foreach
#: when every parameter is on a GPU, the loop on the CPU).
OPTIMIZER_IMPLS = ("auto", "default", "for_loop", "foreach", "fused")
#: Optimisers (``optimizer.name``) that take torch's ``foreach`` / ``fused`` arguments.
MULTI_TENSOR_OPTIMIZERS = ("sgd", "adamw")


def check_optimizer_impl(impl: Any, optimizer: str) -> None:
    """ConfigError unless ``impl`` is one of :data:`OPTIMIZER_IMPLS` that ``optimizer`` has."""
    if impl not in OPTIMIZER_IMPLS:
        raise ConfigError(
            "performance.optimizer_impl", impl, f"one of {', '.join(OPTIMIZER_IMPLS)}"
        )
    if impl in ("foreach", "fused") and optimizer not in MULTI_TENSOR_OPTIMIZERS:
        raise ConfigError(
            "performance.optimizer_impl",
            impl,
            f"auto, default or for_loop with optimizer.name={optimizer} "
            f"(foreach and fused exist for {' and '.join(MULTI_TENSOR_OPTIMIZERS)})",
        )


def optimizer_impl_kwargs(impl: str, optimizer: str) -> dict[str, bool]:
    """The ``foreach`` / ``fused`` arguments of torch's ``optimizer`` for ``impl`` ({} for
    "default" and for optimisers without them)."""
    check_optimizer_impl(impl, optimizer)
    if optimizer not in MULTI_TENSOR_OPTIMIZERS or impl == "default":
        return {}
    if impl == "fused":
        return {"fused": True}
    return {"foreach": impl in ("auto", "foreach")}
