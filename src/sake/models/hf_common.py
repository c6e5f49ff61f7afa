"""What the wrappers of transformers' audio-LLM classes (Qwen2-Audio, Audio Flamingo 3) share.

Both models are an audio tower, a projector (the connector) and a decoder-only LLM whose token
embeddings at audio placeholder positions are overwritten with the projector's outputs, one
vector per placeholder. The wrapper drives those parts itself instead of the top-level
`forward`, so that the same code runs on either module layout of transformers:

- before 5.10: `audio_tower`, `multi_modal_projector` and `language_model` (a `*ForCausalLM`
  holding `model.layers` and `lm_head`) sit at the top level;
- 5.10 and later: they sit under `model.`, `language_model` is the bare decoder (`layers`) and
  `lm_head` is at the top level.

`detect_layout` reads which one a model has from its module tree (never from a version
string); `ModuleLayout` names the modules of the SAKE roles.

A `Batch` carries the paths of its clips, never their embeddings (as in `DestaLALM`): features
are cached per file, projector outputs only inside `cached_audio_embeddings()`. Every input goes
to the device of the module that consumes it, so `device_map` placements across GPUs work.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sake.data.audio import read_audio
from sake.data.schema import Probe
from sake.models.base import Batch, Generation, Turn
from sake.models.compat import with_cache
from sake.models.desta import (
    DEFAULT_AUDIO_CACHE_CLIPS,
    IGNORE_INDEX,
    ClipKey,
    LRUCache,
    answer_text,
    clip_key,
    probe_audio,
    tensor_bytes,
)
from sake.models.modeling_desta import position_ids_from_attention_mask
from sake.models.roles import ModuleMap
from sake.models.tokenizer import left_pad, sequence_rows, target_row, tokenizer_identity

PATH_OPTION = "model.path"
HUB_FILE_PATTERNS = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.safetensors")
IGNORED_HUB_FILES = ("original/*", "*.fp32*")
HUB_ETAG_TIMEOUT_S = 10.0
HUB_ANSWER_TIMEOUT_S = 5.0
ACCELERATE_FREE_DEVICE_MAPS = ("cpu", "cuda", "mps")
AUDIO_WINDOW_CHUNK = 16

AUDIO_ENCODER_CHILD = "audio_tower"
CONNECTOR_CHILD = "multi_modal_projector"
LANGUAGE_MODEL_CHILD = "language_model"


# --------------------------------------------------------------------------- finding the files


class ModelUnavailableError(FileNotFoundError):
    """Neither a local directory nor the Hugging Face Hub can provide a model's files."""


