"""The input directions of unrelated text that KE's and MEND's updates leave alone.

An edited matrix sees unrelated text through inputs that fill a few directions of its input
space. An update with `ΔW u = 0` for those directions u barely moves such inputs' outputs,
whatever the hypernetwork predicts. With `preserve_rank` k > 0, the directions are the top-k
eigenvectors U of the second moment of the matrix's inputs over the training split's
text-locality probes (fitted once, before training, and stored with the hypernetwork), and
every update is projected, `ΔW ← ΔW (I - U Uᵀ)`, in training and in editing alike; the network
then learns to edit through what is left. With k = 0 updates pass unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


class PreservedSubspace(nn.Module):
    """Per edited matrix, an orthonormal basis (in, k) of input directions no update touches."""

    def __init__(self, shapes: Mapping[str, Sequence[int]], rank: int) -> None:
        super().__init__()
        if rank < 0:
            raise ValueError(f"preserve_rank must not be negative, got {rank}")
        narrow = {name: int(shape[1]) for name, shape in shapes.items() if rank >= int(shape[1])}
        if rank and narrow:
            raise ValueError(
                f"preserve_rank={rank} leaves no input direction to edit in {narrow} "
                "(name: inputs); choose a rank below every edited matrix's input size"
            )
        self.rank = rank
        self.names = list(shapes)
        for index, name in enumerate(self.names):
            self.register_buffer(f"basis_{index}", torch.zeros(int(shapes[name][1]), rank))

    def basis(self, name: str) -> Tensor:
        return self.get_buffer(f"basis_{self.names.index(name)}")

    def fit(self, moments: Mapping[str, Tensor]) -> None:
        """Keep the top `rank` eigenvectors of each matrix's (in, in) input second moment."""
        if not self.rank:
            return
        for name in self.names:
            _, vectors = torch.linalg.eigh(moments[name].double())
            self.basis(name).copy_(vectors[:, -self.rank :].to(self.basis(name).dtype))

    def forward(self, updates: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Every update with its action on the preserved directions removed."""
        if not self.rank:
            return dict(updates)
        projected = {}
        for name, update in updates.items():
            basis = self.basis(name).to(update.dtype)
            projected[name] = update - (update @ basis) @ basis.transpose(0, 1)
        return projected
