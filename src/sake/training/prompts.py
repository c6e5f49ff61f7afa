"""Training prompts built exactly as `DestaLALM` builds inference prompts, and their tokens.

A user turn about a clip reads `<|audio_start|>SPAN<|audio_end|>` + "\\n" + question, rendered
through the tokenizer's chat template with the generation prompt; the response follows and
ends with `<|im_end|>`. SPAN is the clip's placeholders when audio is fed (connector training,
inference) and the clip's seed description when the backbone reads a text stand-in for the
audio (backbone pretraining, distillation stage 1). Prompts and responses are tokenised
separately, which is what greedy generation sees: the prompt alone, then token by token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerFast

from sake.models.tokenizer import AUDIO, AUDIO_END, AUDIO_START, EOS, IM_END

IGNORE_INDEX = -100


def description_span(description: str) -> str:
    """A clip's span with its seed description where the audio embeddings go later."""
    return f"{AUDIO_START}{description}{AUDIO_END}"


def placeholder_span(prompt_size: int) -> str:
    """A clip's span as `DestaLALM.audio_span_text` writes it (no transcript)."""
    return f"{AUDIO_START}{AUDIO * prompt_size}{AUDIO_END}"


def user_content(question: str, span: str | None = None) -> str:
    """The user message: the clip's span and a newline before the question, as DeSTA writes it."""
    return question if span is None else f"{span}\n{question}"


def chat_prompt(tokenizer: PreTrainedTokenizerFast, content: str) -> str:
    """One user turn through the chat template, ending with the assistant's generation prompt."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


@dataclass(frozen=True)
class TokenSequence:
    """Token ids and per-token labels (IGNORE_INDEX where unscored); `clip` indexes audio."""

    input_ids: np.ndarray
    labels: np.ndarray
    clip: int = -1

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def end_of_turn_id(tokenizer: PreTrainedTokenizerFast) -> int:
    return int(tokenizer.convert_tokens_to_ids(IM_END))


def stop_token_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Generation stops at the end of the turn or at EOS, as in `DestaLALM`."""
    return [end_of_turn_id(tokenizer), int(tokenizer.convert_tokens_to_ids(EOS))]


def encode_chats(
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    responses: Sequence[str],
    clips: Sequence[int] | None = None,
) -> list[TokenSequence]:
    """Prompt + response + end of turn; only the response and the end of turn are scored."""
    if not prompts:
        return []
    end = end_of_turn_id(tokenizer)
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    clips = clips if clips is not None else [-1] * len(prompt_ids)
    sequences = []
    for prompt, response, clip in zip(prompt_ids, response_ids, clips, strict=True):
        ids = np.asarray([*prompt, *response, end], dtype=np.int32)
        labels = ids.copy()
        labels[: len(prompt)] = IGNORE_INDEX
        sequences.append(TokenSequence(ids, labels, int(clip)))
    return sequences


def encode_documents(
    tokenizer: PreTrainedTokenizerFast, documents: Sequence[str]
) -> list[TokenSequence]:
    """Plain text framed by BOS and EOS, every token after BOS scored."""
    if not documents:
        return []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    sequences = []
    for ids in tokenizer(list(documents), add_special_tokens=False)["input_ids"]:
        full = np.asarray([bos, *ids, eos], dtype=np.int32)
        labels = full.copy()
        labels[0] = IGNORE_INDEX
        sequences.append(TokenSequence(full, labels))
    return sequences