def hub_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` asks for cached files only (read now, not at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    """The hub's address (`HF_ENDPOINT`, https://huggingface.co by default)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def endpoint_problem(endpoint: str, timeout_s: float) -> str | None:
    """Why `endpoint` gives no HTTP answer to a HEAD request, or None when it answers at all.

    `timeout_s` bounds each network step; proxies from the environment apply, as they do for
    the hub client.
    """
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, TimeoutError):
            return f"did not answer within {timeout_s:g} s"
        return f"could not be reached ({reason})"
    except TimeoutError:
        return f"did not answer within {timeout_s:g} s"
    except (OSError, ValueError) as error:
        return f"could not be reached ({first_line(error)})"


class HubAccess:
    """Whether a load may ask the Hugging Face Hub or must read its local cache only.

    Decided once, at the first hub id a load resolves: `HF_HUB_OFFLINE=1`, or a hub that
    cannot be reached or does not answer within `timeout_s`, means cache only. The probe
    exists because the hub client waits without a time limit on a network that silently drops
    connections.
    """

    def __init__(self, timeout_s: float = HUB_ANSWER_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ValueError(f"the hub timeout must be positive, got {timeout_s}")
        self.timeout_s = timeout_s

    @cached_property
    def cache_only_reason(self) -> str | None:
        """Why only the local cache may be read; None when the hub answers."""
        if hub_offline():
            return "HF_HUB_OFFLINE is set"
        endpoint = hub_endpoint()
        problem = endpoint_problem(endpoint, self.timeout_s)
        return None if problem is None else f"the hub at {endpoint} {problem}"


def looks_like_local_path(path: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else that names a place is a local path."""
    return path.startswith(("/", ".", "~")) or "\\" in path or path.count("/") > 1


def resolve_model_dir(
    path: str | Path,
    *,
    what: str,
    option: str = PATH_OPTION,
    allow_patterns: Sequence[str] = HUB_FILE_PATTERNS,
    ignore_patterns: Sequence[str] = IGNORED_HUB_FILES,
    revision: str | None = None,
    hub: HubAccess | None = None,
    expected_file: str | None = None,
) -> Path:
    """A local directory with the model's files: `path` itself, or its hub snapshot.

    Fails at once, naming `option`, when `path` is empty, a missing local path, a local
    directory without `expected_file`, or a hub id the hub can neither serve nor has cached
    (when `hub` says cache only, only the cache is consulted).
    """
    text = str(path).strip()
    if not text:
        raise ModelUnavailableError(
            f"cannot load {what}: {option} is empty; set {option}=<hub id or local directory>"
        )
    local = Path(text).expanduser()
    if local.is_dir():
        if expected_file is not None and not (local / expected_file).is_file():
            raise ModelUnavailableError(
                f"cannot load {what}: the directory {local} holds no {expected_file}; "
                f"point {option}=<directory with the model files> at a downloaded copy"
            )
        return local
    if looks_like_local_path(text) or local.exists():
        raise ModelUnavailableError(
            f"cannot load {what}: the local path {text} is not a directory; "
            f"point {option}=<directory with the model files> at a downloaded copy"
        )
    from huggingface_hub import snapshot_download

    cache_only = (hub or HubAccess()).cache_only_reason
    try:
        snapshot = snapshot_download(
            repo_id=text,
            revision=revision,
            allow_patterns=list(allow_patterns),
            ignore_patterns=list(ignore_patterns),
            local_files_only=cache_only is not None,
            etag_timeout=HUB_ETAG_TIMEOUT_S,
        )
    except (OSError, ValueError) as error:
        reason = f"{cache_only} and it is not in the hub cache" if cache_only else first_line(error)
        raise ModelUnavailableError(
            f"cannot load {what}: {text!r} is not a local directory and the Hugging Face Hub "
            f"cannot provide it ({reason}). "
            f"Download it where the hub is reachable and set {option}=<local directory>"
        ) from error
    return Path(snapshot)


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """`bfloat16`, `float16`, `float32` (or a dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unknown floating-point dtype {name!r}; use bfloat16, float16 or float32")
    return dtype


def pretrained_placement(device_map: str | Mapping[str, Any] | None) -> tuple[dict, str | None]:
    """`from_pretrained` keyword arguments for a device map, and a device to move to afterwards.

    A single device (`cpu`, `cuda`, `cuda:1`) needs no `accelerate`: the model loads on the CPU
    and is moved. Maps that split the model (`auto`, `balanced`, a dict) need `accelerate`.
    """
    if device_map is None:
        return {}, None
    if isinstance(device_map, str) and device_map.split(":")[0] in ACCELERATE_FREE_DEVICE_MAPS:
        return {}, device_map
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ImportError(
            f"device_map={device_map!r} needs the accelerate package (pip install accelerate); "
            "without it set model.load.device_map to one device such as cuda or cpu"
        ) from None
    return {"device_map": dict(device_map) if isinstance(device_map, Mapping) else device_map}, None


def module_device(module: nn.Module) -> torch.device:
    """The device a module computes on: its dispatch hook's, else its first tensor's."""
    hook = getattr(module, "_hf_hook", None)
    execution_device = getattr(hook, "execution_device", None)
    if execution_device is not None:
        return torch.device(execution_device)
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (float32 when it has none)."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


# --------------------------------------------------------------------------- module layout


@dataclass(frozen=True)
class ModuleLayout:
    """Qualified names of the parts of an audio-LLM, whichever layout transformers gave it.

    `decoder` is the bare transformer (`embed_tokens`, `layers`, `norm`) of the language model.
    """

    audio_encoder: str
    connector: str
    language_model: str
    decoder: str
    lm_head: str

    @property
    def nested(self) -> bool:
        """True for the 5.10+ layout (parts under `model.`), False for the flat one."""
        return "." in self.audio_encoder

    @property
    def layers(self) -> str:
        return f"{self.decoder}.layers"

    def role_names(self) -> dict[str, str]:
        return {
            "audio_encoder": self.audio_encoder,
            "connector": self.connector,
            "llm.embed": f"{self.decoder}.embed_tokens",
            "llm.norm": f"{self.decoder}.norm",
            "lm_head": self.lm_head,
        }

    def module_map(self, model: nn.Module) -> ModuleMap:
        return ModuleMap(model, self.role_names(), self.layers)


def _children(module: nn.Module) -> dict[str, nn.Module]:
    return dict(module.named_children())


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def detect_layout(model: nn.Module) -> ModuleLayout:
    """Find the parts from the module tree.

    The container is the one module with `audio_tower`, `multi_modal_projector` and
    `language_model` children (the root before 5.10, `model` after). The decoder is
    `language_model` when it holds `layers` and `embed_tokens` itself, else its `model` child;
    the head is the root's `lm_head`, else the language model's.
    """
    wanted = {AUDIO_ENCODER_CHILD, CONNECTOR_CHILD, LANGUAGE_MODEL_CHILD}
    containers = [
        name for name, module in model.named_modules() if wanted <= set(_children(module))
    ]
    if len(containers) != 1:
        raise ValueError(
            f"expected exactly one module with children {sorted(wanted)}, found "
            f"{containers or 'none'}; this is not a transformers audio-LLM layout the wrapper knows"
        )
    container = containers[0]
    language_model = _joined(container, LANGUAGE_MODEL_CHILD)
    return ModuleLayout(
        audio_encoder=_joined(container, AUDIO_ENCODER_CHILD),
        connector=_joined(container, CONNECTOR_CHILD),
        language_model=language_model,
        decoder=_decoder_name(model, language_model),
        lm_head=_lm_head_name(model, language_model),
    )


def _is_decoder(module: nn.Module) -> bool:
    return {"layers", "embed_tokens"} <= set(_children(module))


def _decoder_name(model: nn.Module, language_model: str) -> str:
    module = model.get_submodule(language_model)
    if _is_decoder(module):
        return language_model
    inner = _children(module).get("model")
    if inner is not None and _is_decoder(inner):
        return f"{language_model}.model"
    raise ValueError(
        f"{language_model} holds neither `layers` + `embed_tokens` nor a `model` child that does"
    )


def _lm_head_name(model: nn.Module, language_model: str) -> str:
    if "lm_head" in _children(model):
        return "lm_head"
    if "lm_head" in _children(model.get_submodule(language_model)):
        return f"{language_model}.lm_head"
    raise ValueError(f"found no lm_head at the top level or in {language_model}")


# --------------------------------------------------------------------------- text


def expand_placeholders(text: str, placeholder: str, counts: Sequence[int]) -> str:
    """Repeat the i-th `placeholder` of `text` `counts[i]` times; the counts must match."""
    parts = text.split(placeholder)
    found = len(parts) - 1
    if found != len(counts):
        hint = "; this model's template takes at most one clip per user turn" if found else ""
        raise ValueError(
            f"the chat template wrote {found} audio placeholders {placeholder!r} for "
            f"{len(counts)} clips{hint if found < len(counts) else ''}"
        )
    pieces = [parts[0]]
    for count, part in zip(counts, parts[1:], strict=True):
        pieces.extend([placeholder * count, part])
    return "".join(pieces)


def frames_to_audio_tokens(frames: Tensor) -> Tensor:
    """Audio-tower outputs of a window with `frames` real mel frames (stride-2 conv, pool of 2).

    Both Qwen2-Audio and Audio Flamingo 3 keep this many projector outputs per window.
    """
    after_conv = (frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


# --------------------------------------------------------------------------- generation


def greedy_decode(
    decoder: nn.Module,
    embed: nn.Module,
    lm_head: nn.Module,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
) -> tuple[Tensor, Tensor]:
    """Greedy continuation of a left-padded batch with a KV cache: (batch, new tokens), and
    the (batch, vocab) logits of the first step.

    Rows that emitted a stop token continue with `pad_id`; the loop ends when every row has
    stopped or after `max_new_tokens` tokens.
    """
    mask = attention_mask.to(inputs_embeds.device)
    output = decoder(
        inputs_embeds=inputs_embeds,
        attention_mask=mask,
        position_ids=position_ids_from_attention_mask(mask),
        use_cache=True,
    )
    stops = torch.tensor(list(stop_ids), device=inputs_embeds.device)
    finished = torch.zeros(len(mask), dtype=torch.bool, device=inputs_embeds.device)
    first_logits = logits = _last_position_logits(output, lm_head, inputs_embeds.device)
    tokens: list[Tensor] = []
    for step in range(max_new_tokens):
        chosen = logits.argmax(dim=-1).masked_fill(finished, pad_id)
        tokens.append(chosen)
        finished |= torch.isin(chosen, stops)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        next_embeds = embed(chosen[:, None].to(module_device(embed))).to(inputs_embeds.device)
        output = decoder(
            inputs_embeds=next_embeds,
            attention_mask=mask,
            position_ids=mask.sum(dim=1, keepdim=True) - 1,
            **with_cache(decoder, output.past_key_values),
            use_cache=True,
        )
        logits = _last_position_logits(output, lm_head, inputs_embeds.device)
    return torch.stack(tokens, dim=1), first_logits


def _last_position_logits(output: Any, lm_head: nn.Module, device: torch.device) -> Tensor:
    hidden = output.last_hidden_state[:, -1:]
    return lm_head(hidden.to(module_device(lm_head)))[:, -1].to(device)


# --------------------------------------------------------------------------- the wrapper


@dataclass(frozen=True)
class ClipFeatures:
    """Log-mel windows of one clip: (windows, mels, frames) and real frames per window."""

    features: Tensor
    frames: Tensor

    @property
    def n_tokens(self) -> int:
        return int(frames_to_audio_tokens(self.frames).sum())


class HFAudioLALM:
    """`sake.models.base.LALM` over a transformers audio-LLM: prompts, audio, padding, caches.

    Subclasses say how a waveform becomes windows (`clip_windows`) and how the audio tower reads
    them (`encode_windows`). Prompts come from the processor's chat template, with each clip's
    single placeholder expanded to one placeholder per projector output, as the processor does.
    Generation stops at `end_of_turn` or any EOS of the tokenizer and generation config.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        name: str,
        end_of_turn: str = "<|im_end|>",
        device: str | torch.device | None = None,
        audio_cache_clips: int = DEFAULT_AUDIO_CACHE_CLIPS,
        audio_after_text: bool = False,
    ) -> None:
        self.name = name
        self.audio_after_text = audio_after_text
        self._model = (model if device is None else model.to(device)).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.feature_extractor = processor.feature_extractor
        self.chat_template = self._required_chat_template(processor)
        self.audio_token = str(processor.audio_token)
        self.audio_token_id = self._single_token_id(self.audio_token, "audio placeholder")
        self.layout = detect_layout(self._model)
        self.modules = self.layout.module_map(self._model)
        self._end_of_turn = end_of_turn
        self._end_ids = [self._single_token_id(end_of_turn, "end-of-turn")]
        self._stop_ids = self._stop_token_ids()
        pad = self.tokenizer.pad_token_id
        self._pad_id = self._stop_ids[-1] if pad is None else int(pad)
        self._special_texts = tuple(
            dict.fromkeys([*self.tokenizer.all_special_tokens, self.audio_token])
        )
        self._feature_cache: LRUCache[ClipKey, ClipFeatures] = LRUCache(audio_cache_clips)
        self._embedding_cache: LRUCache[ClipKey, Tensor] = LRUCache(audio_cache_clips)
        self._embedding_cache_depth = 0

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def sample_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Tokens that end an answer: the end of turn, then every EOS the model declares."""
        return tuple(self._stop_ids)

    @property
    def audio_window_seconds(self) -> float:
        """Seconds of a clip the model hears; the rest is cut (one window by default)."""
        return self.window_samples / self.sample_rate

    @property
    def window_samples(self) -> int:
        """Samples per audio window (the feature extractor's chunk, 30 s for both models)."""
        return int(self.feature_extractor.n_samples)

    # ---------------------------------------------------------------- model-specific audio

    def clip_windows(self, waveform: np.ndarray) -> list[np.ndarray]:
        """The windows one clip is cut into before feature extraction."""
        raise NotImplementedError

    def encode_windows(self, features: Tensor, frames: Tensor) -> Tensor:
        """(windows, mels, frames) features -> (windows, positions, llm_hidden) projections."""
        raise NotImplementedError

    # ---------------------------------------------------------------- prompts

    def chat_text(
        self,
        probe: Probe,
        *,
        system: str | None = None,
        history: Sequence[Turn] | None = None,
    ) -> str:
        """The chat template's rendering, one audio placeholder per clip (the processor's input)."""
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": self._checked_text(system, "system")})
        for turn in history or ():
            messages.append(self._message(turn.role, turn.text, turn.audio))
        messages.append(self._message("user", probe.question, probe_audio(probe)))
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=True,
        )

    def prompt_text(
        self,
        probe: Probe,
        *,
        system: str | None = None,
        history: Sequence[Turn] | None = None,
    ) -> str:
        """The model's prompt: `chat_text` with every clip's placeholder expanded to its length."""
        clips = self._prompt_clips(probe, history or ())
        counts = [self.clip_features(clip).n_tokens for clip in clips]
        text = self.chat_text(probe, system=system, history=history)
        return expand_placeholders(text, self.audio_token, counts)

    def audio_token_count(self, clip: Path) -> int:
        """Placeholders (projector outputs) that stand for one clip."""
        return self.clip_features(Path(clip)).n_tokens

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
        prompts = [self.prompt_text(probe, system=system, history=history) for probe in probes]
        clips = tuple(clip for probe in probes for clip in self._prompt_clips(probe, history))
        input_ids, attention_mask = left_pad([self._token_ids(p) for p in prompts], self._pad_id)
        device = module_device(self._embed)
        return Batch(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
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
            inputs_embeds = self._inputs_embeds(batch.input_ids, batch, grad=False)
            new_tokens, first_logits = greedy_decode(
                self._decoder,
                self._embed,
                self._lm_head,
                inputs_embeds,
                batch.attention_mask,
                max_new_tokens=max_new_tokens,
                stop_ids=self._stop_ids,
                pad_id=self._pad_id,
            )
        texts = [answer_text(self.tokenizer, row, self._stop_ids) for row in new_tokens.tolist()]
        return Generation(texts, first_logits.float().cpu())

    def next_token_logits(self, batch: Batch) -> Tensor:
        """(batch, vocab) float32 logits of the answer's first token."""
        with torch.no_grad():
            logits = self._logits(batch.input_ids, batch.attention_mask, batch, keep=1)
        return logits[:, -1].float()

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
        """Per row, float32 logits predicting each target token, (T_i, vocab); differentiable."""
        logits, labels = self._teacher_forced(batch, targets, include_end)
        return [
            row[scored != IGNORE_INDEX].float() for row, scored in zip(logits, labels, strict=True)
        ]

    def sequence_logits(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> list[Tensor]:
        """Per row, float32 logits at every position of prompt + target (+ end-of-turn with
        `include_end`), (L_i, vocab), padding left out; differentiable (see DestaLALM's)."""
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

    # ---------------------------------------------------------------- audio

    def clip_features(self, path: Path) -> ClipFeatures:
        """Log-mel windows of a clip (cached on the CPU), decoding it at the extractor's rate."""
        key = clip_key(path)
        cached = self._feature_cache.get(key)
        if cached is not None:
            return cached
        waveform = read_audio(path, sample_rate=self.sample_rate)
        if waveform.size == 0:
            raise ValueError(f"audio file {path} holds no samples")
        extracted = self.feature_extractor(
            self.clip_windows(waveform),
            sampling_rate=self.sample_rate,
            padding="max_length",
            return_attention_mask=True,
            return_tensors="pt",
        )
        features = ClipFeatures(
            features=extracted["input_features"].float(),
            frames=extracted["attention_mask"].sum(dim=-1).long(),
        )
        self._feature_cache.put(key, features)
        return features

    def encode_audio(self, paths: Sequence[Path]) -> list[Tensor]:
        """Projector outputs per clip, (tokens_i, llm_hidden) each; cached inside the context."""
        if not paths:
            raise ValueError("encode_audio needs at least one clip")
        with torch.no_grad():
            return self._clip_embeddings([Path(p) for p in paths], grad=False)

    @contextmanager
    def cached_audio_embeddings(self) -> Iterator[None]:
        """Reuse projector outputs per clip while the audio tower and projector stay unchanged.

        The cache starts empty and is dropped when the outermost context exits; call
        `clear_caches()` inside it after any change to the audio tower or projector.
        """
        if self._embedding_cache_depth == 0:
            self._embedding_cache.clear()
        self._embedding_cache_depth += 1
        try:
            yield
        finally:
            self._embedding_cache_depth -= 1
            if self._embedding_cache_depth == 0:
                self._embedding_cache.clear()

    def clear_caches(self) -> None:
        """Forget cached features and projector outputs."""
        self._feature_cache.clear()
        self._embedding_cache.clear()

    # ---------------------------------------------------------------- identity

    def fingerprint(self) -> str:
        """Short sha256 of every weight and buffer (in name order), the tokenizer and template.

        It reads every tensor once (tens of seconds for 7B models): compute it once per run.
        """
        digest = hashlib.sha256()
        for name, tensor in sorted(self._model.state_dict().items()):
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor_bytes(tensor))
        digest.update(tokenizer_identity(self.tokenizer).encode())
        digest.update(self.chat_template.encode())
        return digest.hexdigest()[:16]

    # ---------------------------------------------------------------- internals: modules

    @property
    def _decoder(self) -> nn.Module:
        return self._model.get_submodule(self.layout.decoder)

    @property
    def _embed(self) -> nn.Module:
        return self.modules.resolve("llm.embed").module

    @property
    def _lm_head(self) -> nn.Module:
        return self.modules.resolve("lm_head").module

    @property
    def _audio_tower(self) -> nn.Module:
        return self.modules.resolve("audio_encoder").module

    @property
    def _projector(self) -> nn.Module:
        return self.modules.resolve("connector").module

    # ---------------------------------------------------------------- internals: text

    @staticmethod
    def _required_chat_template(processor: Any) -> str:
        template = getattr(processor, "chat_template", None)
        if not template:
            raise ValueError(f"{type(processor).__name__} carries no chat template")
        return template

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

    def _message(self, role: str, text: str, clips: Sequence[Path]) -> dict[str, Any]:
        text = self._checked_text(text, f"{role} text")
        if not clips:
            return {"role": role, "content": text}
        if role != "user":
            raise ValueError(f"only user turns may carry audio, got a {role} turn with {clips}")
        audio = [{"type": "audio", "audio": str(clip)} for clip in clips]
        words = [{"type": "text", "text": text}]
        content = [*words, *audio] if self.audio_after_text else [*audio, *words]
        return {"role": role, "content": content}

    @staticmethod
    def _prompt_clips(probe: Probe, history: Sequence[Turn]) -> tuple[Path, ...]:
        own = probe_audio(probe)
        return tuple(Path(clip) for turn in history for clip in turn.audio) + own

    def _target_rows(
        self, batch: Batch, targets: Sequence[str]
    ) -> list[tuple[list[int], int, int]]:
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

    # ---------------------------------------------------------------- internals: model calls

    def _logits(
        self, input_ids: Tensor, attention_mask: Tensor, batch: Batch, *, keep: int
    ) -> Tensor:
        """Logits of the last `keep` positions; the full (B, L, V) tensor is never built."""
        inputs_embeds = self._inputs_embeds(input_ids, batch, grad=torch.is_grad_enabled())
        mask = attention_mask.to(inputs_embeds.device)
        hidden = self._decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids_from_attention_mask(mask),
            use_cache=False,
        )[0]
        head = self._lm_head
        return head(hidden[:, -keep:].to(module_device(head)))

    def _inputs_embeds(self, input_ids: Tensor, batch: Batch, *, grad: bool) -> Tensor:
        """Token embeddings with the clips' projector outputs over their placeholders.

        Clips fill the placeholders in reading order (row by row), as `prepare` listed them.
        """
        embed = self._embed
        ids = input_ids.to(module_device(embed))
        embeds = embed(ids)
        placeholders = ids == self.audio_token_id
        paths = batch.inputs.get("audio_paths", ())
        clips = self._clip_embeddings([Path(p) for p in paths], grad=grad) if paths else []
        n_audio = sum(int(clip.shape[0]) for clip in clips)
        if int(placeholders.sum()) != n_audio:
            raise ValueError(
                f"found {int(placeholders.sum())} audio placeholders but {len(clips)} clips "
                f"give {n_audio} audio embeddings; the batch does not belong to these inputs"
            )
        if not clips:
            return embeds
        audio = torch.cat(clips).to(embeds.device, embeds.dtype)
        return embeds.masked_scatter(placeholders.unsqueeze(-1), audio)

    def _clip_embeddings(self, paths: Sequence[Path], *, grad: bool) -> list[Tensor]:
        """Projector outputs in the order of `paths`; each distinct clip is encoded once."""
        keys = [clip_key(path) for path in paths]
        unique = dict(zip(keys, paths, strict=True))
        if self._embedding_cache_depth > 0:
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
        return found

    def _encode_clips(self, paths: Sequence[Path]) -> list[Tensor]:
        """Encode every window of the clips in chunks, then join each clip's real outputs."""
        clips = [self.clip_features(path) for path in paths]
        features = torch.cat([clip.features for clip in clips])
        frames = torch.cat([clip.frames for clip in clips])
        outputs = []
        for begin in range(0, len(frames), AUDIO_WINDOW_CHUNK):
            chunk = slice(begin, begin + AUDIO_WINDOW_CHUNK)
            outputs.extend(self.encode_windows(features[chunk], frames[chunk]).unbind(0))
        kept = [
            window[:count]
            for window, count in zip(outputs, frames_to_audio_tokens(frames).tolist(), strict=True)
        ]
        windows = iter(kept)
        return [torch.cat([next(windows) for _ in clip.frames]) for clip in clips]

    def _audio_inputs(self, features: Tensor) -> Tensor:
        """Features on the audio tower's device, in its dtype."""
        tower = self._audio_tower
        return features.to(module_device(tower), module_dtype(tower))
