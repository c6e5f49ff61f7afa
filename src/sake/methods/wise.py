"""WISE: edits written into a side memory of one MLP projection, used only when routed to.

The side memory is a trainable copy of the projection's weight (`role`, e.g.
`llm.layer[-2].mlp.down_proj`); the model's own weights never change. Per edit, masked SGD
(gradients reach a random `mask_ratio` of the weights, one mask per memory) with weight decay
trains the side memory, and after each step it is clamped element-wise to within
`norm_constraint` of the original weight. Two formulations, chosen by `variant`:

`reference` (the default) is WISE as SAKE ran it (`unke_wise/editing_method/algo/wise/WISE.py`,
`WISEMultimodal`, without retrieval or replay). The activation distance of a token is
||silu(x W_side^T) - silu(x W^T)||, the change the side memory makes to the SiLU of the
projection's output (SiLU is the backbone's activation, which the reference applies); a batch's
distance is the mean over all its positions, padding included. The loss is

    NLL(answer + end token | edit prompt) + relu(beta - d_e)
      + sum over the text and the audio preservation batches b of
        relu(d_b - alpha) + relu(d_b - d_e + gamma)

with d_e measured on the edit prompt and its answer. Training stops when the loss of the last
step is at most `stop_loss` and changed by at most `stop_delta` since the step before, or after
`steps` steps. The routing threshold is measured on the last forward pass of training, which is
the audio preservation batch (without its last row), not the edit: the memory keeps the
smallest such distance over its edits, times `act_ratio`. At inference every forward call of
the projection routes on its own: the whole prompt by its mean token distance, or by its
largest when it is longer than 100 tokens, and then every generated token by its own distance;
the side memory answers when the distance reaches the threshold.

`project` is the formulation this project prefers. The distance is |x (W_side - W)^T| averaged
over real tokens only; the loss is

    NLL(answer | edit prompt) + relu(beta - d_e) + mean_o relu(d_o - alpha)
      + mean_o relu(gamma - (d_e - d_o))

over the preservation prompts o, with every earlier edit of the memory kept in scope; training
stops at a loss below `stop_loss`; the threshold is the smallest distance of the memory's own
edit prompts, re-measured after each edit; and the router decides once per prompt, on real
tokens, and holds that decision for the generated tokens. With `shard_size` set, a memory that
holds that many edits is frozen and a fresh one (with a fresh mask) takes the next edits; with
`merge: ties` the frozen shards are merged into one memory by TIES (trim to the largest
`merge_density` of each shard's change, elect the sign per element, average the agreeing
values). In both, a router may hold several memories and sends each sample to the eligible one
with the largest distance.

Preservation prompts come from the training split: `text_preservation` text-only probes and
`audio_preservation` audio probes about the other attributes (the reference draws 10 and 10 from
a separate preservation set that likewise leaves out the edited attribute).

Undoing is removing the router: `state.reset()` drops the memories and the hooks, and the
model is exactly the original (no weight was written).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from sake.data.schema import EditCase, Probe
from sake.methods.base import EditorState, EditOutcome, QueryContext, check_choice
from sake.methods.hooks import ModuleRecorder, run_recording
from sake.methods.stats import PreservationPools
from sake.models.base import LALM, Batch
from sake.utils.params import trainable_only
from sake.utils.tensors import decode_tensor, encode_tensor

MERGES: tuple[str, ...] = ("ties",)
VARIANTS: tuple[str, ...] = ("reference", "project")
LONG_PROMPT_TOKENS = 100  # the reference routes longer inputs by their largest token distance


@dataclass(frozen=True)
class WiseConfig:
    """Hyperparameters of WISE; exactly the fields of `configs/method/wise.yaml`."""

    name: str
    variant: str = "reference"
    role: str = "llm.layer[-2].mlp.down_proj"
    lr: float = 1.0
    weight_decay: float = 1.0e-5
    steps: int = 60
    stop_loss: float = 0.02
    stop_delta: float = 1.0e-4
    mask_ratio: float = 0.2
    norm_constraint: float = 0.1
    alpha: float = 1.5
    beta: float = 10.0
    gamma: float = 6.0
    act_ratio: float = 0.7
    text_preservation: int = 10
    audio_preservation: int = 10
    target_prefix: str = ""
    shard_size: int | None = None
    merge: str | None = None
    merge_density: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.name, "variant", self.variant, VARIANTS)
        if self.steps < 1 or self.lr <= 0:
            raise ValueError(f"{self.name}: steps must be >= 1 and lr positive")
        if self.variant == "reference" and self.shard_size is not None:
            raise ValueError(
                f"{self.name}: the reference variant keeps one side memory; shard_size and "
                "merge belong to variant=project"
            )
        if not 0 < self.mask_ratio <= 1 or not 0 < self.merge_density <= 1:
            raise ValueError(f"{self.name}: mask_ratio and merge_density must lie in (0, 1]")
        if self.shard_size is not None and self.shard_size < 1:
            raise ValueError(f"{self.name}: shard_size must be at least 1 (or null)")
        if self.merge is not None and self.merge not in MERGES:
            raise ValueError(f"{self.name}: unknown merge {self.merge!r}; one of {MERGES}")


@dataclass(frozen=True)
class Activations:
    """Inputs of the projection on some prompts, and which of their tokens are real."""

    inputs: Tensor
    real: Tensor | None

    def distance(self, change: Tensor) -> Tensor:
        return activation_distance(self.inputs, change, self.real)

    def to_dict(self) -> dict[str, Any]:
        real = None if self.real is None else encode_tensor(self.real)
        return {"inputs": encode_tensor(self.inputs), "real": real}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Activations:
        real = None if data["real"] is None else decode_tensor(data["real"])
        return cls(decode_tensor(data["inputs"]), real)


@dataclass
class SideMemory:
    """One side-memory weight, the mask its gradients flow through, the projection inputs of
    the edit prompts written into it, and its routing threshold (their smallest distance)."""

    weight: Tensor
    mask: Tensor
    edit_inputs: list[Activations] = field(default_factory=list)
    min_distance: float = math.inf

    @property
    def edits(self) -> int:
        return len(self.edit_inputs)

    def update_threshold(self, original: Tensor) -> None:
        """The smallest activation distance of the memory's own edit prompts."""
        change = self.weight - original
        with torch.no_grad():
            self.min_distance = min(float(a.distance(change).mean()) for a in self.edit_inputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": encode_tensor(self.weight),
            "mask": encode_tensor(self.mask),
            "edit_inputs": [a.to_dict() for a in self.edit_inputs],
            "min_distance": self.min_distance if math.isfinite(self.min_distance) else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SideMemory:
        return cls(
            decode_tensor(data["weight"]),
            decode_tensor(data["mask"]),
            [Activations.from_dict(a) for a in data["edit_inputs"]],
            math.inf if data["min_distance"] is None else float(data["min_distance"]),
        )


def activation_distance(inputs: Tensor, change: Tensor, real: Tensor | None) -> Tensor:
    """(batch,) mean over real tokens of |x_t change^T|, inputs (batch, seq, d_in)."""
    per_token = functional.linear(inputs.float(), change.float()).norm(dim=-1)
    if real is None:
        return per_token.mean(dim=-1)
    real = real.to(per_token.dtype)
    return (per_token * real).sum(dim=-1) / real.sum(dim=-1).clamp_min(1)


def output_distance(inputs: Tensor, side: Tensor, original: Tensor) -> Tensor:
    """(batch, seq) per token ||silu(x side^T) - silu(x original^T)||: the reference's distance."""
    x = inputs.float()
    edited = functional.silu(functional.linear(x, side.float()))
    return (edited - functional.silu(functional.linear(x, original.float()))).norm(dim=-1)


def routing_distance(per_token: Tensor, real: Tensor | None) -> Tensor:
    """(batch,) the reference's routing distance of each row over its real tokens: the mean,
    or the largest token distance when the row holds more than `LONG_PROMPT_TOKENS` tokens."""
    if real is None:
        real = torch.ones_like(per_token, dtype=torch.bool)
    counts = real.sum(dim=-1)
    mean = (per_token * real).sum(dim=-1) / counts.clamp_min(1)
    peak = per_token.masked_fill(~real, -math.inf).max(dim=-1).values
    return torch.where(counts > LONG_PROMPT_TOKENS, peak, mean)


def ties_merge(base: Tensor, weights: Sequence[Tensor], density: float) -> Tensor:
    """TIES merging of the changes `weights - base`: trim, elect sign, disjoint mean."""
    changes = torch.stack([w.float() - base.float() for w in weights])
    flat = changes.reshape(len(weights), -1)
    keep = max(1, math.ceil(density * flat.shape[1]))
    cutoff = flat.abs().topk(keep, dim=1).values[:, -1:]
    trimmed = torch.where(flat.abs() >= cutoff, flat, torch.zeros_like(flat))
    elected = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    merged = (trimmed * agree).sum(dim=0) / agree.sum(dim=0).clamp_min(1)
    return (base.float() + merged.view_as(base)).to(base.dtype)


@dataclass
class SideTraining:
    """A side memory's weight under training: masked SGD with weight decay, each step
    followed by the element-wise clamp to within `norm_constraint` of the original weight."""

    side: Tensor
    optimizer: torch.optim.Optimizer
    mask: Tensor
    low: Tensor
    high: Tensor

    @classmethod
    def start(cls, memory: SideMemory, original: Tensor, config: WiseConfig) -> SideTraining:
        side = memory.weight.clone().requires_grad_(True)
        return cls(
            side,
            torch.optim.SGD([side], lr=config.lr, weight_decay=config.weight_decay),
            memory.mask.to(side.dtype),
            original - config.norm_constraint,
            original + config.norm_constraint,
        )

    def step(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.side.grad.mul_(self.mask)
        self.optimizer.step()
        with torch.no_grad():
            self.side.copy_(torch.maximum(torch.minimum(self.side, self.high), self.low))


class Router:
    """Hooks that route each sample through the original projection or a side memory."""

    def __init__(
        self,
        projection: nn.Linear,
        decoder: nn.Module,
        memories: Callable[[], list[SideMemory]],
        act_ratio: float,
        variant: str = "reference",
    ) -> None:
        self.projection = projection
        self.decoder = decoder
        self.memories = memories
        self.act_ratio = act_ratio
        self.variant = variant
        self.training_weight: Tensor | None = None
        self.last_routes: Tensor | None = None
        self._mask: Tensor | None = None
        self._handles: list[Any] = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> None:
        if self.installed:
            return
        self._handles = [
            self.decoder.register_forward_pre_hook(self._read_mask, with_kwargs=True),
            self.projection.register_forward_hook(self._route),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.last_routes = None
        self._mask = None

    def _read_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None

    def real_tokens(self, inputs: Tensor) -> Tensor | None:
        """The decoder's attention mask for the positions of `inputs`, when it matches."""
        mask = self._mask
        if mask is None or mask.shape[0] != inputs.shape[0] or mask.shape[1] < inputs.shape[1]:
            return None
        return mask[:, -inputs.shape[1] :].bool()

    def _route(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        inputs = args[0]
        if self.training_weight is not None:
            return functional.linear(inputs, self.training_weight, module.bias)
        memories = self.memories()
        if not memories:
            return output
        continuing = (
            self.variant == "project"
            and inputs.shape[1] == 1
            and self.last_routes is not None
            and len(self.last_routes) == inputs.shape[0]
        )
        if not continuing:
            self.last_routes = self.choose(inputs, memories)
        routed = output
        for index, memory in enumerate(memories):
            rows = self.last_routes == index
            if bool(rows.any()):
                side = functional.linear(inputs, memory.weight.to(inputs.dtype), module.bias)
                routed = torch.where(rows[:, None, None], side, routed)
        return routed

    def choose(self, inputs: Tensor, memories: Sequence[SideMemory]) -> Tensor:
        """Per row, the index of the memory it goes to, or -1 for the original weight."""
        real = self.real_tokens(inputs)
        original = self.projection.weight
        with torch.no_grad():
            distances = torch.stack(
                [self.distance(inputs, m.weight, original, real) for m in memories]
            )
        thresholds = torch.tensor([m.min_distance * self.act_ratio for m in memories])
        thresholds = thresholds.to(distances.device)[:, None]
        eligible = (
            distances >= thresholds if self.variant == "reference" else distances > thresholds
        )
        scored = torch.where(eligible, distances, torch.full_like(distances, -math.inf))
        best = scored.argmax(dim=0)
        return torch.where(eligible.any(dim=0), best, torch.full_like(best, -1))

    def distance(
        self, inputs: Tensor, side: Tensor, original: Tensor, real: Tensor | None
    ) -> Tensor:
        """(batch,) how far the side memory moves each row, in the variant's own measure."""
        if self.variant == "reference":
            return routing_distance(output_distance(inputs, side, original), real)
        return activation_distance(inputs, side - original, real)


@dataclass
class WiseState(EditorState):
    """Frozen memory shards, the memory being written, and the router that reads them."""

    shards: list[SideMemory] = field(default_factory=list)
    active: SideMemory | None = None
    router: Router | None = field(default=None, repr=False, compare=False)

    def memories(self) -> list[SideMemory]:
        """Every memory the router may send a sample to."""
        return [*self.shards, *([] if self.active is None else [self.active])]

    def sync_router(self) -> None:
        """Hooks in place exactly while there is a memory to route to."""
        if self.router is None:
            return
        if self.memories():
            self.router.install()
        else:
            self.router.remove()

    def reset(self) -> None:
        super().reset()
        self.shards.clear()
        self.active = None
        self.sync_router()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "shards": [memory.to_dict() for memory in self.shards],
            "active": None if self.active is None else self.active.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.shards = [SideMemory.from_dict(m) for m in state.get("shards", ())]
        active = state.get("active")
        self.active = None if active is None else SideMemory.from_dict(active)
        self.sync_router()


class WiseEditor:
    """Edits a side memory of one projection; a router decides per sample which one answers."""

    touches_audio_path = False

    @property
    def edited_roles(self) -> tuple[str, ...]:
        return (self.config.role,)

    def __init__(self, config: WiseConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = WiseState()
        self.extras: dict[str, float] = {}
        self.pools = PreservationPools()
        self._projection: nn.Linear | None = None

    def prepare(self, lalm: LALM, train_cases: Sequence[EditCase]) -> None:
        """Pool the preservation probes; bind the router to the projection and the decoder."""
        config = self.config
        self.pools = PreservationPools.for_editor(
            train_cases, self.name, config.text_preservation, config.audio_preservation
        )
        self.attach(lalm)

    def attach(self, lalm: LALM) -> None:
        """Bind the router to `lalm`'s projection and decoder (no training data needed): it
        routes to the memories the state holds, and to none while it holds none."""
        projection = lalm.modules.resolve(self.config.role).module
        if not isinstance(projection, nn.Linear):
            raise TypeError(
                f"{self.name}: role {self.config.role!r} is a {type(projection).__name__}; "
                "WISE keeps a side memory of a linear projection"
            )
        if self.state.router is not None:
            self.state.router.remove()
        self._projection = projection
        self.state.router = Router(
            projection,
            decoder_of(lalm),
            self.state.memories,
            self.config.act_ratio,
            self.config.variant,
        )
        self.state.sync_router()

    def apply(self, lalm: LALM, case: EditCase) -> EditOutcome:
        start = perf_counter()
        if self._projection is None or self.state.router is None:
            raise RuntimeError(f"{self.name}: call prepare() before apply()")
        memory = self.state.active or self._fresh_memory()
        if self.config.variant == "reference":
            steps, final_loss, distances = self._train_reference(lalm, case, memory)
        else:
            steps, final_loss, distances = self._train(lalm, case, memory)
            memory.update_threshold(self._projection.weight.detach())
        self.state.active = memory
        self._close_full_shard()
        self.state.record(case)
        self.state.sync_router()
        self.extras = {
            "distance/in_scope": distances["in_scope"],
            "regularizer/mean": distances["out_of_scope"],
        }
        if math.isfinite(memory.min_distance):
            self.extras["routing/threshold"] = memory.min_distance * self.config.act_ratio
        return EditOutcome(None, steps, final_loss, perf_counter() - start)

    def _fresh_memory(self) -> SideMemory:
        assert self._projection is not None
        weight = self._projection.weight.detach().clone()
        # the edits so far number the memory, so that every shard gets its own mask
        rng = np.random.default_rng([self.config.seed, len(self.state.edits)])
        mask = torch.from_numpy(rng.random(tuple(weight.shape)) < self.config.mask_ratio)
        return SideMemory(weight, mask.to(weight.device))

    def _close_full_shard(self) -> None:
        active = self.state.active
        if self.config.shard_size is None or active is None:
            return
        if active.edits < self.config.shard_size:
            return
        self.state.shards.append(active)
        self.state.active = None
        if self.config.merge == "ties" and len(self.state.shards) > 1:
            self.state.shards = [self._merged(self.state.shards)]

    def _merged(self, shards: Sequence[SideMemory]) -> SideMemory:
        """One memory holding every shard's edits; its threshold is measured on the merge."""
        assert self._projection is not None
        original = self._projection.weight.detach()
        weight = ties_merge(original, [m.weight for m in shards], self.config.merge_density)
        mask = torch.stack([m.mask for m in shards]).any(dim=0)
        merged = SideMemory(weight, mask, [a for m in shards for a in m.edit_inputs])
        merged.update_threshold(original)
        return merged

    def _train(
        self, lalm: LALM, case: EditCase, memory: SideMemory
    ) -> tuple[int, float, dict[str, float]]:
        """SGD on the memory's weight; returns steps, final NLL and the final distances.

        The memory's earlier edit prompts stay in scope (WISE's replay of the in-scope
        activation terms), so that writing a new edit does not stop them being routed here.
        """
        assert self._projection is not None
        batch = lalm.prepare([case.reliability])
        target = [self.config.target_prefix + case.reliability.answer]
        current = self._projection_inputs(lalm, batch)
        in_scope = [current, *memory.edit_inputs]
        out_of_scope = self._out_of_scope_inputs(lalm, case)
        original = self._projection.weight.detach()
        training = SideTraining.start(memory, original, self.config)
        side = training.side
        steps = 0
        with self._routed_to(lalm, side):
            while True:
                nll = lalm.target_nll(batch, target).mean()
                margin = self._margin_loss(side - original, in_scope, out_of_scope)
                loss = nll + margin
                if float(loss.detach()) < self.config.stop_loss or steps == self.config.steps:
                    break
                training.step(loss)
                steps += 1
        memory.weight = side.detach()
        memory.edit_inputs.append(current)
        distances = self._distances(memory.weight - original, current, out_of_scope)
        return steps, float(nll.detach()), distances

    def _margin_loss(
        self, change: Tensor, in_scope: Sequence[Activations], out_of_scope: Activations | None
    ) -> Tensor:
        c = self.config
        d_in = torch.stack([a.distance(change).mean() for a in in_scope])
        loss = torch.relu(c.beta - d_in).mean()
        if out_of_scope is not None:
            d_out = out_of_scope.distance(change)
            loss = loss + torch.relu(d_out - c.alpha).mean()
            loss = loss + torch.relu(c.gamma - (d_in[:, None] - d_out[None, :])).mean()
        return loss

    @staticmethod
    def _distances(
        change: Tensor, in_scope: Activations, out_of_scope: Activations | None
    ) -> dict[str, float]:
        with torch.no_grad():
            d_in = float(in_scope.distance(change).mean())
            d_out = 0.0 if out_of_scope is None else float(out_of_scope.distance(change).mean())
        return {"in_scope": d_in, "out_of_scope": d_out}

    def _projection_inputs(self, lalm: LALM, batch: Batch) -> Activations:
        """The projection's inputs on the prompts of `batch`."""
        assert self._projection is not None
        recorder = ModuleRecorder(self._projection, stop=True)
        run_recording(lambda: lalm.next_token_logits(batch), recorder)
        return Activations(recorder.last.hidden_states, batch.attention_mask.bool())

    def _out_of_scope_inputs(self, lalm: LALM, case: EditCase) -> Activations | None:
        text, audio = self._preservation(case)
        if not text and not audio:
            return None
        return self._projection_inputs(lalm, lalm.prepare([*text, *audio]))

    def _preservation(self, case: EditCase) -> tuple[list[Probe], list[Probe]]:
        c = self.config
        return self.pools.draw(case, c.text_preservation, c.audio_preservation, c.seed)

    def _train_reference(
        self, lalm: LALM, case: EditCase, memory: SideMemory
    ) -> tuple[int, float, dict[str, float]]:
        """The reference's training loop (module docstring); lowers the memory's threshold to
        the distance of the last forward pass when that pass had more than one row."""
        assert self._projection is not None
        c = self.config
        batch = lalm.prepare([case.reliability])
        target = [c.target_prefix + case.reliability.answer]
        edit_inputs = self._teacher_forced_inputs(lalm, batch, target)
        # text first, then audio: the last forward pass of each step is the audio batch
        preservation = [
            self._projection_inputs(lalm, lalm.prepare(probes)).inputs
            for probes in self._preservation(case)
            if probes
        ]
        last_pass = preservation[-1] if preservation else edit_inputs
        original = self._projection.weight.detach()
        training = SideTraining.start(memory, original, c)
        side = training.side
        previous, latest = 0.0, math.inf
        threshold = math.nan
        steps = 0
        with self._routed_to(lalm, side):
            for step in range(c.steps):
                nll = lalm.target_nll(batch, target, include_end=True).mean()
                penalty = reference_penalty(
                    output_distance(edit_inputs, side, original).mean(),
                    [output_distance(x, side, original).mean() for x in preservation],
                    c,
                )
                loss = nll + penalty
                if early_stopped(previous, latest, c):
                    threshold = last_pass_distance(last_pass, side, original)
                    break
                if step == c.steps - 1:
                    threshold = last_pass_distance(last_pass, side, original)
                training.step(loss)
                steps += 1
                previous, latest = latest, float(loss.detach())
        memory.weight = side.detach()
        if not math.isnan(threshold):
            memory.min_distance = min(memory.min_distance, threshold)
        with torch.no_grad():
            kept = [float(output_distance(x, memory.weight, original).mean()) for x in preservation]
            distances = {
                "in_scope": float(output_distance(edit_inputs, memory.weight, original).mean()),
                "out_of_scope": float(np.mean(kept)) if kept else 0.0,
            }
        return steps, float(nll.detach()), distances

    @contextmanager
    def _routed_to(self, lalm: LALM, side: Tensor) -> Iterator[None]:
        """Every forward pass runs the projection with `side`, with gradients flowing to it
        alone, until the block ends."""
        router = self.state.router
        assert router is not None
        router.install()
        router.training_weight = side
        try:
            with trainable_only(lalm.model, {}), torch.enable_grad():
                yield
        finally:
            router.training_weight = None

    def _teacher_forced_inputs(self, lalm: LALM, batch: Batch, target: list[str]) -> Tensor:
        """The projection's inputs on the edit prompt followed by its answer and end token."""
        assert self._projection is not None
        recorder = ModuleRecorder(self._projection, stop=True)
        run_recording(lambda: lalm.target_nll(batch, target, include_end=True), recorder)
        return recorder.last.hidden_states

    def context(self) -> QueryContext:
        return QueryContext()


def reference_penalty(d_edit: Tensor, d_kept: Sequence[Tensor], config: WiseConfig) -> Tensor:
    """relu(beta - d_e) + the sum over preservation batches b of relu(d_b - alpha) and
    relu(d_b - d_e + gamma), as the reference's `_compute_activation_penalty`."""
    penalty = torch.relu(config.beta - d_edit)
    for distance in d_kept:
        penalty = penalty + torch.relu(distance - config.alpha)
        penalty = penalty + torch.relu(distance - d_edit + config.gamma)
    return penalty


def early_stopped(previous: float, latest: float, config: WiseConfig) -> bool:
    """The reference's stop rule, read before a step: the last loss is small and settled."""
    return abs(latest - previous) <= config.stop_delta and latest <= config.stop_loss


def last_pass_distance(inputs: Tensor, side: Tensor, original: Tensor) -> float:
    """The reference's threshold measurement: the mean distance of the last batch without its
    last row (NaN when that leaves nothing, which leaves the threshold where it was)."""
    rows = inputs[:-1]
    if rows.shape[0] == 0:
        return math.nan
    with torch.no_grad():
        return float(output_distance(rows, side, original).mean())


def decoder_of(lalm: LALM) -> nn.Module:
    """The module that owns the decoder layers; its forward receives the attention mask."""
    name = lalm.modules.layers_name.rsplit(".", 1)[0]
    return lalm.model.get_submodule(name)


def build_wise(**fields: object) -> WiseEditor:
    """Hydra factory: `configs/method/wise.yaml` points here."""
    return WiseEditor(WiseConfig(**fields))
