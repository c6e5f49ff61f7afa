"""Forward hooks for methods that read, replay or shift what one module of the model computes.

Locate-then-edit methods (UnKE, MEMIT) and WISE work on the hidden states of one module while
the model runs through the ordinary LALM calls (`target_nll`, `next_token_logits`), so that
chat templates, audio placeholders and padding stay inside the model wrapper:

- `ModuleRecorder` records every call of a module: the real positional and keyword arguments
  (attention mask, rotary embeddings, position ids), captured by a forward pre-hook, and the
  output. `LayerCall.replay` runs the module again with exactly those arguments; a layer is
  never fed masks rebuilt by hand.
- `shifted_output` adds a vector to a module's output at chosen positions, the residual that
  UnKE and MEMIT optimise in their first stage (`fit_output_shift`).
- `question_offsets` finds the last token of each probe's question in its prompt, counted from
  the end of the prompt. Rows are left-padded and teacher-forced rows end with the answer, so
  a position counted from the end is the same token in every call that contains the prompt.
  `edit_token_offset` picks the token an edit is written at: the last token of the question
  itself (its `Options:` block excluded, so that the order of the options does not decide the
  token) or the last token of the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sake.data.options import question_stem
from sake.data.schema import Probe
from sake.models.base import LALM, Batch
from sake.utils.params import trainable_only

EDIT_TOKENS: tuple[str, ...] = ("question", "prompt_end")


def first_output(output: Any) -> Tensor:
    """The hidden states of a module's output (decoder layers may return a tuple)."""
    return output if isinstance(output, Tensor) else output[0]


def with_first_output(output: Any, hidden: Tensor) -> Any:
    """`output` with its hidden states replaced, in the same container type."""
    if isinstance(output, Tensor):
        return hidden
    return (hidden, *output[1:])


def detached(value: Any) -> Any:
    """`value` with every tensor inside (tuples, lists, dicts) detached from its graph."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(detached(item) for item in value)
    if isinstance(value, list):
        return [detached(item) for item in value]
    if isinstance(value, dict):
        return {key: detached(item) for key, item in value.items()}
    return value


@dataclass
class LayerCall:
    """One call of a module as the model made it: its arguments and its output."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Tensor | None = None

    @property
    def hidden_states(self) -> Tensor:
        """The module's main input: the first positional argument or `hidden_states=`."""
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def replay(self, module: nn.Module, hidden_states: Tensor | None = None) -> Tensor:
        """Run `module` again with the recorded arguments (optionally other hidden states)."""
        args, kwargs = self.args, dict(self.kwargs)
        if hidden_states is not None:
            if args:
                args = (hidden_states, *args[1:])
            else:
                kwargs["hidden_states"] = hidden_states
        return first_output(module(*args, **kwargs))


class StopForward(Exception):
    """Raised by a hook to end a forward pass once everything needed was recorded."""


