"""Module roles: how methods name the parts of a model without knowing which model it is.

A role is a string such as `connector`, `llm.layer[-1].mlp` or `llm.layer[29].mlp.down_proj`.
Each model builds one `ModuleMap` from its own module tree; methods only ever see roles.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from torch import nn

LAYER_ROLE = re.compile(r"^llm\.layer\[(-?\d+)\](?:\.(.+))?$")


@dataclass(frozen=True)
class ResolvedRole:
    """A role bound to a concrete module and its qualified name inside the model."""

    role: str
    name: str
    module: nn.Module

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters under this role, with names qualified from the model's root."""
        prefix = f"{self.name}." if self.name else ""
        for local, parameter in self.module.named_parameters():
            yield prefix + local, parameter


class ModuleMap:
    """Role -> module for one model.

    `named` maps fixed roles (`audio_encoder`, `connector`, `llm.embed`, `llm.norm`,
    `lm_head`) to qualified module names; `layers` is the qualified name of the decoder's
    layer list, indexed by `llm.layer[i]` (negative indices count from the end).
    """

    def __init__(self, model: nn.Module, named: Mapping[str, str], layers: str) -> None:
        self.model = model
        self.named = dict(named)
        self.layers_name = layers
        self._modules = dict(model.named_modules())
        for role, name in {**self.named, "llm.layers": layers}.items():
            if name not in self._modules:
                raise KeyError(f"role {role!r} points at {name!r}, which the model does not have")

    @property
    def num_layers(self) -> int:
        return len(self._modules[self.layers_name])

    def layer_index(self, index: int) -> int:
        """A non-negative layer index; raises IndexError naming the valid range."""
        n = self.num_layers
        if not -n <= index < n:
            raise IndexError(f"layer index {index} out of range for a {n}-layer LLM")
        return index % n

    def resolve(self, role: str) -> ResolvedRole:
        """The module a role names; unknown roles raise KeyError listing the known ones."""
        name = self.qualified_name(role)
        if name not in self._modules:
            raise KeyError(f"role {role!r} resolves to {name!r}, which the model does not have")
        return ResolvedRole(role=role, name=name, module=self._modules[name])

    def qualified_name(self, role: str) -> str:
        if role in self.named:
            return self.named[role]
        match = LAYER_ROLE.match(role)
        if match is None:
            known = ", ".join([*self.named, "llm.layer[i]", "llm.layer[i].<path>"])
            raise KeyError(f"unknown role {role!r}; known roles: {known}")
        index = self.layer_index(int(match.group(1)))
        suffix = f".{match.group(2)}" if match.group(2) else ""
        return f"{self.layers_name}.{index}{suffix}"

    def parameters(self, role: str) -> dict[str, nn.Parameter]:
        """Qualified name -> parameter for everything under a role."""
        return dict(self.resolve(role).named_parameters())
