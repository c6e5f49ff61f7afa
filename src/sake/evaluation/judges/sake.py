"""`judge=sake`: the SAKE reference's LLM evaluator, rule for rule.

What the reference (`model_outputs/llm_evaluator_single.py`, `llm_evaluator_sequential.py`)
does for one item, in order, and what this judge does by default:

Correctness (reliability, generality, portability):
1. portability only: a post-edit output equal to the edit's target y_e (stripped,
   lower-cased) but not to the portability answer is incorrect;
2. an empty output (or the literal `<missing>`) is incorrect and counted (no call);
3. an output equal to the answer (stripped, lower-cased) is correct;
4. single protocol: when the answer is one of the question's option lines (the lines after
   `\\n\\nOptions:\\n`) and the stripped output is another of them, incorrect;
5. otherwise the model is asked with the reference's correctness prompt (the only, user,
   message) and its whole reply is read leniently: correct when it contains "correct" and
   not "incorrect", *or when it contains "matches" anywhere*; incorrect when it contains
   "incorrect"; otherwise, and when the call fails, the fallback: correct only when the
   output equals the answer (stripped, lower-cased), which step 3 already ruled out.

Consistency (audio and text locality, pre- vs post-edit output):
1. equal outputs (stripped, lower-cased) are consistent, empty ones included;
2. single protocol: two different outputs that are both option lines are inconsistent;
3. otherwise the reference's consistency prompt, read leniently on the upper-cased reply
   ("CONSISTENT" without "INCONSISTENT" is consistent, "INCONSISTENT" inconsistent), with
   the same fallback.

Steps 4 and 2 belong to the single evaluator and to the version of the sequential evaluator
that imports it (3fb69923, used for Audio Flamingo 3's sequential results); the version that
produced DeSTA2.5's and Qwen2-Audio's sequential results (8d417feb) has neither, and is the
default for `protocol=sequential` (`sequential_option_shortcuts=true` selects the other).

`correctness_prompt` names another correctness prompt of the file (the text-based portability
evaluator's `judge_text_portability`, which that evaluator reads strictly).
`parser=strict` reads only the text after the last "Judgement:" instead (it must be exactly
a label, as the reference's own text-portability evaluator requires); an unreadable reply
then falls back as above. The prompts come from the reference prompt file
(`sake.data.reference_prompts`), never from the project.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sake.data.reference_prompts import ReferencePrompts, fill
from sake.evaluation.judges.backends import ChatPrompt, JudgeBackend
from sake.evaluation.judges.base import ConsistencyItem, CorrectnessItem, Verdict, is_missing

log = logging.getLogger(__name__)

OPTIONS_MARKER = "\n\nOptions:\n"
PARSERS = ("reference", "strict")
PROTOCOLS = ("single", "sequential")
FALLBACK = "fallback: no readable judgement, used string comparison"


def folded(text: str) -> str:
    return text.strip().lower()


def option_lines(question: str) -> list[str]:
    """The question's option lines as the reference reads them (unstripped)."""
    return question.split(OPTIONS_MARKER)[-1].split("\n")


def read_correctness(reply: str, parser: str) -> bool | None:
    """The verdict in a correctness reply, or None when it cannot be read."""
    text = reply.strip().lower()
    if parser == "strict":
        judgement = text.split("judgement:")[-1].strip()
        return {"correct": True, "incorrect": False}.get(judgement)
    if ("correct" in text and "incorrect" not in text) or "matches" in text:
        return True
    if "incorrect" in text:
        return False
    return None


def read_consistency(reply: str, parser: str) -> bool | None:
    """The verdict in a consistency reply, or None when it cannot be read."""
    if parser == "strict":
        judgement = reply.strip().lower().split("judgement:")[-1].strip()
        return {"consistent": True, "inconsistent": False}.get(judgement)
    text = reply.strip().upper()
    if "CONSISTENT" in text and "INCONSISTENT" not in text:
        return True
    if "INCONSISTENT" in text:
        return False
    return None


def explanation_of(reply: str) -> str:
    """The text between "Explanation:" and "Judgement:" (or the end), as the reference keeps."""
    text = reply.strip()
    start = text.find("Explanation:")
    if start == -1:
        return ""
    start += len("Explanation:")
    end = text.find("Judgement:")
    return (text[start:end] if end != -1 else text[start:]).strip()


