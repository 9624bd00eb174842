"""What a registry row is: a method = a momentum host + the mixers of its mixed views.

``solo_mixmask.methods`` lists the rows; everything else is read off them: ``METHODS`` (our
engine's classes) and the names ``solo_mixmask.solo`` adds to solo-learn on its own
``BaseMomentumMethod`` or ``BYOL``. A mixed method's class is its host's class plus one class,
built here, that names the mixers and their ``method_kwargs`` defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from solo_mixmask.methods.mixed_branch import MixerRow

#: solo-learn classes a host's logic can sit on: its ``BaseMomentumMethod`` (the MoCo family) or
#: its own ``BYOL`` (whose step the ``byol_*`` rows extend).
SoloBase = Literal["BaseMomentumMethod", "BYOL"]


class SoloName(NamedTuple):
    """A name under which a row is added to solo-learn's ``solo.methods.METHODS``."""

    name: str
    #: Name of the built class (also its attribute in ``solo_mixmask.solo``, so that it pickles).
    class_name: str
    #: ``method_kwargs`` defaults that differ from the row's own ``method_defaults``.
    defaults: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Host:
    """A momentum method that mixed views are added to: our engine's class, and the logic
    placed on solo-learn's class ``solo_base`` for its rows in solo-learn."""

    engine_class: type
    solo_logic: type
    solo_base: SoloBase


@dataclass(frozen=True)
class MethodRow:
    """One method: its name in configs (``method: <name>``), its class name, its host and the
    (mixer, partner rule) pairs of its mixed views, in the order they are drawn."""

    name: str
    class_name: str
    host: Host
    mixers: tuple[MixerRow, ...] = ()
    #: Names added to solo-learn; empty when solo-learn has the method itself.
    solo_names: tuple[SoloName, ...] = field(default=())

    def build(self, bases: tuple[type, ...], name: str, module: str, **namespace: Any) -> type:
        """``class <name>(*bases)`` with this row's mixers and ``method_kwargs`` defaults (the
        first base's, its mixers', then ``namespace["method_defaults"]``); the one base itself
        for a row without mixers and without extra attributes."""
        if not self.mixers and not namespace and len(bases) == 1:
            return bases[0]
        base = bases[0]
        defaults = dict(getattr(base, "method_defaults", {}))
        for mixer, _ in self.mixers:
            defaults.update(mixer.DEFAULTS)
        defaults.update(namespace.pop("method_defaults", {}))
        views = ", ".join(f"{mixer.__name__} ({rule} partners)" for mixer, rule in self.mixers)
        attributes = {
            "__module__": module,
            "__qualname__": name,
            "__doc__": f"``{self.name}``: {base.__name__} + mixed views: {views or 'none'}.",
            "mixer_rows": self.mixers,
            "method_defaults": defaults,
            **namespace,
        }
        return type(name, bases, attributes)
