"""Asking a model many probes at once: batched, length-sorted, order-preserving."""

from __future__ import annotations

from collections.abc import Sequence

from sake.data.schema import Probe
from sake.models.base import LALM, Turn


def generate_answers(
    lalm: LALM,
    probes: Sequence[Probe],
    *,
    batch_size: int,
    max_new_tokens: int,
    system: str | None = None,
    history: Sequence[Turn] | None = None,
) -> list[str]:
    """Greedy answers to `probes`, in their order.

    Probes are grouped by question length so that left padding stays short; the number of
    new tokens is bounded by `max_new_tokens` and never depends on the expected answers.
    """
    order = sorted(range(len(probes)), key=lambda i: (len(probes[i].question), i))
    answers: list[str] = [""] * len(probes)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = lalm.prepare([probes[i] for i in chunk], system=system, history=history)
        for index, answer in zip(chunk, lalm.generate(batch, max_new_tokens), strict=True):
            answers[index] = answer
    return answers


def expected_answer(probe: Probe, *, edited: bool) -> str:
    """What a probe should be answered with before (`edited=False`) or after an edit."""
    if edited or probe.original_answer is None:
        return probe.answer
    return probe.original_answer
