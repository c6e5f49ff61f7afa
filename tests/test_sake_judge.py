"""`judge=sake`: the reference evaluator's rules, prompts, parsing and fallback, checked against
values the reference's own functions returned (tests/data/sake_judge_reference.json)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sake.data.reference_prompts import (
    PROMPT_SOURCES,
    ReferencePrompts,
    ReferencePromptsError,
    extract_prompt,
    write_prompt_file,
)
from sake.evaluation.judges.backends import JudgeBackendError
from sake.evaluation.judges.base import ConsistencyItem, CorrectnessItem
from sake.evaluation.judges.sake import SakeJudge, read_correctness
from sake.evaluation.metrics import judge_probes

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "sake_judge_reference.json").read_text(encoding="utf-8"))
SHARED_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "sake" / "reference_prompts.json"

needs_prompts = pytest.mark.skipif(
    not SHARED_PROMPTS.is_file(), reason="the reference prompt file (../shared) is absent"
)


class ScriptedBackend:
    """Answers each prompt with the next scripted reply; None is a failed call."""

    settings: dict[str, Any] = {}

    def __init__(self, replies: Sequence[str | None]) -> None:
        self.replies = list(replies)
        self.prompts: list[Any] = []

    def complete(
        self, prompts: Sequence[Any], *, tolerate_failures: bool = False
    ) -> list[str | None]:
        replies = []
        for prompt in prompts:
            self.prompts.append(prompt)
            reply = self.replies.pop(0)
            if reply is None and not tolerate_failures:
                raise JudgeBackendError("scripted failure")
            replies.append(reply)
        return replies


def sake_judge(backend: Any = None, **options: Any) -> SakeJudge:
    return SakeJudge(str(SHARED_PROMPTS), backend, **options)


@needs_prompts
@pytest.mark.parametrize("case", REFERENCE["correctness"], ids=lambda c: repr(c["output"])[:30])
def test_correctness_follows_the_reference(case: dict[str, Any]) -> None:
    backend = ScriptedBackend([case["reply"]])
    item = CorrectnessItem("x", case["question"], (), case["answer"], case["output"])
    [verdict] = sake_judge(backend).judge_correct([item])
    assert verdict.label is case["label"]
    assert bool(backend.prompts) is case["called"]
    if case["called"] and not case["explanation"].startswith("Fallback"):
        assert verdict.explanation == case["explanation"]


@needs_prompts
@pytest.mark.parametrize("case", REFERENCE["consistency"], ids=lambda c: repr(c["output_b"])[:30])
def test_consistency_follows_the_reference(case: dict[str, Any]) -> None:
    backend = ScriptedBackend([case["reply"]])
    pair = ConsistencyItem("x", case["question"], (), case["output_a"], case["output_b"])
    [verdict] = sake_judge(backend).judge_consistent([pair])
    assert verdict.label is case["label"]
    assert bool(backend.prompts) is case["called"]


@needs_prompts
def test_prompts_are_the_reference_texts_as_one_user_message() -> None:
    prompts = ReferencePrompts.load(SHARED_PROMPTS)
    backend = ScriptedBackend(["Judgement: correct", "Judgement: consistent"])
    judge = sake_judge(backend)
    question = "Which animal?\n\nOptions:\ndog\ncat"
    judge.judge_correct([CorrectnessItem("x", question, (), "cat", "A cat {x}.")])
    judge.judge_consistent([ConsistencyItem("y", question, (), "A dog.", "A cat.")])
    correctness, consistency = backend.prompts
    assert correctness[0]["role"] == "user"
    expected = prompts.text("judge_correctness_single")
    expected = expected.replace("{question}", question).replace("{ground_truth}", "cat")
    assert correctness[0]["content"] == expected.replace("{model_response}", "A cat {x}.")
    context = prompts.text("judge_consistency_context_part_single").replace("{question}", question)
    assert context.endswith("\\n\\n")  # the reference's literal backslash-n quirk
    content = consistency[0]["content"]
    assert f"{context}Original Output: A dog.\n\nNew Output: A cat." in content


@needs_prompts
def test_sequential_protocol_has_no_option_shortcuts_unless_asked() -> None:
    question = "Which animal?\n\nOptions:\ndog\ncat"
    wrong = CorrectnessItem("x", question, (), "cat", "dog")
    flipped = ConsistencyItem("y", question, (), "dog", "cat")
    backend = ScriptedBackend(["Judgement: incorrect", "Judgement: inconsistent"])
    sequential = sake_judge(backend, protocol="sequential")
    assert sequential.judge_correct([wrong])[0].source == "llm"
    assert sequential.judge_consistent([flipped])[0].source == "llm"
    with_shortcuts = sake_judge(None, protocol="sequential", sequential_option_shortcuts=True)
    assert with_shortcuts.judge_correct([wrong])[0].source == "sake:wrong-option"
    assert with_shortcuts.judge_consistent([flipped])[0].source == "sake:different-options"


def test_the_strict_parser_reads_only_the_judgement() -> None:
    reply = "Explanation: the response matches two options.\nJudgement: incorrect"
    assert read_correctness(reply, "reference") is True  # the reference's quirk
    assert read_correctness(reply, "strict") is False
    assert read_correctness("Judgement: correct, I think", "strict") is None


@needs_prompts
def test_portability_output_equal_to_the_edit_target_is_incorrect_without_a_call(
    tmp_path: Path,
) -> None:
    from lalm_fixtures import edit_release

    case = edit_release(tmp_path).splits["test"][0]
    probes = list(case.probes())
    port = next(i for i, p in enumerate(probes) if p.kind.value == "portability")
    post = ["" for _ in probes]
    post[port] = f" {case.y_e.upper()} "
    backend = ScriptedBackend(["Judgement: incorrect"] * 100)
    judged = judge_probes(probes, ["x"] * len(probes), post, sake_judge(backend))
    assert judged[port]["post_correct"] is False
    assert not any(case.y_e.upper() in str(p) for p in backend.prompts)


def test_a_missing_prompt_file_says_how_to_write_it(tmp_path: Path) -> None:
    missing = tmp_path / "reference_prompts.json"
    with pytest.raises(ReferencePromptsError, match=r"python -m sake.data.reference_prompts"):
        SakeJudge(str(missing))


@needs_prompts
def test_the_prompt_file_is_written_from_a_checkout(tmp_path: Path) -> None:
    """A stand-in checkout whose code binds the shared texts as the reference's source does
    (f-strings with escapes, a conditional context part, a module-level constant, a list
    comprehension of rules) yields the same texts."""
    shared = ReferencePrompts.load(SHARED_PROMPTS)
    checkout = tmp_path / "EasyEdit"
    files: dict[str, dict[str | None, dict[str, Any]]] = {}
    for key, where in PROMPT_SOURCES.items():
        bindings = files.setdefault(where.path, {}).setdefault(where.function, {})
        if where.entry is None:
            bindings[where.variable] = shared.text(key)
        else:
            bindings.setdefault(where.variable, {})[where.entry] = shared.text(key)
    for path, functions in files.items():
        body = []
        for function, bindings in functions.items():
            indent = "" if function is None else "    "
            if function is not None:
                body.append(f"def {function}(question='', edits=()):")
            for variable, text in bindings.items():
                body.append(f"{indent}{variable} = {python_literal(variable, text, function)}")
            body.append(f"{indent}x = None\n")
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_text("\n".join(body), encoding="utf-8")
    written = write_prompt_file(checkout, tmp_path / "out.json")
    for key in PROMPT_SOURCES:
        assert written["prompts"][key]["text"] == shared.text(key), key
    assert ReferencePrompts.load(tmp_path / "out.json").text("judge_correctness_single")


def python_literal(variable: str, text: Any, function: str | None) -> str:
    """Source binding `text` the way the reference's code binds it."""
    if isinstance(text, dict):
        items = ", ".join(
            f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in text.items()
        )
        return "{" + items + "}"
    if function is None:
        return "f" + json.dumps(text, ensure_ascii=False)
    literal = "f" + json.dumps(text, ensure_ascii=False)
    if variable == "edit_strs":
        return f"[{literal} for pre, post in edits]"
    return f"{literal} if question.strip() else ''"


