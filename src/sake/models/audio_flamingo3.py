"""Audio Flamingo 3 (`nvidia/audio-flamingo-3-hf`) behind the LALM interface.

The prompt is the processor's ChatML template: a default system turn ("You are a helpful
assistant.") unless one is given, and a user turn with audio reads "<sound>" + its text (one
`<sound>` per turn, so at most one clip per turn). `<sound>` is repeated once per projector
output, as `AudioFlamingo3Processor` does.

Audio is read as 16 kHz mono and cut into consecutive 30-second windows (the feature
extractor's chunk), at most `max_audio_len` seconds in all (600 s, the processor's limit). Each
window runs through the audio tower on its own; the real outputs of all windows, in order, are
the clip's embeddings.
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

HUB_ID = "nvidia/audio-flamingo-3-hf"
END_OF_TURN = "<|im_end|>"
DEFAULT_MAX_AUDIO_SECONDS = 600

# The chat template `nvidia/audio-flamingo-3-hf` ships with its processor.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages if m['content'] is not none %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}"
    "{{ m['content'] }}"
    "{% else %}"
    "{% set audio = namespace(found=False) %}"
    "{% set text_buf = namespace(v='') %}"
    "{% for c in m['content'] %}"
    "{% if c.get('type') == 'audio' or 'audio' in c %}"
    "{% set audio.found = True %}"
    "{% elif c.get('type') == 'text' or 'text' in c %}"
    "{% set text_buf.v = text_buf.v + c['text'] %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


class AudioFlamingo3LALM(HFAudioLALM):
    """`HFAudioLALM` for `AudioFlamingo3ForConditionalGeneration` (either module layout)."""

    def __init__(self, model: Any, processor: Any, *, name: str = "af3", **options: Any):
        super().__init__(model, processor, name=name, end_of_turn=END_OF_TURN, **options)
        seconds = getattr(processor, "max_audio_len", DEFAULT_MAX_AUDIO_SECONDS)
        self.max_windows = max(1, int(seconds // self.feature_extractor.chunk_length))

    @property
    def audio_window_seconds(self) -> float:
        return self.max_windows * self.window_samples / self.sample_rate

    def clip_windows(self, waveform: np.ndarray) -> list[np.ndarray]:
        """Consecutive 30 s windows, the last one partial, at most `max_windows` of them."""
        size = self.window_samples
        count = min(self.max_windows, -(-len(waveform) // size))
        return [waveform[index * size : (index + 1) * size] for index in range(count)]

    def encode_windows(self, features: Tensor, frames: Tensor) -> Tensor:
        tower = self._audio_tower
        inputs = self._audio_inputs(features)
        frames = frames.to(inputs.device)
        frame_mask = torch.arange(inputs.shape[-1], device=inputs.device)[None, :] < frames[:, None]
        hidden = tower(inputs, input_features_mask=frame_mask.long())[0]
        projector = self._projector
        return projector(hidden.to(module_device(projector)))


def load_audio_flamingo3(
    path: str | Path = HUB_ID,
    *,
    device_map: str | Mapping[str, Any] | None = "auto",
    dtype: str = "bfloat16",
    name: str = "af3",
    revision: str | None = None,
    attn_implementation: str | None = None,
    hub_timeout_s: float = HUB_ANSWER_TIMEOUT_S,
    audio_after_text: bool = False,
) -> AudioFlamingo3LALM:
    """Audio Flamingo 3 from a local directory or the hub (`model.path`), weights in `dtype`.

    A hub that does not answer within `hub_timeout_s` is not waited for: only its local
    cache is read. `audio_after_text` puts each user turn's question before its audio, as the
    reference's UnKE and WISE scripts for AF3 do (`unke_wise/edit_af3.py`).
    """
    from transformers import AudioFlamingo3ForConditionalGeneration

    model, processor, device = load_pretrained_audio_llm(
        AudioFlamingo3ForConditionalGeneration,
        path,
        what="Audio Flamingo 3",
        device_map=device_map,
        dtype=dtype,
        revision=revision,
        attn_implementation=attn_implementation,
        hub_timeout_s=hub_timeout_s,
        chat_template=CHAT_TEMPLATE,
    )
    return AudioFlamingo3LALM(
        model, processor, name=name, device=device, audio_after_text=audio_after_text
    )
