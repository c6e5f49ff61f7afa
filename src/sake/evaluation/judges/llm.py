"""The LLM judge: SAKE's correctness and consistency criteria, asked of a language model.

Criteria (the prompts below state them to the model):

- *Correctness*: the response must commit to exactly one of the listed options, and that
  option must be the ground truth. Morphological variants of an option ("happiness",
  "women", "dogs") and a letter naming an option's position count as that option. Choosing
  no option, several options, hedging or refusing is incorrect.
- *Consistency*: two responses to the same question are consistent when they convey the
  same main answer, however differently they are worded or explained; they are
  inconsistent when they contradict each other or reach different conclusions.

SAKE's shortcuts come first and cost no call: an empty output is incorrect (for
consistency: either output empty is inconsistent), and an output equal to the answer (for
consistency: to the other output) after `normalise` is correct (consistent).

Verdict format. The model is asked to explain first and to end with the verdict alone on
the last line. A reply is read strictly: only its last non-empty line counts, and that
line, case-insensitively and ignoring Markdown marks (``* _ ` # >``), surrounding quotes and
a final period or exclamation mark, must be exactly ``Verdict: <label>`` or ``<label>``,
with the labels ``correct`` / ``incorrect`` or ``consistent`` / ``inconsistent``.
Anything else ("not correct", "Verdict: correct, probably", a verdict followed by more
text, a label inside a sentence) leaves the item undecided (`Verdict.label` None, source
``llm:unparsed``); a label word is never searched for inside the text. The explanation is
the reply without its verdict line.

Without a backend the judge is shortcuts-only: items the shortcuts cannot settle stay
undecided (source ``undecided``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from sake.data.options import question_stem
from sake.evaluation.judges.backends import ChatPrompt, JudgeBackend
from sake.evaluation.judges.base import ConsistencyItem, CorrectnessItem, Verdict
from sake.evaluation.judges.option import normalise

CORRECTNESS_LABELS = ("correct", "incorrect")
CONSISTENCY_LABELS = ("consistent", "inconsistent")

SYSTEM_PROMPT = (
    "You grade the answers an audio-language model gave to questions about audio clips. "
    "You cannot hear the audio and do not need to: judge only from the texts you are given. "
    "Follow the criteria exactly and end your reply with the verdict line you are asked for."
)

CORRECTNESS_PROMPT = """\
Decide whether the model's response answers the question correctly.

Criteria:
- The response is correct only if it commits to exactly one of the listed options and that \
option is the ground-truth answer.
- A morphological or grammatical variant of an option counts as that option (for example \
"happiness" for "happy", "women" for "female", "dogs" for "dog"), and so does a letter or \
number that clearly names the option's position in the list.
- The response is incorrect if it chooses no option, chooses more than one option, hedges \
between options, refuses to answer, or chooses an option other than the ground truth.
- Explanations, style and length do not matter; only the option the response commits to does.

Question:
{question}

Options:
{options}

Ground-truth answer: {answer}

<response>
{output}
</response>

Explain your judgement in one to three sentences. Then write the verdict alone on the last \
line, exactly "Verdict: correct" or "Verdict: incorrect"."""

CONSISTENCY_PROMPT = """\
Decide whether two responses the model gave to the same question are consistent with each \
other.

Criteria:
- The responses are consistent when they convey the same main answer (the same option, or \
the same conclusion), even if they are worded, explained or formatted differently.
- They are inconsistent when they contradict each other, reach different conclusions, or \
only one of them gives an answer.
- Whether either response is right does not matter, only whether they agree.

Question:
{question}

Options:
{options}

<response_a>
{output_a}
</response_a>

<response_b>
{output_b}
</response_b>

