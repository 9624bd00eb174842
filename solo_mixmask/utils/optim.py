"""How the optimiser updates its parameters: ``performance.optimizer_impl``.

torch's SGD and AdamW, and timm's LARS, update a list of tensors either one tensor at a time
("for_loop") or with multi-tensor kernels over all of them ("foreach": a few launches per step
instead of a few per parameter); torch's two also have one fused kernel per dtype/device group
("fused"). They compute the same update; "fused" may round differently in the last bit.
"""

from __future__ import annotations

import inspect
from typing import Any

from solo_mixmask.errors import ConfigError

#: ``performance.optimizer_impl`` values. "auto": "foreach" (for timm's LARS where its version
#: has the option, 1.0.31 on; else its loop); "default": whatever the optimiser picks (foreach
#: when every parameter is on a GPU, the loop on the CPU).
OPTIMIZER_IMPLS = ("auto", "default", "for_loop", "foreach", "fused")
#: Optimisers (``optimizer.name``) that take a ``foreach`` argument.
FOREACH_OPTIMIZERS = ("sgd", "adamw", "lars")
#: Optimisers that take torch's ``fused`` argument.
FUSED_OPTIMIZERS = ("sgd", "adamw")


def lars_takes_foreach() -> bool:
    """Whether this timm's ``Lars`` has a ``foreach`` argument (timm >= 1.0.31)."""
    from timm.optim import Lars

    return "foreach" in inspect.signature(Lars.__init__).parameters


def check_optimizer_impl(impl: Any, optimizer: str) -> None:
    """ConfigError unless ``impl`` is one of :data:`OPTIMIZER_IMPLS` that ``optimizer`` has."""
    if impl not in OPTIMIZER_IMPLS:
        raise ConfigError(
            "performance.optimizer_impl", impl, f"one of {', '.join(OPTIMIZER_IMPLS)}"
        )
    if optimizer == "lars" and impl in ("for_loop", "foreach") and not lars_takes_foreach():
        import timm

        raise ConfigError(
            "performance.optimizer_impl",
            impl,
            f"auto or default with optimizer.name=lars: timm {timm.__version__}'s Lars has no "
            "foreach option (timm >= 1.0.31 has)",
        )
    if impl == "fused" and optimizer not in FUSED_OPTIMIZERS:
        raise ConfigError(
            "performance.optimizer_impl",
            impl,
            f"auto, default, for_loop or foreach with optimizer.name={optimizer} "
            f"(fused exists for {' and '.join(FUSED_OPTIMIZERS)})",
        )


def optimizer_impl_kwargs(impl: str, optimizer: str) -> dict[str, bool]:
    """The ``foreach`` / ``fused`` arguments of ``optimizer`` for ``impl`` ({} for
    "default")."""
    check_optimizer_impl(impl, optimizer)
    if impl == "default" or optimizer not in FOREACH_OPTIMIZERS:
        return {}
    if optimizer == "lars" and not lars_takes_foreach():  # auto, on an older timm
        return {}
    if impl == "fused":
        return {"fused": True}
    return {"foreach": impl in ("auto", "foreach")}
