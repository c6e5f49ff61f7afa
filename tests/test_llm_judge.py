"""The LLM judge: strict verdict parsing, SAKE's shortcuts, and both backends for real.

The HTTP backend talks to a chat-completions server started here on 127.0.0.1 (an
ephemeral port, a real socket): it grades like a simple judge, and can be told to fail
with a 500, stall past the client's timeout or reject a request, and it counts requests.
"""

from __future__ import annotations

import json
import re
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from transformers import LlamaConfig, LlamaForCausalLM

from sake.evaluation.judges.backends import (
    JudgeBackendError,
    OpenAIClientBackend,
    TransformersBackend,
    cache_key,
)
from sake.evaluation.judges.base import ConsistencyItem, CorrectnessItem, Judge, OptionJudge
from sake.evaluation.judges.llm import (
    CONSISTENCY_LABELS,
    CORRECTNESS_LABELS,
    LLMJudge,
    consistency_prompt,
    correctness_prompt,
    parse_verdict,
)
from sake.evaluation.judges.option import is_consistent, is_correct
from sake.models.tokenizer import train_tokenizer

QUESTION = "Identify the speaker's gender.\n\nOptions:\nmale\nfemale"
GENDER = ("male", "female")


def correctness(item_id: str, output: str, answer: str = "male") -> CorrectnessItem:
    return CorrectnessItem(item_id, QUESTION, GENDER, answer, output)


# reply, expected label (None: undecided)
CORRECTNESS_REPLIES = [
    ("The speaker is named as male, the ground truth.\nVerdict: correct", True),
    ("It chose female.\nVerdict: incorrect", False),
    ("Verdict: Correct", True),
    ("VERDICT: INCORRECT", False),
    ("verdict:correct", True),
    ("Reasoning.\n\nVerdict: correct.", True),
    ("Reasoning.\nVerdict: incorrect!", False),
    ("Reasoning.\n**Verdict:** **Correct**", True),
    ("Reasoning.\n**Verdict: incorrect**\n\n", False),
    ("Reasoning.\n> `Verdict: correct`", True),
    ('Reasoning.\n"correct"', True),
    ("Reasoning.\nIncorrect", False),
    ("  correct  ", True),
    # a verdict word inside a sentence never counts
    ("The answer is not correct.", None),
    ("The response is incorrect because it names both options.", None),
    ("The response is correct.", None),
    ("Verdict: not correct", None),
    ("Reasoning.\nVerdict: correct, because it says male", None),
    ("Reasoning.\nVerdict: correct or incorrect", None),
    ("Reasoning.\nVerdict: correct incorrect", None),
    ("Reasoning.\nVerdict: incorrectly", None),
    ("Reasoning.\nFinal verdict: correct", None),
    # only the last line is read: a verdict followed by more text is undecided
    ("Verdict: correct\nThe response chose male.", None),
    ("Verdict: incorrect\n(I may be wrong.)", None),
    # an explanation that says "incorrect" does not overrule the verdict line
    ("Calling it incorrect would be wrong: it chose male.\nVerdict: correct", True),
    ("It is correct that it mentions male, but it also names female.\nVerdict: incorrect", False),
    ("", None),
    ("\n \n", None),
    ("Verdict: consistent", None),
]


@pytest.mark.parametrize(("reply", "expected"), CORRECTNESS_REPLIES)
def test_correctness_verdict_parsing(reply: str, expected: bool | None):
    assert parse_verdict(reply, CORRECTNESS_LABELS)[0] is expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Both say male.\nVerdict: consistent", True),
        ("A says male, B says female.\nVerdict: Inconsistent.", False),
        ("They are not consistent.", None),
        ("Verdict: correct", None),
        ("Verdict: consistent\nBoth name male.", None),
    ],
)
def test_consistency_verdict_parsing(reply: str, expected: bool | None):
    assert parse_verdict(reply, CONSISTENCY_LABELS)[0] is expected


