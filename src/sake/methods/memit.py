"""MEMIT: closed-form locate-then-edit updates of the MLP output projections of a layer range.

For one edit, the target hidden state z of the last edited layer at the last token of the
question (the audio in context; its `Options:` block excluded; `token: prompt_end` takes the
prompt's last token instead) is found by optimising a shift of that layer's output until the
model answers y_e (`fit_output_shift`). The layers are then updated in order; for layer
l, with keys K (inputs of its projection at that token, on the model as edited so far),
residual R = (z - current output) / (layers left) and C the second moment of the projection's
inputs over a preservation corpus, the update

    delta = R K^T (K K^T + lam C)^-1

is the minimiser of |delta K - R|^2 + lam E_j |delta k_j|^2 over preservation keys k_j, i.e.
the least-squares edit of W K towards M = W K + R that keeps the outputs on preservation keys.
Solves run in float32 whatever the model's dtype.

The regularizer actually paid, sqrt(E_j |delta k_j|^2) = sqrt(tr(delta C delta^T)), is
reported per layer in `extras` after every edit (`regularizer/layer<i>` and
`regularizer/mean`); it is what λ-sweeps relate the locality metrics to.

Preservation statistics come from the training split's probes (audio and text), at most
`stats_probes` of them in a seeded order, and are cached on disk under `stats_dir` keyed by
model fingerprint, layer and corpus (`sake.methods.stats`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
from torch import Tensor, nn

from sake.data.schema import EditCase
from sake.methods.base import EditorState, EditOutcome, QueryContext, WeightSnapshot, check_choice
from sake.methods.hooks import (
    EDIT_TOKENS,
    ModuleRecorder,
    OutputShift,
    ShiftSettings,
    edit_token_offset,
    fit_output_shift,
    run_recording,
)
from sake.methods.stats import SecondMoment, SecondMomentCache, preservation_probes
from sake.models.base import LALM, Batch


@dataclass(frozen=True)
class LocateSettings:
    """What MEMIT-style editors share: where the edit lands and how its target is found.

    `layers` are LLM layer indices (negative ones count from the end); `module` is the
    projection inside each layer that is edited; `token` where keys are read (`question`: the
    question's last token, `prompt_end`: the prompt's); `v_*` the target shift's optimisation;
    `stats_*` the preservation corpus of the key statistics.
    """

    name: str
    layers: tuple[int, ...] = (1, 2)
    module: str = "mlp.down_proj"
    token: str = "prompt_end"
    v_steps: int = 25
    v_lr: float = 0.5
    v_clamp: float = 4.0
    v_weight_decay: float = 1e-3
    v_stop_loss: float = 0.05
    stats_probes: int = 2000
    stats_batch_size: int = 32
    stats_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if not self.layers:
            raise ValueError(f"{self.name}: layers must name at least one layer")
        check_choice(self.name, "token", self.token, EDIT_TOKENS)
        if self.v_steps < 1 or self.stats_probes < 1 or self.stats_batch_size < 1:
            raise ValueError(f"{self.name}: v_steps, stats_probes, stats_batch_size must be >= 1")

    def shift_settings(self) -> ShiftSettings:
        return ShiftSettings(
            self.v_steps, self.v_lr, self.v_clamp, self.v_weight_decay, self.v_stop_loss
        )


@dataclass(frozen=True)
class MemitConfig(LocateSettings):
    """Hyperparameters of MEMIT; exactly the fields of `configs/method/memit.yaml`: the shared
    `LocateSettings` and `lam`, the preservation strength λ."""

    lam: float = 5.0e2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lam < 0:
            raise ValueError(f"{self.name}: lam must be non-negative, got {self.lam}")


def memit_update(keys: Tensor, residuals: Tensor, second_moment: Tensor, lam: float) -> Tensor:
    """delta = R K^T (K K^T + lam C)^-1 in float32: keys (d_in, n), residuals (d_out, n)."""
    keys, residuals = keys.float(), residuals.float()
    system = lam * second_moment.float() + keys @ keys.T
    return residuals @ torch.linalg.solve(system, keys).T


def regularizer_norm(delta: Tensor, second_moment: Tensor) -> float:
    """sqrt(E_j |delta k_j|^2) over the keys whose second moment is given."""
    delta = delta.float()
    return float(((delta @ second_moment.float()) * delta).sum().clamp_min(0).sqrt())


class MemitEditor:
    """Edits by closed-form updates of the projections of `layers`; undone by its snapshot."""

    touches_audio_path = False

    @property
    def edited_roles(self) -> tuple[str, ...]:
        return tuple(f"llm.layer[{layer}].{self.config.module}" for layer in self.config.layers)

    def __init__(self, config: MemitConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = EditorState()
        self.extras: dict[str, float] = {}
        self._moments: dict[str, SecondMoment] = {}

    def layer_indices(self, lalm: LALM) -> list[int]:
        """The edited layers as non-negative indices, from the first to the last."""
        return sorted({lalm.modules.layer_index(i) for i in self.config.layers})

    def roles(self, lalm: LALM) -> list[str]:
        """The edited projections' roles, from the first layer to the last."""
        return [self._role(i) for i in self.layer_indices(lalm)]

    def _role(self, layer: int) -> str:
        return f"llm.layer[{layer}].{self.config.module}"

    @property
    def moments(self) -> Mapping[str, SecondMoment]:
        """The key statistics `prepare` loaded or computed, by role."""
        return dict(self._moments)

    def prepare(self, lalm: LALM, train_cases: Sequence[EditCase]) -> None:
        """Load or compute the key statistics of every edited layer."""
        for role in self.roles(lalm):
            module = lalm.modules.resolve(role).module
            if not isinstance(module, nn.Linear):
                raise TypeError(
                    f"{self.name}: role {role!r} is a {type(module).__name__}, "
                    "MEMIT edits a linear projection"
                )
        corpus = preservation_probes(train_cases)
        if not corpus:
            raise ValueError(
                f"{self.name} computes its preservation statistics on the training split, but "
                "the dataset has no training cases; use a dataset with a train split"
            )
        order = np.random.default_rng(self.config.seed).permutation(len(corpus))
        corpus = [corpus[i] for i in order[: self.config.stats_probes]]
        cache = SecondMomentCache(
            None if self.config.stats_dir is None else Path(self.config.stats_dir)
        )
        fingerprint = lalm.fingerprint()
        self._moments = cache.get(
            lalm, fingerprint, self.roles(lalm), corpus, self.config.stats_batch_size
        )

    def apply(self, lalm: LALM, case: EditCase) -> EditOutcome:
        start = perf_counter()
        if not self._moments:
            raise RuntimeError(f"{self.name}: call prepare() before apply()")
        weights = self._weights(lalm)
        snapshot = WeightSnapshot.take(weights)
        try:
            shift, regularizers, final_loss = self._edit(lalm, case)
        except BaseException:
            snapshot.restore()
            raise
        self.state.record(case)
        self.extras = {
            **{f"regularizer/layer{layer}": value for layer, value in regularizers.items()},
            "regularizer/mean": float(np.mean(list(regularizers.values()))),
            "shift/nll": shift.nll,
        }
        return EditOutcome(snapshot, shift.steps, final_loss, perf_counter() - start)

    def _weights(self, lalm: LALM) -> dict[str, nn.Parameter]:
        weights = {}
        for role in self.roles(lalm):
            resolved = lalm.modules.resolve(role)
            weights[f"{resolved.name}.weight"] = resolved.module.weight
        return weights

    def _edit(self, lalm: LALM, case: EditCase) -> tuple[OutputShift, dict[int, float], float]:
        batch = lalm.prepare([case.reliability])
        target = case.reliability.answer
        offset = edit_token_offset(lalm, batch, case.reliability, self.config.token)
        layers = self.layer_indices(lalm)
        last_layer = lalm.modules.resolve(f"llm.layer[{layers[-1]}]").module
        shift = fit_output_shift(
            lalm, batch, target, last_layer, offset, self.config.shift_settings()
        )
        regularizers = {}
        for done, layer in enumerate(layers):
            role = self._role(layer)
            key, current = self._key_and_output(lalm, batch, role, last_layer, offset)
            residual = (shift.target - current) / (len(layers) - done)
            moment = self._moments[role].matrix
            delta = self._layer_update(role, key[:, None], residual[:, None])
            projection = lalm.modules.resolve(role).module
            with torch.no_grad():
                projection.weight.add_(delta.to(projection.weight.dtype))
            regularizers[layer] = regularizer_norm(delta, moment)
        with torch.no_grad():
            final_loss = float(lalm.target_nll(batch, [target]).mean())
        return shift, regularizers, final_loss

    def _layer_update(self, role: str, keys: Tensor, residuals: Tensor) -> Tensor:
        """The (d_out, d_in) update of one projection for keys (d_in, n), residuals (d_out, n)."""
        return memit_update(keys, residuals, self._moments[role].matrix, self.config.lam)

    @staticmethod
    def _key_and_output(
        lalm: LALM, batch: Batch, role: str, last_layer: nn.Module, offset: int
    ) -> tuple[Tensor, Tensor]:
        """The projection's input and the last edited layer's output at the question token."""
        keys = ModuleRecorder(lalm.modules.resolve(role).module)
        outputs = ModuleRecorder(last_layer, stop=True)
        run_recording(lambda: lalm.next_token_logits(batch), keys, outputs)
        index = -(1 + offset)
        output = outputs.last.output
        assert output is not None
        return keys.last.hidden_states[0, index].float(), output[0, index].float()

    def context(self) -> QueryContext:
        return QueryContext()


def build_memit(**fields: object) -> MemitEditor:
    """Hydra factory: `configs/method/memit.yaml` points here."""
    return MemitEditor(MemitConfig(**fields))
