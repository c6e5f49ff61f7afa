"""Tiny random instances of the three real LALM architectures, built without the hub.

Each one has the real model's classes, module layout, prompt format and token conventions,
only small and with random weights: a byte-level BPE tokenizer trained here on SAKE-style text
with the real special tokens and pre-tokenisation rule, the real chat template, and (for the
transformers models) the real processor class around a local `WhisperFeatureExtractor`.

- DeSTA2.5: Llama-3.1 conventions (`<|begin_of_text|>`, header tokens, `<|eot_id|>`), audio
  as "<start_audio>" + `<|reserved_special_token_87|>` x queries + transcript + "<end_audio>".
- Qwen2-Audio: ChatML with `<|audio_bos|><|AUDIO|><|audio_eos|>`, `Qwen2AudioProcessor`.
- Audio Flamingo 3: ChatML with `<sound>`, `AudioFlamingo3Processor`.

Audio windows are shorter than the real 30 s (`window_seconds`) so that the towers stay small;
the wrappers read the window from the feature extractor, as they do for the real models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

from sake.data.schema import ATTRIBUTES, LABELS
from sake.data.synth.questions import format_mcq, recognition_templates
from sake.models.audio_flamingo3 import CHAT_TEMPLATE as AF3_CHAT_TEMPLATE
from sake.models.audio_flamingo3 import AudioFlamingo3LALM
from sake.models.desta import DestaLALM
from sake.models.desta25 import (
    AUDIO_END,
    AUDIO_PLACEHOLDER,
    AUDIO_START,
    END_OF_TURN,
    desta25_config,
)
from sake.models.modeling_desta import DestaForCausalLM
from sake.models.qwen2_audio import Qwen2AudioLALM
from sake.models.transcripts import manifest_or_none

M = TypeVar("M", bound=torch.nn.Module)

SAMPLE_RATE = 16000
HOP_LENGTH = 160
DEFAULT_VOCAB_SIZE = 1024

# Pre-tokenisation rules of the real tokenizers (Qwen2 splits digits one by one, Llama 3 in
# runs of up to three); both then map bytes to symbols as GPT-2 does.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_BOS, LLAMA3_EOT = "<|begin_of_text|>", END_OF_TURN
LLAMA3_SPECIALS = (
    LLAMA3_BOS,
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    LLAMA3_EOT,
    AUDIO_PLACEHOLDER,
)
# Llama-3.1-Instruct's template with its default system header (fixed dates, no tools).
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

QWEN_ENDOFTEXT, QWEN_IM_START, QWEN_IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
QWEN2_AUDIO_SPECIALS = (
    QWEN_ENDOFTEXT,
    QWEN_IM_START,
    QWEN_IM_END,
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
)
# The tokenizer-level template of Qwen2-family tokenizers (the processors carry their own).
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
AF3_SOUND = "<sound>"
AF3_SPECIALS = (QWEN_ENDOFTEXT, QWEN_IM_START, QWEN_IM_END, AF3_SOUND)


# --------------------------------------------------------------------------- tokenizers


def tokenizer_corpus() -> list[str]:
    """SAKE-style questions with options and answers, in the eight SAKE languages' scripts."""
    texts = ["You are a helpful assistant.", "Audio 1:", "Audio 2:", AUDIO_START + AUDIO_END]
    for attribute in ATTRIBUTES:
        labels = LABELS[attribute]
        for template in recognition_templates(attribute, "test"):
            texts.append(format_mcq(template, labels[:4]))
        texts.extend(f"The answer is {label}.\n{label}\n\n{label}\n\n\n{label}" for label in labels)
    texts += [
        "中文 普通话 你好",
        "日本語 こんにちは",
        "한국어 안녕하세요",
        "Deutsch Français Español",
    ]
    texts += [f"{n} {n * 7} {n * 131}" for n in range(10)]
    return texts


