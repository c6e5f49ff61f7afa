"""What a hypernetwork reads from an edit, and how its predicted weight updates are applied.

Both KE and MEND edit a set of `nn.Linear` matrices named by roles (by default the MLP
matrices of the last three LLM layers). For one edit they read the edit loss's gradient with
respect to each matrix in factored form: the gradient of a linear layer's weight is
`sum_t delta_t x_t^T` over token positions t, where `x_t` is the layer's input and `delta_t`
the gradient of the loss with respect to the layer's output. MEND transforms the factors, KE
transforms the assembled gradient; KE also reads the edit's token embeddings.

One teacher-forced pass over a batch gives the factors of every edit row at once: the loss is
the sum of the rows' own NLLs, so each row's output gradient is that of its own loss. Rows that
are not edits (locality probes scored before the edit) ride along and get a zero gradient.

Predicted updates enter the model in two ways: during training through forward hooks that
add `x ΔW^T` to each edited layer's output (differentiable with respect to the hypernetwork,
each group of rows with its own update), and at edit time by adding ΔW to the weights in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sake.models.base import LALM, Batch
from sake.utils.params import trainable_only

EMBEDDING_ROLE = "llm.embed"


@dataclass(frozen=True)
class EditedMatrix:
    """One edited weight matrix: its linear layer, its qualified name and the role naming it."""

    name: str
    role: str
    module: nn.Linear

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features), the shape of the weight and of every update."""
        return (self.module.out_features, self.module.in_features)


def edited_matrices(lalm: LALM, roles: Sequence[str]) -> list[EditedMatrix]:
    """Every `nn.Linear` under the roles, in role order then module order, each once.

    Raises ValueError naming a role that holds no linear layer.
    """
    matrices: dict[str, EditedMatrix] = {}
    for role in roles:
        resolved = lalm.modules.resolve(role)
        prefix = f"{resolved.name}." if resolved.name else ""
        found = [
            (prefix + local if local else resolved.name, module)
            for local, module in resolved.module.named_modules()
            if isinstance(module, nn.Linear)
        ]
        if not found:
            raise ValueError(f"role {role!r} ({resolved.name}) holds no linear layer to edit")
        for name, module in found:
            matrices.setdefault(name, EditedMatrix(name, role, module))
    return list(matrices.values())


def matrix_shapes(matrices: Sequence[EditedMatrix]) -> dict[str, list[int]]:
    """Weight name -> [out, in]: what a hypernetwork was built for."""
    return {matrix.weight_name: list(matrix.shape) for matrix in matrices}


@dataclass(frozen=True)
class EditSignal:
    """What a hypernetwork sees of one edit, over the token positions that shape its loss.

    Per edited matrix (by weight name), `inputs[name]` is (tokens, in) and `output_grads[name]`
    is (tokens, out) at the positions where that matrix's output gradient is not zero;
    `embeddings` is (positions, hidden), the token embeddings of every position that shapes
    the loss (prompt and target), and `token_ids` (positions,) their token ids; `loss` is the
    edit row's NLL before the edit.
    """

    inputs: Mapping[str, Tensor]
    output_grads: Mapping[str, Tensor]
    embeddings: Tensor
    token_ids: Tensor
    loss: float

    def gradient(self, name: str) -> Tensor:
        """The loss's gradient with respect to matrix `name`'s weight, (out, in), float32."""
        return self.output_grads[name].float().transpose(0, 1) @ self.inputs[name].float()

    def n_tokens(self, name: str) -> int:
        """Positions whose factors enter matrix `name`'s gradient: a bound on its rank."""
        return int(self.inputs[name].shape[0])


