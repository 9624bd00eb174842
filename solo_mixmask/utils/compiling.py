"""``performance.compile_backend``: which ``torch.compile`` backend the compiled parts use."""

from __future__ import annotations

from typing import Any

from solo_mixmask.errors import ConfigError


def check_compile_backend(backend: Any) -> str:
    """``backend`` when torch.compile has it ("inductor" generates kernels; "eager" and
    "aot_eager" trace without compiling, for tests), else ConfigError naming
    ``performance.compile_backend``."""
    import torch._dynamo

    allowed = sorted(set(torch._dynamo.list_backends(exclude_tags=())) | {"inductor"})
    if backend not in allowed:
        raise ConfigError("performance.compile_backend", backend, f"one of {', '.join(allowed)}")
    return str(backend)
