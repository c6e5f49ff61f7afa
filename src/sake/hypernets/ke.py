"""KE: Knowledge Editor hypernetwork (De Cao et al., 2021).

Two networks. `OneShotLearner` is the reference's (EFK's, `easyeditor/trainer/algs/efk.py`): a
trainable token embedding (initialised from the model's) read by a BiLSTM into a condition,
then per edited matrix a two-layer weight-normalised head giving two rank-1 masks built from a
softmax over the output rows and free column weights, and a sigmoid scale:

    ΔW = max_scale · σ(s) · ( G ⊙ (softmax(r_a)^T c_a) + softmax(r_b)^T c_b )

`KnowledgeEditor` is this project's, described next.

A BiLSTM reads the token embeddings of the edit (its prompt and target answer) into one
condition vector. For every edited matrix a small head turns that vector into five parts and
the update is a rank-1-structured transformation of the edit loss's gradient G:

    ΔW = σ(η) · ( (σ(α) γ^T) ⊙ G + σ(β) δ^T ) · step_size

a rank-1 mask applied to the gradient plus a rank-1 offset, with a learned scale σ(η). Since
`(a b^T) ⊙ G = diag(a) G diag(b)`, the masked gradient never has a higher rank than G itself,
and the update's rank is at most rank(G) + 1.

Initialisation makes the first updates a plain gradient-descent step: γ starts at -1
(σ(α) = σ(η) = 1/2), δ at 0, so ΔW = -step_size · G / 4 before any training. With
`preserve_rank` > 0 the update is finally projected off the input directions of unrelated text
(`sake.hypernets.subspace`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sake.hypernets.signals import EditSignal
from sake.hypernets.subspace import PreservedSubspace


@dataclass(frozen=True)
class RankOneEdit:
    """The parts of one matrix's KE update; `update()` assembles ΔW."""

    scale: Tensor
    mask_out: Tensor
    mask_in: Tensor
    offset_out: Tensor
    offset_in: Tensor
    gradient: Tensor
    step_size: float

    @property
    def mask(self) -> Tensor:
        return torch.outer(self.mask_out, self.mask_in)

    @property
    def offset(self) -> Tensor:
        return torch.outer(self.offset_out, self.offset_in)

    def update(self) -> Tensor:
        return self.scale * self.step_size * (self.mask * self.gradient + self.offset)


def edited_names(shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """The weight names a KE network edits, in order; at least one."""
    if not shapes:
        raise ValueError("KE needs at least one matrix to edit")
    return list(shapes)


class ConditionEncoder(nn.Module):
    """LayerNorm, then a BiLSTM; the condition is both directions' final states."""

    def __init__(self, embedding_dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True, bidirectional=True)

    @property
    def dim(self) -> int:
        return 2 * self.lstm.hidden_size

    def forward(self, embeddings: Tensor) -> Tensor:
        """(tokens, embedding_dim) -> (2 * hidden,)."""
        _, (final, _) = self.lstm(self.norm(embeddings.float()).unsqueeze(0))
        return final[:, 0].reshape(-1)


class MatrixHead(nn.Module):
    """Condition -> the mask, offset and scale of one (out, in) matrix."""

    def __init__(self, condition_dim: int, hidden: int, out_features: int, in_features: int):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(condition_dim, hidden), nn.Tanh())
        self.mask_out = nn.Linear(hidden, out_features)
        self.mask_in = nn.Linear(hidden, in_features)
        self.offset_out = nn.Linear(hidden, out_features)
        self.offset_in = nn.Linear(hidden, in_features)
        self.scale = nn.Linear(hidden, 1)
        for layer in (self.mask_out, self.mask_in, self.offset_in, self.scale):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.mask_in.bias, -1.0)

    def forward(self, condition: Tensor, gradient: Tensor, step_size: float) -> RankOneEdit:
        h = self.hidden(condition)
        return RankOneEdit(
            scale=torch.sigmoid(self.scale(h)).squeeze(-1),
            mask_out=torch.sigmoid(self.mask_out(h)),
            mask_in=self.mask_in(h),
            offset_out=torch.sigmoid(self.offset_out(h)),
            offset_in=self.offset_in(h),
            gradient=gradient,
            step_size=step_size,
        )


