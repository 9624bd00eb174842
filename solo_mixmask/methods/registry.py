"""What a method module declares to be registered: one :class:`MethodEntry` named ``ENTRY``.

``solo_mixmask.methods`` reads ``METHODS`` (our engine) and ``LOGIC`` off these entries, and the
solo-learn plug-in (``solo_mixmask.solo``) reads which names it adds to solo-learn and on which
of solo-learn's classes. Adding a method is one module with its ``ENTRY``, its line in
``solo_mixmask.methods.MODULES``, and its configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

#: solo-learn classes our logic can sit on: its ``BaseMomentumMethod`` (the MoCo family) or its
#: own ``BYOL`` (whose step the ``byol_*`` methods extend).
SoloBase = Literal["BaseMomentumMethod", "BYOL"]


class SoloName(NamedTuple):
    """A name under which a method is added to solo-learn's ``solo.methods.METHODS``."""

    name: str
    #: Name of the built class (also its attribute in ``solo_mixmask.solo``, so that it pickles).
    class_name: str
    #: ``method_kwargs`` defaults that differ from the logic's own ``method_defaults``.
    defaults: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class MethodEntry:
    """One method: its name in our configs (``method: <name>``), our engine class, its
    engine-free ``*Logic`` mixin, and how it enters solo-learn."""

    name: str
    method: type
    logic: type
    solo_base: SoloBase
    #: Names added to solo-learn; empty when solo-learn has the method itself (its ``mocov2plus``
    #: and ``byol`` are used as they are).
    solo_names: tuple[SoloName, ...] = field(default=())
