"""UnKE: an output shift of one decoder layer, then that whole layer trained to produce it.

Stage 1 finds the residual delta that, added to the chosen layer's output at the last token of
the edit question (the audio in context), makes the model answer y_e: Adam on delta alone,
its norm clamped relative to the original hidden state, with a small weight decay
(`fit_output_shift`).

Stage 2 trains every parameter of that layer (attention, MLP, norms) with AdamW so that, on the
edit prompt, its output at that token becomes the shifted one, while its outputs on
preservation prompts stay what they were: loss = |out_e - (h + delta)|^2 / |h|^2 +
preservation_weight * mean over real tokens of |out_p - out_p^0|^2 / mean |out_p^0|^2. The
layer is run on the exact inputs the model fed it (hidden states and keyword arguments
recorded by forward pre-hooks), never on masks rebuilt by hand.

Preservation prompts are drawn from the training split, half with audio and half text-only,
per edit with a generator seeded by the seed and the case id (so the order of edits does not
matter). The final preservation term is reported as `extras["regularizer/mean"]`, the
quantity λ-sweeps over `preservation_weight` relate the locality metrics to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter

import torch
from torch import Tensor, nn

from sake.data.schema import EditCase, Probe
from sake.methods.base import (
    EditorState,
    EditOutcome,
    QueryContext,
    WeightSnapshot,
    check_choice,
    role_touches_audio_path,
)
from sake.methods.hooks import (
    EDIT_TOKENS,
    LayerCall,
    ModuleRecorder,
    ShiftSettings,
    edit_token_offset,
    fit_output_shift,
    run_recording,
)
from sake.methods.stats import balanced_sample, case_rng, preservation_probes
from sake.models.base import LALM, Batch
from sake.utils.params import trainable_only


@dataclass(frozen=True)
class UnkeConfig:
    """Hyperparameters of UnKE; exactly the fields of `configs/method/unke.yaml`.

    `role` names the decoder layer (`llm.layer[i]`); `token` the token the shift is written at
    (`question`: the question's last token, `prompt_end`: the prompt's);
    `preservation_weight` is the locality regularizer's strength λ.
    """

    name: str
    role: str = "llm.layer[1]"
    token: str = "prompt_end"
    delta_steps: int = 25
    delta_lr: float = 0.5
    delta_clamp: float = 4.0
    delta_weight_decay: float = 1e-3
    delta_stop_loss: float = 0.05
    layer_steps: int = 50
    layer_lr: float = 2e-4
    preservation_weight: float = 1.0
    preservation_probes: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.delta_steps < 1 or self.layer_steps < 1:
            raise ValueError(f"{self.name}: delta_steps and layer_steps must be at least 1")
        check_choice(self.name, "token", self.token, EDIT_TOKENS)
        if self.preservation_weight < 0 or self.preservation_probes < 0:
            raise ValueError(f"{self.name}: preservation settings must be non-negative")

    def shift_settings(self) -> ShiftSettings:
        return ShiftSettings(
            self.delta_steps,
            self.delta_lr,
            self.delta_clamp,
            self.delta_weight_decay,
            self.delta_stop_loss,
        )


@dataclass
class LayerInputs:
    """What one forward pass fed the layer and what the layer gave back, for replay."""

    call: LayerCall
    output: Tensor
    real: Tensor  # (batch, seq) bool: positions that are not padding


def layer_inputs(lalm: LALM, batch: Batch, layer: nn.Module) -> LayerInputs:
    """Record the layer's call on the prompts of `batch` (the forward stops after the layer)."""
    recorder = ModuleRecorder(layer, stop=True)
    run_recording(lambda: lalm.next_token_logits(batch), recorder)
    call = recorder.last
    assert call.output is not None
    return LayerInputs(call, call.output, batch.attention_mask.bool())


def preservation_loss(layer: nn.Module, kept: LayerInputs) -> Tensor:
    """Mean squared change of the layer's outputs over real tokens, relative to their size."""
    output = kept.call.replay(layer)
    change = (output - kept.output)[kept.real].float().pow(2).mean()
    return change / kept.output[kept.real].float().pow(2).mean().clamp_min(1e-12)


