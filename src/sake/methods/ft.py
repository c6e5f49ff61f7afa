"""Fine-tuning one module on the edit's target answer: FT (LLM) and FT (Audio).

Both are the same method pointed at different roles: `llm.layer[-1].mlp` (the last decoder
layer's MLP) for FT (LLM) and `connector` (the modality connector) for FT (Audio). Adam runs
on the role's parameters only, minimising the teacher-forced NLL of the reliability probe's
answer y_e given the edit audio and question, for at most `max_steps` steps, and stops as
soon as the loss falls below `stop_loss`.

As the SAKE reference (`easyeditor/models/ft/ft_lalm_main.py`, targets from
`easyeditor/dataset/LALM_edit_dataset.py`) by default: the answer is supervised together with
the token that ends it (`supervise_end`), and Adam updates the weights in their own dtype
(`master_weights: none`; bf16 weights then lose every update smaller than their rounding
step). `master_weights: fp32` keeps fp32 copies for Adam and writes each step back, rounded
once; `supervise_end: false` scores the answer's tokens alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter

import torch
from torch import nn

from sake.data.schema import EditCase
from sake.methods.base import (
    EditGroup,
    EditorState,
    EditOutcome,
    MasterWeights,
    PendingEdit,
    QueryContext,
    WeightSnapshot,
    check_choice,
    role_touches_audio_path,
)
from sake.methods.parallel import EditCopies
from sake.models.base import LALM, Batch
from sake.utils.params import trainable_only

MASTER_WEIGHTS = ("none", "fp32")


@dataclass(frozen=True)
class FineTuneConfig:
    """Hyperparameters of FT; exactly the fields of `configs/method/ft_*.yaml`."""

    name: str
    role: str
    lr: float
    max_steps: int = 15
    stop_loss: float = 1e-2
    supervise_end: bool = True
    master_weights: str = "none"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"{self.name}: lr must be positive, got {self.lr}")
        check_choice(self.name, "master_weights", self.master_weights, MASTER_WEIGHTS)
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

    @property
    def edited_roles(self) -> tuple[str, ...]:
        return (self.config.role,)

    @property
    def extras(self) -> dict[str, float]:
        """Nothing to report about an edit."""
        return {}

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
        trained = list(parameters.values())
        weights = MasterWeights(trained) if self.config.master_weights == "fp32" else None
        tensors = trained if weights is None else weights.tensors
        optimizer = torch.optim.Adam(tensors, lr=self.config.lr, foreach=True)
        end = self.config.supervise_end
        steps = 0
        with trainable_only(lalm.model, parameters), torch.enable_grad():
            while True:
                loss = lalm.target_nll(batch, targets, include_end=end).mean()
                final_loss = float(loss.detach())
                if final_loss < self.config.stop_loss or steps == self.config.max_steps:
                    return steps, final_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if weights is not None:
                    weights.pull_gradients()
                optimizer.step()
                if weights is not None:
                    weights.push_weights()
                steps += 1

    def apply_many(self, lalm: LALM, cases: Sequence[EditCase]) -> EditGroup:
        """Fit every case's edit at once, each on its own copy of the role's parameters.

        One teacher-forced pass over the cases' reliability probes per step; an edit stops
        changing once its loss is below `stop_loss` or it took `max_steps` steps, as `apply`
        stops, while the others go on. Each case's seconds are the batch's divided evenly.
        Edits of an LLM module can be asked side by side (the group's routing: a prompt row
        per edit); those of the audio path are installed one at a time.
        """
        start = perf_counter()
        parameters = lalm.modules.parameters(self.config.role)
        snapshot = WeightSnapshot.take(parameters)
        module = lalm.modules.resolve(self.config.role).module
        fp32 = self.config.master_weights == "fp32"
        copies = EditCopies(module, len(cases), torch.float32 if fp32 else None)
        fitted = self._fit_many(lalm, cases, copies)
        seconds = (perf_counter() - start) / len(cases)

        def pending(edit: int) -> PendingEdit:
            def install() -> EditOutcome:
                copies.install(edit)
                self.state.record(cases[edit])
                steps, final_loss = fitted[edit]
                return EditOutcome(snapshot, steps, final_loss, seconds)

            return install

        installs = [pending(edit) for edit in range(len(cases))]
        outcomes = [EditOutcome(None, steps, loss, seconds) for steps, loss in fitted]
        routing = None if role_touches_audio_path(self.config.role) else copies
        return EditGroup(installs, outcomes, routing)

    def _fit_many(
        self, lalm: LALM, cases: Sequence[EditCase], copies: EditCopies
    ) -> list[tuple[int, float]]:
        """Adam on the stacked copies; per edit, the steps taken and the last loss."""
        audio_rows = role_touches_audio_path(self.config.role)
        optimizer = torch.optim.Adam(copies.tensors, lr=self.config.lr, foreach=True)
        steps = [0] * len(cases)
        fitted: dict[int, tuple[int, float]] = {}
        active = list(range(len(cases)))
        batch_of: dict[tuple[int, ...], Batch] = {}
        with trainable_only(lalm.model, {}), copies.routed(), torch.enable_grad():
            while True:
                key = tuple(active)
                if key not in batch_of:
                    batch_of[key] = reliability_batch(lalm, [cases[k] for k in active], audio_rows)
                batch = batch_of[key]
                copies.route(active)  # one prompt, or one clip, per active edit
                targets = [cases[k].reliability.answer for k in active]
                losses = lalm.target_nll(batch, targets, include_end=self.config.supervise_end)
                going = []
                for position, (edit, loss) in enumerate(zip(active, losses.tolist(), strict=True)):
                    if loss < self.config.stop_loss or steps[edit] == self.config.max_steps:
                        fitted[edit] = (steps[edit], loss)
                    else:
                        going.append(position)
                if not going:
                    return [fitted[edit] for edit in range(len(cases))]
                optimizer.zero_grad(set_to_none=True)
                losses[going].sum().backward()
                with copies.held(sorted(fitted)):
                    optimizer.step()
                active = [active[position] for position in going]
                for edit in active:
                    steps[edit] += 1

    def context(self) -> QueryContext:
        return QueryContext()


def reliability_batch(lalm: LALM, cases: Sequence[EditCase], audio_rows: bool) -> Batch:
    """The cases' reliability probes as one batch. The edited module sees one row per case: a
    prompt for a module of the LLM, a clip for one of the audio path (whose clips must then
    differ from case to case)."""
    batch = lalm.prepare([case.reliability for case in cases])
    clips = list(batch.inputs.get("audio_paths", ()))
    if audio_rows and (len(clips) != len(cases) or len(set(clips)) != len(clips)):
        raise ValueError(
            "parallel edits of the audio path need one distinct clip per case; run these "
            "cases one at a time (eval.parallel_edits=1)"
        )
    return batch


def build_ft(**fields: object) -> FineTuneEditor:
    """Hydra factory: `configs/method/ft_llm.yaml` and `ft_audio.yaml` point here."""
    return FineTuneEditor(FineTuneConfig(**fields))
