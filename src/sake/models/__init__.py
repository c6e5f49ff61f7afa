"""LALMs behind one interface: the DeSTA-architecture model and wrappers of real LALMs."""

from sake.models.base import LALM, Batch, Turn
from sake.models.roles import ModuleMap, ResolvedRole

__all__ = ["LALM", "Batch", "ModuleMap", "ResolvedRole", "Turn"]
