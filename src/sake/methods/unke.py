"""UnKE: an output shift of one decoder layer, then that whole layer trained to produce it.

Stage 1 finds the residual delta that, added to the chosen layer's output at one prompt token
(the audio in context), makes the model answer y_e: Adam on delta alone, its norm clamped to
`delta_clamp` times the original hidden state h's, plus a decay `delta_weight_decay *
|delta|^p / |h|^2` (`fit_output_shift`). As the reference runs it (`unke_wise/editing_method/
algo/unke/compute_z.py`): 24 updates (its 25 iterations, the last of which only measures), no
early stop, p = 1.

Stage 2 trains every parameter of that layer (attention, MLP, norms) with AdamW (weight decay
0.01, none on the norms) for `layer_steps` steps so that, on the edit prompt, its output at that
token becomes the shifted one, while its outputs on preservation prompts stay what they were.
The layer is run on the exact inputs the model fed it (hidden states and keyword arguments
recorded by forward pre-hooks), never on masks rebuilt by hand. `layer_loss` picks the loss:

- `reference` (`unke_main.py`): the mean squared error of the layer's outputs on every position
  of the edit prompt against the recorded ones with the shift added at the edit token, plus
  `preservation_weight` times the mean squared errors on the text and on the audio
  preservation prompts (padding included, as the reference computes them);
- `project`: |out_e - (h + delta)|^2 / |h|^2 at the edit token alone, plus
  `preservation_weight` times the mean squared change over real tokens of the preservation
  prompts relative to their mean square (averaged over the text and the audio batch).

Preservation prompts come from the training split, drawn per edit with a generator seeded by
the seed and the case id (so the order of edits does not matter): `text_preservation` text-only
probes and `audio_preservation` audio probes about the other attributes (the reference draws 30
text prompts for DeSTA2.5, 20 otherwise, and 5 audio clips, from a separate preservation set).
The final preservation term is reported as `extras["regularizer/mean"]`, the quantity λ-sweeps
over `preservation_weight` relate the locality metrics to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
from sake.methods.stats import PreservationPools
from sake.models.base import LALM, Batch
from sake.utils.params import trainable_only

LAYER_LOSSES = ("reference", "project")


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
    delta_steps: int = 24
    delta_lr: float = 0.5
    delta_clamp: float = 4.0
    delta_weight_decay: float = 1e-3
    delta_decay_power: int = 1
    delta_stop_loss: float = 0.0
    layer_steps: int = 50
    layer_lr: float = 2e-4
    layer_weight_decay: float = 0.01
    layer_loss: str = "reference"
    preservation_weight: float = 1.0
    text_preservation: int = 20
    audio_preservation: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.delta_steps < 1 or self.layer_steps < 1:
            raise ValueError(f"{self.name}: delta_steps and layer_steps must be at least 1")
        check_choice(self.name, "token", self.token, EDIT_TOKENS)
        check_choice(self.name, "layer_loss", self.layer_loss, LAYER_LOSSES)
        counts = (self.preservation_weight, self.text_preservation, self.audio_preservation)
        if min(counts) < 0:
            raise ValueError(f"{self.name}: preservation settings must be non-negative")

    def shift_settings(self) -> ShiftSettings:
        return ShiftSettings(
            self.delta_steps,
            self.delta_lr,
            self.delta_clamp,
            self.delta_weight_decay,
            self.delta_stop_loss,
            self.delta_decay_power,
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


def plain_mse(layer: nn.Module, kept: LayerInputs, target: Tensor | None = None) -> Tensor:
    """The reference's `nn.MSELoss()`: the mean over every element, padding included."""
    output = kept.call.replay(layer).float()
    wanted = kept.output if target is None else target
    return (output - wanted.float()).pow(2).mean()


