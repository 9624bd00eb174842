"""What a registry row is: a method = a momentum host + the mixers of its mixed views.

``solo_mixmask.methods`` lists the rows; ``METHODS`` (our engine's classes) and the names that
``solo_mixmask.solo`` adds to solo-learn are read off them. A mixed method's class is its host's
class plus one class, built here, that names the mixers and their ``method_kwargs`` defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from solo_mixmask.methods.mixed_branch import MixerRow


class SoloName(NamedTuple):
    """A name under which a row is added to solo-learn's ``solo.methods.METHODS``, the name of
    its built class (an attribute of ``solo_mixmask.solo``, so that it pickles) and the
    ``method_kwargs`` defaults that differ from the row's own ``method_defaults``."""

    name: str
    class_name: str
    defaults: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Host:
    """A momentum method that mixed views are added to: our engine's class, and the logic placed
    on solo-learn's class ``solo_base`` (its ``BaseMomentumMethod`` for the MoCo family, its own
    ``BYOL`` for the ``byol_*`` rows)."""

    engine_class: type
    solo_logic: type
    solo_base: Literal["BaseMomentumMethod", "BYOL"]


@dataclass(frozen=True)
class MethodRow:
    """One method: its name in configs (``method: <name>``), its class name, its host, the
    (mixer, partner rule) pairs of its mixed views in the order they are drawn, and the names
    it is added under to solo-learn (none when solo-learn has the method itself)."""

    name: str
    class_name: str
    host: Host
    mixers: tuple[MixerRow, ...] = ()
    solo_names: tuple[SoloName, ...] = ()

    def build(self, bases: tuple[type, ...], name: str, module: str, **namespace: Any) -> type:
        """``class <name>(*bases)`` with this row's mixers and ``method_kwargs`` defaults (the
        first base's, its mixers', then ``namespace["method_defaults"]``); the one base itself
        for a row without mixers and without extra attributes."""
        if not self.mixers and not namespace and len(bases) == 1:
            return bases[0]
        defaults = dict(getattr(bases[0], "method_defaults", {}))
        for mixer, _ in self.mixers:
            defaults.update(mixer.DEFAULTS)
        defaults.update(namespace.pop("method_defaults", {}))
        views = ", ".join(f"{mixer.__name__} ({rule} partners)" for mixer, rule in self.mixers)
        attributes = {
            "__module__": module,
            "__qualname__": name,
            "__doc__": f"``{self.name}``: {bases[0].__name__} + mixed views: {views or 'none'}.",
            "mixer_rows": self.mixers,
            "method_defaults": defaults,
            **namespace,
        }
        return type(name, bases, attributes)