@dataclass(frozen=True)
class SakePrompts:
    """The reference's judge prompts for one protocol."""

    correctness: str
    consistency: str
    context_part: str

    @classmethod
    def of(
        cls, prompts: ReferencePrompts, protocol: str, correctness_key: str | None = None
    ) -> SakePrompts:
        return cls(
            correctness=prompts.text(correctness_key or f"judge_correctness_{protocol}"),
            consistency=prompts.text(f"judge_consistency_{protocol}"),
            context_part=prompts.text("judge_consistency_context_part_single"),
        )

    def correctness_prompt(self, item: CorrectnessItem) -> ChatPrompt:
        text = fill(
            self.correctness,
            question=item.question,
            ground_truth=item.answer,
            model_response=item.output,
        )
        return ({"role": "user", "content": text},)

    def consistency_prompt(self, pair: ConsistencyItem) -> ChatPrompt:
        context = fill(self.context_part, question=pair.question) if pair.question.strip() else ""
        text = fill(
            self.consistency,
            context_part=context,
            original_output=pair.output_a,
            new_output=pair.output_b,
        )
        return ({"role": "user", "content": text},)


class SakeJudge:
    """The reference evaluator's rules around any judge backend (see the module docstring).

    Without a backend every item the rules leave open takes the fallback, as the reference does
    when its API calls fail.
    """

    def __init__(
        self,
        prompts_file: str,
        backend: JudgeBackend | None = None,
        *,
        protocol: str = "single",
        parser: str = "reference",
        sequential_option_shortcuts: bool = False,
        correctness_prompt: str | None = None,
        name: str = "sake",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"judge.protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if parser not in PARSERS:
            raise ValueError(f"judge.parser must be one of {PARSERS}, got {parser!r}")
        prompts = ReferencePrompts.load(prompts_file)
        self.prompts = SakePrompts.of(prompts, protocol, correctness_prompt)
        self.backend = backend
        self.parser = parser
        self.option_shortcuts = protocol == "single" or sequential_option_shortcuts
        self.name = name

    def judge_correct(self, items: Sequence[CorrectnessItem]) -> list[Verdict]:
        return self._judge(
            items, self._correctness_rule, self.prompts.correctness_prompt, read_correctness
        )

    def judge_consistent(self, pairs: Sequence[ConsistencyItem]) -> list[Verdict]:
        return self._judge(
            pairs, self._consistency_rule, self.prompts.consistency_prompt, read_consistency
        )

    def _correctness_rule(self, item: CorrectnessItem) -> Verdict | None:
        output, answer = item.output, item.answer
        target = item.edit_answer
        if target is not None and folded(output) == folded(target) != folded(answer):
            return Verdict(item.item_id, False, "the output is the edit's target", "sake:port")
        if is_missing(output):
            return Verdict(item.item_id, False, "missing output", "sake:missing")
        if folded(output) == folded(answer):
            return Verdict(item.item_id, True, "exact match with the answer", "sake:exact")
        if self.option_shortcuts:
            lines = option_lines(item.question)
            wrong = [line.strip() for line in lines if line.strip() != answer.strip()]
            if answer in lines and output.strip() in wrong:
                return Verdict(item.item_id, False, "a wrong option exactly", "sake:wrong-option")
        return None

    def _consistency_rule(self, pair: ConsistencyItem) -> Verdict | None:
        before, after = pair.output_a.strip(), pair.output_b.strip()
        if before.lower() == after.lower():
            return Verdict(pair.item_id, True, "identical outputs", "sake:exact")
        lines = option_lines(pair.question) if self.option_shortcuts else []
        if before in lines and after in lines and before != after:
            reason = "different options exactly"
            return Verdict(pair.item_id, False, reason, "sake:different-options")
        return None

    def _judge(
        self,
        items: Sequence,
        rule: Callable[..., Verdict | None],
        prompt: Callable[..., ChatPrompt],
        read: Callable[[str, str], bool | None],
    ) -> list[Verdict]:
        verdicts = [rule(item) for item in items]
        pending = [i for i, verdict in enumerate(verdicts) if verdict is None]
        replies: list[str | None] = [None] * len(pending)
        if self.backend is not None and pending:
            replies = self.backend.complete(
                [prompt(items[i]) for i in pending], tolerate_failures=True
            )
            failed = sum(reply is None for reply in replies)
            if failed:
                log.warning("%d judge calls failed; their items take the fallback", failed)
        for index, reply in zip(pending, replies, strict=True):
            label = None if reply is None else read(reply, self.parser)
            item_id = items[index].item_id
            if label is None:
                verdicts[index] = Verdict(item_id, False, FALLBACK, "sake:fallback")
            else:
                verdicts[index] = Verdict(item_id, label, explanation_of(reply), "llm")
        return [verdict for verdict in verdicts if verdict is not None]
