"""Asking a model many probes at once: batched, length-sorted, order-preserving."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from sake.data.schema import Probe
from sake.models.base import LALM, Turn


@dataclass(frozen=True)
class Answers:
    """Greedy answers to probes in their order, and first-token logits where asked for.

    `first_logits[i]` is the (vocab,) float32 next-token distribution at probe i's answer
    position, read from the generation's own first step.
    """

    texts: list[str]
    first_logits: dict[int, Tensor] = field(default_factory=dict)


# Hears the positions of a batch's rows (in the probes a function was given) before the batch
# is run: how edits fitted together are routed to their own rows.
BatchHook = Callable[[Sequence[int]], None]


def mapped_hook(hook: BatchHook | None, positions: Sequence[int]) -> BatchHook | None:
    """`hook` for a list whose item i is item `positions[i]` of the list `hook` knows."""
    if hook is None:
        return None
    return lambda rows: hook([positions[row] for row in rows])


def answer_probes(
    lalm: LALM,
    probes: Sequence[Probe],
    *,
    batch_size: int,
    max_new_tokens: int,
    system: str | None = None,
    history: Sequence[Turn] | None = None,
    logits_for: Collection[int] = (),
    on_batch: BatchHook | None = None,
) -> Answers:
    """Greedy answers to `probes`, with the first-token logits of the probes in `logits_for`.

    Probes are grouped by question length so that left padding stays short; the number of
    new tokens is bounded by `max_new_tokens` and never depends on the expected answers.
    `on_batch` hears the positions (in `probes`) of each batch's rows before it is asked.
    """
    wanted = set(logits_for)
    order = sorted(range(len(probes)), key=lambda i: (len(probes[i].question), i))
    texts: list[str] = [""] * len(probes)
    first_logits: dict[int, Tensor] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if on_batch is not None:
            on_batch(chunk)
        batch = lalm.prepare([probes[i] for i in chunk], system=system, history=history)
        generation = lalm.generate_scored(batch, max_new_tokens)
        for row, index in enumerate(chunk):
            texts[index] = generation.texts[row]
            if index in wanted:
                first_logits[index] = generation.first_logits[row]
    return Answers(texts, first_logits)


def generate_answers(
    lalm: LALM,
    probes: Sequence[Probe],
    *,
    batch_size: int,
    max_new_tokens: int,
    system: str | None = None,
    history: Sequence[Turn] | None = None,
) -> list[str]:
    """Greedy answers to `probes`, in their order (see `answer_probes`)."""
    return answer_probes(
        lalm,
        probes,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        system=system,
        history=history,
    ).texts


def expected_answer(probe: Probe, *, edited: bool) -> str:
    """What a probe should be answered with before (`edited=False`) or after an edit."""
    if edited or probe.original_answer is None:
        return probe.answer
    return probe.original_answer
