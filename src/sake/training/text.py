"""The text the backbone learns from and is checked on, and the questions asked about clips.

Every question is built from the synthetic corpus's own sources (`training.examples`) and
rendered with `training.prompts` exactly as the model is prompted at inference. Clips are
described in text (their seed description) for the backbone and distillation stage 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from transformers import PreTrainedTokenizerFast

from sake.data.options import parse_options
from sake.data.schema import ATTRIBUTES
from sake.training import examples
from sake.training.data import EvalItem
from sake.training.examples import ChatExample, ClipInfo
from sake.training.prompts import (
    TokenSequence,
    chat_prompt,
    description_span,
    encode_chats,
    encode_documents,
    user_content,
)

OPTIONS_MARKER = "\n\nOptions:\n"


# --------------------------------------------------------------------------- clip questions

AUDITORY_TASK_GROUP = "auditory_task"
DESCRIPTION_GROUPS = (*ATTRIBUTES, AUDITORY_TASK_GROUP)


def is_task_clip(clip: ClipInfo) -> bool:
    """A general auditory task clip (no attribute label)."""
    return not any(attribute in clip.labels for attribute in ATTRIBUTES)


def example_options(example: ChatExample) -> tuple[str, ...]:
    """The options a question offers (its `Options:` block or an inline enumeration)."""
    return parse_options(example.question)


def description_prompt(tokenizer: PreTrainedTokenizerFast, example: ChatExample) -> str:
    """The prompt with the clip's seed description in its audio span (text-only stand-in)."""
    if example.clip is None:
        raise ValueError(f"a description prompt needs a clip: {example.question!r}")
    span = description_span(examples.seed_description(example.clip))
    return chat_prompt(tokenizer, user_content(example.question, span))


def text_prompt(tokenizer: PreTrainedTokenizerFast, example: ChatExample) -> str:
    return chat_prompt(tokenizer, example.question)


def labelled_clip_questions(
    clip: ClipInfo, split: str, rng: np.random.Generator, *, own_track_only: bool = False
) -> list[tuple[str, ChatExample]]:
    """Recognition and portability questions on each attribute (or the task question), named.

    With `own_track_only` only the clip's own attribute is asked about, as in SAKE's cases.
    """
    if is_task_clip(clip):
        return [(AUDITORY_TASK_GROUP, examples.auditory_task_example(clip, rng))]
    named = []
    attributes = [clip.track] if own_track_only else list(clip.labels)
    for attribute in attributes:
        named.append(
            (f"recognition/{attribute}", examples.recognition_example(clip, attribute, split, rng))
        )
        named.append(
            (f"portability/{attribute}", examples.portability_example(clip, attribute, split, rng))
        )
    return named


# --------------------------------------------------------------------------- backbone text


@dataclass(frozen=True)
class BackboneMixture:
    """Shares of the backbone's training sequences by source (normalised when used)."""

    description: float = 0.5
    knowledge: float = 0.2
    facts: float = 0.1
    text_bank: float = 0.1
    chat: float = 0.1
    facts_per_document: int = 4
    option_mentions: float = 0.0

    def counts(self, total: int) -> dict[str, int]:
        """Sequences per source, summing to `total` (largest remainders get the rest)."""
        shares = {
            "description": self.description,
            "knowledge": self.knowledge,
            "facts": self.facts,
            "text_bank": self.text_bank,
            "chat": self.chat,
        }
        weight = sum(shares.values())
        if weight <= 0 or min(shares.values()) < 0:
            raise ValueError(f"mixture shares must be non-negative and not all zero: {shares}")
        exact = {name: total * share / weight for name, share in shares.items()}
        counts = {name: int(value) for name, value in exact.items()}
        by_remainder = sorted(exact, key=lambda name: counts[name] - exact[name])
        for name in by_remainder[: total - sum(counts.values())]:
            counts[name] += 1
        return counts


def imagined_clip_with(group: str, rng: np.random.Generator) -> ClipInfo:
    """An imagined clip that carries the attribute `group` (or any auditory task)."""
    while True:
        clip = next(examples.imagined_clips(1, rng))
        if group in clip.labels or (group == AUDITORY_TASK_GROUP and is_task_clip(clip)):
            return clip


MENTION_MAX_WORDS = 3
OPTION_MENTIONS = (
    "The answer could be {}.",
    "Is it {}?",
    "Choose between {}.",
    "Decide on {}.",
)