class KnowledgeEditor(nn.Module):
    """One KE hypernetwork for a fixed set of edited matrices (weight name -> (out, in))."""

    def __init__(
        self,
        shapes: Mapping[str, Sequence[int]],
        *,
        embedding_dim: int,
        lstm_hidden: int,
        head_hidden: int,
        step_size: float,
        preserve_rank: int = 0,
    ) -> None:
        super().__init__()
        self.names = edited_names(shapes)
        self.step_size = float(step_size)
        self.encoder = ConditionEncoder(embedding_dim, lstm_hidden)
        self.heads = nn.ModuleList(
            MatrixHead(self.encoder.dim, head_hidden, int(shapes[n][0]), int(shapes[n][1]))
            for n in self.names
        )
        self.preserved = PreservedSubspace(shapes, preserve_rank)

    def components(self, signal: EditSignal) -> dict[str, RankOneEdit]:
        """Weight name -> the parts of its update, all float32."""
        condition = self.encoder(signal.embeddings)
        return {
            name: head(condition, signal.gradient(name), self.step_size)
            for name, head in zip(self.names, self.heads, strict=True)
        }

    def forward(self, signal: EditSignal) -> dict[str, Tensor]:
        """Weight name -> ΔW (out, in), float32, differentiable with respect to KE."""
        return self.preserved(
            {name: parts.update() for name, parts in self.components(signal).items()}
        )


class ConditionedHead(nn.Module):
    """Condition -> the masks and scale of one (out, in) matrix, as EFK's heads shape them."""

    def __init__(self, condition_dim: int, hidden: int, out_features: int, in_features: int):
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        weight_norm = nn.utils.parametrizations.weight_norm
        self.layers = nn.Sequential(
            weight_norm(nn.Linear(condition_dim, hidden)),
            nn.Tanh(),
            weight_norm(nn.Linear(hidden, 2 * (out_features + in_features) + 1)),
        )

    def forward(self, condition: Tensor, gradient: Tensor, max_scale: float) -> Tensor:
        col_a, row_a, col_b, row_b, scale = self.layers(condition).split(
            [self.in_features, self.out_features, self.in_features, self.out_features, 1]
        )
        mask = torch.outer(row_a.softmax(-1), col_a)
        offset = torch.outer(row_b.softmax(-1), col_b)
        return max_scale * torch.sigmoid(scale) * (gradient * mask + offset)


class OneShotLearner(nn.Module):
    """The reference's KE network (module docstring) for a fixed set of edited matrices."""

    def __init__(
        self,
        shapes: Mapping[str, Sequence[int]],
        *,
        embedding: Tensor,
        lstm_hidden: int,
        condition_dim: int,
        head_hidden: int,
        max_scale: float,
        preserve_rank: int = 0,
    ) -> None:
        super().__init__()
        self.names = edited_names(shapes)
        self.max_scale = float(max_scale)
        self.embedding = nn.Embedding.from_pretrained(
            embedding.detach().float().clone(), freeze=False, padding_idx=0
        )
        self.lstm = nn.LSTM(embedding.shape[1], lstm_hidden, batch_first=True, bidirectional=True)
        self.condition = nn.Sequential(nn.Linear(2 * lstm_hidden, condition_dim), nn.Tanh())
        self.heads = nn.ModuleList(
            ConditionedHead(condition_dim, head_hidden, int(shapes[n][0]), int(shapes[n][1]))
            for n in self.names
        )
        self.preserved = PreservedSubspace(shapes, preserve_rank)

    def encode(self, token_ids: Tensor) -> Tensor:
        """(tokens,) ids -> the condition: both directions' final LSTM states, then tanh."""
        _, (final, _) = self.lstm(self.embedding(token_ids).unsqueeze(0))
        return self.condition(final[:, 0].reshape(-1))

    def forward(self, signal: EditSignal) -> dict[str, Tensor]:
        """Weight name -> ΔW (out, in), float32, differentiable with respect to KE."""
        condition = self.encode(signal.token_ids.to(self.embedding.weight.device))
        return self.preserved(
            {
                name: head(condition, signal.gradient(name), self.max_scale)
                for name, head in zip(self.names, self.heads, strict=True)
            }
        )
