"""Method registry: ``METHODS[name](cfg)`` builds a method, as in solo-learn.

Every method module declares one ``ENTRY`` (:class:`~solo_mixmask.methods.registry.MethodEntry`);
``MODULES`` lists those modules, and everything else is read off their entries: ``METHODS`` (our
engine's classes), ``LOGIC`` (the engine-independent half of each method) and the names that
``solo_mixmask.solo`` adds to solo-learn on its own ``BaseMomentumMethod`` or ``BYOL``.
"""

from solo_mixmask.methods import (
    byol,
    byol_mixmask,
    byol_unmix_mixmask,
    mixmask,
    mocov2plus,
    unmix,
    unmix_mixmask,
)
from solo_mixmask.methods.base import BaseMethod, BaseMomentumMethod
from solo_mixmask.methods.registry import MethodEntry

#: The method modules, in the order ``--help`` and the docs list them.
MODULES = (mocov2plus, mixmask, unmix, unmix_mixmask, byol, byol_mixmask, byol_unmix_mixmask)

ENTRIES: dict[str, MethodEntry] = {module.ENTRY.name: module.ENTRY for module in MODULES}
METHODS: dict[str, type[BaseMethod]] = {name: entry.method for name, entry in ENTRIES.items()}
LOGIC: dict[str, type] = {name: entry.logic for name, entry in ENTRIES.items()}

__all__ = ["BaseMethod", "BaseMomentumMethod", "ENTRIES", "LOGIC", "METHODS", "MethodEntry"]
