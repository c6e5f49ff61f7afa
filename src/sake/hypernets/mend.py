"""MEND: gradient decomposition hypernetwork (Mitchell et al., 2022).

The edit loss's gradient with respect to an edited weight is `sum_t delta_t x_t^T`. MEND never
builds that matrix: per token it normalises the pair (x_t, delta_t) with running statistics
gathered in training, passes it through an MLP that starts as the identity (`network`:
`reference`, the reference's low-rank IDMLP of rank `rank` with `n_hidden` + 1 layers, or
`project`, `n_blocks` residual blocks `hidden` wide), and returns

    ΔW = -lr_m * sum_t delta~_t x~_t^T

with a learned edit learning rate `lr_m` per matrix. One MLP serves every matrix of the same
shape; a per-matrix scale and shift (the matrix's embedding, starting at 1 and 0) tells them
apart. An update is a sum of one outer product per token, so its rank is at most the number of
tokens of the edit. With `preserve_rank` > 0 the update is finally projected off the input
directions of unrelated text (`sake.hypernets.subspace`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from sake.hypernets.signals import EditSignal
from sake.hypernets.subspace import PreservedSubspace

NORM_EPS = 1e-7


class RunningMoments(nn.Module):
    """Mean and variance of every vector seen in training mode (parallel Welford, float64).

    The statistics are buffers: they travel with the hypernetwork's state dict and stay fixed
    when the network edits in eval mode.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    def update(self, vectors: Tensor) -> None:
        """Merge the moments of a (n, dim) batch into the running ones."""
        batch = vectors.detach().to(torch.float64)
        n_batch = batch.shape[0]
        batch_mean = batch.mean(dim=0)
        batch_m2 = ((batch - batch_mean) ** 2).sum(dim=0)
        total = self.count + n_batch
        shift = batch_mean - self.mean
        self.mean += shift * (n_batch / total)
        self.m2 += batch_m2 + shift**2 * (self.count * n_batch / total)
        self.count.copy_(total)

    def normalise(self, vectors: Tensor) -> Tensor:
        if float(self.count) < 2:
            raise RuntimeError(
                "MEND's normalisation has seen fewer than two vectors: the hypernetwork is "
                "untrained (train it, or run it in training mode first)"
            )
        std = (self.m2 / (self.count - 1)).sqrt().to(vectors.dtype)
        return (vectors - self.mean.to(vectors.dtype)) / (std + NORM_EPS)


class ResidualBlock(nn.Module):
    """z + up(relu(down(z))), with `up` zero-initialised so that the block starts as identity."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, z: Tensor) -> Tensor:
        return z + self.up(torch.relu(self.down(z)))


class FactorTransform(nn.Module):
    """The MLP shared by the matrices of one shape, with one scale and shift per matrix."""

    def __init__(self, dim: int, n_matrices: int, hidden: int, n_blocks: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n_matrices, dim))
        self.shift = nn.Parameter(torch.zeros(n_matrices, dim))
        self.blocks = nn.Sequential(*(ResidualBlock(dim, hidden) for _ in range(n_blocks)))

    def forward(self, z: Tensor, matrix: int) -> Tensor:
        return self.blocks(z * self.scale[matrix] + self.shift[matrix])


class LowRankLayer(nn.Module):
    """x + relu((up @ down @ x + bias) * scale[m] + shift[m]): a low-rank residual layer that
    starts as the identity (`up` is zero), with one scale and shift per matrix m."""

    def __init__(self, dim: int, rank: int, n_matrices: int) -> None:
        super().__init__()
        width = min(rank, dim)
        self.up = nn.Parameter(torch.zeros(dim, width))
        self.down = nn.Parameter(torch.randn(width, dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(n_matrices, dim))
        self.shift = nn.Parameter(torch.zeros(n_matrices, dim))

    def forward(self, z: Tensor, matrix: int) -> Tensor:
        pre = (z @ self.down.T) @ self.up.T + self.bias
        return (pre * self.scale[matrix] + self.shift[matrix]).clamp(min=0) + z


class LowRankTransform(nn.Module):
    """The reference's MEND MLP (IDMLP of `easyeditor/trainer/algs/local_nn.py`): `n_hidden` + 1
    low-rank residual layers over the concatenated factors, shared by the matrices of a shape."""

    def __init__(self, dim: int, n_matrices: int, rank: int, n_hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            LowRankLayer(dim, rank, n_matrices) for _ in range(n_hidden + 1)
        )

    def forward(self, z: Tensor, matrix: int) -> Tensor:
        for layer in self.layers:
            z = layer(z, matrix)
        return z


class MEND(nn.Module):
    """One MEND hypernetwork for a fixed set of edited matrices (weight name -> (out, in))."""

    def __init__(
        self,
        shapes: Mapping[str, Sequence[int]],
        *,
        hidden: int,
        n_blocks: int,
        edit_lr: float,
        preserve_rank: int = 0,
        network: str = "reference",
        rank: int = 1920,
        n_hidden: int = 1,
    ) -> None:
        super().__init__()
        if not shapes:
            raise ValueError("MEND needs at least one matrix to edit")
        self.names = list(shapes)
        self.shapes = {name: (int(shapes[name][0]), int(shapes[name][1])) for name in self.names}
        distinct = sorted(set(self.shapes.values()))
        self.shape_keys = {shape: f"{shape[0]}x{shape[1]}" for shape in distinct}
        self.slots = {
            name: [n for n in self.names if self.shapes[n] == self.shapes[name]].index(name)
            for name in self.names
        }

        def transform(shape: tuple[int, int]) -> nn.Module:
            dim, count = shape[0] + shape[1], sum(self.shapes[n] == shape for n in self.names)
            if network == "reference":
                return LowRankTransform(dim, count, rank, n_hidden)
            return FactorTransform(dim, count, hidden, n_blocks)

        self.transforms = nn.ModuleDict(
            {self.shape_keys[shape]: transform(shape) for shape in distinct}
        )
        self.moments = nn.ModuleList(RunningMoments(sum(self.shapes[n])) for n in self.names)
        self.edit_lrs = nn.Parameter(torch.full((len(self.names),), float(edit_lr)))
        self.preserved = PreservedSubspace(shapes, preserve_rank)

    def transformed_factors(self, signal: EditSignal, name: str) -> tuple[Tensor, Tensor]:
        """(x~, delta~) of matrix `name`: (tokens, in) and (tokens, out), in float32.

        In training mode the running statistics first absorb this edit's factors.
        """
        out_features, in_features = self.shapes[name]
        x = signal.inputs[name].float()
        delta = signal.output_grads[name].float()
        pairs = torch.cat([x, delta], dim=-1)
        moments = self.moments[self.names.index(name)]
        if self.training:
            moments.update(pairs)
        transform = self.transforms[self.shape_keys[self.shapes[name]]]
        out = transform(moments.normalise(pairs), self.slots[name])
        return out[:, :in_features], out[:, in_features:]

    def forward(self, signal: EditSignal) -> dict[str, Tensor]:
        """Weight name -> ΔW (out, in), float32, differentiable with respect to MEND."""
        updates = {}
        for index, name in enumerate(self.names):
            x, delta = self.transformed_factors(signal, name)
            updates[name] = -self.edit_lrs[index] * (delta.transpose(0, 1) @ x)
        return self.preserved(updates)
