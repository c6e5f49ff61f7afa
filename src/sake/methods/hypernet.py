"""The editor behind KE and MEND: read the edit's signal, predict an update, add it in place.

One edit runs one teacher-forced pass on the case's reliability probe (its audio, question and
target y_e) to read the gradient signal at the current weights, asks the trained hypernetwork
for an update of every edited matrix and adds it to the weights. Sequential editing therefore
applies each predicted update to the weights the earlier edits left. The snapshot holds the
edited matrices only, so restoring is a copy of those tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol

import torch
from torch import nn

from sake.data.schema import EditCase
from sake.hypernets.manifest import HypernetManifest, hypernet_path, load_hypernet
from sake.hypernets.signals import (
    EMBEDDING_ROLE,
    EditedMatrix,
    add_to_weights,
    capture_signals,
    edited_matrices,
    matrix_shapes,
    scored_pass,
)
from sake.methods.base import (
    EditorState,
    EditOutcome,
    QueryContext,
    WeightSnapshot,
    role_touches_audio_path,
)
from sake.models.base import LALM

DEFAULT_ROLES: tuple[str, ...] = ("llm.layer[-3].mlp", "llm.layer[-2].mlp", "llm.layer[-1].mlp")


class HypernetConfig(Protocol):
    """What KE's and MEND's hyperparameter dataclasses share (`configs/method/{ke,mend}.yaml`).

    `network_fields` names the fields that shape the network; they are stored in the manifest
    and must match at edit time.
    """

    name: str
    roles: tuple[str, ...]
    model: str
    dataset: str
    hypernet_dir: str
    include_end: bool
    network: str
    network_fields: tuple[str, ...]

    def build_network(
        self, shapes: Mapping[str, Sequence[int]], embedding: torch.Tensor
    ) -> nn.Module: ...


def network_settings(config: HypernetConfig) -> dict[str, Any]:
    fields = asdict(config)  # type: ignore[call-overload]
    return {name: fields[name] for name in config.network_fields}


def config_path(config: HypernetConfig) -> Path:
    return hypernet_path(
        config.hypernet_dir, config.name, config.model, config.dataset, config.network
    )


def token_embedding(lalm: LALM) -> torch.Tensor:
    """The model's (vocab, hidden) input embedding, which KE's reference network starts from."""
    return lalm.modules.resolve(EMBEDDING_ROLE).module.weight.detach()


def new_network(config: HypernetConfig, lalm: LALM, matrices: Sequence[EditedMatrix]) -> nn.Module:
    """A fresh float32 hypernetwork for `matrices` on the model's device."""
    network = config.build_network(matrix_shapes(matrices), token_embedding(lalm)).float()
    return network.to(matrices[0].module.weight.device)


def expected_manifest(
    config: HypernetConfig,
    matrices: Sequence[EditedMatrix],
    fingerprint: str,
    training: Mapping[str, Any] | None = None,
) -> HypernetManifest:
    return HypernetManifest(
        method=config.name,
        model=config.model,
        dataset=config.dataset,
        fingerprint=fingerprint,
        roles=list(config.roles),
        matrices=matrix_shapes(matrices),
        network=network_settings(config),
        include_end=bool(config.include_end),
        training=dict(training or {}),
    )


class HypernetEditor:
    """Edits with a trained hypernetwork loaded in `prepare`; undone by its weight snapshot."""

    def __init__(self, config: HypernetConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = EditorState()
        self.network: nn.Module | None = None
        self.matrices: list[EditedMatrix] = []

    @property
    def touches_audio_path(self) -> bool:
        return any(role_touches_audio_path(role) for role in self.config.roles)

    @property
    def edited_roles(self) -> tuple[str, ...]:
        return tuple(self.config.roles)

    @property
    def extras(self) -> dict[str, float]:
        """Nothing to report about an edit."""
        return {}

    @property
    def path(self) -> Path:
        return config_path(self.config)

    def prepare(self, lalm: LALM, train_cases: Sequence[EditCase]) -> None:
        """Load the hypernetwork trained for this model, or refuse naming the train command."""
        matrices = edited_matrices(lalm, self.config.roles)
        expected = expected_manifest(self.config, matrices, lalm.fingerprint())
        state_dict = load_hypernet(self.path, expected)
        network = new_network(self.config, lalm, matrices)
        network.load_state_dict(state_dict)
        self.use(network.eval(), matrices)

    def use(self, network: nn.Module, matrices: Sequence[EditedMatrix]) -> None:
        """Edit with `network` (e.g. one just trained) on `matrices`."""
        self.network = network
        self.matrices = list(matrices)

    def apply(self, lalm: LALM, case: EditCase) -> EditOutcome:
        if self.network is None:
            raise RuntimeError(f"{self.name}: call prepare() before editing")
        start = perf_counter()
        snapshot = WeightSnapshot.take({m.weight_name: m.module.weight for m in self.matrices})
        try:
            final_loss = self._edit(lalm, case)
        except BaseException:
            snapshot.restore()
            raise
        self.state.record(case)
        return EditOutcome(snapshot, 1, final_loss, perf_counter() - start)

    def _edit(self, lalm: Any, case: EditCase) -> float:
        """Add the predicted update; the reliability probe's NLL afterwards."""
        batch = lalm.prepare([case.reliability])
        targets = [case.reliability.answer]
        include_end = bool(self.config.include_end)
        signals, _ = capture_signals(
            lalm, batch, targets, self.matrices, [0], include_end=include_end
        )
        with torch.no_grad():
            update = self.network(signals[0])
            add_to_weights(self.matrices, update)
            return float(scored_pass(lalm, batch, targets, include_end).nll(0))

    def context(self) -> QueryContext:
        return QueryContext()
