"""The LALM interface for the DeSTA-architecture model (`DestaForCausalLM`).

Prompt layout (ChatML for the embedded tokenizer; whatever chat template the tokenizer carries
otherwise): an optional system message, the history turns, then one user turn per probe, and the
generation prompt. A user turn with audio reads

    <|audio_start|><|audio|> x prompt_size [transcript]<|audio_end|> ... (one span per clip)
    "\\n" question

so the clips come first, back to back, and a single newline separates them from the text, as in
DeSTA2.5-Audio's "<|AUDIO|>\\nquestion" messages. The model overwrites each placeholder run with
that clip's connector outputs, in reading order (row by row, history clips before the probe's).

Audio flows file -> log-mel features -> encoder -> connector -> placeholders. Features do not
depend on any weight, so they are cached per file (bounded LRU) for the life of the object.
Connector outputs do depend on weights, so they are cached only inside
`with lalm.cached_audio_embeddings():`, a promise by the caller that the encoder and connector
stay fixed meanwhile; the encoder's tapped states, which depend on the encoder alone, are cached
inside `with lalm.cached_encoder_states():`, a promise that the encoder stays fixed, so that
editing the connector (training it, too) runs only the connector on each clip. For the same
reason a `Batch` carries the paths of its clips, never their embeddings: a batch prepared before
an edit of the connector is still right after it.

Rows of a batch that share a long prefix (an in-context editor's system prompt) have its keys
and values computed once (`DestaForCausalLM.generate` / `trailing_logits`), in generation and in
teacher-forced scoring without gradients; the results equal the plain computation up to float
rounding. The encoder-state cache holds the tapped layers per clip (for desta_tiny about 0.3 MB
a clip, `encoder_cache_clips` of them at most).

Inference runs under `torch.no_grad()` rather than `inference_mode()`: cached embeddings and
returned logits are then ordinary tensors that later differentiable code (KL targets of
hypernetwork training, losses computed from cached embeddings) may use freely.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from safetensors import safe_open
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from sake.data.audio import read_audio
from sake.data.schema import Probe
from sake.models.base import Batch, Generation, Turn
from sake.models.modeling_desta import (
    LLM_LAYERS_NAME,
    ROLE_MODULE_NAMES,
    CheckpointMismatchError,
    DestaConfig,
    DestaForCausalLM,
    desta_tiny_config,
    load_checkpoint,
    tapped_states_only,
)
from sake.models.roles import ModuleMap
from sake.models.tokenizer import (
    AUDIO,
    AUDIO_END,
    AUDIO_START,
    BOS,
    EOS,
    IM_END,
    PAD,
    left_pad,
    load_tokenizer,
    sequence_rows,
    special_token_ids,
    target_row,
    tokenizer_identity,
)
from sake.models.transcripts import Transcriber

BUILD_COMMAND = "python train.py experiment=desta_tiny"
TOKENIZER_DIR = "tokenizer"
CONFIG_FILE = "config.json"
DEFAULT_AUDIO_CACHE_CLIPS = 2048
DEFAULT_ENCODER_CACHE_CLIPS = 256
AUDIO_CHUNK = 64
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


def answer_text(
    tokenizer: PreTrainedTokenizerFast, token_ids: Sequence[int], stop_ids: Sequence[int]
) -> str:
    """Generated ids up to the first stop token, decoded without special tokens, stripped."""
    stops = [index for index, token in enumerate(token_ids) if token in stop_ids]
    kept = list(token_ids[: stops[0]] if stops else token_ids)
    return tokenizer.decode(kept, skip_special_tokens=True).strip()


class DestaLALM:
    """`sake.models.base.LALM` for `DestaForCausalLM`: prompts, audio, padding, caches.

    `transcriber`, when given, maps a clip's path to its transcript, which is written inside the
    clip's span after the placeholders (DeSTA2.5 feeds Whisper's transcript there).
    `end_of_turn` is the token that closes an assistant message; generation stops at it or at
    the tokenizer's EOS, and `target_nll` appends it after every target.
    """

    def __init__(
        self,
        model: DestaForCausalLM,
        tokenizer: PreTrainedTokenizerFast,
        *,
        device: str | torch.device = "cpu",
        name: str = "desta_tiny",
        transcriber: Transcriber | None = None,
        end_of_turn: str = IM_END,
        audio_cache_clips: int = DEFAULT_AUDIO_CACHE_CLIPS,
        encoder_cache_clips: int = DEFAULT_ENCODER_CACHE_CLIPS,
    ) -> None:
        self.name = name
        self.device = torch.device(device)
        self._model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.modules = ModuleMap(model, ROLE_MODULE_NAMES, LLM_LAYERS_NAME)
        self._transcriber = transcriber
        self._end_of_turn = end_of_turn
        self._end_ids = self._token_ids(end_of_turn)
        self._special_texts = tuple(tokenizer.all_special_tokens)
        self._audio_start_text = tokenizer.decode(list(model.config.audio_start_ids))
        self._audio_end_text = tokenizer.decode(list(model.config.audio_end_ids))
        self._placeholder_text = tokenizer.decode([model.config.audio_token_id])
        self._stop_ids = self._stop_token_ids()
        self._pad_id = (
            self._stop_ids[-1] if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        )
        self._check_audio_span()
        self._feature_cache: LRUCache[ClipKey, tuple[Tensor, Tensor]] = LRUCache(audio_cache_clips)
        self._embedding_cache: ScopedCache[ClipKey, Tensor] = ScopedCache(audio_cache_clips)
        self._encoder_cache: ScopedCache[ClipKey, tuple[Tensor, ...]] = ScopedCache(
            encoder_cache_clips
        )

    @property
    def model(self) -> DestaForCausalLM:
        return self._model

    @property
    def config(self) -> DestaConfig:
        return self._model.config

    @property
    def audio_window_seconds(self) -> float:
        """Seconds of a clip the encoder hears; longer clips are cut to this."""
        return float(self.config.encoder.max_seconds)

    # ---------------------------------------------------------------- prompts

    def prompt_text(
        self,
        probe: Probe,
        *,
        system: str | None = None,
        history: Sequence[Turn] | None = None,
    ) -> str:
        """The chat prompt for one probe, ending with the assistant's generation prompt."""
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": self._checked_text(system, "system")})
        for turn in history or ():
            messages.append(
                {"role": turn.role, "content": self._turn_content(turn.role, turn.text, turn.audio)}
            )
        messages.append(
            {
                "role": "user",
                "content": self._turn_content("user", probe.question, probe_audio(probe)),
            }
        )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def audio_span_text(self, clip: Path) -> str:
        """The text that stands for one clip: markers, placeholders, transcript when enabled."""
        transcript = "" if self._transcriber is None else self._transcriber(Path(clip))
        return (
            self._audio_start_text
            + self._placeholder_text * self.config.prompt_size
            + self._checked_text(transcript, f"transcript of {clip}")
            + self._audio_end_text
        )

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
        history_clips = tuple(clip for turn in history for clip in turn.audio)
        clips = tuple(
            Path(clip) for probe in probes for clip in (*history_clips, *probe_audio(probe))
        )
        distinct = list(dict.fromkeys(clips))
        if distinct and self._transcriber is not None:
            self._transcriber.prefetch(distinct)
        prompts = [self.prompt_text(probe, system=system, history=history) for probe in probes]
        if distinct:
            self._clip_features(distinct)
        encoded = self.tokenizer(
            prompts,
            add_special_tokens=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        return Batch(
            input_ids=encoded["input_ids"].to(self.device),
            attention_mask=encoded["attention_mask"].to(self.device),
            inputs={"audio_paths": clips} if clips else {},
            prompts=prompts,
        )

    # ---------------------------------------------------------------- inference

    def generate(self, batch: Batch, max_new_tokens: int) -> list[str]:
        """Greedy answers for the whole batch in one call, cut at the end of the turn."""
        return self.generate_scored(batch, max_new_tokens).texts

    def generate_scored(self, batch: Batch, max_new_tokens: int) -> Generation:
        """`generate`, plus the logits of every answer's first token from the same pass."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        with torch.no_grad():
            new_tokens, first_logits = self._model.generate_scored(
                batch.input_ids,
                batch.attention_mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=self._stop_ids,
                pad_token_id=self._pad_id,
                audio_embeds=self._batch_audio(batch, grad=False),
            )
        texts = [answer_text(self.tokenizer, row, self._stop_ids) for row in new_tokens.tolist()]
        return Generation(texts, first_logits.float().cpu())

    def next_token_logits(self, batch: Batch) -> Tensor:
        """(batch, vocab) float32 logits of the answer's first token."""
        with torch.no_grad():
            logits = self._llm_logits(batch.input_ids, batch.attention_mask, batch, keep=1)
        return logits[:, -1].float()

    def target_nll(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> Tensor:
        """(batch,) mean teacher-forced NLL per target token, differentiable w.r.t. the weights.

        With `include_end` the closing end-of-turn token is scored as well.
        """
        logits, labels = self._teacher_forced(batch, targets, include_end)
        losses = torch.nn.functional.cross_entropy(
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
        the last `len(target_token_ids(...)[i]) + 1` rows of row i's logits, but its last,
        are `answer_logits(...)[i]`.
        """
        rows = sequence_rows(self._target_rows(batch, targets), include_end)
        input_ids, attention_mask = left_pad(rows, self._pad_id)
        logits = self._llm_logits(
            input_ids.to(self.device),
            attention_mask.to(self.device),
            batch,
            keep=int(input_ids.shape[1]),
        )
        return [row[-len(ids) :].float() for row, ids in zip(logits, rows, strict=True)]

    def target_token_ids(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> list[list[int]]:
        """Token ids of each target as scored by `target_nll` (checked inside the chat sequence)."""
        rows = self._target_rows(batch, targets)
        return [
            row_ids[len(row_ids) - n_target - n_end :][: n_target + (n_end if include_end else 0)]
            for row_ids, n_target, n_end in rows
        ]

    # ---------------------------------------------------------------- audio

    def encode_audio(self, paths: Sequence[Path]) -> Tensor:
        """(clips, prompt_size, llm_hidden) connector outputs, cached inside the cache context."""
        if not paths:
            raise ValueError("encode_audio needs at least one clip")
        with torch.no_grad():
            return self._clip_embeddings([Path(p) for p in paths], grad=False)

    def cached_audio_embeddings(self) -> AbstractContextManager[None]:
        """Reuse connector outputs per clip while the encoder and connector stay unchanged.

        The cache starts empty and is dropped when the outermost context exits; call
        `clear_caches()` inside it after any change to the encoder or connector.
        """
        return self._embedding_cache.scope()

    def cached_encoder_states(self) -> AbstractContextManager[None]:
        """Reuse the encoder's tapped states per clip while the encoder stays unchanged.

        The connector still runs on every use, with gradients when they are enabled, so the
        connector may change (be trained) inside. The cache starts empty and is dropped when
        the outermost context exits; call `clear_caches()` inside it after changing the encoder.
        """
        return self._encoder_cache.scope()

    def clear_caches(self) -> None:
        """Forget cached features, encoder states and connector outputs."""
        self._feature_cache.clear()
        self._encoder_cache.clear()
        self._embedding_cache.clear()

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
        digest.update((self.tokenizer.chat_template or "").encode())
        return digest.hexdigest()[:16]

    # ---------------------------------------------------------------- internals: text

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _stop_token_ids(self) -> list[int]:
        if len(self._end_ids) != 1:
            raise ValueError(
                f"end-of-turn text {self._end_of_turn!r} must be one token, got {self._end_ids}"
            )
        eos = self.tokenizer.eos_token_id
        return list(dict.fromkeys([*self._end_ids, *([] if eos is None else [eos])]))

    def _check_audio_span(self) -> None:
        """The span text must tokenise to exactly the ids the model looks for."""
        ids = self._token_ids(
            self._audio_start_text
            + self._placeholder_text * self.config.prompt_size
            + self._audio_end_text
        )
        if ids != self.config.audio_span():
            raise ValueError(
                f"the tokenizer does not match the model's audio tokens: the audio span "
                f"tokenises to {ids}, the config expects {self.config.audio_span()}"
            )

    def _checked_text(self, text: str, what: str) -> str:
        """Free text must not smuggle in special tokens (an audio placeholder, a turn marker)."""
        found = [token for token in self._special_texts if token in text]
        if found:
            raise ValueError(f"{what} contains special tokens {found}: {text!r}")
        return text

    def _turn_content(self, role: str, text: str, clips: Sequence[Path]) -> str:
        text = self._checked_text(text, f"{role} text")
        if not clips:
            return text
        if role != "user":
            raise ValueError(f"only user turns may carry audio, got a {role} turn with {clips}")
        return "".join(self.audio_span_text(Path(clip)) for clip in clips) + "\n" + text

    def _target_row(self, prompt: str, target: str) -> tuple[list[int], int, int]:
        """Ids of prompt + target + end-of-turn, the target's and the end's lengths (checked)."""
        self._checked_text(target, "target")
        return target_row(self.tokenizer, prompt, target, self._end_of_turn, self._end_ids)

    def _target_rows(
        self, batch: Batch, targets: Sequence[str]
    ) -> list[tuple[list[int], int, int]]:
        if len(targets) != len(batch) or len(batch.prompts) != len(batch):
            raise ValueError(
                f"need one target and one prompt per row: {len(batch)} rows, "
                f"{len(targets)} targets, {len(batch.prompts)} prompts"
            )
        return [
            self._target_row(prompt, target)
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
        width = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, n_target, n_end) in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
            first, last = width - n_end - n_target, width - (0 if include_end else n_end)
            labels[row, first:last] = input_ids[row, first:last]
        keep = max(n_target + n_end for _, n_target, n_end in rows) + 1
        logits = self._llm_logits(
            input_ids.to(self.device), attention_mask.to(self.device), batch, keep=keep
        )
        return logits[:, :-1], labels[:, width - keep + 1 :].to(self.device)

    # ---------------------------------------------------------------- internals: model calls

    def _llm_logits(
        self, input_ids: Tensor, attention_mask: Tensor, batch: Batch, *, keep: int
    ) -> Tensor:
        """Logits of the last `keep` positions; the full (B, L, V) tensor is never built."""
        audio_embeds = self._batch_audio(batch, grad=torch.is_grad_enabled())
        return self._model.trailing_logits(input_ids, attention_mask, audio_embeds, keep)

    def _batch_audio(self, batch: Batch, *, grad: bool) -> Tensor | None:
        paths = batch.inputs.get("audio_paths", ())
        return self._clip_embeddings(list(paths), grad=grad) if paths else None

    def _clip_embeddings(self, paths: Sequence[Path], *, grad: bool) -> Tensor:
        """Connector outputs in the order of `paths`; each distinct clip is encoded once."""
        keys = [clip_key(path) for path in paths]
        unique = dict(zip(keys, paths, strict=True))
        if self._embedding_cache.active:
            embeddings = self._cached_embeddings(unique)
        else:
            with torch.set_grad_enabled(grad):
                embeddings = self._encode_clips(list(unique.values()))
        position = {key: index for index, key in enumerate(unique)}
        order = torch.tensor([position[key] for key in keys], device=embeddings.device)
        return embeddings.index_select(0, order)

    def _cached_embeddings(self, clips: Mapping[ClipKey, Path]) -> Tensor:
        found = {key: self._embedding_cache.get(key) for key in clips}
        missing = [key for key, value in found.items() if value is None]
        if missing:
            with torch.no_grad():
                fresh = self._encode_clips([clips[key] for key in missing])
            for key, embedding in zip(missing, fresh, strict=True):
                found[key] = embedding
                self._embedding_cache.put(key, embedding)
        return torch.stack([found[key] for key in clips])

    def _encode_clips(self, paths: Sequence[Path]) -> Tensor:
        chunks = []
        for begin in range(0, len(paths), AUDIO_CHUNK):
            chunk = paths[begin : begin + AUDIO_CHUNK]
            features, mask = self._clip_features(chunk)
            if self._encoder_cache.active:
                states = self._cached_encoder_states(chunk, features, mask)
            else:
                states = self._model.encode_audio_states(features, mask)
            chunks.append(self._model.connect_audio(states, mask))
        return torch.cat(chunks)

    def _cached_encoder_states(
        self, paths: Sequence[Path], features: Tensor, mask: Tensor
    ) -> list[Tensor | None]:
        """The tapped encoder states of `paths` (features and mask in the same order), encoding
        only the clips not cached yet, without gradients."""
        tapped_layers = self.config.connector.tapped_layers
        keys = [clip_key(path) for path in paths]
        found = {key: self._encoder_cache.get(key) for key in keys}
        missing = [row for row, key in enumerate(keys) if found[key] is None]
        if missing:
            rows = torch.tensor(missing, device=features.device)
            with torch.no_grad():
                states = self._model.encode_audio_states(
                    features.index_select(0, rows), mask.index_select(0, rows)
                )
            for index, row in enumerate(missing):
                clip = tuple(states[layer + 1][index].clone() for layer in tapped_layers)
                found[keys[row]] = clip
                self._encoder_cache.put(keys[row], clip)
        tapped = [torch.stack([found[key][k] for key in keys]) for k in range(len(tapped_layers))]
        return tapped_states_only(tapped, tapped_layers, self.config.encoder.n_layers)

    def _clip_features(self, paths: Sequence[Path]) -> tuple[Tensor, Tensor]:
        """Log-mel features and frame masks on the model's device, decoding uncached files."""
        keys = [clip_key(path) for path in paths]
        found: dict[ClipKey, tuple[Tensor, Tensor] | None] = {
            key: self._feature_cache.get(key) for key in keys
        }
        missing = {key: path for key, path in zip(keys, paths, strict=True) if found[key] is None}
        missing_keys = list(missing)
        for begin in range(0, len(missing_keys), AUDIO_CHUNK):
            chunk = missing_keys[begin : begin + AUDIO_CHUNK]
            sample_rate = self.config.encoder.sample_rate
            waveforms = [read_audio(missing[key], sample_rate=sample_rate) for key in chunk]
            with torch.no_grad():
                features, masks = self._model.audio_features(waveforms)
            for key, feature, mask in zip(chunk, features.cpu(), masks.cpu(), strict=True):
                found[key] = (feature, mask)
                self._feature_cache.put(key, (feature, mask))
        features = torch.stack([found[key][0] for key in keys]).to(self.device)
        masks = torch.stack([found[key][1] for key in keys]).to(self.device)
        return features, masks


# --------------------------------------------------------------------------- construction


def build_random_desta_tiny(
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    encoder: Mapping[str, Any] | None = None,
    connector: Mapping[str, Any] | None = None,
    llm: Mapping[str, Any] | None = None,
    **lalm_options: Any,
) -> DestaLALM:
    """desta_tiny with random weights and the tokenizer's special-token ids.

    `encoder`, `connector` and `llm` override fields of the respective config sections (tests
    shrink the model this way); `lalm_options` go to `DestaLALM`.
    """
    ids = special_token_ids(tokenizer)
    base = desta_tiny_config(
        vocab_size=len(tokenizer),
        audio_token_id=ids[AUDIO],
        audio_start_token_id=ids[AUDIO_START],
        audio_end_token_id=ids[AUDIO_END],
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    config = replace(
        base,
        encoder=replace(base.encoder, **(encoder or {})),
        connector=replace(base.connector, **(connector or {})),
        llm={**base.llm, **(llm or {})},
    )
    model = DestaForCausalLM.from_config(config, seed=seed)
    return DestaLALM(model, tokenizer, device=device, **lalm_options)


def load_desta(
    weights_dir: Path | str, *, device: str | torch.device = "cpu", **lalm_options: Any
) -> DestaLALM:
    """A trained DeSTA-architecture model from `weights_dir`.

    The directory holds `tokenizer/` (save_pretrained format), `config.json`
    (`DestaConfig.to_dict`) and safetensors parts written by `DestaForCausalLM.save_checkpoint`
    (e.g. backbone, encoder, connector). Parts must be disjoint and together cover every tensor
    of the model, so that no weight is silently left at its random initialisation.
    """
    weights_dir = Path(weights_dir)
    parts = sorted(weights_dir.glob("*.safetensors")) if weights_dir.is_dir() else []
    absent = [
        what
        for what, present in (
            (f"{TOKENIZER_DIR}/", (weights_dir / TOKENIZER_DIR).is_dir()),
            (CONFIG_FILE, (weights_dir / CONFIG_FILE).is_file()),
            ("*.safetensors", bool(parts)),
        )
        if not present
    ]
    if absent:
        raise FileNotFoundError(
            f"no trained DeSTA model in {weights_dir} (missing {', '.join(absent)}); "
            f"build it with `{BUILD_COMMAND}`"
        )
    config = DestaConfig.from_dict(json.loads((weights_dir / CONFIG_FILE).read_text("utf-8")))
    model = DestaForCausalLM.from_config(config, seed=0)
    check_parts_cover_model(parts, model.state_dict().keys())
    for part in parts:
        load_checkpoint(part, model)
    tokenizer = load_tokenizer(weights_dir / TOKENIZER_DIR)
    return DestaLALM(model, tokenizer, device=device, **lalm_options)


def check_parts_cover_model(parts: Sequence[Path], model_keys: Sequence[str]) -> None:
    """Raise unless the parts' tensor names are disjoint and together equal the model's."""
    owner: dict[str, Path] = {}
    for part in parts:
        with safe_open(str(part), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                if key in owner:
                    raise CheckpointMismatchError(
                        f"{key} is stored in both {owner[key].name} and {part.name}"
                    )
                owner[key] = part
    missing = sorted(set(model_keys) - set(owner))
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" ... ({len(missing)} in all)" if len(missing) > 5 else ""
        )
        raise CheckpointMismatchError(
            f"the parts {[p.name for p in parts]} leave model tensors unset: {shown}"
        )
