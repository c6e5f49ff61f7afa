"""AlphaEdit: MEMIT's closed-form update projected onto the null space of preserved keys.

As in "AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models" (Fang et al.,
ICLR 2025) and its code (`AlphaEdit_main.py`, `get_project`): per edited projection, P is the
projector onto the eigenvectors of the preserved keys' second moment C whose eigenvalues lie
below `nullspace_threshold`; keys of the preservation corpus then (nearly) vanish under P, so
an update of the form delta = X^T P leaves their outputs unchanged. With K the edit's keys, R
its residuals and K_p the keys of the edits made earlier in the sequence,

    delta^T = (P (K K^T + K_p K_p^T) + l2 I)^-1 P K R^T

the least-squares edit inside the null space, with `l2` (its λ for sweeps) weighing the size of
the update. Everything else (the target shift, the layer order, residuals spread over the
layers left, the preservation corpus and its cached statistics) is MEMIT's
(`sake.methods.memit`). The threshold is absolute, on the mean second moment of the keys, as
the reference thresholds its covariance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from sake.data.schema import EditCase
from sake.methods.base import EditorState
from sake.methods.memit import LocateSettings, MemitConfig, MemitEditor
from sake.models.base import LALM


@dataclass(frozen=True)
class AlphaEditConfig(LocateSettings):
    """Hyperparameters of AlphaEdit; exactly the fields of `configs/method/alphaedit.yaml`:
    MEMIT's `LocateSettings`, `l2` weighing the update's size and `nullspace_threshold`
    bounding the eigenvalues of the preserved keys' second moment that count as null space."""

    l2: float = 10.0
    nullspace_threshold: float = 2e-2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l2 <= 0 or self.nullspace_threshold <= 0:
            raise ValueError(f"{self.name}: l2 and nullspace_threshold must be positive")

    def memit(self) -> MemitConfig:
        """The MEMIT settings the shared machinery reads (its λ is not used here)."""
        shared = {f.name: getattr(self, f.name) for f in fields(LocateSettings)}
        return MemitConfig(**shared, lam=0.0)


def null_space_projector(second_moment: Tensor, threshold: float) -> Tensor:
    """P = U_s U_s^T over the eigenvectors whose eigenvalues are below `threshold`."""
    values, vectors = torch.linalg.eigh(second_moment.double())
    null = vectors[:, values < threshold]
    return (null @ null.T).float()


def alphaedit_update(
    keys: Tensor, residuals: Tensor, projector: Tensor, earlier: Tensor, l2: float
) -> Tensor:
    """The (d_out, d_in) update for keys (d_in, n), residuals (d_out, n), the null-space
    projector P and the earlier edits' key moment K_p K_p^T (d_in, d_in)."""
    keys, residuals = keys.float(), residuals.float()
    identity = torch.eye(keys.shape[0], dtype=keys.dtype, device=keys.device)
    system = projector @ (keys @ keys.T + earlier) + l2 * identity
    return torch.linalg.solve(system, projector @ keys @ residuals.T).T


@dataclass
class AlphaEditState(EditorState):
    """The edits so far and, per projection, the moment of their keys (K_p K_p^T)."""

    key_moments: dict[str, Tensor] = field(default_factory=dict)

    def reset(self) -> None:
        super().reset()
        self.key_moments.clear()

    def state_dict(self) -> dict[str, Any]:
        """The applied edits; the key moments are rebuilt by replaying them."""
        return super().state_dict()


class AlphaEditEditor(MemitEditor):
    """MEMIT's edit, each layer's update confined to the null space of its preserved keys."""

    def __init__(self, config: AlphaEditConfig) -> None:
        super().__init__(config.memit())
        self.alpha = config
        self.state: AlphaEditState = AlphaEditState()
        self._projectors: dict[str, Tensor] = {}

    def prepare(self, lalm: LALM, train_cases: list[EditCase]) -> None:
        """MEMIT's key statistics, then each projection's null-space projector."""
        super().prepare(lalm, train_cases)
        threshold = self.alpha.nullspace_threshold
        self._projectors = {
            role: null_space_projector(moment.matrix, threshold)
            for role, moment in self.moments.items()
        }
        self.extras = {}

    def _layer_update(self, role: str, keys: Tensor, residuals: Tensor) -> Tensor:
        projector = self._projectors[role].to(keys.device)
        earlier = self.state.key_moments.get(role)
        if earlier is None:
            earlier = torch.zeros_like(projector)
        delta = alphaedit_update(keys, residuals, projector, earlier.to(keys.device), self.alpha.l2)
        self.state.key_moments[role] = earlier + keys.float() @ keys.float().T
        return delta


def build_alphaedit(**fields: object) -> AlphaEditEditor:
    """Hydra factory: `configs/method/alphaedit.yaml` points here."""
    return AlphaEditEditor(AlphaEditConfig(**fields))  # type: ignore[arg-type]