Explain your judgement in one to three sentences. Then write the verdict alone on the last \
line, exactly "Verdict: consistent" or "Verdict: inconsistent"."""

_MARKDOWN_MARKS = str.maketrans("", "", "*_`#>")
_EDGE_CHARACTERS = " \t\"'“”‘’"
_TRAILING_MARKS = ".!"

Item = TypeVar("Item", CorrectnessItem, ConsistencyItem)


def parse_verdict(reply: str, labels: tuple[str, str]) -> tuple[bool | None, str]:
    """(label, explanation) of a reply, read strictly (see the module docstring).

    `labels` is (positive, negative); the label is True for the positive one, False for the
    negative one and None when the last line is not a verdict.
    """
    lines = reply.strip().splitlines()
    if not lines:
        return None, ""
    positive, negative = labels
    verdict_line = re.fullmatch(
        rf"(?:verdict\s*:\s*)?({re.escape(positive)}|{re.escape(negative)})",
        _clean_verdict_line(lines[-1]),
    )
    if verdict_line is None:
        return None, reply.strip()
    explanation = "\n".join(lines[:-1]).strip()
    return verdict_line.group(1) == positive, explanation


def _clean_verdict_line(line: str) -> str:
    cleaned = line.translate(_MARKDOWN_MARKS).strip(_EDGE_CHARACTERS)
    cleaned = cleaned.rstrip(_TRAILING_MARKS).strip(_EDGE_CHARACTERS)
    return " ".join(cleaned.casefold().split())


def correctness_shortcut(item: CorrectnessItem) -> Verdict | None:
    """SAKE's rules that need no judge: empty is incorrect, an exact match is correct."""
    if not item.output.strip():
        return Verdict(item.item_id, False, "the output is empty", "shortcut:empty")
    if normalise(item.output) == normalise(item.answer):
        return Verdict(item.item_id, True, "the output is the answer", "shortcut:exact")
    return None


def consistency_shortcut(pair: ConsistencyItem) -> Verdict | None:
    """Either output empty is inconsistent; two outputs equal after normalising are consistent."""
    if not pair.output_a.strip() or not pair.output_b.strip():
        return Verdict(pair.item_id, False, "an output is empty", "shortcut:empty")
    if normalise(pair.output_a) == normalise(pair.output_b):
        return Verdict(pair.item_id, True, "the outputs are the same", "shortcut:exact")
    return None


def correctness_prompt(item: CorrectnessItem) -> ChatPrompt:
    content = CORRECTNESS_PROMPT.format(
        question=question_stem(item.question),
        options=_option_lines(item.options),
        answer=item.answer,
        output=item.output.strip(),
    )
    return _chat(content)


def consistency_prompt(pair: ConsistencyItem) -> ChatPrompt:
    content = CONSISTENCY_PROMPT.format(
        question=question_stem(pair.question),
        options=_option_lines(pair.options),
        output_a=pair.output_a.strip(),
        output_b=pair.output_b.strip(),
    )
    return _chat(content)


def _chat(content: str) -> ChatPrompt:
    return ({"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content})


def _option_lines(options: Sequence[str]) -> str:
    if not options:
        return "(the question lists none separately; use the ground-truth answer)"
    return "\n".join(f"- {option}" for option in options)


class LLMJudge:
    """SAKE's LLM judge: shortcuts first, the backend for the rest (none: shortcuts-only)."""

    def __init__(self, backend: JudgeBackend | None = None, name: str = "llm") -> None:
        self.backend = backend
        self.name = name

    def judge_correct(self, items: Sequence[CorrectnessItem]) -> list[Verdict]:
        return self._judge(items, correctness_shortcut, correctness_prompt, CORRECTNESS_LABELS)

    def judge_consistent(self, pairs: Sequence[ConsistencyItem]) -> list[Verdict]:
        return self._judge(pairs, consistency_shortcut, consistency_prompt, CONSISTENCY_LABELS)

    def _judge(
        self,
        items: Sequence[Item],
        shortcut: Callable[[Item], Verdict | None],
        prompt: Callable[[Item], ChatPrompt],
        labels: tuple[str, str],
    ) -> list[Verdict]:
        verdicts = [shortcut(item) for item in items]
        pending = [i for i, verdict in enumerate(verdicts) if verdict is None]
        if self.backend is None:
            replies: list[str | None] = [None] * len(pending)
        else:
            replies = list(self.backend.complete([prompt(items[i]) for i in pending]))
        for index, reply in zip(pending, replies, strict=True):
            verdicts[index] = _from_reply(items[index].item_id, reply, labels)
        return [verdict for verdict in verdicts if verdict is not None]


def _from_reply(item_id: str, reply: str | None, labels: tuple[str, str]) -> Verdict:
    if reply is None:
        return Verdict(item_id, None, "the shortcuts do not decide it; no judge model", "undecided")
    label, explanation = parse_verdict(reply, labels)
    return Verdict(item_id, label, explanation, "llm" if label is not None else "llm:unparsed")
