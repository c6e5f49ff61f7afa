"""Configuration of the DeSTA-architecture model: encoder, connector and LLM sizes.

`DestaConfig` travels as JSON (`to_dict` / `from_dict`) in `config.json` of a weights directory
and in every checkpoint's metadata; `desta_tiny_config` is the embedded default's, the
`desta25_*` functions are DeSTA2.5-Audio's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from transformers import BertConfig, LlamaConfig, WhisperConfig

from sake.models.mel import MelConfig


@dataclass
class DestaAudioEncoderConfig:
    """Whisper encoder sizes; the clip length fixes the positional table (Whisper: 30 s)."""

    n_mels: int = 80
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 768
    max_seconds: float = 5.0
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    mask_padded_frames: bool = True

    @property
    def n_mel_frames(self) -> int:
        """Mel frames of a padded clip, the only input length the encoder accepts."""
        return round(self.max_seconds * self.sample_rate) // self.hop_length

    @property
    def max_frames(self) -> int:
        """Encoder positions after the stride-2 convolution (Whisper's max_source_positions)."""
        return (self.n_mel_frames - 1) // 2 + 1

    def mel_config(self) -> MelConfig:
        return MelConfig(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            max_seconds=self.max_seconds,
        )

    def whisper_config(self) -> WhisperConfig:
        return WhisperConfig(
            num_mel_bins=self.n_mels,
            d_model=self.d_model,
            encoder_layers=self.n_layers,
            encoder_attention_heads=self.n_heads,
            encoder_ffn_dim=self.ffn_dim,
            max_source_positions=self.max_frames,
        )


@dataclass
class DestaConnectorConfig:
    """Q-Former connector sizes; it runs at the encoder width, as in the release."""

    tapped_layers: tuple[int, ...] = (1, 3)
    queries_per_layer: int = 16
    n_layers: int = 2
    n_heads: int = 4
    ffn_dim: int = 768
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    normed_final_layer: bool = False

    def qformer_config(self, width: int) -> BertConfig:
        return BertConfig(
            hidden_size=width,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            intermediate_size=self.ffn_dim,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            layer_norm_eps=self.layer_norm_eps,
            is_decoder=True,
            add_cross_attention=True,
            attn_implementation="eager",
        )


@dataclass
class DestaConfig:
    """Everything needed to build the model; JSON-serialisable through `to_dict`.

    `llm` holds `LlamaConfig` keyword arguments. `audio_start_ids` / `audio_end_ids` are the
    token ids that frame each clip (one special token each in the tiny model; the tokenisation
    of "<start_audio>" / "<end_audio>" for the release).
    """

    encoder: DestaAudioEncoderConfig
    connector: DestaConnectorConfig
    llm: dict[str, Any]
    audio_token_id: int
    audio_start_ids: tuple[int, ...] = ()
    audio_end_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.connector.tapped_layers = tuple(int(i) for i in self.connector.tapped_layers)
        self.audio_start_ids = tuple(int(i) for i in self.audio_start_ids)
        self.audio_end_ids = tuple(int(i) for i in self.audio_end_ids)
        _validate_config(self)

    @property
    def prompt_size(self) -> int:
        """Placeholder tokens per clip (= queries per tapped layer)."""
        return self.connector.queries_per_layer

    def llm_config(self) -> LlamaConfig:
        return LlamaConfig(**self.llm)

    def audio_span(self, transcript_ids: Sequence[int] = ()) -> list[int]:
        """Token ids that stand for one clip in the prompt, transcript after the placeholders."""
        placeholders = [self.audio_token_id] * self.prompt_size
        return [*self.audio_start_ids, *placeholders, *transcript_ids, *self.audio_end_ids]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        json.dumps(data)  # fails here, not at save time, on values JSON cannot hold
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DestaConfig:
        fields = dict(data)
        fields["encoder"] = DestaAudioEncoderConfig(**fields["encoder"])
        fields["connector"] = DestaConnectorConfig(**fields["connector"])
        fields["llm"] = dict(fields["llm"])
        return cls(**fields)


def _validate_config(config: DestaConfig) -> None:
    encoder, connector = config.encoder, config.connector
    if not connector.tapped_layers:
        raise ValueError("the connector needs at least one tapped encoder layer")
    if list(connector.tapped_layers) != sorted(set(connector.tapped_layers)):
        raise ValueError(f"tapped_layers must be strictly increasing: {connector.tapped_layers}")
    if connector.tapped_layers[0] < 0 or connector.tapped_layers[-1] >= encoder.n_layers:
        raise ValueError(
            f"tapped_layers {connector.tapped_layers} must lie in [0, {encoder.n_layers})"
        )
    if encoder.d_model % encoder.n_heads or encoder.d_model % connector.n_heads:
        raise ValueError(
            f"encoder width {encoder.d_model} must be divisible by the encoder heads "
            f"({encoder.n_heads}) and the connector heads ({connector.n_heads})"
        )
    vocab_size = config.llm.get("vocab_size")
    token_ids = (config.audio_token_id, *config.audio_start_ids, *config.audio_end_ids)
    if vocab_size is not None and not all(0 <= i < vocab_size for i in token_ids):
        raise ValueError(f"audio token ids {token_ids} must lie in [0, {vocab_size})")


def desta_tiny_config(
    *,
    vocab_size: int,
    audio_token_id: int,
    audio_start_token_id: int,
    audio_end_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
) -> DestaConfig:
    """The embedded default: a small DeSTA-architecture LALM trained by the project."""
    llm = {
        "vocab_size": vocab_size,
        "hidden_size": 384,
        "intermediate_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }
    return DestaConfig(
        encoder=DestaAudioEncoderConfig(),
        connector=DestaConnectorConfig(),
        llm=llm,
        audio_token_id=audio_token_id,
        audio_start_ids=(audio_start_token_id,),
        audio_end_ids=(audio_end_token_id,),
    )


def desta25_encoder_config() -> DestaAudioEncoderConfig:
    """Whisper-large-v3 encoder as used by DeSTA2.5-Audio (30 s clips, no frame masking)."""
    return DestaAudioEncoderConfig(
        n_mels=128,
        d_model=1280,
        n_layers=32,
        n_heads=20,
        ffn_dim=5120,
        max_seconds=30.0,
        mask_padded_frames=False,
    )


def desta25_connector_config() -> DestaConnectorConfig:
    """DeSTA2.5-Audio-Llama-3.1-8B connector: 6 BERT layers (FFN 3072, BertConfig's default)."""
    return DestaConnectorConfig(
        tapped_layers=(7, 15, 23, 31),
        queries_per_layer=64,
        n_layers=6,
        n_heads=20,
        ffn_dim=3072,
        dropout=0.1,
    )