def adamw_groups(parameters: Mapping[str, nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay everywhere but on the normalisation weights."""

    def owner(name: str) -> str:
        parts = name.split(".")
        return parts[-2] if len(parts) > 1 else name

    normed = [p for name, p in parameters.items() if "norm" in owner(name)]
    rest = [p for name, p in parameters.items() if "norm" not in owner(name)]
    groups = [{"params": rest, "weight_decay": weight_decay}]
    return groups + ([{"params": normed, "weight_decay": 0.0}] if normed else [])


class UnkeEditor:
    """Edits one decoder layer in two stages; undone by the layer's weight snapshot."""

    touches_audio_path = False

    @property
    def edited_roles(self) -> tuple[str, ...]:
        return (self.config.role,)

    def __init__(self, config: UnkeConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = EditorState()
        self.extras: dict[str, float] = {}
        self.pools = PreservationPools()

    def prepare(self, lalm: LALM, train_cases: Sequence[EditCase]) -> None:
        """Check the role and collect the training split's probes as preservation pools."""
        if role_touches_audio_path(self.config.role):
            raise ValueError(
                f"{self.name}: role {self.config.role!r} is in the audio path; UnKE edits a "
                "decoder layer of the LLM, e.g. role=llm.layer[1]"
            )
        if not lalm.modules.parameters(self.config.role):
            raise ValueError(f"{self.name}: role {self.config.role!r} holds no parameters")
        config = self.config
        self.pools = PreservationPools.for_editor(
            train_cases, self.name, config.text_preservation, config.audio_preservation
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
        kept = [layer_inputs(lalm, lalm.prepare(p), layer) for p in self._preservation(case) if p]
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

    def _preservation(self, case: EditCase) -> tuple[list[Probe], list[Probe]]:
        c = self.config
        return self.pools.draw(case, c.text_preservation, c.audio_preservation, c.seed)

    def _train_layer(
        self,
        layer: nn.Module,
        parameters: Mapping[str, nn.Parameter],
        edit: LayerInputs,
        index: int,
        target: Tensor,
        kept: Sequence[LayerInputs],
    ) -> tuple[float, float]:
        """AdamW on the layer; returns the final edit and preservation losses."""
        optimizer = torch.optim.AdamW(
            adamw_groups(parameters, self.config.layer_weight_decay), lr=self.config.layer_lr
        )
        weight = self.config.preservation_weight
        edit_term = self._edit_term(edit, index, target)
        with trainable_only(layer, parameters), torch.enable_grad():
            for _ in range(self.config.layer_steps):
                edit_loss, kept_loss = edit_term(layer), self._kept_term(layer, kept)
                loss = edit_loss + weight * kept_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                edit_loss, kept_loss = edit_term(layer), self._kept_term(layer, kept)
        return float(edit_loss), float(kept_loss)

    def _edit_term(
        self, edit: LayerInputs, index: int, target: Tensor
    ) -> Callable[[nn.Module], Tensor]:
        """The edit term of `layer_loss` as a function of the layer, its fixed parts made once."""
        if self.config.layer_loss == "reference":
            wanted = edit.output.clone()
            wanted[0, index] = target.to(wanted.dtype)
            return lambda layer: plain_mse(layer, edit, wanted)
        scale = edit.output[0, index].float().pow(2).sum().clamp_min(1e-12)

        def relative_error(layer: nn.Module) -> Tensor:
            output = edit.call.replay(layer)[0, index].float()
            return (output - target.to(output.device)).pow(2).sum() / scale

        return relative_error

    def _kept_term(self, layer: nn.Module, kept: Sequence[LayerInputs]) -> Tensor:
        """The preservation term of `layer_loss`: summed (reference) or averaged (project)."""
        if self.config.layer_loss == "reference":
            return sum((plain_mse(layer, k) for k in kept), torch.zeros(()))
        if not kept:
            return torch.zeros(())
        return sum(preservation_loss(layer, k) for k in kept) / len(kept)

    def context(self) -> QueryContext:
        return QueryContext()


def build_unke(**fields: object) -> UnkeEditor:
    """Hydra factory: `configs/method/unke.yaml` points here."""
    return UnkeEditor(UnkeConfig(**fields))