def test_extraction_keeps_placeholders_and_refuses_other_sources() -> None:
    source = textwrap.dedent(
        """
        def judge(answer):
            prompt = f"Answer: {answer}\\nJudgement:"
            return prompt
        """
    )
    where = PROMPT_SOURCES["judge_correctness_single"]
    renamed = type(where)(where.path, "judge", "prompt")
    assert extract_prompt(source, renamed) == "Answer: {answer}\nJudgement:"
    with pytest.raises(ValueError, match="checkout of the SAKE reference"):
        extract_prompt(source, where)


@needs_prompts
def test_judge_sake_composes_with_the_reference_settings(compose_cfg) -> None:
    from hydra.utils import instantiate

    overrides = [
        "judge=sake",
        f"paths.reference_prompts={SHARED_PROMPTS}",
        "judge.backend.api_key_env=null",
        "eval.protocol=sequential",
    ]
    cfg = compose_cfg("edit", overrides)
    assert cfg.judge.backend.model == "gpt-5-mini-2025-08-07"
    assert cfg.judge.backend.seed == 0 and cfg.judge.parser == "reference"
    judge = instantiate(cfg.judge)
    assert isinstance(judge, SakeJudge) and judge.option_shortcuts is False


@needs_prompts
def test_re_judging_uses_the_protocol_of_the_records(compose_cfg) -> None:
    from sake.evaluation.rejudging import build_judge

    overrides = ["judge=sake", f"paths.reference_prompts={SHARED_PROMPTS}"]
    cfg = compose_cfg("evaluate", [*overrides, "judge.backend.api_key_env=null"])
    assert build_judge(cfg, "sequential").option_shortcuts is False
    assert build_judge(cfg, "single").option_shortcuts is True
