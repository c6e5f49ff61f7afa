"""What every LALM wrapper shares: prompts to batches, teacher forcing, audio caches, identity.

A wrapper subclasses `AudioLALM` and says only what is its model's own:

- `prompt_text`: the chat prompt of one probe (its template, how a clip is written);
- `_encode_clips`: clips -> the embeddings that overwrite their placeholders, one tensor each;
- `_logits`: logits of the last positions of a left-padded batch, audio included;
- `_decode`: greedy continuation of a batch and its first step's logits;

and, where it needs them, `_prefetch_audio` (work to do once per batch's distinct clips),
`_input_device` and `_template_identity`. Everything callers use (the `LALM` protocol) is
here, written once.

Audio features do not depend on any weight, so subclasses cache them per file for the life of
the object (`_feature_cache`). Clip embeddings do depend on weights, so they are cached only
inside `with lalm.cached_audio_embeddings():`, a promise by the caller that the audio path
stays fixed meanwhile. For the same reason a `Batch` carries the paths of its clips, never
their embeddings: a batch prepared before an edit of the connector is still right after it.

Inference runs under `torch.no_grad()` rather than `inference_mode()`: cached embeddings and
returned logits are then ordinary tensors that later differentiable code may use freely.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn

from sake.data.schema import Probe
from sake.models.base import Batch, Generation, Turn
from sake.models.roles import ModuleMap
from sake.models.tokenizer import left_pad, sequence_rows, target_row, tokenizer_identity

DEFAULT_AUDIO_CACHE_CLIPS = 2048
IGNORE_INDEX = -100

ClipKey = tuple[str, int, int]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A mapping that forgets its least recently used entries beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class ScopedCache(LRUCache[K, V]):
    """An LRU cache in use only inside `scope()`; it starts empty and is emptied on leaving.

    Entering the scope is the caller's promise that whatever the entries depend on stays
    fixed meanwhile; scopes nest, and only the outermost one empties the cache.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._depth = 0

    @property
    def active(self) -> bool:
        return self._depth > 0

    @contextmanager
    def scope(self) -> Iterator[None]:
        if self._depth == 0:
            self.clear()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.clear()


def probe_audio(probe: Probe) -> tuple[Path, ...]:
    """The probe's own clips; a clip named but not located is an error, not a text probe."""
    if probe.audio_path is not None:
        return (Path(probe.audio_path),)
    if probe.file is not None:
        raise ValueError(
            f"probe {probe.name!r} names the audio file {probe.file!r} but has no audio_path; "
            "set the audio root (EditCase.with_audio_root / the dataset's audio_root)"
        )
    return ()


