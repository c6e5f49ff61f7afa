"""The LALM wrapper over transformers' audio-LLM classes (Qwen2-Audio, Audio Flamingo 3).

Both models are an audio tower, a projector (the connector) and a decoder-only LLM whose token
embeddings at audio placeholder positions are overwritten with the projector's outputs, one
vector per placeholder. The wrapper drives those parts itself instead of the top-level
`forward`, so that the same code runs on either module layout of transformers
(`sake.models.hf_layout`). What every LALM wrapper shares is `sake.models.audio_lalm.AudioLALM`;
finding the files is `sake.models.hub`.

Features are cached per file, projector outputs only inside `cached_audio_embeddings()`. Every
input goes to the device of the module that consumes it, so `device_map` placements across GPUs
work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sake.data.audio import read_audio
from sake.data.schema import Probe
from sake.models.audio_lalm import DEFAULT_AUDIO_CACHE_CLIPS, AudioLALM, clip_key
from sake.models.base import Batch, Turn
from sake.models.compat import with_cache
from sake.models.hf_layout import detect_layout, module_device, module_dtype
from sake.models.hub import (
    HUB_ANSWER_TIMEOUT_S,
    HubAccess,
    pretrained_placement,
    resolve_model_dir,
    torch_dtype,
)
from sake.models.modeling_desta import position_ids_from_attention_mask

AUDIO_WINDOW_CHUNK = 16


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


class HFAudioLALM(AudioLALM):
    """`sake.models.base.LALM` over a transformers audio-LLM: its prompts and audio path.

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
        model = (model if device is None else model.to(device)).eval()
        self.layout = detect_layout(model)
        self.audio_token = str(processor.audio_token)
        super().__init__(
            model,
            processor.tokenizer,
            self.layout.module_map(model),
            name=name,
            end_of_turn=end_of_turn,
            extra_special_texts=(self.audio_token,),
            audio_cache_clips=audio_cache_clips,
        )
        self.audio_after_text = audio_after_text
        self.processor = processor
        self.feature_extractor = processor.feature_extractor
        self.chat_template = self._required_chat_template(processor)
        self._audio_token_id = self._single_token_id(self.audio_token, "audio placeholder")

    @property
    def audio_token_id(self) -> int:
        return self._audio_token_id

    @property
    def sample_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

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
        return self.tokenizer.apply_chat_template(
            self._messages(probe, system, history),
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

    @property
    def _input_device(self) -> torch.device:
        return module_device(self._embed)

    def _template_identity(self) -> str:
        return self.chat_template

    @staticmethod
    def _required_chat_template(processor: Any) -> str:
        template = getattr(processor, "chat_template", None)
        if not template:
            raise ValueError(f"{type(processor).__name__} carries no chat template")
        return template

    def _audio_content(self, text: str, clips: Sequence[Path]) -> list[dict[str, str]]:
        """The clips and the text as typed content parts, the clips first unless
        `audio_after_text`."""
        audio = [{"type": "audio", "audio": str(clip)} for clip in clips]
        words = [{"type": "text", "text": text}]
        return [*words, *audio] if self.audio_after_text else [*audio, *words]

    # ---------------------------------------------------------------- model calls

    def _decode(self, batch: Batch, max_new_tokens: int) -> tuple[Tensor, Tensor]:
        inputs_embeds = self._inputs_embeds(batch.input_ids, batch, grad=False)
        return greedy_decode(
            self._decoder,
            self._embed,
            self._lm_head,
            inputs_embeds,
            batch.attention_mask,
            max_new_tokens=max_new_tokens,
            stop_ids=self._stop_ids,
            pad_id=self._pad_id,
        )

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

    # ---------------------------------------------------------------- modules

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


# --------------------------------------------------------------------------- loading


def load_pretrained_audio_llm(
    model_class: type,
    path: str | Path,
    *,
    what: str,
    device_map: str | Mapping[str, Any] | None,
    dtype: str,
    revision: str | None,
    attn_implementation: str | None,
    hub_timeout_s: float = HUB_ANSWER_TIMEOUT_S,
    chat_template: str | None = None,
) -> tuple[nn.Module, Any, str | None]:
    """A transformers audio-LLM and its processor from a local directory or the hub, and the
    device to move it to (None when `device_map` placed it already).

    A hub that does not answer within `hub_timeout_s` is not waited for: only its local cache
    is read. `chat_template` is used when the processor carries none.
    """
    from transformers import AutoProcessor

    local = resolve_model_dir(
        path,
        what=what,
        revision=revision,
        hub=HubAccess(hub_timeout_s),
        expected_file="config.json",
    )
    placement, device = pretrained_placement(device_map)
    processor = AutoProcessor.from_pretrained(str(local))
    if chat_template is not None and not getattr(processor, "chat_template", None):
        processor.chat_template = chat_template
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = model_class.from_pretrained(str(local), dtype=torch_dtype(dtype), **placement, **extra)
    return model, processor, device