def test_explanation_is_the_reply_without_its_verdict_line():
    reply = "It chose male.\nThat is the ground truth.\nVerdict: correct"
    assert parse_verdict(reply, CORRECTNESS_LABELS) == (
        True,
        "It chose male.\nThat is the ground truth.",
    )
    unparsed = "It is probably correct."
    assert parse_verdict(unparsed, CORRECTNESS_LABELS) == (None, unparsed)


def test_shortcuts_decide_without_a_backend():
    judge = LLMJudge(backend=None)
    verdicts = judge.judge_correct(
        [
            correctness("empty", "  \n"),
            correctness("exact", "Male."),
            correctness("exact-case", "MALE"),
            correctness("prose", "The speaker is male."),
        ]
    )
    assert [(v.item_id, v.label, v.source) for v in verdicts] == [
        ("empty", False, "shortcut:empty"),
        ("exact", True, "shortcut:exact"),
        ("exact-case", True, "shortcut:exact"),
        ("prose", None, "undecided"),
    ]


def test_consistency_shortcuts():
    judge = LLMJudge()
    pairs = [
        ConsistencyItem("both-empty", QUESTION, GENDER, "", ""),
        ConsistencyItem("one-empty", QUESTION, GENDER, "male", " "),
        ConsistencyItem("same", QUESTION, GENDER, "The speaker is male.", "the speaker is MALE"),
        ConsistencyItem("differ", QUESTION, GENDER, "male", "It is a man."),
    ]
    assert [(v.label, v.source) for v in judge.judge_consistent(pairs)] == [
        (False, "shortcut:empty"),
        (False, "shortcut:empty"),
        (True, "shortcut:exact"),
        (None, "undecided"),
    ]


def test_prompts_state_the_criteria_and_the_verdict_format():
    prompt = correctness_prompt(correctness("x", "It is a woman.", answer="female"))
    assert [message["role"] for message in prompt] == ["system", "user"]
    user = prompt[1]["content"]
    assert "exactly one of the listed options" in user
    assert "Ground-truth answer: female" in user
    assert "<response>\nIt is a woman.\n</response>" in user
    assert "- male\n- female" in user
    assert "Options:\nmale" not in user  # the question's own option block is not repeated
    assert user.endswith('exactly "Verdict: correct" or "Verdict: incorrect".')
    pair = consistency_prompt(ConsistencyItem("y", QUESTION, GENDER, "male", "female"))[1]
    assert "same main answer" in pair["content"]
    assert pair["content"].endswith('"Verdict: consistent" or "Verdict: inconsistent".')


def test_option_judge_adapter_matches_the_option_judge():
    judge: Judge = OptionJudge()
    items = [
        correctness("a", "The correct answer is male. Female does not fit."),
        correctness("b", "female"),
        correctness("c", "It could be male or female."),
        correctness("d", "", answer="female"),
    ]
    verdicts = judge.judge_correct(items)
    assert [v.label for v in verdicts] == [is_correct(i.output, i.options, i.answer) for i in items]
    assert [v.label for v in verdicts] == [True, False, False, False]
    assert verdicts[0].source == "option:announced"
    assert "chose 'male'" in verdicts[0].explanation
    pairs = [
        ConsistencyItem("p", QUESTION, GENDER, "male", "The speaker is male."),
        ConsistencyItem("q", QUESTION, GENDER, "male", "female"),
    ]
    labels = [v.label for v in judge.judge_consistent(pairs)]
    assert labels == [is_consistent(p.output_a, p.output_b, p.options) for p in pairs]
    assert labels == [True, False]
    assert isinstance(LLMJudge(), Judge)


# ---------------------------------------------------------------------------------------
# A real chat-completions server on 127.0.0.1


@dataclass
class JudgeServer:
    """Grading logic and fault plan of the test server; it records every request."""

    url: str
    failures: list[str] = field(default_factory=list)  # consumed one per request
    stall_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_failure(self) -> str | None:
        with self.lock:
            return self.failures.pop(0) if self.failures else None