def clip_key(path: Path) -> ClipKey:
    """Cache key of a clip: its resolved path plus mtime and size, so rewritten files miss."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"audio file not found: {path}") from None
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def tensor_bytes(tensor: Tensor) -> memoryview:
    """The raw bytes of a tensor of any dtype (bf16 included), on the CPU."""
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    return memoryview(flat.view(torch.uint8).numpy())


def answer_text(tokenizer: Any, token_ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """Generated ids up to the first stop token, decoded without special tokens, stripped."""
    stops = [index for index, token in enumerate(token_ids) if token in stop_ids]
    kept = list(token_ids[: stops[0]] if stops else token_ids)
    return tokenizer.decode(kept, skip_special_tokens=True).strip()


class AudioLALM:
    """`sake.models.base.LALM` up to what is each model's own (see the module docstring).

    `end_of_turn` is the token that closes an assistant message: generation stops at it or at
    any EOS the tokenizer (and the model's generation config) declares, and teacher-forced
    targets are followed by it. Free text must not contain the tokenizer's special tokens nor
    `extra_special_texts`.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        modules: ModuleMap,
        *,
        name: str,
        end_of_turn: str,
        extra_special_texts: Sequence[str] = (),
        audio_cache_clips: int = DEFAULT_AUDIO_CACHE_CLIPS,
    ) -> None:
        self.name = name
        self._model = model
        self.tokenizer = tokenizer
        self.modules = modules
        self._end_of_turn = end_of_turn
        self._end_ids = [self._single_token_id(end_of_turn, "end-of-turn")]
        self._stop_ids = self._stop_token_ids()
        pad = tokenizer.pad_token_id
        self._pad_id = self._stop_ids[-1] if pad is None else int(pad)
        self._special_texts = tuple(
            dict.fromkeys([*tokenizer.all_special_tokens, *extra_special_texts])
        )
        self._feature_cache: LRUCache[ClipKey, Any] = LRUCache(audio_cache_clips)
        self._embedding_cache: ScopedCache[ClipKey, Tensor] = ScopedCache(audio_cache_clips)

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Tokens that end an answer: the end of turn, then every EOS the model declares."""
        return tuple(self._stop_ids)

    @property
    def audio_window_seconds(self) -> float:
        """Seconds of a clip the model hears; the rest of a longer clip is cut."""
        raise NotImplementedError

    @property
    def audio_token_id(self) -> int:
        """The placeholder token whose embeddings the audio overwrites."""
        raise NotImplementedError

    # ---------------------------------------------------------------- what a model says itself

    def prompt_text(
        self,
        probe: Probe,
        *,
        system: str | None = None,
        history: Sequence[Turn] | None = None,
    ) -> str:
        """The chat prompt for one probe, ending with the assistant's generation prompt."""
        raise NotImplementedError

    def _audio_content(self, text: str, clips: Sequence[Path]) -> Any:
        """A user message's content for its (checked) text and its clips, as the chat template
        of the model expects it."""
        raise NotImplementedError

    def _encode_clips(self, paths: Sequence[Path]) -> Sequence[Tensor]:
        """Per clip, the (placeholders, llm_hidden) embeddings that stand in for it."""
        raise NotImplementedError

    def _logits(
        self, input_ids: Tensor, attention_mask: Tensor, batch: Batch, *, keep: int
    ) -> Tensor:
        """Logits of the last `keep` positions of a left-padded batch with `batch`'s clips."""
        raise NotImplementedError

    def _decode(self, batch: Batch, max_new_tokens: int) -> tuple[Tensor, Tensor]:
        """Greedy continuation: (batch, new tokens) and the first step's (batch, vocab) logits."""
        raise NotImplementedError

    def _prefetch_audio(self, clips: Sequence[Path]) -> None:
        """Work to do once for a batch's distinct clips before its prompts are written."""

    @property
    def _input_device(self) -> torch.device:
        """Where a batch's token ids go."""
        raise NotImplementedError

    def _template_identity(self) -> str:
        """The chat template, as far as it decides the model's inputs (for `fingerprint`)."""
        return self.tokenizer.chat_template or ""

    # ---------------------------------------------------------------- prompts

    def prepare(
        self,
        probes: Sequence[Probe],
        *,
        system: str | None = None,
        history: Sequence[Turn] | None = None,
    ) -> Batch:
        """Left-padded prompts for the probes; `history` (with its own audio) precedes each one.

        `Batch.inputs["audio_paths"]` lists every clip in reading order (row by row, history
        clips first); text-only batches have no inputs. Clips are decoded here, so missing or
        unreadable files fail now rather than mid-evaluation.
        """
        if not probes:
            raise ValueError("prepare needs at least one probe")
        history = tuple(history or ())
        clips = tuple(clip for probe in probes for clip in self._prompt_clips(probe, history))
        distinct = list(dict.fromkeys(clips))
        if distinct:
            self._prefetch_audio(distinct)
        prompts = [self.prompt_text(probe, system=system, history=history) for probe in probes]
        input_ids, attention_mask = left_pad([self._token_ids(p) for p in prompts], self._pad_id)
        device = self._input_device
        return Batch(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            inputs={"audio_paths": clips} if clips else {},
            prompts=prompts,
        )

    def _messages(
        self, probe: Probe, system: str | None, history: Sequence[Turn] | None
    ) -> list[dict[str, Any]]:
        """The chat messages of one probe: the system message, the history, the probe's turn."""
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": self._checked_text(system, "system")})
        for turn in history or ():
            messages.append(self._message(turn.role, turn.text, turn.audio))
        messages.append(self._message("user", probe.question, probe_audio(probe)))
        return messages

    def _message(self, role: str, text: str, clips: Sequence[Path]) -> dict[str, Any]:
        text = self._checked_text(text, f"{role} text")
        if not clips:
            return {"role": role, "content": text}
        if role != "user":
            raise ValueError(f"only user turns may carry audio, got a {role} turn with {clips}")
        return {"role": role, "content": self._audio_content(text, clips)}

    @staticmethod
    def _prompt_clips(probe: Probe, history: Sequence[Turn]) -> tuple[Path, ...]:
        own = probe_audio(probe)
        return tuple(Path(clip) for turn in history for clip in turn.audio) + own

    # ---------------------------------------------------------------- inference

    def generate(self, batch: Batch, max_new_tokens: int) -> list[str]:
        """Greedy answers for the whole batch in one call, cut at the end of the turn."""
        return self.generate_scored(batch, max_new_tokens).texts

    def generate_scored(self, batch: Batch, max_new_tokens: int) -> Generation:
        """`generate`, plus the logits of every answer's first token from the same pass."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        with torch.no_grad():
            new_tokens, first_logits = self._decode(batch, max_new_tokens)
        texts = [answer_text(self.tokenizer, row, self._stop_ids) for row in new_tokens.tolist()]
        return Generation(texts, first_logits.float().cpu())

    def next_token_logits(self, batch: Batch) -> Tensor:
        """(batch, vocab) float32 logits of the answer's first token."""
        with torch.no_grad():
            logits = self._logits(batch.input_ids, batch.attention_mask, batch, keep=1)
        return logits[:, -1].float()

    # ---------------------------------------------------------------- teacher forcing

    def target_nll(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> Tensor:
        """(batch,) mean teacher-forced NLL per target token, differentiable w.r.t. the weights.

        With `include_end` the closing end-of-turn token is scored as well.
        """
        logits, labels = self._teacher_forced(batch, targets, include_end)
        losses = nn.functional.cross_entropy(
            logits.float().flatten(0, 1),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(labels.shape)
        return losses.sum(dim=1) / (labels != IGNORE_INDEX).sum(dim=1)

    def answer_logits(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> list[Tensor]:
        """Per row, the float32 logits that predict each target token, (T_i, vocab); differentiable.

        Row i's j-th logits predict `target_token_ids(...)[i][j]`.
        """
        logits, labels = self._teacher_forced(batch, targets, include_end)
        return [
            row[scored != IGNORE_INDEX].float() for row, scored in zip(logits, labels, strict=True)
        ]

    def sequence_logits(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> list[Tensor]:
        """Per row, float32 logits at every position of prompt + target (+ end-of-turn with
        `include_end`), (L_i, vocab), padding left out; differentiable.

        What a KL over whole sequences compares (the reference's hypernetwork locality loss);
        row i's logits but the last, over its last `len(target_token_ids(...)[i])` positions,
        are `answer_logits(...)[i]`.
        """
        rows = sequence_rows(self._target_rows(batch, targets), include_end)
        input_ids, attention_mask = left_pad(rows, self._pad_id)
        logits = self._logits(input_ids, attention_mask, batch, keep=int(input_ids.shape[1]))
        return [row[-len(ids) :].float() for row, ids in zip(logits, rows, strict=True)]

    def target_token_ids(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> list[list[int]]:
        """Token ids of each target as scored by `target_nll` (checked inside the chat sequence)."""
        return [
            ids[len(ids) - n_target - n_end :][: n_target + (n_end if include_end else 0)]
            for ids, n_target, n_end in self._target_rows(batch, targets)
        ]

    def _target_rows(
        self, batch: Batch, targets: Sequence[str]
    ) -> list[tuple[list[int], int, int]]:
        """Per row: ids of prompt + target + end-of-turn, the target's and the end's lengths."""
        if len(targets) != len(batch) or len(batch.prompts) != len(batch):
            raise ValueError(
                f"need one target and one prompt per row: {len(batch)} rows, "
                f"{len(targets)} targets, {len(batch.prompts)} prompts"
            )
        return [
            target_row(
                self.tokenizer,
                prompt,
                self._checked_text(target, "target"),
                self._end_of_turn,
                self._end_ids,
            )
            for prompt, target in zip(batch.prompts, targets, strict=True)
        ]

    def _teacher_forced(
        self, batch: Batch, targets: Sequence[str], include_end: bool
    ) -> tuple[Tensor, Tensor]:
        """Logits and labels over the trailing positions: (B, K, V) and (B, K), -100 unscored.

        Left padding right-aligns every row, so targets end at the same column in all rows and
        only the last K positions need logits.
        """
        rows = self._target_rows(batch, targets)
        input_ids, attention_mask = left_pad([ids for ids, _, _ in rows], self._pad_id)
        width = input_ids.shape[1]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, (_, n_target, n_end) in enumerate(rows):
            first, last = width - n_end - n_target, width - (0 if include_end else n_end)
            labels[row, first:last] = input_ids[row, first:last]
        keep = max(n_target + n_end for _, n_target, n_end in rows) + 1
        logits = self._logits(input_ids, attention_mask, batch, keep=keep)
        return logits[:, :-1], labels[:, width - keep + 1 :].to(logits.device)

    # ---------------------------------------------------------------- audio

    def encode_audio(self, paths: Sequence[Path]) -> list[Tensor]:
        """Per clip, the embeddings that stand in for it; cached inside the cache context."""
        if not paths:
            raise ValueError("encode_audio needs at least one clip")
        with torch.no_grad():
            return self._clip_embeddings([Path(p) for p in paths], grad=False)

    def cached_audio_embeddings(self) -> AbstractContextManager[None]:
        """Reuse clip embeddings while the audio encoder and connector stay unchanged.

        The cache starts empty and is dropped when the outermost context exits; call
        `clear_caches()` inside it after any change to the encoder or connector.
        """
        return self._embedding_cache.scope()

    def cached_encoder_states(self) -> AbstractContextManager[None]:
        """Reuse what the audio encoder computes per clip while the encoder stays unchanged,
        for models that cache it apart from the connector (the others cache nothing here)."""
        return nullcontext()

    def clear_caches(self) -> None:
        """Forget cached audio features and clip embeddings."""
        self._feature_cache.clear()
        self._embedding_cache.clear()

    def _clip_embeddings(self, paths: Sequence[Path], *, grad: bool) -> list[Tensor]:
        """Clip embeddings in the order of `paths`; each distinct clip is encoded once."""
        keys = [clip_key(path) for path in paths]
        unique = dict(zip(keys, paths, strict=True))
        if self._embedding_cache.active:
            encoded = self._cached_embeddings(unique)
        else:
            with torch.set_grad_enabled(grad):
                encoded = dict(zip(unique, self._encode_clips(list(unique.values())), strict=True))
        return [encoded[key] for key in keys]

    def _cached_embeddings(self, clips: Mapping[ClipKey, Path]) -> dict[ClipKey, Tensor]:
        found = {key: self._embedding_cache.get(key) for key in clips}
        missing = [key for key, value in found.items() if value is None]
        if missing:
            with torch.no_grad():
                fresh = self._encode_clips([clips[key] for key in missing])
            for key, embedding in zip(missing, fresh, strict=True):
                found[key] = embedding
                self._embedding_cache.put(key, embedding)
        return {key: value for key, value in found.items() if value is not None}

    # ---------------------------------------------------------------- identity

    def fingerprint(self) -> str:
        """Short sha256 of every weight and buffer (in name order), the tokenizer and template.

        It reads every tensor once: milliseconds for desta_tiny, tens of seconds for 8B models,
        so callers compute it once per run and after each edit only when they need it.
        """
        digest = hashlib.sha256()
        for name, tensor in sorted(self._model.state_dict().items()):
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor_bytes(tensor))
        digest.update(tokenizer_identity(self.tokenizer).encode())
        digest.update(self._template_identity().encode())
        return digest.hexdigest()[:16]

    # ---------------------------------------------------------------- text

    def _token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _single_token_id(self, text: str, what: str) -> int:
        ids = self._token_ids(text)
        if len(ids) != 1:
            raise ValueError(f"the {what} text {text!r} must be one token, got {ids}")
        return ids[0]

    def _stop_token_ids(self) -> list[int]:
        eos: list[Any] = [self.tokenizer.eos_token_id]
        generation_config = getattr(self._model, "generation_config", None)
        configured = getattr(generation_config, "eos_token_id", None)
        eos.extend(configured if isinstance(configured, list) else [configured])
        return list(dict.fromkeys([*self._end_ids, *(int(i) for i in eos if i is not None)]))

    def _checked_text(self, text: str, what: str) -> str:
        """Free text must not smuggle in special tokens (an audio placeholder, a turn marker)."""
        found = [token for token in self._special_texts if token in text]
        if found:
            raise ValueError(f"{what} contains special tokens {found}: {text!r}")
        return text
