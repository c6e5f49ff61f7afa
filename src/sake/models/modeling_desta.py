"""DeSTA-architecture audio-language model: Whisper encoder -> Q-Former connector -> Llama.

The module and parameter names follow the released DeSTA2.5-Audio code
(`desta/models/modeling_desta25.py` in github.com/kehanlu/DeSTA2.5-Audio), so that its checkpoint
(which stores only the connector) loads by name:

- `perception.whisper` holds the Whisper encoder under `model.encoder`, the layout of
  `WhisperForConditionalGeneration`, so `openai/whisper-*` weights load with the prefix
  `perception.whisper.` (the release loads them the same way).
- `perception.connector` is the Q-Former connector:
  `layer_prompts.{i}` (1, prompt_size, d_encoder) learned queries for the i-th tapped layer,
  `layer_weights` (prompt_size, n_tapped) softmax logits over tapped layers for every query,
  `qformer` a transformers `BertEncoder` (is_decoder, add_cross_attention, eager attention, so
  the queries self-attend bidirectionally and cross-attend to one encoder layer) shared by all
  tapped layers and running at the encoder width, and `proj` = Sequential(LayerNorm, Linear)
  into the LLM width.
- `llm_model` is the decoder-only backbone (`LlamaForCausalLM`).

Tapped layer `i` is the output of encoder layer `i` (0-based) before Whisper's final LayerNorm,
as in the release (large-v3 is tapped at 7, 15, 23, 31).

Audio enters the token sequence as in the release: every clip becomes a span
`audio_start_ids + [audio_token_id] * prompt_size + transcript_ids + audio_end_ids`
(the release writes "<start_audio>", 64 x "<|reserved_special_token_87|>", the transcript text,
"<end_audio>"); the connector outputs overwrite the placeholder embeddings clip by clip in reading
order, and the transcript keeps its own token embeddings.

Rows of a left-padded batch that begin with the same long prefix (at least `MIN_SHARED_PREFIX`
tokens before any audio placeholder, e.g. an in-context editor's system prompt) have the
prefix's keys and values computed once, for one row, by `generate` and, without gradients, by
`trailing_logits`: each row [pad, prefix, rest] is laid out as [prefix, pad, rest], which keeps
every real token's position, so only float rounding differs from the plain computation.
The shortcut calls every decoder module twice (the prefix, then the rest), so it is not taken
while a forward hook watches any of them: methods that record or route a module's calls (MEMIT,
UnKE, WISE) see one call over the whole batch, as the plain computation makes it.

Two documented departures, both off for the full-size configuration: the tiny model may mask
padded audio frames (`mask_padded_frames`), and clips may be shorter than Whisper's 30 s
(`max_seconds`; the positional table is sized to match).

The configuration is `sake.models.configuration_desta`; checkpoint files are
`sake.models.desta_checkpoints`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    DynamicCache,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.bert.modeling_bert import BertEncoder
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from sake.models.compat import with_cache
from sake.models.configuration_desta import (
    DestaAudioEncoderConfig,
    DestaConfig,
    DestaConnectorConfig,
)
from sake.models.mel import LogMelSpectrogram, stack_waveforms

CONNECTOR_PREFIX = "perception.connector"
AUDIO_ENCODER_PREFIX = "perception.whisper"
LLM_PREFIX = "llm_model"
_FIXED_PARAMETER_SUFFIXES = ("embed_positions.weight",)
MIN_SHARED_PREFIX = 32

ROLE_MODULE_NAMES = {
    "audio_encoder": AUDIO_ENCODER_PREFIX,
    "connector": CONNECTOR_PREFIX,
    "llm.embed": f"{LLM_PREFIX}.model.embed_tokens",
    "llm.norm": f"{LLM_PREFIX}.model.norm",
    "lm_head": f"{LLM_PREFIX}.lm_head",
}
LLM_LAYERS_NAME = f"{LLM_PREFIX}.model.layers"


# --------------------------------------------------------------------------- modules


class WhisperAudioEncoder(nn.Module):
    """Whisper encoder that returns every layer's output so the connector can tap them."""

    def __init__(self, config: DestaAudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict({"encoder": WhisperEncoder(config.whisper_config())})

    @property
    def encoder(self) -> WhisperEncoder:
        return self.model["encoder"]

    def frame_mask(self, feature_mask: Tensor | None) -> Tensor | None:
        """Mask of real encoder frames, or None when padded frames are not masked.

        Encoder frame j is real when mel frame 2j is (the stride-2 convolution's centre).
        """
        if feature_mask is None or not self.config.mask_padded_frames:
            return None
        return feature_mask[:, ::2]

    def forward(
        self, input_features: Tensor, feature_mask: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """(clips, n_mels, n_mel_frames) -> n_layers + 1 tensors (clips, max_frames, d_model).

        Entry 0 is the convolutional front end plus positions, entry i + 1 the output of layer i.
        """
        self._check_input(input_features)
        encoder = self.encoder
        hidden = nn.functional.gelu(encoder.conv1(input_features))
        hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=self.training)
        frame_mask = self.frame_mask(feature_mask)
        attention_bias = None if frame_mask is None else additive_key_mask(frame_mask, hidden.dtype)
        states = [hidden]
        for layer in encoder.layers:
            hidden = layer(hidden, attention_bias)
            states.append(hidden)
        return tuple(states)

    def _check_input(self, input_features: Tensor) -> None:
        expected = (self.config.n_mels, self.config.n_mel_frames)
        if input_features.dim() != 3 or tuple(input_features.shape[1:]) != expected:
            raise ValueError(
                f"the encoder expects (clips, {expected[0]}, {expected[1]}) log-mel features "
                f"(clips padded to {self.config.max_seconds} s), got {tuple(input_features.shape)}"
            )


class QFormerConnector(nn.Module):
    """Learned queries per tapped layer, a shared cross-attending BERT, softmax layer mixing."""

    def __init__(self, config: DestaConnectorConfig, encoder_width: int, llm_width: int) -> None:
        super().__init__()
        self.config = config
        n_tapped, n_queries = len(config.tapped_layers), config.queries_per_layer
        self.layer_prompts = nn.ParameterList(
            [nn.Parameter(torch.randn(1, n_queries, encoder_width)) for _ in range(n_tapped)]
        )
        self.layer_weights = nn.Parameter(torch.zeros(n_queries, n_tapped))
        self.qformer = BertEncoder(config.qformer_config(encoder_width))
        self.proj = nn.Sequential(nn.LayerNorm(encoder_width), nn.Linear(encoder_width, llm_width))

    def layer_mixture(self) -> Tensor:
        """(queries, n_tapped) weights of each tapped layer for every query; rows sum to 1."""
        return torch.softmax(self.layer_weights, dim=-1)

    def forward(
        self, hidden_states: Sequence[Tensor | None], frame_mask: Tensor | None = None
    ) -> Tensor:
        """Encoder states (as returned by the encoder) -> (clips, queries, llm_width).

        Only the tapped layers' states are read; the others may be None.
        """
        n_tapped = len(self.config.tapped_layers)
        tapped = torch.stack([hidden_states[i + 1] for i in self.config.tapped_layers])
        tapped = tapped.to(self.layer_weights.dtype)
        n_clips, n_frames, width = tapped.shape[1:]
        queries = torch.cat(list(self.layer_prompts)).unsqueeze(1)
        queries = queries.expand(-1, n_clips, -1, -1).reshape(n_tapped * n_clips, -1, width)
        cross_bias = None
        if frame_mask is not None:
            cross_bias = additive_key_mask(frame_mask, tapped.dtype).repeat(n_tapped, 1, 1, 1)
        read = self.qformer(
            hidden_states=queries,
            encoder_hidden_states=tapped.reshape(n_tapped * n_clips, n_frames, width),
            encoder_attention_mask=cross_bias,
        ).last_hidden_state
        per_layer = read.view(n_tapped, n_clips, -1, width).permute(1, 2, 0, 3)
        mixed = (per_layer * self.layer_mixture().unsqueeze(-1)).sum(dim=2)
        return self.proj(mixed)


class DestaPerception(nn.Module):
    """Audio side of the model: `whisper` encoder and `connector`."""

    def __init__(self, config: DestaConfig, llm_width: int) -> None:
        super().__init__()
        self.whisper = WhisperAudioEncoder(config.encoder)
        self.connector = QFormerConnector(config.connector, config.encoder.d_model, llm_width)

    def forward(self, input_features: Tensor, feature_mask: Tensor | None = None) -> Tensor:
        """(clips, n_mels, frames) log-mel features -> (clips, prompt_size, llm_width)."""
        hidden_states = self.whisper(input_features, feature_mask)
        return self.connect(hidden_states, self.whisper.frame_mask(feature_mask))

    def connect(
        self, hidden_states: Sequence[Tensor | None], frame_mask: Tensor | None = None
    ) -> Tensor:
        """Encoder states -> connector outputs; with `normed_final_layer` the last layer is read
        through the encoder's final LayerNorm, as the encoder's pretraining heads read it (the
        release reads every tapped layer raw)."""
        last = len(hidden_states) - 1
        if self.connector.config.normed_final_layer and hidden_states[last] is not None:
            final = self.whisper.encoder.layer_norm(hidden_states[last])
            hidden_states = [*hidden_states[:last], final]
        return self.connector(hidden_states, frame_mask)


class DestaForCausalLM(nn.Module):
    """Whisper encoder -> Q-Former connector -> Llama, with audio written over placeholders."""

    def __init__(self, config: DestaConfig) -> None:
        super().__init__()
        self.config = config
        llm_config = config.llm_config()
        self.llm_model = LlamaForCausalLM(llm_config)
        self.perception = DestaPerception(config, llm_config.hidden_size)
        self.mel_front_end = LogMelSpectrogram(config.encoder.mel_config())

    @classmethod
    def from_config(cls, config: DestaConfig, *, seed: int) -> DestaForCausalLM:
        """Build with a reproducible initialisation that leaves torch's global RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config)

    @property
    def device(self) -> torch.device:
        return self.llm_model.device

    # ---------------------------------------------------------------- audio

    def audio_features(
        self, waveforms: Sequence[Any], lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mono 16 kHz clips (a (clips, samples) tensor or a list) -> log-mel features and mask."""
        if isinstance(waveforms, Tensor):
            batch = waveforms
        else:
            batch, lengths = stack_waveforms(waveforms, self.config.encoder.mel_config().n_samples)
        return self.mel_front_end(batch.to(self.device), lengths)

    def embed_audio(self, input_features: Tensor, feature_mask: Tensor | None = None) -> Tensor:
        """(clips, n_mels, frames) -> (clips, prompt_size, llm_hidden) in the LLM's dtype."""
        return self.connect_audio(
            self.encode_audio_states(input_features, feature_mask), feature_mask
        )

    def encode_audio_states(
        self, input_features: Tensor, feature_mask: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """The encoder's states (`WhisperAudioEncoder.forward`) of log-mel features.

        They depend on the encoder alone, so a caller may keep them while only the connector
        or the LLM changes and hand them to `connect_audio` again.
        """
        features = input_features.to(self.perception.whisper.encoder.conv1.weight.dtype)
        return self.perception.whisper(features, feature_mask)

    def connect_audio(
        self, hidden_states: Sequence[Tensor | None], feature_mask: Tensor | None = None
    ) -> Tensor:
        """Encoder states -> (clips, prompt_size, llm_hidden) connector outputs in the LLM's dtype.

        Only the tapped layers are read; the others may be None (see `tapped_states_only`).
        """
        frame_mask = self.perception.whisper.frame_mask(feature_mask)
        embeds = self.perception.connect(hidden_states, frame_mask)
        return embeds.to(self.llm_model.get_input_embeddings().weight.dtype)

    # ---------------------------------------------------------------- text + audio

    def placeholder_mask(self, input_ids: Tensor) -> Tensor:
        """True where the audio placeholder token sits."""
        return input_ids == self.config.audio_token_id

    def build_inputs_embeds(self, input_ids: Tensor, audio_embeds: Tensor | None) -> Tensor:
        """Token embeddings with clip k's audio embeddings over the k-th placeholder run.

        Clips are taken in reading order: all clips of row 0 left to right, then row 1, and so on;
        padding side does not matter.
        """
        mask = self.placeholder_mask(input_ids)
        n_clips = 0 if audio_embeds is None else audio_embeds.shape[0]
        self._check_placeholders(mask, audio_embeds)
        embeds = self.llm_model.get_input_embeddings()(input_ids)
        if n_clips == 0:
            return embeds
        source = audio_embeds.to(embeds.dtype).reshape(-1, embeds.shape[-1])
        return embeds.masked_scatter(mask.unsqueeze(-1), source)

    def _check_placeholders(self, mask: Tensor, audio_embeds: Tensor | None) -> None:
        prompt_size = self.config.prompt_size
        n_clips = 0 if audio_embeds is None else audio_embeds.shape[0]
        if audio_embeds is not None and audio_embeds.shape[1] != prompt_size:
            raise ValueError(
                f"audio embeddings carry {audio_embeds.shape[1]} vectors per clip, "
                f"the config's prompt_size is {prompt_size}"
            )
        n_placeholders = int(mask.sum())
        if n_placeholders != n_clips * prompt_size:
            raise ValueError(
                f"found {n_placeholders} audio placeholder tokens (id {self.config.audio_token_id})"
                f" but {n_clips} clips x prompt_size {prompt_size} = {n_clips * prompt_size}"
            )
        bad_runs = [n for n in placeholder_run_lengths(mask) if n % prompt_size]
        if bad_runs:
            raise ValueError(
                f"placeholder runs of length {bad_runs} are not multiples of prompt_size "
                f"{prompt_size}; a clip's span was cut or altered"
            )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        input_features: Tensor | None = None,
        feature_mask: Tensor | None = None,
        audio_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> CausalLMOutputWithPast:
        """Logits, plus the shifted LM loss when `labels` is given, for a left/right-padded batch.

        Pass either log-mel `input_features` or precomputed `audio_embeds` (e.g. cached).
        """
        audio_embeds = self._resolve_audio(input_features, feature_mask, audio_embeds)
        return self.llm_model(
            inputs_embeds=self.build_inputs_embeds(input_ids, audio_embeds),
            attention_mask=attention_mask,
            position_ids=position_ids_from_attention_mask(attention_mask),
            labels=labels,
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        *,
        max_new_tokens: int,
        eos_token_id: int | Sequence[int],
        pad_token_id: int,
        input_features: Tensor | None = None,
        feature_mask: Tensor | None = None,
        audio_embeds: Tensor | None = None,
    ) -> Tensor:
        """Greedy continuation of a left-padded batch: (batch, new tokens), pads after EOS."""
        return self.generate_scored(
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            input_features=input_features,
            feature_mask=feature_mask,
            audio_embeds=audio_embeds,
        )[0]

    @torch.no_grad()
    def generate_scored(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        *,
        max_new_tokens: int,
        eos_token_id: int | Sequence[int],
        pad_token_id: int,
        input_features: Tensor | None = None,
        feature_mask: Tensor | None = None,
        audio_embeds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`generate`'s new tokens and the (batch, vocab) logits that chose the first of them.

        The first step's logits are the next-token distribution at the answer position, which
        evaluation would otherwise compute again in a separate forward pass.
        """
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate needs left padding: a row ends with a padded position")
        audio_embeds = self._resolve_audio(input_features, feature_mask, audio_embeds)
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        embeds = self.build_inputs_embeds(input_ids, audio_embeds)
        shared = self._shareable_prefix(input_ids, attention_mask, reserve=1)
        cache = None
        if shared:
            embeds, attention_mask, cache = self._prefix_cached(embeds, attention_mask, shared)
        first_step = FirstStepScores()
        prepared = {} if cache is None else with_cache(self.llm_model, cache, "generate")
        new_tokens = self.llm_model.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            **prepared,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad_token_id,
            logits_processor=LogitsProcessorList([first_step]),
        )
        return new_tokens, first_step.scores

    def trailing_logits(
        self, input_ids: Tensor, attention_mask: Tensor, audio_embeds: Tensor | None, keep: int
    ) -> Tensor:
        """(batch, keep, vocab) logits of the last `keep` positions of a left-padded batch.

        Without gradients, a prefix all rows share (a long system prompt) is computed once.
        """
        embeds = self.build_inputs_embeds(input_ids, audio_embeds)
        shared = 0
        if not torch.is_grad_enabled():
            shared = self._shareable_prefix(input_ids, attention_mask, reserve=keep)
        if not shared:
            return self.llm_model(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids_from_attention_mask(attention_mask),
                use_cache=False,
                logits_to_keep=keep,
            ).logits
        embeds, attention_mask, cache = self._prefix_cached(embeds, attention_mask, shared)
        return self.llm_model(
            inputs_embeds=embeds[:, shared:],
            attention_mask=attention_mask,
            position_ids=position_ids_from_attention_mask(attention_mask)[:, shared:],
            **with_cache(self.llm_model, cache),
            use_cache=True,
            logits_to_keep=keep,
        ).logits

    def _shareable_prefix(self, input_ids: Tensor, attention_mask: Tensor, reserve: int) -> int:
        """The shared prefix worth computing once (0 when none is), leaving every row at
        least `reserve` tokens of its own."""
        if len(input_ids) < 2 or calls_observed(self.llm_model):
            return 0
        shared = shared_prefix_length(input_ids, attention_mask, self.config.audio_token_id)
        shortest = int(attention_mask.long().sum(dim=1).min())
        shared = min(shared, shortest - reserve)
        return shared if shared >= MIN_SHARED_PREFIX else 0

    def _prefix_cached(
        self, embeds: Tensor, attention_mask: Tensor, shared: int
    ) -> tuple[Tensor, Tensor, DynamicCache]:
        """The batch with its shared prefix moved before the padding, and the prefix's cache.

        A left-padded row [pad, prefix, rest] becomes [prefix, pad, rest]: positions still
        count real tokens only, so every row sees the same prefix at positions 0..shared-1 and
        the prefix's keys and values are computed once, for one row, and repeated.
        """
        order = prefix_first_order(attention_mask, shared)
        embeds = embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))
        attention_mask = attention_mask.gather(1, order)
        cache = DynamicCache(config=self.llm_model.config)
        self.llm_model.model(
            inputs_embeds=embeds[:1, :shared],
            position_ids=torch.arange(shared, device=embeds.device)[None],
            **with_cache(self.llm_model.model, cache),
            use_cache=True,
        )
        cache.batch_repeat_interleave(len(embeds))
        return embeds, attention_mask, cache

    def _resolve_audio(
        self,
        input_features: Tensor | None,
        feature_mask: Tensor | None,
        audio_embeds: Tensor | None,
    ) -> Tensor | None:
        if input_features is not None and audio_embeds is not None:
            raise ValueError("pass either input_features or audio_embeds, not both")
        if input_features is not None:
            return self.embed_audio(input_features, feature_mask)
        return audio_embeds

    # ---------------------------------------------------------------- trainable weights

    def parameter_names(self, prefixes: Iterable[str]) -> list[str]:
        """State-dict keys under the given module prefixes; an unknown prefix is an error."""
        keys = list(self.state_dict().keys())
        selected: list[str] = []
        for prefix in prefixes:
            matched = [k for k in keys if _under_prefix(k, prefix)]
            if not matched:
                raise ValueError(f"no parameters under the prefix {prefix!r}")
            selected.extend(k for k in matched if k not in selected)
        return selected

    def freeze_except(self, prefixes: Iterable[str] = (CONNECTOR_PREFIX,)) -> list[str]:
        """Make only parameters under `prefixes` trainable (Whisper's positions stay fixed)."""
        prefixes = tuple(prefixes)
        self.parameter_names(prefixes)
        trainable = []
        for name, parameter in self.named_parameters():
            wanted = any(_under_prefix(name, p) for p in prefixes)
            parameter.requires_grad_(wanted and not name.endswith(_FIXED_PARAMETER_SUFFIXES))
            if parameter.requires_grad:
                trainable.append(name)
        return trainable

    def trainable_state_dict(
        self, prefixes: Iterable[str] = (CONNECTOR_PREFIX,)
    ) -> dict[str, Tensor]:
        """Detached copies of the tensors under `prefixes`."""
        state = self.state_dict()
        return {k: state[k].detach().clone() for k in self.parameter_names(prefixes)}

    def load_trainable_state_dict(
        self, state_dict: Mapping[str, Tensor], prefixes: Iterable[str] = (CONNECTOR_PREFIX,)
    ) -> None:
        """Copy tensors in, after checking that the keys are exactly those under `prefixes`."""
        expected = self.parameter_names(prefixes)
        check_state_dict_keys(expected, state_dict.keys())
        state = self.state_dict()
        mismatched = [
            f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(state[k].shape)}"
            for k in expected
            if state_dict[k].shape != state[k].shape
        ]
        if mismatched:
            raise CheckpointMismatchError("shape mismatch:\n  " + "\n  ".join(mismatched))
        with torch.no_grad():
            for key in expected:
                state[key].copy_(state_dict[key])


class FirstStepScores(LogitsProcessor):
    """Keeps the scores of the first generation step and changes nothing.

    Greedy decoding without other processors scores with the raw logits, so these are the
    next-token logits at the answer position; keeping one step, rather than asking
    `generate` for every step's logits, bounds the memory at (batch, vocab).
    """

    def __init__(self) -> None:
        self._scores: Tensor | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self._scores is None:
            self._scores = scores.clone()
        return scores

    @property
    def scores(self) -> Tensor:
        if self._scores is None:
            raise RuntimeError("generation ended before its first step was scored")
        return self._scores


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's keys or shapes do not match the model."""


def check_state_dict_keys(expected: Iterable[str], found: Iterable[str]) -> None:
    """Raise naming every missing and unexpected key; silent partial loads are never allowed."""
    expected_set, found_set = set(expected), set(found)
    missing = sorted(expected_set - found_set)
    unexpected = sorted(found_set - expected_set)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"checkpoint keys do not match the model: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )


# --------------------------------------------------------------------------- helpers


def _under_prefix(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def calls_observed(module: nn.Module) -> bool:
    """Whether a forward hook or pre-hook is registered on `module` or any module inside it."""
    return any(inner._forward_hooks or inner._forward_pre_hooks for inner in module.modules())


def shared_prefix_length(input_ids: Tensor, attention_mask: Tensor, audio_token_id: int) -> int:
    """How many leading real tokens all rows of a left-padded batch share.

    The prefix stops before the first audio placeholder (rows may put different clips there)
    and leaves every row at least one token of its own.
    """
    lengths = attention_mask.long().sum(dim=1)
    shortest = int(lengths.min())
    if shortest < 2:
        return 0
    starts = input_ids.shape[1] - lengths
    columns = starts[:, None] + torch.arange(shortest - 1, device=input_ids.device)
    leading = input_ids.gather(1, columns)
    same = (leading == leading[:1]).all(dim=0) & (leading[0] != audio_token_id)
    differing = (~same).nonzero()
    return int(differing[0]) if len(differing) else shortest - 1


def prefix_first_order(attention_mask: Tensor, shared: int) -> Tensor:
    """(batch, width) source columns that turn each row [pad, prefix, rest] into
    [prefix, pad, rest], for a prefix of `shared` tokens right after the left padding."""
    width = attention_mask.shape[1]
    pads = (width - attention_mask.long().sum(dim=1))[:, None]
    column = torch.arange(width, device=attention_mask.device)[None]
    return torch.where(
        column < shared, column + pads, torch.where(column < shared + pads, column - shared, column)
    )


def tapped_states_only(
    tapped: Sequence[Tensor], tapped_layers: Sequence[int], n_layers: int
) -> list[Tensor | None]:
    """Encoder states laid out as `WhisperAudioEncoder.forward` returns them, holding only the
    tapped layers' outputs (`tapped[k]` is layer `tapped_layers[k]`) and None elsewhere."""
    states: list[Tensor | None] = [None] * (n_layers + 1)
    for layer, state in zip(tapped_layers, tapped, strict=True):
        states[layer + 1] = state
    return states


def additive_key_mask(key_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(batch, keys) bool -> (batch, 1, 1, keys) additive bias: 0 for real keys, -inf-ish else."""
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    bias = bias.masked_fill(~key_mask.bool(), torch.finfo(dtype).min)
    return bias[:, None, None, :]


def position_ids_from_attention_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def placeholder_run_lengths(mask: Tensor) -> list[int]:
    """Lengths of maximal runs of True in a (batch, seq) mask, in reading order."""
    padded = nn.functional.pad(mask.to(torch.int8), (1, 1))
    steps = torch.diff(padded, dim=-1)
    starts = (steps == 1).nonzero()[:, 1]
    ends = (steps == -1).nonzero()[:, 1]
    return (ends - starts).tolist()
