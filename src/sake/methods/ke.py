"""KE (Knowledge Editor): a trained hypernetwork, conditioned on the edit, reshapes its gradient.

The network lives in `sake.hypernets.ke`, is trained by `python train.py method=ke`
(`sake.training.hypernet`) and is stored in `hypernets/ke-<model>-<dataset>.pt`; editing loads
it in `prepare` and refuses one trained for other weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from sake.hypernets.ke import KnowledgeEditor, OneShotLearner
from sake.methods.base import check_choice
from sake.methods.hypernet import DEFAULT_ROLES, HypernetEditor

KE_NETWORKS = ("reference", "project")


@dataclass(frozen=True)
class KnowledgeEditorConfig:
    """Hyperparameters of KE; exactly the fields of `configs/method/ke.yaml`.

    `roles` name the modules whose linear layers are edited; `include_end` scores the
    end-of-turn token as part of the edit target; `network` picks the hypernetwork
    (`reference`: EFK's `OneShotLearner`, sized by `lstm_hidden`, `condition_dim`,
    `head_hidden` and `max_scale`; `project`: this project's, sized by `lstm_hidden`,
    `head_hidden` and `step_size`); `preserve_rank` input directions of unrelated text per
    matrix are left alone by every update (`sake.hypernets.subspace`).
    """

    name: str
    model: str
    dataset: str
    hypernet_dir: str
    roles: tuple[str, ...] = DEFAULT_ROLES
    include_end: bool = True
    network: str = "reference"
    lstm_hidden: int = 512
    condition_dim: int = 768
    head_hidden: int = 512
    max_scale: float = 1.0
    step_size: float = 1.0
    preserve_rank: int = 0

    network_fields: ClassVar[tuple[str, ...]] = (
        "network",
        "lstm_hidden",
        "condition_dim",
        "head_hidden",
        "max_scale",
        "step_size",
        "preserve_rank",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", tuple(self.roles))
        if not self.roles:
            raise ValueError(f"{self.name}: roles must name at least one module to edit")
        check_choice(self.name, "network", self.network, KE_NETWORKS)
        sizes = (self.lstm_hidden, self.head_hidden, self.condition_dim)
        if min(sizes) < 1 or self.step_size <= 0 or self.max_scale <= 0:
            raise ValueError(
                f"{self.name}: lstm_hidden, head_hidden and condition_dim must be at least 1, "
                "step_size and max_scale positive"
            )

    def build_network(
        self, shapes: Mapping[str, Sequence[int]], embedding: Tensor
    ) -> KnowledgeEditor | OneShotLearner:
        if self.network == "reference":
            return OneShotLearner(
                shapes,
                embedding=embedding,
                lstm_hidden=self.lstm_hidden,
                condition_dim=self.condition_dim,
                head_hidden=self.head_hidden,
                max_scale=self.max_scale,
                preserve_rank=self.preserve_rank,
            )
        return KnowledgeEditor(
            shapes,
            embedding_dim=int(embedding.shape[1]),
            lstm_hidden=self.lstm_hidden,
            head_hidden=self.head_hidden,
            step_size=self.step_size,
            preserve_rank=self.preserve_rank,
        )


def build_ke(**fields: object) -> HypernetEditor:
    """Hydra factory: `configs/method/ke.yaml` points here."""
    return HypernetEditor(KnowledgeEditorConfig(**fields))
