"""A registry row: a method = a momentum host + the mixers of its mixed views. The rows are listed
in ``solo_mixmask.methods``; our engine's classes and what ``solo_mixmask.solo`` adds to
solo-learn are built from them (a mixed method: its host's class plus one class made here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from solo_mixmask.methods.mixed_branch import MixerRow


class SoloName(NamedTuple):
    """A name added to solo-learn's ``solo.methods.METHODS``, its class's name (an attribute of
    ``solo_mixmask.solo``, so that it pickles) and the ``method_kwargs`` defaults it changes."""

    name: str
    class_name: str
    defaults: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Host:
    """A momentum method that takes mixed views: our engine's class, and the logic placed on
    solo-learn's class ``solo_base`` (its ``BaseMomentumMethod`` for MoCo, its own ``BYOL``)."""

    engine_class: type
    solo_logic: type
    solo_base: Literal["BaseMomentumMethod", "BYOL"]


@dataclass(frozen=True)
class MethodRow:
    """A method: its name in configs, class name, host, the (mixer, partner rule) pairs of its
    mixed views in drawing order, and its names in solo-learn (none when solo-learn has it)."""

    name: str
    class_name: str
    host: Host
    mixers: tuple[MixerRow, ...] = ()
    solo_names: tuple[SoloName, ...] = ()

    def build(self, bases: tuple[type, ...], name: str, module: str, **namespace: Any) -> type:
        """``class <name>(*bases)`` with the row's mixers and ``method_kwargs`` defaults (the first
        base's, the mixers', ``namespace["method_defaults"]``), or the one base if it adds none."""
        if not self.mixers and not namespace and len(bases) == 1:
            return bases[0]
        defaults = dict(getattr(bases[0], "method_defaults", {}))
        for mixer, _ in self.mixers:
            defaults.update(mixer.DEFAULTS)
        defaults.update(namespace.pop("method_defaults", {}))
        views = ", ".join(f"{mixer.__name__} ({rule} partners)" for mixer, rule in self.mixers)
        doc = f"``{self.name}``: {bases[0].__name__} + mixed views: {views or 'none'}."
        attributes = dict(__module__=module, __qualname__=name, __doc__=doc, mixer_rows=self.mixers)
        return type(name, bases, {**attributes, "method_defaults": defaults, **namespace})
