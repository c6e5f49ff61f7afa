"""KE and MEND hypernetworks: the networks, their inputs and updates, their files on disk.

`signals` reads what a hypernetwork sees of an edit (gradient factors, token embeddings) and
applies predicted updates; `ke` and `mend` are the networks; `subspace` holds the input
directions of unrelated text their updates may leave alone; `manifest` stores them with what
they were trained for. Their editing method lives in `sake.methods.hypernet` (shared by
`sake.methods.ke` and `sake.methods.mend`); training in `sake.training.hypernet`.
"""

from sake.hypernets.ke import KnowledgeEditor, RankOneEdit
from sake.hypernets.manifest import (
    HypernetManifest,
    HypernetUnavailableError,
    hypernet_path,
    load_hypernet,
    read_hypernet,
    save_hypernet,
    train_command,
)
from sake.hypernets.mend import MEND
from sake.hypernets.signals import EditedMatrix, EditSignal, capture_signals, edited_matrices
from sake.hypernets.subspace import PreservedSubspace

__all__ = [
    "MEND",
    "EditSignal",
    "EditedMatrix",
    "HypernetManifest",
    "HypernetUnavailableError",
    "KnowledgeEditor",
    "PreservedSubspace",
    "RankOneEdit",
    "capture_signals",
    "edited_matrices",
    "hypernet_path",
    "load_hypernet",
    "read_hypernet",
    "save_hypernet",
    "train_command",
]
