"""Qwen2-Audio-7B-Instruct behind the LALM interface.

The prompt is the processor's chat template: a default system turn ("You are a helpful
assistant.") unless one is given, and every clip of a user turn written before its text as
"Audio k: <|audio_bos|><|AUDIO|><|audio_eos|>\\n" (k counting clips over the whole dialogue).
Each `<|AUDIO|>` is then repeated once per audio-tower output, as `Qwen2AudioProcessor` does.

Audio is read as 16 kHz mono and cut to the feature extractor's 30-second window (the
processor truncates longer clips the same way); padded mel frames are masked as keys in the
audio tower's self-attention, as `Qwen2AudioModel` masks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sake.models.hf_common import HFAudioLALM, load_pretrained_audio_llm
from sake.models.hf_layout import module_device
from sake.models.hub import HUB_ANSWER_TIMEOUT_S
from sake.models.modeling_desta import additive_key_mask

HUB_ID = "Qwen/Qwen2-Audio-7B-Instruct"
END_OF_TURN = "<|im_end|>"


class Qwen2AudioLALM(HFAudioLALM):
    """`HFAudioLALM` for `Qwen2AudioForConditionalGeneration` (either module layout)."""

    def __init__(self, model: Any, processor: Any, *, name: str = "qwen2_audio", **options: Any):
        super().__init__(model, processor, name=name, end_of_turn=END_OF_TURN, **options)

    def clip_windows(self, waveform: np.ndarray) -> list[np.ndarray]:
        """One window: the first 30 s (the rest is dropped, as by the processor)."""
        return [waveform[: self.window_samples]]

    def encode_windows(self, features: Tensor, frames: Tensor) -> Tensor:
        tower = self._audio_tower
        inputs = self._audio_inputs(features)
        positions = (inputs.shape[-1] - 2) // 2 + 1
        real = (frames.to(inputs.device) - 1) // 2 + 1
        key_mask = torch.arange(positions, device=inputs.device)[None, :] < real[:, None]
        hidden = tower(inputs, attention_mask=additive_key_mask(key_mask, inputs.dtype))[0]
        projector = self._projector
        return projector(hidden.to(module_device(projector)))


def load_qwen2_audio(
    path: str | Path = HUB_ID,
    *,
    device_map: str | Mapping[str, Any] | None = "auto",
    dtype: str = "bfloat16",
    name: str = "qwen2_audio",
    revision: str | None = None,
    attn_implementation: str | None = None,
    hub_timeout_s: float = HUB_ANSWER_TIMEOUT_S,
) -> Qwen2AudioLALM:
    """Qwen2-Audio from a local directory or the hub (`model.path`), weights in `dtype`.

    A hub that does not answer within `hub_timeout_s` is not waited for: only its local
    cache is read.
    """
    from transformers import Qwen2AudioForConditionalGeneration

    model, processor, device = load_pretrained_audio_llm(
        Qwen2AudioForConditionalGeneration,
        path,
        what="Qwen2-Audio",
        device_map=device_map,
        dtype=dtype,
        revision=revision,
        attn_implementation=attn_implementation,
        hub_timeout_s=hub_timeout_s,
    )
    return Qwen2AudioLALM(model, processor, name=name, device=device)
