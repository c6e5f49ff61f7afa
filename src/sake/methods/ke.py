"""KE (Knowledge Editor): a trained hypernetwork, conditioned on the edit, reshapes its gradient.

The network lives in `sake.hypernets.ke`, is trained by `python train.py method=ke`
(`sake.training.hypernet`) and is stored in `hypernets/ke-<model>-<dataset>.pt`; editing loads
it in `prepare` and refuses one trained for other weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from sake.hypernets.ke import KnowledgeEditor
from sake.methods.hypernet import DEFAULT_ROLES, HypernetEditor


@dataclass(frozen=True)
class KnowledgeEditorConfig:
    """Hyperparameters of KE; exactly the fields of `configs/method/ke.yaml`.

    `roles` name the modules whose linear layers are edited; `include_end` scores the
    end-of-turn token as part of the edit target; `lstm_hidden` (per direction) and
    `head_hidden` size the network; `step_size` multiplies every predicted update;
    `preserve_rank` input directions of unrelated text per matrix are left alone by every
    update (`sake.hypernets.subspace`).
    """

    name: str
    model: str
    dataset: str
    hypernet_dir: str
    roles: tuple[str, ...] = DEFAULT_ROLES
    include_end: bool = True
    lstm_hidden: int = 128
    head_hidden: int = 256
    step_size: float = 1.0
    preserve_rank: int = 0

    network_fields: ClassVar[tuple[str, ...]] = (
        "lstm_hidden",
        "head_hidden",
        "step_size",
        "preserve_rank",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", tuple(self.roles))
        if not self.roles:
            raise ValueError(f"{self.name}: roles must name at least one module to edit")
        if self.lstm_hidden < 1 or self.head_hidden < 1 or self.step_size <= 0:
            raise ValueError(
                f"{self.name}: lstm_hidden and head_hidden must be at least 1, step_size positive"
            )

    def build_network(
        self, shapes: Mapping[str, Sequence[int]], embedding_dim: int
    ) -> KnowledgeEditor:
        return KnowledgeEditor(
            shapes,
            embedding_dim=embedding_dim,
            lstm_hidden=self.lstm_hidden,
            head_hidden=self.head_hidden,
            step_size=self.step_size,
            preserve_rank=self.preserve_rank,
        )


def build_ke(**fields: object) -> HypernetEditor:
    """Hydra factory: `configs/method/ke.yaml` points here."""
    return HypernetEditor(KnowledgeEditorConfig(**fields))
