"""MEND: a trained hypernetwork turns the edit's rank-1 gradient factors into the update.

The network lives in `sake.hypernets.mend`, is trained by `python train.py method=mend`
(`sake.training.hypernet`) and is stored in `hypernets/mend-<model>-<dataset>.pt`; editing
loads it in `prepare` and refuses one trained for other weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from sake.hypernets.mend import MEND
from sake.methods.base import check_choice
from sake.methods.hypernet import DEFAULT_ROLES, HypernetEditor

MEND_NETWORKS = ("reference", "project")


@dataclass(frozen=True)
class MendConfig:
    """Hyperparameters of MEND; exactly the fields of `configs/method/mend.yaml`.

    `roles` name the modules whose linear layers are edited; `include_end` scores the
    end-of-turn token as part of the edit target; `network` picks the MLP (`reference`: the
    reference's low-rank IDMLP, `rank` and `n_hidden`; `project`: residual blocks, `hidden` and
    `n_blocks`); `edit_lr` is the initial per-matrix learning rate; `preserve_rank` input
    directions of unrelated text per matrix are left alone by every update
    (`sake.hypernets.subspace`).
    """

    name: str
    model: str
    dataset: str
    hypernet_dir: str
    roles: tuple[str, ...] = DEFAULT_ROLES
    include_end: bool = True
    network: str = "reference"
    rank: int = 1920
    n_hidden: int = 1
    hidden: int = 512
    n_blocks: int = 1
    edit_lr: float = 1e-4
    preserve_rank: int = 0

    network_fields: ClassVar[tuple[str, ...]] = (
        "network",
        "rank",
        "n_hidden",
        "hidden",
        "n_blocks",
        "edit_lr",
        "preserve_rank",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", tuple(self.roles))
        if not self.roles:
            raise ValueError(f"{self.name}: roles must name at least one module to edit")
        check_choice(self.name, "network", self.network, MEND_NETWORKS)
        if min(self.hidden, self.n_blocks, self.rank) < 1 or self.n_hidden < 0:
            raise ValueError(
                f"{self.name}: hidden, n_blocks and rank must be at least 1, n_hidden at least 0"
            )

    def build_network(self, shapes: Mapping[str, Sequence[int]], embedding: Tensor) -> MEND:
        return MEND(
            shapes,
            hidden=self.hidden,
            n_blocks=self.n_blocks,
            edit_lr=self.edit_lr,
            preserve_rank=self.preserve_rank,
            network=self.network,
            rank=self.rank,
            n_hidden=self.n_hidden,
        )


def build_mend(**fields: object) -> HypernetEditor:
    """Hydra factory: `configs/method/mend.yaml` points here."""
    return HypernetEditor(MendConfig(**fields))
