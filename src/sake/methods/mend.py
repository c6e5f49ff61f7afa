"""MEND: a trained hypernetwork turns the edit's rank-1 gradient factors into the update.

The network lives in `sake.hypernets.mend`, is trained by `python train.py method=mend`
(`sake.training.hypernet`) and is stored in `hypernets/mend-<model>-<dataset>.pt`; editing
loads it in `prepare` and refuses one trained for other weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from sake.hypernets.mend import MEND
from sake.methods.hypernet import DEFAULT_ROLES, HypernetEditor


@dataclass(frozen=True)
class MendConfig:
    """Hyperparameters of MEND; exactly the fields of `configs/method/mend.yaml`.

    `roles` name the modules whose linear layers are edited; `include_end` scores the
    end-of-turn token as part of the edit target; `hidden`, `n_blocks` and `edit_lr` (the
    initial per-matrix learning rate) shape the network; `preserve_rank` input directions of
    unrelated text per matrix are left alone by every update (`sake.hypernets.subspace`).
    """

    name: str
    model: str
    dataset: str
    hypernet_dir: str
    roles: tuple[str, ...] = DEFAULT_ROLES
    include_end: bool = True
    hidden: int = 512
    n_blocks: int = 1
    edit_lr: float = 1e-4
    preserve_rank: int = 0

    network_fields: ClassVar[tuple[str, ...]] = ("hidden", "n_blocks", "edit_lr", "preserve_rank")

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", tuple(self.roles))
        if not self.roles:
            raise ValueError(f"{self.name}: roles must name at least one module to edit")
        if self.hidden < 1 or self.n_blocks < 1:
            raise ValueError(f"{self.name}: hidden and n_blocks must be at least 1")

    def build_network(self, shapes: Mapping[str, Sequence[int]], embedding_dim: int) -> MEND:
        return MEND(
            shapes,
            hidden=self.hidden,
            n_blocks=self.n_blocks,
            edit_lr=self.edit_lr,
            preserve_rank=self.preserve_rank,
        )


def build_mend(**fields: object) -> HypernetEditor:
    """Hydra factory: `configs/method/mend.yaml` points here."""
    return HypernetEditor(MendConfig(**fields))
