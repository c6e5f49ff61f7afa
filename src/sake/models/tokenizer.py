"""The embedded model's own tokenizer: byte-level BPE trained on the project's text, ChatML.

Byte-level BPE encodes any text (all eight SAKE languages) without unknown tokens; audio
markers and the audio placeholder are special tokens, so an audio span written as text in a
chat message becomes exactly one token per marker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import Tensor
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
AUDIO, AUDIO_START, AUDIO_END = "<|audio|>", "<|audio_start|>", "<|audio_end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IM_START, IM_END, AUDIO, AUDIO_START, AUDIO_END)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the chat special tokens on `texts`."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(core)


def wrap_tokenizer(core: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around `core`: left padding, ChatML template, special tokens."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END, AUDIO, AUDIO_START, AUDIO_END],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with `save_pretrained`, forcing left padding."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    tokenizer.padding_side = "left"
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of every special token; raises when the tokenizer lacks one."""
    ids = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no special token {token!r}")
        ids[token] = int(token_id)
    return ids


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's serialised vocabulary and rules, for fingerprints.

    The serialisation also holds the padding and truncation state left by the latest call,
    which would make the same tokenizer hash differently after a padded batch; it is dropped.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("padding", None)
    state.pop("truncation", None)
    return json.dumps(state, sort_keys=True)


def target_row(
    tokenizer: Any, prompt: str, target: str, end_text: str, end_ids: Sequence[int]
) -> tuple[list[int], int, int]:
    """Ids of prompt + target + end-of-turn tokenised as one text, the target's and end's lengths.

    Raises ValueError when the target's tokens inside the sequence differ from the target
    tokenised alone (a token straddling the prompt/target boundary, or a different split).
    """
    if not target:
        raise ValueError("targets must be non-empty")
    start, stop = len(prompt), len(prompt) + len(target)
    encoded = tokenizer(
        prompt + target + end_text, add_special_tokens=False, return_offsets_mapping=True
    )
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    inside = [k for k, (begin, end) in enumerate(offsets) if begin < stop and end > start]
    in_context = [ids[k] for k in inside]
    alone = tokenizer(target, add_special_tokens=False)["input_ids"]
    aligned = (
        bool(inside)
        and offsets[inside[0]][0] == start
        and offsets[inside[-1]][1] == stop
        and ids[: inside[0]] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        and ids[inside[-1] + 1 :] == list(end_ids)
    )
    if not aligned or in_context != alone:
        raise ValueError(
            f"target {target!r} tokenises differently inside the chat sequence: "
            f"in context {in_context}, alone {alone}"
        )
    return ids, len(alone), len(end_ids)


def sequence_rows(rows: Sequence[tuple[list[int], int, int]], include_end: bool) -> list[list[int]]:
    """`target_row` results as token rows: prompt + target, with the end-of-turn tokens when
    `include_end`."""
    return [ids if include_end else ids[: len(ids) - n_end] for ids, _, n_end in rows]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token rows -> left-padded (ids, attention mask)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[index, width - len(row) :] = 1
    return ids, mask