def grade(body: dict[str, Any]) -> str:
    """A simple honest judge: correct when the response names the ground truth only."""
    user = body["messages"][-1]["content"]
    if "Model generated response: " in user:  # the SAKE reference's correctness prompt
        answer = re.findall(r"Ground truth answer: (.*)", user)[-1]
        response = re.findall(r"Model generated response: (.*)", user)[-1]
        verdict = "correct" if _named(response) == {answer} else "incorrect"
        return f"Explanation: names {sorted(_named(response))}.\nJudgement: {verdict}"
    if "<response_a>" in user:
        first = re.search(r"<response_a>\n(.*)\n</response_a>", user, re.S).group(1)
        second = re.search(r"<response_b>\n(.*)\n</response_b>", user, re.S).group(1)
        same = _named(first) == _named(second)
        return f"A names {_named(first)}, B names {_named(second)}.\n" + (
            "Verdict: consistent" if same else "Verdict: inconsistent"
        )
    answer = re.search(r"Ground-truth answer: (.*)", user).group(1)
    response = re.search(r"<response>\n(.*)\n</response>", user, re.S).group(1)
    verdict = "correct" if _named(response) == {answer} else "incorrect"
    return f"The response names {sorted(_named(response))}.\nVerdict: {verdict}"


def _named(text: str) -> set[str]:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return {option for option in GENDER if option in words}


