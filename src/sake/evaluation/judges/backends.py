"""Where the LLM judge's prompts are answered: an OpenAI-compatible endpoint or a local model.

Both backends take a batch of chat prompts (lists of ``{"role", "content"}`` messages) and
return one reply per prompt, in order. Replies are cached on disk, one JSON file per reply,
named by the SHA-256 of the prompt and of the settings that change a reply (backend kind,
model, generation settings; not the endpoint's URL or the API key), so a re-run, or a run
that died halfway, pays only for prompts it has never sent. Identical prompts in one batch
are sent once.

The endpoint backend speaks the chat-completions protocol that OpenAI, vLLM, SGLang,
llama.cpp and most gateways implement, through the `openai` client (`base_url` for any of
them). It sends requests from a thread pool; the client retries 408/409/429/5xx replies,
timeouts and dropped connections with backoff (honouring Retry-After); other errors are not
retried. A prompt that still fails is reported in one `JudgeBackendError` once every other
prompt of the batch has finished, and has been cached.

The local backend runs a transformers causal LM with its tokenizer's chat template, greedy,
in batches; it loads the model on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from sake.utils.errors import UserError

ChatPrompt = Sequence[Mapping[str, str]]

_RETRYABLE_STATUS = frozenset({408, 409, 429})
_ERROR_SNIPPET = 300


class JudgeBackendError(UserError, RuntimeError):
    """A backend could not produce a reply (after its retries, where it retries)."""


class JudgeBackend(Protocol):
    """Answers chat prompts; `settings` are what a cached reply depends on."""

    @property
    def settings(self) -> dict[str, Any]: ...

    def complete(
        self, prompts: Sequence[ChatPrompt], *, tolerate_failures: bool = False
    ) -> list[str | None]:
        """One reply per prompt. A prompt that fails raises `JudgeBackendError` (after every
        other reply is in), or with `tolerate_failures` gets None."""
        ...


def cache_key(prompt: ChatPrompt, settings: Mapping[str, Any]) -> str:
    """SHA-256 over the prompt's messages and the reply-changing settings."""
    payload = {"messages": [dict(message) for message in prompt], "settings": dict(settings)}
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