@dataclass
class ModuleRecorder:
    """Records the calls of one module while `installed()` is active.

    With `keep_graph=False` (the default) recorded tensors are detached, so recording costs
    no autograd memory; `stop=True` ends the forward pass right after the module ran.
    """

    module: nn.Module
    keep_graph: bool = False
    stop: bool = False
    calls: list[LayerCall] = field(default_factory=list)

    @contextmanager
    def installed(self) -> Iterator[ModuleRecorder]:
        def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
            keep = (args, kwargs) if self.keep_graph else (detached(args), detached(kwargs))
            self.calls.append(LayerCall(keep[0], dict(keep[1])))

        def after(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            hidden = first_output(output)
            self.calls[-1].output = hidden if self.keep_graph else hidden.detach()
            if self.stop:
                raise StopForward

        handles = [
            self.module.register_forward_pre_hook(before, with_kwargs=True),
            self.module.register_forward_hook(after, with_kwargs=True),
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    @property
    def last(self) -> LayerCall:
        if not self.calls:
            raise RuntimeError("the recorded module was not called by the forward pass")
        return self.calls[-1]


def run_recording(forward: Callable[[], object], *recorders: ModuleRecorder) -> None:
    """Run `forward` with the recorders installed; a recorder with `stop=True` may end it early."""
    with ExitStack() as stack, suppress(StopForward):
        for recorder in recorders:
            stack.enter_context(recorder.installed())
        forward()


@contextmanager
def shifted_output(module: nn.Module, shift: Tensor, index: int) -> Iterator[list[Tensor]]:
    """Add `shift` to the module's output at sequence position `index` of every row.

    Yields a list that receives the unshifted hidden states at that position, one entry per
    call, so that callers know what the shift is relative to.
    """
    originals: list[Tensor] = []

    def add(module: nn.Module, args: tuple, output: Any) -> Any:
        hidden = first_output(output)
        originals.append(hidden[:, index].detach())
        position = torch.zeros(hidden.shape[1], 1, dtype=hidden.dtype, device=hidden.device)
        position[index] = 1
        return with_first_output(output, hidden + position * shift.to(hidden.dtype))

    handle = module.register_forward_hook(add)
    try:
        yield originals
    finally:
        handle.remove()


def question_offsets(lalm: LALM, batch: Batch, questions: Sequence[str]) -> list[int]:
    """Per row, how many prompt tokens follow the last token of the row's question.

    The prompt's own tokenisation decides (`batch.prompts` tokenise to `batch.input_ids`),
    through the tokenizer's character offsets; raises ValueError when a question does not
    appear in its prompt.
    """
    tokenizer = lalm.tokenizer
    offsets = []
    for prompt, question in zip(batch.prompts, questions, strict=True):
        start = prompt.rfind(question.strip())
        if start < 0:
            raise ValueError(f"question {question!r} does not appear in its prompt {prompt!r}")
        end = start + len(question.strip())
        encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        spans = encoded["offset_mapping"]
        last = max(k for k, (begin, _) in enumerate(spans) if begin < end)
        offsets.append(len(spans) - 1 - last)
    return offsets


def edit_token_offset(lalm: LALM, batch: Batch, probe: Probe, token: str) -> int:
    """Prompt tokens after the edit token of the one-row `batch` (see the module docstring)."""
    if token == "prompt_end":
        return 0
    if token == "question":
        return question_offsets(lalm, batch, [question_stem(probe.question)])[0]
    raise ValueError(f"unknown edit token {token!r}; one of {', '.join(EDIT_TOKENS)}")


@dataclass(frozen=True)
class ShiftSettings:
    """How the output shift of the first stage is optimised (Adam on the shift only)."""

    steps: int
    lr: float
    clamp: float
    weight_decay: float
    stop_loss: float
    decay_power: int = 2  # the decay is weight_decay * |shift|^power / |h|^2


@dataclass(frozen=True)
class OutputShift:
    """The result of `fit_output_shift`: the original hidden state, the shift, the fit."""

    original: Tensor
    shift: Tensor
    steps: int
    nll: float

    @property
    def target(self) -> Tensor:
        return self.original + self.shift


def fit_output_shift(
    lalm: LALM,
    batch: Batch,
    target: str,
    module: nn.Module,
    offset: int,
    settings: ShiftSettings,
) -> OutputShift:
    """The shift of `module`'s output at the prompt token `offset` before the prompt's end
    that makes the one-row `batch` answer `target`.

    Adam minimises the target's teacher-forced NLL plus `weight_decay * |shift|^p / |h|^2`
    (p = `decay_power`; ROME's and UnKE's own code use p = 1);
    after every step the shift is projected back to norm at most `clamp * |h|`, h being the
    unshifted hidden state. Every model weight stays frozen.
    """
    if len(batch) != 1:
        raise ValueError(f"fit_output_shift edits one prompt at a time, got {len(batch)} rows")
    tail = len(lalm.target_token_ids(batch, [target], include_end=True)[0])
    index = -(tail + 1 + offset)
    shift = torch.zeros(first_hidden_size(lalm, module, batch), requires_grad=True)
    optimizer = torch.optim.Adam([shift], lr=settings.lr)
    steps = 0
    with (
        trainable_only(lalm.model, {}),
        torch.enable_grad(),
        shifted_output(module, shift, index) as originals,
    ):
        while True:
            nll = lalm.target_nll(batch, [target]).mean()
            original = originals[0][0].float()
            if float(nll.detach()) < settings.stop_loss or steps == settings.steps:
                break
            scale = original.norm().clamp_min(1e-6)
            loss = nll + settings.weight_decay * shift.norm() ** settings.decay_power / scale**2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            with torch.no_grad():
                limit = settings.clamp * scale
                if shift.norm() > limit:
                    shift.mul_(limit / shift.norm())
    return OutputShift(original, shift.detach().clone(), steps, float(nll.detach()))


def first_hidden_size(lalm: LALM, module: nn.Module, batch: Batch) -> int:
    """Width of `module`'s output, read from one recorded call on the prompt."""
    recorder = ModuleRecorder(module, stop=True)
    run_recording(lambda: lalm.next_token_logits(batch), recorder)
    output = recorder.last.output
    assert output is not None
    return int(output.shape[-1])