def train_chat_tokenizer(
    texts: Iterable[str],
    *,
    special_tokens: Sequence[str],
    pattern: str,
    chat_template: str,
    eos: str,
    pad: str,
    bos: str | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with a real tokenizer's pre-tokenisation, special tokens and template."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    named = {eos, pad, *([] if bos is None else [bos])}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=[t for t in special_tokens if t not in named],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def llama3_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Llama-3.1-Instruct conventions: BOS, header tokens, `<|eot_id|>` as EOS and padding."""
    return train_chat_tokenizer(
        tokenizer_corpus(),
        special_tokens=LLAMA3_SPECIALS,
        pattern=LLAMA3_PATTERN,
        chat_template=LLAMA31_CHAT_TEMPLATE,
        bos=LLAMA3_BOS,
        eos=LLAMA3_EOT,
        pad=LLAMA3_EOT,
        vocab_size=vocab_size,
    )


def qwen_tokenizer(
    special_tokens: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """Qwen2 conventions: `<|im_end|>` ends turns, `<|endoftext|>` pads; ChatML template."""
    return train_chat_tokenizer(
        tokenizer_corpus(),
        special_tokens=special_tokens,
        pattern=QWEN2_PATTERN,
        chat_template=CHATML_TEMPLATE,
        eos=QWEN_IM_END,
        pad=QWEN_ENDOFTEXT,
        vocab_size=vocab_size,
    )


def feature_extractor(n_mels: int, window_seconds: int) -> WhisperFeatureExtractor:
    """Whisper's log-mel front end with `n_mels` bins and `window_seconds`-long windows."""
    return WhisperFeatureExtractor(
        feature_size=n_mels,
        sampling_rate=SAMPLE_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=int(window_seconds),
        n_fft=400,
        return_attention_mask=True,
    )


def window_positions(window_seconds: int) -> int:
    """Audio-tower positions of one window (mel frames after the stride-2 convolution)."""
    return window_seconds * SAMPLE_RATE // HOP_LENGTH // 2


def seeded(build: Callable[[], M], seed: int) -> M:
    """Build a module with a reproducible initialisation that leaves the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def text_config_fields(
    tokenizer: PreTrainedTokenizerFast, sizes: Mapping[str, Any]
) -> dict[str, Any]:
    """A Qwen2 decoder's config: the given sizes and the tokenizer's vocabulary and ids."""
    return {
        "model_type": "qwen2",
        "tie_word_embeddings": False,
        **dict(sizes),
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


# --------------------------------------------------------------------------- builders


def build_desta_tiny_random(
    *,
    seed: int = 0,
    encoder: Mapping[str, Any],
    connector: Mapping[str, Any],
    llm: Mapping[str, Any],
    transcripts: str = "manifest",
    name: str = "desta_tiny_random",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> DestaLALM:
    """DeSTA2.5's architecture and prompt conventions at the given sizes, random weights."""
    tokenizer = llama3_tokenizer(vocab_size)
    ids = tokenizer.convert_tokens_to_ids([LLAMA3_BOS, LLAMA3_EOT])
    llm_fields = {
        "tie_word_embeddings": False,
        **dict(llm),
        "vocab_size": len(tokenizer),
        "bos_token_id": ids[0],
        "eos_token_id": ids[1],
        "pad_token_id": ids[1],
    }
    config = desta25_config(tokenizer, llm_fields, encoder=encoder, connector=connector)
    model = DestaForCausalLM.from_config(config, seed=seed)
    return DestaLALM(
        model,
        tokenizer,
        name=name,
        transcriber=manifest_or_none(transcripts, name),
        end_of_turn=END_OF_TURN,
    )


def build_qwen2_audio_tiny(
    *,
    seed: int = 0,
    audio: Mapping[str, Any],
    text: Mapping[str, Any],
    window_seconds: int = 2,
    name: str = "qwen2_audio_tiny",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Qwen2AudioLALM:
    """`Qwen2AudioForConditionalGeneration` at the given sizes with its real processor."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
    )

    tokenizer = qwen_tokenizer(QWEN2_AUDIO_SPECIALS, vocab_size)
    processor = Qwen2AudioProcessor(
        feature_extractor=feature_extractor(int(audio["num_mel_bins"]), window_seconds),
        tokenizer=tokenizer,
    )
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            **dict(audio),
            "max_source_positions": window_positions(window_seconds),
        },
        text_config=text_config_fields(tokenizer, text),
        audio_token_index=processor.audio_token_id,
    )
    model = seeded(lambda: Qwen2AudioForConditionalGeneration(config), seed)
    return Qwen2AudioLALM(model, processor, name=name)


def build_af3_tiny(
    *,
    seed: int = 0,
    audio: Mapping[str, Any],
    text: Mapping[str, Any],
    window_seconds: int = 2,
    max_audio_seconds: float = 600.0,
    name: str = "af3_tiny",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> AudioFlamingo3LALM:
    """`AudioFlamingo3ForConditionalGeneration` at the given sizes with its real processor."""
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
    )

    tokenizer = qwen_tokenizer(AF3_SPECIALS, vocab_size)
    processor = AudioFlamingo3Processor(
        feature_extractor=feature_extractor(int(audio["num_mel_bins"]), window_seconds),
        tokenizer=tokenizer,
        chat_template=AF3_CHAT_TEMPLATE,
        audio_token=AF3_SOUND,
        max_audio_len=max_audio_seconds,
    )
    config = AudioFlamingo3Config(
        audio_config={
            "model_type": "audioflamingo3_encoder",
            **dict(audio),
            "max_source_positions": window_positions(window_seconds),
        },
        text_config=text_config_fields(tokenizer, text),
        audio_token_id=processor.audio_token_id,
    )
    model = seeded(lambda: AudioFlamingo3ForConditionalGeneration(config), seed)
    return AudioFlamingo3LALM(model, processor, name=name)