class ResponseCache:
    """Replies on disk under `directory/<2 hex>/<key>.json`, written atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def get(self, key: str) -> str | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))["reply"]

    def put(self, key: str, prompt: ChatPrompt, settings: Mapping[str, Any], reply: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "settings": dict(settings),
            "messages": [dict(message) for message in prompt],
            "reply": reply,
        }
        partial = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        partial.write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(partial, path)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"


def complete_with_cache(
    prompts: Sequence[ChatPrompt],
    settings: Mapping[str, Any],
    cache: ResponseCache | None,
    compute: Callable[[list[ChatPrompt], Callable[[int, str], None]], None],
    *,
    tolerate_failures: bool = False,
) -> list[str | None]:
    """Replies for `prompts`: cached ones read back, the others computed once per distinct key.

    `compute(missing, deliver)` must call `deliver(i, reply)` for each prompt `missing[i]`;
    each delivered reply is cached at once, so a batch that fails halfway keeps its progress.
    With `tolerate_failures` the prompts `compute` could not answer get None instead of an
    error, and nothing is asked twice.
    """
    keys = [cache_key(prompt, settings) for prompt in prompts]
    replies: dict[str, str] = {}
    if cache is not None:
        for key in dict.fromkeys(keys):
            cached = cache.get(key)
            if cached is not None:
                replies[key] = cached
    first_prompt = {key: prompt for key, prompt in zip(keys, prompts, strict=True)}
    missing = [key for key in dict.fromkeys(keys) if key not in replies]

    def deliver(index: int, reply: str) -> None:
        key = missing[index]
        replies[key] = reply
        if cache is not None:
            cache.put(key, first_prompt[key], settings, reply)

    if missing:
        try:
            compute([first_prompt[key] for key in missing], deliver)
        except JudgeBackendError:
            if not tolerate_failures:
                raise
    return [replies.get(key) for key in keys]


class CachedBackend:
    """What every backend shares: replies cached on disk and looked up before any work.

    Subclasses set `cache`, say what a reply depends on (`settings`) and how the prompts the
    cache lacks are answered (`_compute_all`, delivering each reply as it comes).
    """

    cache: ResponseCache | None

    @property
    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def complete(
        self, prompts: Sequence[ChatPrompt], *, tolerate_failures: bool = False
    ) -> list[str | None]:
        return complete_with_cache(
            prompts,
            self.settings,
            self.cache,
            self._compute_all,
            tolerate_failures=tolerate_failures,
        )

    def _compute_all(self, prompts: list[ChatPrompt], deliver: Callable[[int, str], None]) -> None:
        raise NotImplementedError


class OpenAIClientBackend(CachedBackend):
    """Any OpenAI-compatible chat-completions endpoint through the `openai` client.

    `base_url` None is OpenAI itself; `api_key_env` names the environment variable holding the
    key (None: send none, for local servers). Only the generation settings that are set are
    sent: `judge=sake` sends `reasoning_effort` and `seed` as the SAKE reference does,
    `judge=llm_http` `temperature` and `max_tokens`. The client retries connection errors,
    timeouts, 408/409/429 and 5xx replies `max_retries` times with backoff (honouring
    Retry-After); `timeout_s` bounds each attempt. Requests run from a thread pool; replies are
    cached like every backend's, and the key never appears in an error.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float | None = None,
        max_tokens: int | None = None,
        reasoning_effort: str | None = None,
        seed: int | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        concurrency: int = 8,
        cache_dir: str | Path | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            import openai
        except ImportError:
            raise JudgeBackendError(
                "the endpoint judge backends need the openai client: pip install -e '.[judge]'"
            ) from None
        key = _api_key(api_key_env) if api_key_env else "unused"
        self._secrets: tuple[str, ...] = (key,) if api_key_env else ()
        self._client = openai.OpenAI(
            api_key=key, base_url=base_url, timeout=timeout_s, max_retries=max_retries
        )
        self._openai = openai
        self.url = f"{str(self._client.base_url).rstrip('/')}/chat/completions"
        self.model = model
        self.options = {
            name: value
            for name, value in (
                ("temperature", temperature),
                ("max_tokens", max_tokens),
                ("reasoning_effort", reasoning_effort),
                ("seed", seed),
            )
            if value is not None
        }
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.extra_body = dict(extra_body or {})
        self.cache = None if cache_dir is None else ResponseCache(cache_dir)

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "backend": "openai-chat",
            "model": self.model,
            **self.options,
            "extra_body": self.extra_body,
        }

    def _compute_all(self, prompts: list[ChatPrompt], deliver: Callable[[int, str], None]) -> None:
        """Deliver each reply as it comes; failures are reported together, once every other
        prompt has been delivered (and cached)."""
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            futures = {pool.submit(self._send, prompt): i for i, prompt in enumerate(prompts)}
            for future in as_completed(futures):
                try:
                    deliver(futures[future], future.result())
                except JudgeBackendError as error:
                    failures.append(str(error))
        if failures:
            raise JudgeBackendError(
                f"{len(failures)} of {len(prompts)} judge requests failed; first: {failures[0]}"
            )

    def _send(self, prompt: ChatPrompt) -> str:
        options = dict(self.options)
        if self.extra_body:
            options["extra_body"] = self.extra_body
        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=[dict(message) for message in prompt], **options
            )
        except self._openai.OpenAIError as error:
            raise JudgeBackendError(redact(self._failure(error), self._secrets)) from None
        if not response.choices:
            raise JudgeBackendError(f"{self.url}: the endpoint answered without choices")
        return response.choices[0].message.content or ""

    def _failure(self, error: Exception) -> str:
        """What went wrong, saying whether the client had retried it."""
        status = getattr(error, "status_code", None)
        if isinstance(error, self._openai.APIStatusError):
            body = error.response.text[:_ERROR_SNIPPET]
            detail = f"HTTP {status}: {body}"
            retried = status in _RETRYABLE_STATUS or status >= 500
        else:
            detail = f"{type(error).__name__}: {error}"
            retried = isinstance(error, self._openai.APIConnectionError)
        if retried:
            return f"{self.url}: gave up after {self.max_retries + 1} attempts: {detail}"
        return f"{self.url}: {detail}"


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` with every configured secret (and its first or last 8+ characters, as servers
    echo keys in part) replaced by `***`."""
    for secret in secrets:
        if len(secret) < 8:
            continue
        text = text.replace(secret, "***")
        for size in range(len(secret) - 1, 7, -1):
            text = text.replace(secret[:size], "***").replace(secret[-size:], "***")
    return text


def _api_key(variable: str) -> str:
    key = os.environ.get(variable)
    if not key:
        raise JudgeBackendError(f"the judge's API key variable {variable} is not set")
    return key


class TransformersBackend(CachedBackend):
    """A local transformers causal LM: chat template, greedy decoding, batches."""

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        max_new_tokens: int = 512,
        batch_size: int = 8,
        cache_dir: str | Path | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.model_name_or_path = str(model_name_or_path)
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.cache = None if cache_dir is None else ResponseCache(cache_dir)

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "backend": "transformers",
            "model": self.model_name_or_path,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
        }

    @cached_property
    def _components(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            self.model_name_or_path, trust_remote_code=self.trust_remote_code
        )
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(
            self.model_name_or_path, dtype=self.dtype, trust_remote_code=self.trust_remote_code
        )
        return model.to(self.device).eval(), tokenizer

    def _compute_all(self, prompts: list[ChatPrompt], deliver: Callable[[int, str], None]) -> None:
        _, tokenizer = self._components
        texts = [
            tokenizer.apply_chat_template(
                [dict(message) for message in prompt], add_generation_prompt=True, tokenize=False
            )
            for prompt in prompts
        ]
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for index, reply in zip(chunk, self._generate([texts[i] for i in chunk]), strict=True):
                deliver(index, reply)

    def _generate(self, texts: list[str]) -> list[str]:
        import torch

        model, tokenizer = self._components
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.device)
        with torch.no_grad():
            generated = model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
