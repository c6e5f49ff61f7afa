"""Many independent edits of one module as one batched computation.

In single editing every edit starts from the same weights and is thrown away afterwards, so N
edits can be trained together: each edit gets its own copy of the edited module's parameters
(stacked, (N, *shape)), and while `EditCopies.routed()` is active the module computes row
group k of its batch with copy k; the rest of the model, frozen, runs once for all rows. An
optimizer over the stacked tensors is N independent optimizers as long as it works element by
element (Adam, SGD, RMSprop), and an edit that has finished is held where it stopped.

Rows are routed by `rows`, one edit index per row of the module's input batch (for an LLM
module, one per prompt; for the connector, one per clip); rows of one edit need not be
contiguous. `install(k)` writes copy k into the module, so that edit k can be asked with the
ordinary one-model code.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sake.data.schema import EditCase


class EditCopies:
    """`n_edits` copies of `module`'s parameters, routed by row while `routed()` is active.

    The copies are leaves in `dtype` (the parameters' own by default); the module computes
    with them cast to its own dtype.
    """

    def __init__(self, module: nn.Module, n_edits: int, dtype: torch.dtype | None = None) -> None:
        if n_edits < 1:
            raise ValueError(f"need at least one edit, got {n_edits}")
        self.module = module
        self.n_edits = n_edits
        self.parameters = dict(module.named_parameters())
        self.stacked: dict[str, Tensor] = {
            name: parameter.detach()
            .to(dtype or parameter.dtype)
            .unsqueeze(0)
            .repeat(n_edits, *([1] * parameter.dim()))
            .requires_grad_(True)
            for name, parameter in self.parameters.items()
        }
        self.rows: Tensor | None = None
        self._template = copy.deepcopy(module)

    @property
    def tensors(self) -> list[Tensor]:
        return list(self.stacked.values())

    def route(self, rows: Sequence[int] | Tensor) -> None:
        """Which edit each row of the module's next inputs belongs to."""
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        if (
            self.rows.numel()
            and not 0 <= int(self.rows.min()) <= int(self.rows.max()) < self.n_edits
        ):
            raise ValueError(
                f"row edits must lie in 0..{self.n_edits - 1}, got {self.rows.tolist()}"
            )

    @contextmanager
    def routed(self) -> Iterator[None]:
        """Compute the module row group by row group, each with its edit's copy.

        A no-op forward hook marks the module as observed, so that the model takes no
        shortcut that would call it on part of the rows (a shared prompt prefix).
        """
        self.module.forward = self._grouped_forward  # type: ignore[method-assign]
        marker = self.module.register_forward_hook(lambda *_: None)
        try:
            yield
        finally:
            marker.remove()
            del self.module.forward

    def install(self, edit: int) -> None:
        """Write copy `edit` into the module's parameters (in their dtype)."""
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(self.stacked[name][edit].to(parameter.dtype))

    @contextmanager
    def held(self, edits: Sequence[int]) -> Iterator[None]:
        """Whatever happens inside (an optimizer step), the copies of `edits` stay as they are."""
        index = torch.as_tensor(list(edits), dtype=torch.long)
        kept = {name: tensor.detach()[index].clone() for name, tensor in self.stacked.items()}
        try:
            yield
        finally:
            if len(index):
                with torch.no_grad():
                    for name, tensor in self.stacked.items():
                        tensor[index] = kept[name]

    def _grouped_forward(self, *args: Any, **kwargs: Any) -> Any:
        rows = self.rows
        batch = _batch_size(args, kwargs)
        if rows is None or rows.numel() != batch:
            raise ValueError(
                f"the routed module got {batch} rows but {0 if rows is None else rows.numel()} "
                "row edits were routed"
            )
        edits, counts = torch.unique(rows, return_counts=True)
        if bool((counts == counts[0]).all()):
            return self._vectorised(args, kwargs, edits, int(counts[0]), batch)
        outputs: list[tuple[Tensor, Any]] = []
        for edit in edits.tolist():
            where = torch.nonzero(rows == edit).flatten()
            part_args, part_kwargs = _select_rows((args, kwargs), where, batch)
            output = functional_call(self._template, self._own(edit), part_args, part_kwargs)
            outputs.append((where, output))
        return _scatter_rows(outputs, batch)

    def _own(self, edit: int | Tensor) -> dict[str, Tensor]:
        return {
            name: tensor[edit].to(self.parameters[name].dtype)
            for name, tensor in self.stacked.items()
        }

    def _vectorised(
        self, args: Any, kwargs: dict[str, Any], edits: Tensor, per_edit: int, batch: int
    ) -> Any:
        """Equal row groups in one vmapped call: rows gathered edit by edit into (edits,
        per_edit, ...), the module mapped over the edits with their copies, rows put back."""
        assert self.rows is not None
        order = torch.argsort(self.rows, stable=True)
        grouped_args, grouped_kwargs = _select_rows((args, kwargs), order, batch)
        stacked_args = _unflatten_rows(grouped_args, len(edits), per_edit, batch)
        stacked_kwargs = _unflatten_rows(grouped_kwargs, len(edits), per_edit, batch)
        copies = {
            name: tensor.index_select(0, edits.to(tensor.device)).to(self.parameters[name].dtype)
            for name, tensor in self.stacked.items()
        }
        in_dims = _batched_dims(args, batch), _batched_dims(kwargs, batch)

        def one_edit(params: dict[str, Tensor], call_args: Any, call_kwargs: Any) -> Any:
            return functional_call(self._template, params, call_args, call_kwargs)

        mapped = torch.func.vmap(one_edit, in_dims=(0, *in_dims))(
            copies, stacked_args, stacked_kwargs
        )
        return _scatter_rows([(order, _flatten_rows(mapped))], batch)


def _batch_size(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    for value in _tensors((args, kwargs)):
        return int(value.shape[0])
    raise ValueError("the routed module was called without a tensor input")


def _tensors(tree: Any) -> Iterator[Tensor]:
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def _select_rows(tree: Any, where: Tensor, batch: int) -> Any:
    """Every tensor of `tree` whose first dimension is the batch, at the rows `where`."""
    if isinstance(tree, Tensor):
        return (
            tree.index_select(0, where.to(tree.device))
            if tree.dim() and tree.shape[0] == batch
            else tree
        )
    if isinstance(tree, tuple):
        return tuple(_select_rows(item, where, batch) for item in tree)
    if isinstance(tree, list):
        return [_select_rows(item, where, batch) for item in tree]
    if isinstance(tree, dict):
        return {key: _select_rows(value, where, batch) for key, value in tree.items()}
    return tree


def _unflatten_rows(tree: Any, edits: int, per_edit: int, batch: int) -> Any:
    """Batch-sized tensors of `tree` reshaped (batch, ...) -> (edits, per_edit, ...)."""
    if isinstance(tree, Tensor):
        if tree.dim() and tree.shape[0] == batch:
            return tree.reshape(edits, per_edit, *tree.shape[1:])
        return tree
    if isinstance(tree, (tuple, list)):
        return type(tree)(_unflatten_rows(item, edits, per_edit, batch) for item in tree)
    if isinstance(tree, dict):
        return {key: _unflatten_rows(value, edits, per_edit, batch) for key, value in tree.items()}
    return tree


def _batched_dims(tree: Any, batch: int) -> Any:
    """vmap's in_dims for `tree` once `_unflatten_rows` reshaped it: 0 where a tensor is
    batch-sized, None elsewhere."""
    if isinstance(tree, Tensor):
        return 0 if tree.dim() and tree.shape[0] == batch else None
    if isinstance(tree, (tuple, list)):
        return type(tree)(_batched_dims(item, batch) for item in tree)
    if isinstance(tree, dict):
        return {key: _batched_dims(value, batch) for key, value in tree.items()}
    return None


def _flatten_rows(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree.reshape(tree.shape[0] * tree.shape[1], *tree.shape[2:])
    if isinstance(tree, (tuple, list)):
        return type(tree)(_flatten_rows(item) for item in tree)
    raise TypeError(f"the routed module returned a {type(tree).__name__}, not tensors")


def _scatter_rows(parts: Sequence[tuple[Tensor, Any]], batch: int) -> Any:
    """The outputs of the row groups put back in row order (tensors, or tuples of them)."""
    first = parts[0][1]
    if isinstance(first, Tensor):
        out = first.new_empty((batch, *first.shape[1:]))
        for where, value in parts:
            out = out.index_copy(0, where.to(value.device), value)
        return out
    if isinstance(first, (tuple, list)):
        joined = [
            _scatter_rows([(where, value[k]) for where, value in parts], batch)
            for k in range(len(first))
        ]
        return type(first)(joined)
    raise TypeError(f"the routed module returned a {type(first).__name__}, not tensors")


# --------------------------------------------------------------------------- how many at once

MAX_PARALLEL_EDITS = 32
# Per edit, besides its copy of the edited parameters (weights, gradients, two Adam moments):
# the activations its rows keep for the backward pass, a bound for prompts of a few hundred
# tokens through the layers after the edited module.
ACTIVATIONS_PER_EDIT_BYTES = 64 * 2**20
STATE_COPIES_PER_EDIT = 4


def parallel_groups(cases: Sequence[EditCase], size: int) -> list[list[EditCase]]:
    """Consecutive groups of at most `size` cases whose reliability clips all differ (an
    audio-path edit routes clips, so two edits cannot share one in a group)."""
    groups: list[list[EditCase]] = []
    clips: set[Any] = set()
    for case in cases:
        clip = case.reliability.audio_path
        if not groups or len(groups[-1]) >= size or (clip is not None and clip in clips):
            groups.append([])
            clips = set()
        groups[-1].append(case)
        if clip is not None:
            clips.add(clip)
    return groups


def free_memory_bytes(device: torch.device) -> int:
    """What the device has free now: the GPU's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def auto_parallel_edits(role_bytes: int, budget_bytes: int) -> int:
    """How many edits fit in `budget_bytes`, each with its state copies and activations."""
    per_edit = STATE_COPIES_PER_EDIT * role_bytes + ACTIVATIONS_PER_EDIT_BYTES
    return max(1, min(MAX_PARALLEL_EDITS, budget_bytes // per_edit))