@dataclass(frozen=True)
class ScoredPass:
    """One teacher-forced pass: per row the answer logits and the answer's token ids, and,
    when asked for, the logits at every position of the row's prompt and answer."""

    logits: list[Tensor]
    token_ids: list[Tensor]
    sequence: list[Tensor] | None = None

    def nll(self, row: int) -> Tensor:
        """Mean NLL per answer token of one row."""
        return nn.functional.cross_entropy(self.logits[row], self.token_ids[row])

    def detached(self) -> ScoredPass:
        sequence = None if self.sequence is None else [row.detach() for row in self.sequence]
        return ScoredPass([row.detach() for row in self.logits], self.token_ids, sequence)


def scored_pass(
    lalm: Any, batch: Batch, targets: Sequence[str], include_end: bool, *, sequence: bool = False
) -> ScoredPass:
    """Answer logits (differentiable when grad is on) and token ids of every row's target;
    with `sequence`, from the logits of every position, which the pass keeps too."""
    ids = lalm.target_token_ids(batch, targets, include_end=include_end)
    if sequence:
        rows = lalm.sequence_logits(batch, targets, include_end=include_end)
        logits = [row[-len(row_ids) - 1 : -1] for row, row_ids in zip(rows, ids, strict=True)]
    else:
        rows = None
        logits = lalm.answer_logits(batch, targets, include_end=include_end)
    device = logits[0].device
    return ScoredPass(logits, [torch.tensor(row, device=device) for row in ids], rows)


def capture_signals(
    lalm: Any,
    batch: Batch,
    targets: Sequence[str],
    matrices: Sequence[EditedMatrix],
    edit_rows: Sequence[int],
    *,
    include_end: bool,
    sequence: bool = False,
) -> tuple[list[EditSignal], ScoredPass]:
    """The edit signal of every row in `edit_rows`, and the pass's detached logits (with
    every position's, when `sequence`).

    Gradients flow to the edited matrices only (no graph is built below the first of them);
    the model's weights and their requires_grad flags are left exactly as they were.
    """
    if not edit_rows:
        raise ValueError("capture_signals needs at least one edit row")
    weights = {matrix.weight_name: matrix.module.weight for matrix in matrices}
    with _recording(lalm, matrices) as record, trainable_only(lalm.model, weights):
        with torch.enable_grad():
            scored = scored_pass(lalm, batch, targets, include_end, sequence=sequence)
            losses = torch.stack([scored.nll(row) for row in edit_rows])
            outputs = [record.output(matrix.weight_name) for matrix in matrices]
            output_grads = torch.autograd.grad(losses.sum(), outputs)
        grads = {m.weight_name: g.detach() for m, g in zip(matrices, output_grads, strict=True)}
        inputs = {matrix.weight_name: record.input(matrix.weight_name) for matrix in matrices}
        embeddings, token_ids = record.embeddings()
    signals = [
        _row_signal(row, inputs, grads, (embeddings, token_ids), float(loss))
        for row, loss in zip(edit_rows, losses.detach(), strict=True)
    ]
    return signals, scored.detached()


def _row_signal(
    row: int,
    inputs: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    tokens: tuple[Tensor, Tensor],
    loss: float,
) -> EditSignal:
    """One row's factors, per matrix at the positions where its output gradient is not zero.

    Padding and positions after the last scored token influence no loss, and a last-layer
    MLP sees only the scored positions, so elsewhere the output gradient is exactly zero; those
    positions add nothing to the gradient and are left out rather than fed to the hypernetwork.
    The embeddings cover every position that shapes the loss through any edited matrix.
    """
    shaping = {name: (grad[row] != 0).any(dim=-1) for name, grad in grads.items()}
    anywhere = torch.stack(list(shaping.values())).any(dim=0)
    if not bool(anywhere.any()):
        raise ValueError(f"edit row {row} has a zero gradient in every edited matrix")
    return EditSignal(
        inputs={name: x[row][shaping[name]] for name, x in inputs.items()},
        output_grads={name: grad[row][shaping[name]] for name, grad in grads.items()},
        embeddings=tokens[0][row][anywhere],
        token_ids=tokens[1][row][anywhere],
        loss=loss,
    )


