"""Fine-tuning one module on the edit's target answer: FT (LLM) and FT (Audio).

Both are the same method pointed at different roles: `llm.layer[-1].mlp` (the last decoder
layer's MLP) for FT (LLM) and `connector` (the modality connector) for FT (Audio). Adam runs
on the role's parameters only, minimising the teacher-forced NLL of the reliability probe's
answer y_e given the edit audio and question, for at most `max_steps` steps, and stops as
soon as the loss falls below `stop_loss`. Adam keeps fp32 copies of bf16/fp16 weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter

import torch
from torch import nn

from sake.data.schema import EditCase
from sake.methods.base import (
    EditorState,
    EditOutcome,
    MasterWeights,
    QueryContext,
    WeightSnapshot,
    role_touches_audio_path,
    trainable_only,
)
from sake.models.base import LALM


@dataclass(frozen=True)
class FineTuneConfig:
    """Hyperparameters of FT; exactly the fields of `configs/method/ft_*.yaml`."""

    name: str
    role: str
    lr: float
    max_steps: int = 15
    stop_loss: float = 1e-2

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"{self.name}: lr must be positive, got {self.lr}")
        if self.max_steps < 1:
            raise ValueError(f"{self.name}: max_steps must be at least 1, got {self.max_steps}")


class FineTuneEditor:
    """Edits by a few Adam steps on one role's parameters; undone by its weight snapshot."""

    def __init__(self, config: FineTuneConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = EditorState()

    @property
    def touches_audio_path(self) -> bool:
        return role_touches_audio_path(self.config.role)

    def prepare(self, lalm: LALM, train_cases: Sequence[EditCase]) -> None:
        """Check that the role exists and holds parameters; FT needs no training data."""
        if not lalm.modules.parameters(self.config.role):
            raise ValueError(f"{self.name}: role {self.config.role!r} holds no parameters")

    def apply(self, lalm: LALM, case: EditCase) -> EditOutcome:
        start = perf_counter()
        parameters = lalm.modules.parameters(self.config.role)
        snapshot = WeightSnapshot.take(parameters)
        try:
            steps, final_loss = self._fit(lalm, case, parameters)
        except BaseException:
            snapshot.restore()
            raise
        self.state.record(case)
        return EditOutcome(snapshot, steps, final_loss, perf_counter() - start)

    def _fit(
        self, lalm: LALM, case: EditCase, parameters: Mapping[str, nn.Parameter]
    ) -> tuple[int, float]:
        """Adam steps until the loss is below `stop_loss` or `max_steps` were taken."""
        batch = lalm.prepare([case.reliability])
        targets = [case.reliability.answer]
        weights = MasterWeights(list(parameters.values()))
        optimizer = torch.optim.Adam(weights.tensors, lr=self.config.lr, foreach=True)
        steps = 0
        with trainable_only(lalm.model, parameters), torch.enable_grad():
            while True:
                loss = lalm.target_nll(batch, targets).mean()
                final_loss = float(loss.detach())
                if final_loss < self.config.stop_loss or steps == self.config.max_steps:
                    return steps, final_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                weights.pull_gradients()
                optimizer.step()
                weights.push_weights()
                steps += 1

    def context(self) -> QueryContext:
        return QueryContext()


def build_ft(**fields: object) -> FineTuneEditor:
    """Hydra factory: `configs/method/ft_llm.yaml` and `ft_audio.yaml` point here."""
    return FineTuneEditor(FineTuneConfig(**fields))