def with_option_mention(example: ChatExample, rng: np.random.Generator) -> ChatExample:
    """The question with its (short) options also named in the sentence, in another order.

    Test questions may name the options in their text ("… a male or a female speaker"); this
    teaches the backbone that naming an option is no evidence for it.
    """
    options = list(parse_options(example.question))
    if (
        OPTIONS_MARKER not in example.question
        or len(options) < 2
        or max(len(option.split()) for option in options) > MENTION_MAX_WORDS
    ):
        return example
    stem, block = example.question.rsplit(OPTIONS_MARKER, 1)
    named = [options[i] for i in rng.permutation(len(options))]
    listing = ", ".join(named[:-1]) + f" or {named[-1]}"
    mention = OPTION_MENTIONS[int(rng.integers(len(OPTION_MENTIONS)))].format(listing)
    return replace(example, question=f"{stem} {mention}{OPTIONS_MARKER}{block}")


def description_examples(
    count: int,
    rng: np.random.Generator,
    portability_share: float = 0.5,
    mention_share: float = 0.0,
) -> list[ChatExample]:
    """Questions about imagined clips, answered from their seed descriptions.

    The four attributes and the auditory tasks get equal shares, so that a label family
    that only one kind of clip carries (emotion) is read as often as the others. A share
    `mention_share` of the questions also name their options in the text.
    """
    found = []
    for index in rng.integers(len(DESCRIPTION_GROUPS), size=count):
        group = DESCRIPTION_GROUPS[int(index)]
        clip = imagined_clip_with(group, rng)
        if group == AUDITORY_TASK_GROUP:
            example = examples.auditory_task_example(clip, rng)
        elif rng.random() < portability_share:
            example = examples.portability_example(clip, group, "train", rng)
        else:
            example = examples.recognition_example(clip, group, "train", rng)
        if rng.random() < mention_share:
            example = with_option_mention(example, rng)
        found.append(example)
    return found


def repeated(make: Callable[[], list], count: int, rng: np.random.Generator) -> list:
    """`count` items from fresh shuffled rounds of `make()`."""
    found: list = []
    while len(found) < count:
        batch = make()
        if not batch:
            raise ValueError("a training source produced no items")
        found.extend(batch[i] for i in rng.permutation(len(batch)))
    return found[:count]


def fact_document_texts(count: int, per_document: int, rng: np.random.Generator) -> list[str]:
    facts = examples.fact_documents()
    return [
        " ".join(facts[i] for i in rng.choice(len(facts), size=per_document, replace=False))
        for _ in range(count)
    ]


def backbone_sequences(
    tokenizer: PreTrainedTokenizerFast,
    total: int,
    mixture: BackboneMixture,
    rng: np.random.Generator,
    max_length: int,
) -> tuple[list[TokenSequence], dict[str, int]]:
    """The backbone's training sequences, and how many each source gave (after length cuts)."""
    counts = mixture.counts(total)
    described = description_examples(
        counts["description"], rng, mention_share=mixture.option_mentions
    )
    chats = [
        *repeated(lambda: examples.knowledge_examples(rng), counts["knowledge"], rng),
        *repeated(lambda: examples.text_bank_examples("train"), counts["text_bank"], rng),
        *repeated(examples.chat_examples, counts["chat"], rng),
    ]
    sources = (
        ["description"] * len(described)
        + ["knowledge"] * counts["knowledge"]
        + ["text_bank"] * counts["text_bank"]
        + ["chat"] * counts["chat"]
        + ["facts"] * counts["facts"]
    )
    prompts = [description_prompt(tokenizer, e) for e in described]
    prompts += [text_prompt(tokenizer, e) for e in chats]
    responses = [e.response for e in (*described, *chats)]
    sequences = encode_chats(tokenizer, prompts, responses)
    documents = fact_document_texts(counts["facts"], mixture.facts_per_document, rng)
    sequences += encode_documents(tokenizer, documents)
    kept = [
        (s, source) for s, source in zip(sequences, sources, strict=True) if len(s) <= max_length
    ]
    if not kept:
        raise ValueError(f"every training sequence is longer than max_length={max_length}")
    return [s for s, _ in kept], dict(Counter(source for _, source in kept))


def backbone_eval_items(
    tokenizer: PreTrainedTokenizerFast, n_clips: int, rng: np.random.Generator
) -> list[EvalItem]:
    """Held-out checks: every fact as a text question with fresh options, and questions with
    the TEST split's templates about imagined clips, answered from their descriptions."""
    items = [
        EvalItem(
            text_prompt(tokenizer, e), e.question, e.response, "text/knowledge", example_options(e)
        )
        for e in examples.knowledge_examples(rng)
    ]
    for group in DESCRIPTION_GROUPS:
        for _ in range(n_clips):
            clip = imagined_clip_with(group, rng)
            for name, example in labelled_clip_questions(clip, "test", rng):
                if group in (name, name.split("/")[-1]):
                    items.append(
                        EvalItem(
                            description_prompt(tokenizer, example),
                            example.question,
                            example.response,
                            f"description/{name}",
                            example_options(example),
                        )
                    )
    return items