def input_moments(
    lalm: Any,
    probes: Sequence[Any],
    targets: Sequence[str],
    matrices: Sequence[EditedMatrix],
    include_end: bool,
) -> dict[str, Tensor]:
    """Per edited matrix, the (in, in) second moment of its inputs over every position of the
    probes with their targets teacher-forced, one probe at a time so that no padding enters."""
    moments = {m.weight_name: torch.zeros(m.shape[1], m.shape[1]) for m in matrices}

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            inputs = args[0].detach().float().flatten(0, -2).cpu()
            moments[name] += inputs.transpose(0, 1) @ inputs

        return hook

    handles = [m.module.register_forward_hook(hook_for(m.weight_name)) for m in matrices]
    try:
        with torch.no_grad():
            for probe, target in zip(probes, targets, strict=True):
                scored_pass(lalm, lalm.prepare([probe]), [target], include_end)
    finally:
        for handle in handles:
            handle.remove()
    return moments


class _Recorder:
    """Inputs and outputs of the edited layers and the token embeddings of one forward pass."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[Tensor, Tensor]]] = {}
        self.embedded: list[tuple[Tensor, Tensor]] = []

    def _only(self, name: str) -> tuple[Tensor, Tensor]:
        calls = self.calls.get(name, [])
        if len(calls) != 1:
            raise RuntimeError(f"edited layer {name} ran {len(calls)} times in one pass, not once")
        return calls[0]

    def input(self, name: str) -> Tensor:
        return self._only(name)[0]

    def output(self, name: str) -> Tensor:
        return self._only(name)[1]

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """The pass's token embeddings and the token ids they embed."""
        if len(self.embedded) != 1:
            raise RuntimeError(f"the token embedding ran {len(self.embedded)} times, not once")
        return self.embedded[0]


@contextmanager
def _recording(lalm: Any, matrices: Sequence[EditedMatrix]) -> Iterator[_Recorder]:
    recorder = _Recorder()

    def layer_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            recorder.calls.setdefault(name, []).append((args[0].detach(), output))

        return hook

    def embedding_hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        recorder.embedded.append((output.detach(), args[0].detach()))

    embedding = lalm.modules.resolve(EMBEDDING_ROLE).module
    handles = [m.module.register_forward_hook(layer_hook(m.weight_name)) for m in matrices]
    handles.append(embedding.register_forward_hook(embedding_hook))
    try:
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


Update = Mapping[str, Tensor]


@contextmanager
def updates_added(
    matrices: Sequence[EditedMatrix], updates: Sequence[Update], group_sizes: Sequence[int]
) -> Iterator[None]:
    """Run the model as if group g of the batch's rows saw the weights `W + updates[g][name]`.

    The rows of a batch are split into consecutive groups of `group_sizes`; each edited layer's
    output gains `x ΔW^T` for its group's update, which keeps the update in the autograd graph.
    """
    if len(updates) != len(group_sizes):
        raise ValueError(f"{len(updates)} updates for {len(group_sizes)} row groups")

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
            x = args[0]
            if x.shape[0] != sum(group_sizes):
                raise ValueError(f"batch of {x.shape[0]} rows, row groups cover {sum(group_sizes)}")
            added = [
                nn.functional.linear(part, update[name].to(x.dtype))
                for part, update in zip(x.split(list(group_sizes)), updates, strict=True)
            ]
            return output + torch.cat(added)

        return hook

    handles = [m.module.register_forward_hook(hook_for(m.weight_name)) for m in matrices]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def add_to_weights(matrices: Sequence[EditedMatrix], update: Update) -> None:
    """Add a predicted update to the weights in place (cast to the weights' dtype)."""
    with torch.no_grad():
        for matrix in matrices:
            weight = matrix.module.weight
            weight.add_(update[matrix.weight_name].to(device=weight.device, dtype=weight.dtype))
