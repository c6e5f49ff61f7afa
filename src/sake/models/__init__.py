"""LALMs behind one interface: the DeSTA-architecture model and wrappers of real LALMs."""

from sake.models.base import LALM, Batch, Generation, Turn
from sake.models.hf_common import HFAudioLALM
from sake.models.hf_layout import ModuleLayout, detect_layout
from sake.models.hub import ModelUnavailableError
from sake.models.roles import ModuleMap, ResolvedRole

__all__ = [
    "LALM",
    "Batch",
    "Generation",
    "HFAudioLALM",
    "ModelUnavailableError",
    "ModuleLayout",
    "ModuleMap",
    "ResolvedRole",
    "Turn",
    "detect_layout",
]
