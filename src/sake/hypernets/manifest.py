"""Trained hypernetworks on disk: `hypernets/<method>-<model>-<dataset>[-<network>].pt` and its
manifest.

A hypernetwork predicts updates for particular weights: its gradient statistics, per-matrix
learning rates and heads belong to one model. The file therefore carries a manifest (the
model's fingerprint, the edited roles and matrices, the network's settings, the edit target's
convention) beside the state dict, and loading refuses, with the command that trains the
right one, a file that is missing or was trained for anything else.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sake.utils.errors import UserError

FORMAT_VERSION = 1
CHECKED_FIELDS: tuple[str, ...] = (
    "format",
    "method",
    "fingerprint",
    "roles",
    "matrices",
    "network",
    "include_end",
)


class HypernetUnavailableError(UserError, RuntimeError):
    """No hypernetwork was trained for this method, model and settings."""


@dataclass(frozen=True)
class HypernetManifest:
    """What a hypernetwork was trained for; `training` records how (settings, metrics)."""

    method: str
    model: str
    dataset: str
    fingerprint: str
    roles: list[str]
    matrices: dict[str, list[int]]
    network: dict[str, Any]
    include_end: bool
    training: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def differences(self, expected: HypernetManifest) -> list[str]:
        """Human-readable differences in the fields that decide whether the network fits."""
        found, wanted = asdict(self), asdict(expected)
        return [
            f"{name}: trained for {found[name]!r}, this run has {wanted[name]!r}"
            for name in CHECKED_FIELDS
            if found[name] != wanted[name]
        ]


DEFAULT_NETWORK = "reference"


def hypernet_path(
    directory: str | Path, method: str, model: str, dataset: str, network: str = DEFAULT_NETWORK
) -> Path:
    """`<method>-<model>-<dataset>.pt`, with `-<network>` for a network other than the
    default, so that the two never overwrite each other."""
    suffix = "" if network == DEFAULT_NETWORK else f"-{network}"
    return Path(directory) / f"{method}-{model}-{dataset}{suffix}.pt"


def train_command(method: str, model: str, dataset: str, network: str = DEFAULT_NETWORK) -> str:
    command = f"python train.py method={method} model={model} dataset={dataset}"
    return command if network == DEFAULT_NETWORK else f"{command} method.network={network}"


def save_hypernet(
    path: str | Path, manifest: HypernetManifest, state_dict: Mapping[str, Tensor]
) -> Path:
    """Write manifest and state dict in one file, atomically (a killed save leaves no file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {name: tensor.detach().cpu().clone() for name, tensor in state_dict.items()}
    torch.save({"manifest": asdict(manifest), "state_dict": state}, tmp)
    os.replace(tmp, path)
    return path


def read_hypernet(path: str | Path) -> tuple[HypernetManifest, dict[str, Tensor]]:
    """Manifest and state dict of a hypernetwork file (tensors on the CPU).

    Raises HypernetUnavailableError naming the file when it is truncated, corrupted or not a
    hypernetwork file at all.
    """
    try:
        stored = torch.load(Path(path), map_location="cpu", weights_only=True)
        return HypernetManifest(**stored["manifest"]), stored["state_dict"]
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HypernetUnavailableError(
            f"cannot read the hypernetwork file {path}: it is truncated, corrupted or not a "
            f"hypernetwork file ({reason})"
        ) from error


def load_hypernet(path: str | Path, expected: HypernetManifest) -> dict[str, Tensor]:
    """The state dict at `path` if its manifest fits `expected`, else a clear refusal.

    Raises HypernetUnavailableError naming the file, every mismatch and the train command.
    """
    path = Path(path)
    network = str(expected.network.get("network", DEFAULT_NETWORK))
    command = train_command(expected.method, expected.model, expected.dataset, network)
    if not path.is_file():
        raise HypernetUnavailableError(
            f"no {expected.method} hypernetwork for model {expected.model} at {path}; "
            f"train it with: {command}"
        )
    try:
        manifest, state_dict = read_hypernet(path)
    except HypernetUnavailableError as error:
        raise HypernetUnavailableError(
            f"{error}; delete it and train it again with: {command}"
        ) from error.__cause__
    differences = manifest.differences(expected)
    if differences:
        raise HypernetUnavailableError(
            f"the {expected.method} hypernetwork {path} was trained for other weights or "
            f"settings ({'; '.join(differences)}); train it with: {command}"
        )
    return state_dict
