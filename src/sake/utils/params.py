"""Which parameters gradients flow to: shared by the editors and the hypernetworks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from torch import nn


@contextmanager
def trainable_only(model: nn.Module, parameters: Mapping[str, nn.Parameter]) -> Iterator[None]:
    """Let gradients flow to `parameters` only, and give every flag back afterwards.

    Freezing the rest means no autograd graph is built for layers before the edited module,
    which is most of an edit's cost.
    """
    chosen = {id(p) for p in parameters.values()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(id(parameter) in chosen)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for parameter in parameters.values():
            parameter.grad = None