def _handler(server_state: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with server_state.lock:
                server_state.requests.append(body)
                server_state.headers.append(dict(self.headers))
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": "not found"})
            failure = server_state.next_failure()
            if failure == "stall":
                time.sleep(server_state.stall_s)
            elif failure == "echo-key":
                key = self.headers.get("Authorization", "")
                return self._send(401, {"error": f"invalid key {key} (ends {key[-10:]})"})
            elif failure is not None:
                return self._send(int(failure), {"error": f"planned {failure}"})
            reply = {"choices": [{"index": 0, "message": {"role": "assistant"}}]}
            reply["choices"][0]["message"]["content"] = grade(body)
            self._send(200, reply)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on a stalled request

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    return Handler


@pytest.fixture
def judge_server() -> Iterator[JudgeServer]:
    state = JudgeServer(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def http_backend(
    server: JudgeServer, cache_dir: Path | None, **settings: Any
) -> OpenAIClientBackend:
    """The backend `judge=llm_http` builds, pointed at the test server."""
    options: dict[str, Any] = {
        "timeout_s": 5.0,
        "max_retries": 2,
        "api_key_env": None,
        "temperature": 0.0,
        "max_tokens": 512,
    }
    options.update(settings)
    return OpenAIClientBackend("judge-model", base_url=server.url, cache_dir=cache_dir, **options)


def test_http_judge_asks_only_what_the_shortcuts_leave(judge_server: JudgeServer, tmp_path: Path):
    judge = LLMJudge(http_backend(judge_server, tmp_path / "cache"))
    items = [
        correctness("empty", ""),
        correctness("exact", "male"),
        correctness("right", "The speaker is male."),
        correctness("wrong", "I think it is female."),
        correctness("both", "Either male or female."),
    ]
    verdicts = judge.judge_correct(items)
    assert [(v.label, v.source) for v in verdicts] == [
        (False, "shortcut:empty"),
        (True, "shortcut:exact"),
        (True, "llm"),
        (False, "llm"),
        (False, "llm"),
    ]
    assert verdicts[2].explanation == "The response names ['male']."
    assert len(judge_server.requests) == 3
    body = judge_server.requests[0]
    assert body["model"] == "judge-model"
    assert body["temperature"] == 0.0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    pairs = [
        ConsistencyItem("same", QUESTION, GENDER, "male", "It is male, I think."),
        ConsistencyItem("flip", QUESTION, GENDER, "male", "The speaker is female."),
    ]
    assert [v.label for v in judge.judge_consistent(pairs)] == [True, False]


def test_api_key_comes_from_the_named_variable(
    judge_server: JudgeServer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SAKE_TEST_JUDGE_KEY", "secret-key")
    backend = http_backend(judge_server, None, api_key_env="SAKE_TEST_JUDGE_KEY")
    LLMJudge(backend).judge_correct([correctness("x", "It is male.")])
    headers = {name.lower(): value for name, value in judge_server.headers[0].items()}
    assert headers["authorization"] == "Bearer secret-key"
    monkeypatch.delenv("SAKE_TEST_JUDGE_KEY")
    with pytest.raises(JudgeBackendError, match="SAKE_TEST_JUDGE_KEY"):
        http_backend(judge_server, None, api_key_env="SAKE_TEST_JUDGE_KEY")


def test_an_echoed_api_key_never_reaches_the_error(
    judge_server: JudgeServer, monkeypatch: pytest.MonkeyPatch
):
    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("SAKE_TEST_JUDGE_KEY", key)
    judge_server.failures = ["echo-key"]
    backend = http_backend(judge_server, None, api_key_env="SAKE_TEST_JUDGE_KEY")
    with pytest.raises(JudgeBackendError, match="HTTP 401") as raised:
        backend.complete([correctness_prompt(correctness("x", "It is male."))])
    shown = "".join(traceback.format_exception(raised.value))
    assert "invalid key Bearer ***" in shown
    assert key not in shown and key[-10:] not in shown and key[:10] not in shown


def test_server_errors_are_retried(judge_server: JudgeServer):
    judge_server.failures = ["500", "503", "429"]
    backend = http_backend(judge_server, None, max_retries=3)
    verdicts = LLMJudge(backend).judge_correct([correctness("x", "It is male.")])
    assert verdicts[0].label is True
    assert len(judge_server.requests) == 4


def test_a_timeout_is_retried_then_succeeds(judge_server: JudgeServer):
    judge_server.failures = ["stall"]
    judge_server.stall_s = 1.0
    backend = http_backend(judge_server, None, timeout_s=0.3)
    verdicts = LLMJudge(backend).judge_correct([correctness("x", "It is female.")])
    assert verdicts[0].label is False
    assert len(judge_server.requests) == 2


def test_persistent_timeouts_are_reported(judge_server: JudgeServer):
    judge_server.failures = ["stall"] * 3
    judge_server.stall_s = 0.6
    backend = http_backend(judge_server, None, timeout_s=0.2, max_retries=2)
    with pytest.raises(JudgeBackendError, match=r"1 of 1 .* gave up after 3 attempts"):
        backend.complete([correctness_prompt(correctness("x", "It is male."))])
    assert len(judge_server.requests) == 3


def test_client_errors_are_not_retried(judge_server: JudgeServer):
    judge_server.failures = ["400"]
    backend = http_backend(judge_server, None, max_retries=3)
    with pytest.raises(JudgeBackendError, match="HTTP 400"):
        backend.complete([correctness_prompt(correctness("x", "It is male."))])
    assert len(judge_server.requests) == 1


def test_unreachable_endpoint_is_reported():
    backend = OpenAIClientBackend(
        "judge-model",
        base_url="http://127.0.0.1:9/v1",
        api_key_env=None,
        max_retries=1,
        timeout_s=1.0,
    )
    with pytest.raises(JudgeBackendError, match="gave up after 2 attempts: APIConnectionError"):
        backend.complete([correctness_prompt(correctness("x", "It is male."))])


def test_finished_replies_are_cached_even_when_one_fails(judge_server: JudgeServer, tmp_path: Path):
    judge_server.failures = ["400"]
    backend = http_backend(judge_server, tmp_path, concurrency=1)
    prompts = [correctness_prompt(correctness(str(i), f"It is male ({i}).")) for i in range(3)]
    with pytest.raises(JudgeBackendError, match="1 of 3"):
        backend.complete(prompts)
    assert len(judge_server.requests) == 3
    replies = http_backend(judge_server, tmp_path).complete(prompts)
    assert len(judge_server.requests) == 4
    assert all(reply.endswith("Verdict: correct") for reply in replies)


def test_tolerated_failures_come_back_as_none_without_asking_again(judge_server: JudgeServer):
    judge_server.failures = ["400"]
    backend = http_backend(judge_server, None, concurrency=1)
    prompts = [correctness_prompt(correctness(str(i), f"It is male ({i}).")) for i in range(3)]
    replies = backend.complete(prompts, tolerate_failures=True)
    assert replies[0] is None and all(r.endswith("Verdict: correct") for r in replies[1:])
    assert len(judge_server.requests) == 3


def test_cache_hits_make_no_requests(judge_server: JudgeServer, tmp_path: Path):
    items = [correctness("a", "It is male."), correctness("b", "It is female.")]
    first = LLMJudge(http_backend(judge_server, tmp_path)).judge_correct(items)
    assert len(judge_server.requests) == 2
    again = LLMJudge(http_backend(judge_server, tmp_path)).judge_correct(items)
    assert len(judge_server.requests) == 2
    assert again == first
    assert len(list(tmp_path.rglob("*.json"))) == 2
    LLMJudge(http_backend(judge_server, tmp_path, max_tokens=64)).judge_correct(items)
    assert len(judge_server.requests) == 4  # other generation settings, other replies


def test_identical_prompts_in_a_batch_are_sent_once(judge_server: JudgeServer):
    same = [correctness(f"id{i}", "It is male.") for i in range(5)]
    verdicts = LLMJudge(http_backend(judge_server, None)).judge_correct(same)
    assert [v.item_id for v in verdicts] == [f"id{i}" for i in range(5)]
    assert all(v.label is True for v in verdicts)
    assert len(judge_server.requests) == 1


def test_requests_run_concurrently(judge_server: JudgeServer):
    judge_server.failures = ["stall"] * 4
    judge_server.stall_s = 0.4
    backend = http_backend(judge_server, None, concurrency=4)
    prompts = [correctness_prompt(correctness(str(i), f"It is male {i}.")) for i in range(4)]
    start = time.monotonic()
    replies = backend.complete(prompts)
    assert time.monotonic() - start < 1.2  # four stalls of 0.4 s overlapped
    assert len(replies) == 4


def test_cache_key_depends_on_prompt_and_settings_not_endpoint():
    prompt = correctness_prompt(correctness("x", "It is male."))
    other = correctness_prompt(correctness("x", "It is female."))
    first = OpenAIClientBackend("m", base_url="http://127.0.0.1:1/v1", api_key_env=None).settings
    moved = OpenAIClientBackend("m", base_url="http://judge.example/v1", api_key_env=None).settings
    assert cache_key(prompt, first) == cache_key(prompt, moved)
    assert cache_key(prompt, first) != cache_key(other, first)
    assert cache_key(prompt, first) != cache_key(prompt, {**first, "model": "other"})


# ---------------------------------------------------------------------------------------
# The local transformers backend, on a tiny random chat model saved to disk


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_judge")
    texts = [correctness_prompt(correctness(str(i), "male female"))[1]["content"] for i in range(2)]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_local_backend_batches_greedily_and_caches(tiny_chat_model: Path, tmp_path: Path):
    prompts = [
        correctness_prompt(correctness("a", "male")),
        correctness_prompt(correctness("b", "It is a female voice, clearly, I am sure of it.")),
        correctness_prompt(correctness("c", "female?")),
    ]
    backend = TransformersBackend(
        str(tiny_chat_model), max_new_tokens=6, batch_size=3, cache_dir=tmp_path, dtype="float32"
    )
    batched = backend.complete(prompts)
    one_by_one = TransformersBackend(str(tiny_chat_model), max_new_tokens=6, batch_size=1)
    assert batched == [one_by_one.complete([prompt])[0] for prompt in prompts]
    assert all(isinstance(reply, str) and reply for reply in batched)
    assert len(list(tmp_path.rglob("*.json"))) == 3
    cached = TransformersBackend(
        str(tiny_chat_model), max_new_tokens=6, cache_dir=tmp_path, dtype="float32"
    )
    assert cached.complete(prompts) == batched
    assert "_components" not in vars(cached)  # served from disk: the model was never loaded


def test_local_judge_leaves_unreadable_replies_undecided(tiny_chat_model: Path):
    backend = TransformersBackend(str(tiny_chat_model), max_new_tokens=4, batch_size=2)
    verdicts = LLMJudge(backend).judge_correct(
        [correctness("x", "It is male."), correctness("y", "male")]
    )
    assert verdicts[0].label is None and verdicts[0].source == "llm:unparsed"
    assert verdicts[1].source == "shortcut:exact"


# ---------------------------------------------------------------------------------------
# The `judge/` config group


def test_judge_configs_instantiate(compose_cfg, monkeypatch: pytest.MonkeyPatch):
    option = instantiate(compose_cfg("evaluate", ["judge=option"]).judge)
    assert isinstance(option, OptionJudge) and option.name == "option"
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    http = instantiate(compose_cfg("evaluate", ["judge=llm_http"]).judge)
    assert isinstance(http, LLMJudge) and isinstance(http.backend, OpenAIClientBackend)
    assert http.backend.url == "https://api.openai.com/v1/chat/completions"
    assert http.backend.cache is not None and http.backend.extra_body == {}
    local = instantiate(compose_cfg("evaluate", ["judge=llm_local"]).judge)
    assert isinstance(local.backend, TransformersBackend)
    assert local.backend.settings["dtype"] == "bfloat16"
    assert "_components" not in vars(local.backend)  # the model loads on first use only


def openai_backend(server: JudgeServer, **settings: Any) -> OpenAIClientBackend:
    options: dict[str, Any] = {"api_key_env": None, "timeout_s": 5.0, "max_retries": 2}
    options.update(settings)
    return OpenAIClientBackend(
        "gpt-5-mini-2025-08-07",
        base_url=server.url,
        reasoning_effort="minimal",
        seed=0,
        **options,
    )


def test_the_openai_client_backend_makes_the_reference_call(
    judge_server: JudgeServer, tmp_path: Path
):
    judge_server.failures = ["500"]
    backend = openai_backend(judge_server, cache_dir=tmp_path / "cache")
    item = correctness("x", "The speaker is male.")
    replies = backend.complete([correctness_prompt(item)])
    assert replies[0].endswith("Verdict: correct")
    body = judge_server.requests[-1]
    assert body["model"] == "gpt-5-mini-2025-08-07"
    assert body["reasoning_effort"] == "minimal" and body["seed"] == 0
    assert "temperature" not in body and "max_tokens" not in body
    assert len(judge_server.requests) == 2  # the 500 was retried
    again = openai_backend(judge_server, cache_dir=tmp_path / "cache")
    assert again.complete([correctness_prompt(item)]) == replies
    assert len(judge_server.requests) == 2  # answered from the cache


def test_the_openai_client_backend_redacts_an_echoed_key(
    judge_server: JudgeServer, monkeypatch: pytest.MonkeyPatch
):
    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("SAKE_TEST_JUDGE_KEY", key)
    judge_server.failures = ["echo-key"]
    backend = openai_backend(judge_server, api_key_env="SAKE_TEST_JUDGE_KEY")
    with pytest.raises(JudgeBackendError, match="401") as raised:
        backend.complete([correctness_prompt(correctness("x", "It is male."))])
    shown = "".join(traceback.format_exception(raised.value))
    assert key not in shown and key[-10:] not in shown and key[:10] not in shown