class UnkeEditor:
    """Edits one decoder layer in two stages; undone by the layer's weight snapshot."""

    touches_audio_path = False

    def __init__(self, config: UnkeConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = EditorState()
        self.extras: dict[str, float] = {}
        self._pool: list[Probe] = []

    @property
    def preservation_pool(self) -> list[Probe]:
        """The training-split probes preservation prompts are drawn from."""
        return list(self._pool)

    def prepare(self, lalm: LALM, train_cases: Sequence[EditCase]) -> None:
        """Check the role and collect the training split's probes as preservation pool."""
        if role_touches_audio_path(self.config.role):
            raise ValueError(
                f"{self.name}: role {self.config.role!r} is in the audio path; UnKE edits a "
                "decoder layer of the LLM, e.g. role=llm.layer[1]"
            )
        if not lalm.modules.parameters(self.config.role):
            raise ValueError(f"{self.name}: role {self.config.role!r} holds no parameters")
        self._pool = preservation_probes(train_cases)
        if self.config.preservation_probes and not self._pool:
            raise ValueError(
                f"{self.name} keeps outputs on training-split probes, but the dataset has no "
                "training cases; use a dataset with a train split or preservation_probes=0"
            )

    def apply(self, lalm: LALM, case: EditCase) -> EditOutcome:
        start = perf_counter()
        parameters = lalm.modules.parameters(self.config.role)
        snapshot = WeightSnapshot.take(parameters)
        try:
            steps, final_loss, extras = self._edit(lalm, case, parameters)
        except BaseException:
            snapshot.restore()
            raise
        self.state.record(case)
        self.extras = extras
        return EditOutcome(snapshot, steps, final_loss, perf_counter() - start)

    def _edit(
        self, lalm: LALM, case: EditCase, parameters: Mapping[str, nn.Parameter]
    ) -> tuple[int, float, dict[str, float]]:
        layer = lalm.modules.resolve(self.config.role).module
        batch = lalm.prepare([case.reliability])
        offset = edit_token_offset(lalm, batch, case.reliability, self.config.token)
        shift = fit_output_shift(
            lalm, batch, case.reliability.answer, layer, offset, self.config.shift_settings()
        )
        edit = layer_inputs(lalm, batch, layer)
        kept = self._preserved(lalm, case, layer)
        edit_loss, kept_loss = self._train_layer(
            layer, parameters, edit, -(1 + offset), shift.target, kept
        )
        with torch.no_grad():
            final_loss = float(lalm.target_nll(batch, [case.reliability.answer]).mean())
        extras = {
            "shift/nll": shift.nll,
            "stage2/edit_loss": edit_loss,
            "regularizer/mean": kept_loss,
        }
        return shift.steps + self.config.layer_steps, final_loss, extras

    def _preserved(self, lalm: LALM, case: EditCase, layer: nn.Module) -> LayerInputs | None:
        if not self.config.preservation_probes:
            return None
        rng = case_rng(self.config.seed, case.case_id)
        probes = balanced_sample(self._pool, self.config.preservation_probes, rng)
        return layer_inputs(lalm, lalm.prepare(probes), layer)

    def _train_layer(
        self,
        layer: nn.Module,
        parameters: Mapping[str, nn.Parameter],
        edit: LayerInputs,
        index: int,
        target: Tensor,
        kept: LayerInputs | None,
    ) -> tuple[float, float]:
        """AdamW on the layer; returns the final edit and preservation losses."""
        optimizer = torch.optim.AdamW(parameters.values(), lr=self.config.layer_lr)
        scale = edit.output[0, index].float().pow(2).sum().clamp_min(1e-12)
        weight = self.config.preservation_weight
        with trainable_only(layer, parameters), torch.enable_grad():
            for _ in range(self.config.layer_steps):
                edit_loss = self._edit_loss(layer, edit, index, target, scale)
                kept_loss = preservation_loss(layer, kept) if kept is not None else None
                loss = edit_loss if kept_loss is None else edit_loss + weight * kept_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                edit_loss = self._edit_loss(layer, edit, index, target, scale)
                kept_loss = preservation_loss(layer, kept) if kept is not None else torch.zeros(())
        return float(edit_loss), float(kept_loss)

    @staticmethod
    def _edit_loss(
        layer: nn.Module, edit: LayerInputs, index: int, target: Tensor, scale: Tensor
    ) -> Tensor:
        output = edit.call.replay(layer)[0, index].float()
        return (output - target.to(output.device)).pow(2).sum() / scale

    def context(self) -> QueryContext:
        return QueryContext()


def build_unke(**fields: object) -> UnkeEditor:
    """Hydra factory: `configs/method/unke.yaml` points here."""
    return UnkeEditor(UnkeConfig(**fields))
