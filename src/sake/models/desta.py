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

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from sake.data.audio import read_audio
from sake.data.schema import Probe
from sake.models.audio_lalm import (
    DEFAULT_AUDIO_CACHE_CLIPS,
    AudioLALM,
    ClipKey,
    ScopedCache,
    clip_key,
)
from sake.models.base import Batch, Turn
from sake.models.configuration_desta import DestaConfig, desta_tiny_config
from sake.models.desta_checkpoints import load_checkpoint
from sake.models.modeling_desta import (
    LLM_LAYERS_NAME,
    ROLE_MODULE_NAMES,
    CheckpointMismatchError,
    DestaForCausalLM,
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
    load_tokenizer,
    special_token_ids,
)
from sake.models.transcripts import Transcriber

BUILD_COMMAND = "python train.py experiment=desta_tiny"
TOKENIZER_DIR = "tokenizer"
CONFIG_FILE = "config.json"
DEFAULT_ENCODER_CACHE_CLIPS = 256
AUDIO_CHUNK = 64


class DestaLALM(AudioLALM):
    """`sake.models.base.LALM` for `DestaForCausalLM`: its prompts, audio path and caches.

    `transcriber`, when given, maps a clip's path to its transcript, which is written inside the
    clip's span after the placeholders (DeSTA2.5 feeds Whisper's transcript there).
    `end_of_turn` is the token that closes an assistant message.
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
        self.device = torch.device(device)
        model = model.to(self.device).eval()
        super().__init__(
            model,
            tokenizer,
            ModuleMap(model, ROLE_MODULE_NAMES, LLM_LAYERS_NAME),
            name=name,
            end_of_turn=end_of_turn,
            audio_cache_clips=audio_cache_clips,
        )
        self._transcriber = transcriber
        self._audio_start_text = tokenizer.decode(list(model.config.audio_start_ids))
        self._audio_end_text = tokenizer.decode(list(model.config.audio_end_ids))
        self._placeholder_text = tokenizer.decode([model.config.audio_token_id])
        self._check_audio_span()
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

    @property
    def audio_token_id(self) -> int:
        return int(self.config.audio_token_id)

    # ---------------------------------------------------------------- prompts

    def prompt_text(
        self,
        probe: Probe,
        *,
        system: str | None = None,
        history: Sequence[Turn] | None = None,
    ) -> str:
        """The chat prompt for one probe, ending with the assistant's generation prompt."""
        return self.tokenizer.apply_chat_template(
            self._messages(probe, system, history), tokenize=False, add_generation_prompt=True
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

    def _prefetch_audio(self, clips: Sequence[Path]) -> None:
        """Transcribe (when transcripts are on) and decode a batch's distinct clips at once."""
        if self._transcriber is not None:
            self._transcriber.prefetch(clips)
        self._clip_features(clips)

    @property
    def _input_device(self) -> torch.device:
        return self.device

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

    def _audio_content(self, text: str, clips: Sequence[Path]) -> str:
        """The clips' spans back to back, then a newline and the text (DeSTA2.5's layout)."""
        return "".join(self.audio_span_text(Path(clip)) for clip in clips) + "\n" + text

    # ---------------------------------------------------------------- model calls

    def _decode(self, batch: Batch, max_new_tokens: int) -> tuple[Tensor, Tensor]:
        return self._model.generate_scored(
            batch.input_ids,
            batch.attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=self._stop_ids,
            pad_token_id=self._pad_id,
            audio_embeds=self._batch_audio(batch, grad=False),
        )

    def _logits(
        self, input_ids: Tensor, attention_mask: Tensor, batch: Batch, *, keep: int
    ) -> Tensor:
        """Logits of the last `keep` positions; the full (B, L, V) tensor is never built."""
        audio_embeds = self._batch_audio(batch, grad=torch.is_grad_enabled())
        return self._model.trailing_logits(
            input_ids.to(self.device), attention_mask.to(self.device), audio_embeds, keep
        )

    def _batch_audio(self, batch: Batch, *, grad: bool) -> Tensor | None:
        paths = batch.inputs.get("audio_paths", ())
        return torch.stack(self._clip_embeddings(list(paths), grad=grad)) if paths else None

    # ---------------------------------------------------------------- audio

    def encode_audio(self, paths: Sequence[Path]) -> Tensor:
        """(clips, prompt_size, llm_hidden) connector outputs, cached inside the cache context."""
        return torch.stack(super().encode_audio(paths))

    def cached_encoder_states(self) -> AbstractContextManager[None]:
        """Reuse the encoder's tapped states per clip while the encoder stays unchanged.

        The connector still runs on every use, with gradients when they are enabled, so the
        connector may change (be trained) inside. The cache starts empty and is dropped when
        the outermost context exits; call `clear_caches()` inside it after changing the encoder.
        """
        return self._encoder_cache.scope()

    def clear_caches(self) -> None:
        """Forget cached features, encoder states and connector outputs."""
        super().clear_caches()
        self._encoder_cache.clear()

    def _encode_clips(self, paths: Sequence[Path]) -> Tensor:
        """(clips, prompt_size, llm_hidden) connector outputs, in chunks of clips."""
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
    (`DestaConfig.to_dict`) and safetensors parts written by `desta_checkpoints.save_checkpoint`
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
