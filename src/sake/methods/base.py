"""The one protocol every editing method implements, and what it needs to be undone.

An editor applies one `EditCase` to a model in place and hands back an `EditOutcome` whose
`WeightSnapshot` holds copies of exactly the tensors it may have changed, taken before the
change; restoring copies them back in place, so undoing an edit costs as much memory and time
as the touched tensors, never a copy of the model. Methods that change no weight (in-context
editing) return no snapshot and shape every later query through `context()` instead.

Methods are chosen by Hydra: each `configs/method/<name>.yaml` points its `_target_` at a
factory in `sake.methods.<file>` whose keyword arguments are the fields of the method's
hyperparameter dataclass, so the config and the dataclass cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from sake.data.schema import EditCase
from sake.models.base import LALM, Turn

AUDIO_PATH_ROLES: tuple[str, ...] = ("audio_encoder", "connector")


DISPLAY_KEY = "display"  # a method config's report name and rank, not an editor setting
NOT_EDITOR_SETTINGS: tuple[str, ...] = ("_target_", DISPLAY_KEY)


@dataclass(frozen=True)
class QueryContext:
    """What precedes every post-edit query: a system prompt and earlier dialogue turns."""

    system: str | None = None
    history: tuple[Turn, ...] = ()


class WeightSnapshot:
    """Copies of some parameters taken before an edit; `restore()` writes them back in place.

    Restoring is bit-exact: the saved tensors are clones of the values, copied back with
    `Tensor.copy_` into the very same parameter objects, so everything that refers to them
    (tied weights, hooks, an optimizer) still does.
    """

    def __init__(self, parameters: Mapping[str, nn.Parameter], saved: Mapping[str, Tensor]) -> None:
        if parameters.keys() != saved.keys():
            raise ValueError("a snapshot needs exactly one saved tensor per parameter")
        self._parameters = dict(parameters)
        self._saved = dict(saved)

    @classmethod
    def take(cls, parameters: Mapping[str, nn.Parameter]) -> WeightSnapshot:
        """Clone the current values of `parameters`."""
        with torch.no_grad():
            return cls(parameters, {name: p.detach().clone() for name, p in parameters.items()})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._saved)

    def current(self) -> dict[str, Tensor]:
        """The parameters' current values (the live tensors, detached)."""
        return {name: parameter.detach() for name, parameter in self._parameters.items()}

    def restore(self) -> None:
        with torch.no_grad():
            for name, parameter in self._parameters.items():
                parameter.data.copy_(self._saved[name])

    def changed(self) -> tuple[str, ...]:
        """Names of parameters whose current value differs from the saved one."""
        return tuple(
            name
            for name, parameter in self._parameters.items()
            if not torch.equal(parameter.detach(), self._saved[name])
        )

    def non_finite(self) -> tuple[str, ...]:
        """Names of parameters that now hold a NaN or an infinity."""
        return tuple(
            name
            for name, parameter in self._parameters.items()
            if not bool(torch.isfinite(parameter.detach()).all())
        )

    def merged_with(self, later: WeightSnapshot | None) -> WeightSnapshot:
        """A snapshot restoring to this one's values, covering the parameters of both.

        Sequential editing keeps the earliest copy of every parameter any edit touched, so
        one restore at the end of a sequence returns the original model.
        """
        parameters, saved = dict(self._parameters), dict(self._saved)
        if later is not None:
            for name, parameter in later._parameters.items():
                if name not in saved:
                    parameters[name] = parameter
                    saved[name] = later._saved[name]
        return WeightSnapshot(parameters, saved)


@dataclass(frozen=True)
class EditOutcome:
    """What one edit did: how to undo it, how many optimisation steps, its loss and time."""

    snapshot: WeightSnapshot | None
    steps: int
    final_loss: float | None
    seconds: float


@dataclass(frozen=True)
class AppliedEdit:
    """One edit as the editor's state remembers it."""

    case_id: str
    attribute: str
    y_o: str
    y_e: str

    @classmethod
    def of(cls, case: EditCase) -> AppliedEdit:
        return cls(case.case_id, case.attribute, case.y_o, case.y_e)


@dataclass
class EditorState:
    """Everything an editor accumulates between resets: the edits applied so far, in order.

    Methods with more state (memories, statistics, retrieved demonstrations) subclass it and
    extend `state_dict()`; everything in a state dict is JSON-serialisable.
    """

    edits: list[AppliedEdit] = field(default_factory=list)

    def record(self, case: EditCase) -> None:
        self.edits.append(AppliedEdit.of(case))

    def reset(self) -> None:
        self.edits.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"edits": [asdict(edit) for edit in self.edits]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.edits = [AppliedEdit(**edit) for edit in state["edits"]]


@runtime_checkable
class Editor(Protocol):
    """An editing method bound to its hyperparameters.

    `prepare` is called once per run before any edit (index training data, check roles);
    `apply` edits the model in place; `context` is what every query after the edits carries.
    `touches_audio_path` tells the runner whether audio-encoder and connector outputs may
    change, i.e. whether they may be cached across edits; `edited_roles` names the modules
    whose weights an edit changes (none for in-context methods); `extras` is what the editor
    reports about its last edit (numbers by name, logged with the edit's record).
    """

    name: str
    state: EditorState

    @property
    def touches_audio_path(self) -> bool: ...

    @property
    def edited_roles(self) -> tuple[str, ...]: ...

    @property
    def extras(self) -> Mapping[str, float]: ...

    def prepare(self, lalm: LALM, train_cases: Sequence[EditCase]) -> None: ...

    def apply(self, lalm: LALM, case: EditCase) -> EditOutcome: ...

    def context(self) -> QueryContext: ...


