"""The LALM interface every model implements and every method and evaluator uses.

Callers hand over probes (question, options, audio) and get text, losses or logits back;
chat templates, audio placeholders, padding side and devices stay inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from sake.data.schema import Probe
from sake.models.roles import ModuleMap


@dataclass(frozen=True)
class Turn:
    """One turn of a dialogue; audio clips of a user turn come before its text."""

    role: str
    text: str
    audio: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ("user", "assistant"):
            raise ValueError(f"turn role must be 'user' or 'assistant', got {self.role!r}")


@dataclass
class Batch:
    """Model inputs for a batch of prompts, left-padded, ready for generation.

    Every row ends where the assistant's answer begins, so the last position's next-token
    distribution is the answer's first token. `inputs` holds what else the model reads:
    `audio_paths`, every clip of the batch in reading order (row by row, history clips
    first), whose features the LALM takes from its own audio cache; text-only batches have
    none. `prompts` are the rendered chat prompts.
    """

    input_ids: Tensor
    attention_mask: Tensor
    inputs: dict[str, Any] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device


@dataclass(frozen=True)
class Generation:
    """Greedy answers of a batch and the logits that chose each answer's first token.

    `first_logits` is (batch, vocab) float32 on the CPU: the next-token distribution at the
    answer position, as `LALM.next_token_logits` gives it up to float rounding.
    """

    texts: list[str]
    first_logits: Tensor


@runtime_checkable
class LALM(Protocol):
    """Everything methods, evaluators and tasks may rely on (`sake.models.audio_lalm.AudioLALM`
    implements it once for every wrapper)."""

    name: str
    modules: ModuleMap
    tokenizer: Any

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def audio_window_seconds(self) -> float:
        """Seconds of a clip the model hears; the rest of a longer clip is cut."""
        ...

    @property
    def audio_token_id(self) -> int:
        """The placeholder token whose embeddings the audio overwrites."""
        ...

    def prepare(
        self,
        probes: Sequence[Probe],
        *,
        system: str | None = None,
        history: Sequence[Turn] | None = None,
    ) -> Batch: ...

    def generate(self, batch: Batch, max_new_tokens: int) -> list[str]: ...

    def generate_scored(self, batch: Batch, max_new_tokens: int) -> Generation:
        """`generate`, plus the logits of every answer's first token from the same pass."""
        ...

    def next_token_logits(self, batch: Batch) -> Tensor:
        """Logits of the first answer token, shape (batch, vocab)."""
        ...

    def target_nll(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> Tensor:
        """Mean teacher-forced NLL per target token, one value per row, differentiable.

        With `include_end` the end-of-turn token that closes the answer is scored too.
        """
        ...

    def answer_logits(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> list[Tensor]:
        """Per row, the float32 logits predicting each target token, (T_i, vocab)."""
        ...

    def sequence_logits(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> list[Tensor]:
        """Per row, float32 logits at every position of prompt + target, (L_i, vocab)."""
        ...

    def target_token_ids(
        self, batch: Batch, targets: Sequence[str], *, include_end: bool = False
    ) -> list[list[int]]:
        """Token ids of each target as the teacher-forced methods score them."""
        ...

    def fingerprint(self) -> str:
        """Short hash of the weights, tokenizer and chat template."""
        ...

    def cached_audio_embeddings(self) -> AbstractContextManager[None]:
        """Reuse clip embeddings inside; a promise that the audio path stays fixed."""
        ...

    def cached_encoder_states(self) -> AbstractContextManager[None]:
        """Reuse the audio encoder's per-clip work inside; a promise the encoder stays fixed."""
        ...

    def clear_caches(self) -> None:
        """Forget cached audio features and embeddings."""
        ...