PendingEdit = Callable[[], EditOutcome]


class RowRouting(Protocol):
    """Edits held side by side in one model: inside `routed()`, each row of a batch is computed
    with the edit `route` assigned to it (one edit index per row, in batch order)."""

    def routed(self) -> AbstractContextManager[None]: ...

    def route(self, rows: Sequence[int]) -> None: ...


@dataclass(frozen=True)
class EditGroup:
    """Edits fitted together. `installs[i]` writes case i's edit into the model and gives its
    outcome (whose snapshot restores the weights); where the edits can also be asked side by
    side, `routing` does that without installing, and `outcomes[i]` is case i's outcome then."""

    installs: list[PendingEdit]
    outcomes: list[EditOutcome]
    routing: RowRouting | None = None


@runtime_checkable
class ParallelEditor(Editor, Protocol):
    """An editor that can make many independent edits (single editing) as one computation.

    `apply_many` leaves the model as it found it and returns the group of edits; each outcome
    equals `apply`'s for the same case up to float rounding.
    """

    def apply_many(self, lalm: LALM, cases: Sequence[EditCase]) -> EditGroup: ...


@runtime_checkable
class AttachableEditor(Editor, Protocol):
    """An editor whose edits act through hooks at inference (a codebook, a memory).

    `attach` installs them on `lalm` without training data, so that a saved editor state can be
    loaded into a freshly built editor and take effect.
    """

    def attach(self, lalm: LALM) -> None: ...


def role_touches_audio_path(role: str) -> bool:
    """Whether a role names the audio encoder, the connector or a module inside them."""
    return any(role == root or role.startswith(f"{root}.") for root in AUDIO_PATH_ROLES)


class MasterWeights:
    """fp32 copies of low-precision parameters for an optimiser to update.

    A bf16 weight cannot hold an Adam step of lr 1e-5 (most such steps round to nothing), so
    the optimiser updates fp32 copies and every step is written back, rounded once. fp32
    parameters are optimised in place.
    """

    def __init__(self, parameters: Sequence[nn.Parameter]) -> None:
        self.parameters = list(parameters)
        self.tensors = [
            p if p.dtype == torch.float32 else p.detach().float().requires_grad_(True)
            for p in self.parameters
        ]

    def pull_gradients(self) -> None:
        """Move each parameter's gradient onto its fp32 copy (the next backward starts at 0)."""
        for parameter, master in zip(self.parameters, self.tensors, strict=True):
            if master is not parameter:
                master.grad = None if parameter.grad is None else parameter.grad.float()
                parameter.grad = None

    def push_weights(self) -> None:
        """Write the fp32 copies back into the parameters."""
        with torch.no_grad():
            for parameter, master in zip(self.parameters, self.tensors, strict=True):
                if master is not parameter:
                    parameter.copy_(master)


def check_choice(name: str, field_name: str, value: str, choices: Sequence[str]) -> None:
    """Refuse a method setting that is not one of its `choices`, naming them."""
    if value not in choices:
        raise ValueError(f"{name}: {field_name} must be one of {tuple(choices)}, got {value!r}")


def non_finite_settings(config: Any, prefix: str = "method") -> list[str]:
    """`method.<key> = value` for every NaN or infinite number in a (nested) method config."""
    if isinstance(config, float):
        return [] if math.isfinite(config) else [f"{prefix} = {config}"]
    if isinstance(config, Mapping):
        return [
            found
            for key, value in config.items()
            for found in non_finite_settings(value, f"{prefix}.{key}")
        ]
    if isinstance(config, Sequence) and not isinstance(config, str):
        return [
            found
            for index, value in enumerate(config)
            for found in non_finite_settings(value, f"{prefix}[{index}]")
        ]
    return []


def build_editor(method: Mapping[str, Any], available: Sequence[str] = ()) -> Editor:
    """Instantiate the editor a method config names through its `_target_` factory.

    The config's `display` block (how reports name and order the method) is not the editor's.

    `available` lists the method configs the user could choose instead, for the message.
    """
    from hydra.utils import instantiate

    name = method.get("name", "?")
    if "_target_" not in method:
        choices = ", ".join(option for option in available if option != name) or "(none found)"
        raise ValueError(
            f"method {name!r} does not edit anything (its config has no _target_); "
            f"choose an editing method with method=<name>, one of: {choices}"
        )
    non_finite = non_finite_settings(method)
    if non_finite:
        raise ValueError(
            f"method {name!r}: {', '.join(non_finite)}; every setting must be a finite "
            "number: set it with method.<key>=<number>"
        )
    editor = instantiate({key: value for key, value in method.items() if key != DISPLAY_KEY})
    if not isinstance(editor, Editor):
        raise TypeError(f"method {name!r} built a {type(editor).__name__}, which is not an Editor")
    return editor
