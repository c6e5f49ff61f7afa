"""GRACE: a codebook of keys and values at one linear layer, each key with a deferral radius.

As in "Aging with GRACE: Lifelong Model Editing with Discrete Key-Value Adaptors" (Hartvigsen
et al., NeurIPS 2023) and EasyEdit's `GRACE.py`: the layer's input at the edit token (the last
token of the prompt) is the query. Editing looks the query up once: with no key within
`eps` + its radius, it becomes a new key with a fresh value (`cold`: uniform noise, `warm`: the
layer's own output) and radius `eps`; near a key of another answer, it is added too and both
radii shrink to half their distance; near a key of the same answer, that key's radius grows to
cover it (`coverage`) or the key moves halfway towards it (`moving_average`). The chosen value
is then trained with Adam (`edit_lr`, `n_iter` steps) to make the model answer y_e while it
replaces the layer's output at the edit token. At inference every forward pass queries the
codebook with the layer's input at the last token it sees (the prompt's last token, then each
generated token) and replaces the output there when the nearest key lies within its radius
(`replacement: replace_last`; `replace_all` replaces every position, `replace_prompt` every
position before it). The weights never change: the codebook is the edit, and reset empties it.

Audio-aware keys (`key: audio`, this project's option): the key is the mean of the layer's
inputs over the prompt's audio placeholder positions instead of the last token's input, so the
lookup asks "is this the edited clip (or one like it)?" rather than "is this the edited
prompt?". A forward pass without audio positions (a text-only prompt, a generated token) is
never looked up; the value still replaces the output at the edit token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import torch
from torch import Tensor, nn

from sake.data.schema import EditCase
from sake.methods.base import EditorState, EditOutcome, QueryContext, check_choice
from sake.models.base import LALM
from sake.utils.params import trainable_only
from sake.utils.tensors import decode_tensor, encode_tensor

VALUE_INITS = ("cold", "warm")
EXPANSIONS = ("coverage", "moving_average")
REPLACEMENTS = ("replace_last", "replace_all", "replace_prompt")
KEYS = ("last_token", "audio")


@dataclass(frozen=True)
class GraceConfig:
    """Hyperparameters of GRACE; exactly the fields of `configs/method/grace.yaml`."""

    name: str
    role: str = "llm.layer[-1].mlp.down_proj"
    n_iter: int = 100
    edit_lr: float = 1.0
    eps: float = 1.0
    eps_expand: str = "coverage"
    val_init: str = "cold"
    replacement: str = "replace_last"
    key: str = "last_token"
    supervise_end: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.name, "key", self.key, KEYS)
        check_choice(self.name, "val_init", self.val_init, VALUE_INITS)
        check_choice(self.name, "eps_expand", self.eps_expand, EXPANSIONS)
        check_choice(self.name, "replacement", self.replacement, REPLACEMENTS)
        if self.n_iter < 1 or self.edit_lr <= 0 or self.eps <= 0:
            raise ValueError(f"{self.name}: n_iter, edit_lr and eps must be positive")


@dataclass
class Codebook:
    """Keys (n, d_in), values (n, d_out), radii (n,) and the answer each key stands for."""

    keys: Tensor
    values: Tensor
    radii: Tensor
    answers: list[str]

    def __len__(self) -> int:
        return len(self.answers)

    def nearest(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """Per query (rows, d_in), the distance to its nearest key and that key's index."""
        distances = torch.cdist(queries.float(), self.keys.float())
        return distances.min(dim=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": encode_tensor(self.keys),
            "values": encode_tensor(self.values),
            "radii": encode_tensor(self.radii),
            "answers": list(self.answers),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Codebook:
        return cls(
            decode_tensor(data["keys"]),
            decode_tensor(data["values"]),
            decode_tensor(data["radii"]),
            list(data["answers"]),
        )


class CodebookLayer:
    """A forward hook on the edited linear layer that swaps in codebook values.

    With audio keys, a pre-hook on the token embedding notes where the current forward pass's
    audio placeholders are (`audio_token_id`).
    """

    def __init__(
        self,
        module: nn.Module,
        replacement: str,
        embedding: nn.Module | None = None,
        audio_token_id: int | None = None,
    ) -> None:
        self.module = module
        self.replacement = replacement
        self.embedding = embedding
        self.audio_token_id = audio_token_id
        self.audio_positions: Tensor | None = None
        self.codebook: Codebook | None = None
        self.key_index: int | None = None  # the edit token while training; else the last
        self.trained: Tensor | None = None  # the value being trained, in place of its entry
        self.trained_entry = -1
        self._handles: list[Any] = []

    @property
    def audio_keys(self) -> bool:
        return self.embedding is not None

    def install(self) -> None:
        if self._handles:
            return
        self._handles.append(self.module.register_forward_hook(self._hook))
        if self.embedding is not None:
            self._handles.append(self.embedding.register_forward_pre_hook(self._note_audio))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.audio_positions = None

    def queries(self, inputs: Tensor, position: int) -> tuple[Tensor, Tensor]:
        """Per row, the query and whether it has one (audio keys need audio positions)."""
        if not self.audio_keys:
            rows = torch.ones(inputs.shape[0], dtype=torch.bool, device=inputs.device)
            return inputs[:, position], rows
        mask = self.audio_positions
        if mask is None or mask.shape != inputs.shape[:2]:
            mask = torch.zeros(inputs.shape[:2], dtype=torch.bool, device=inputs.device)
        mask = mask.to(inputs.device)
        counts = mask.sum(dim=1, keepdim=True)
        summed = (inputs.float() * mask[..., None]).sum(dim=1)
        return summed / counts.clamp_min(1), counts[:, 0] > 0

    def _note_audio(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self.audio_positions = args[0] == self.audio_token_id

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        codebook = self.codebook
        if codebook is None or not len(codebook):
            return output
        inputs = args[0]
        position = inputs.shape[1] - 1 if self.key_index is None else self.key_index
        queries, asked = self.queries(inputs, position)
        distance, entry = codebook.nearest(queries)
        inside = (distance <= codebook.radii.to(distance.device)[entry]) & asked
        values = codebook.values.to(output.device, output.dtype)[entry]
        if self.trained is not None:
            chosen = entry == self.trained_entry
            values = torch.where(chosen[:, None], self.trained.to(output.dtype), values)
        return replaced(output, values, inside.to(output.device), position, self.replacement)


def replaced(
    output: Tensor, values: Tensor, inside: Tensor, position: int, replacement: str
) -> Tensor:
    """`output` (rows, positions, d_out) with `values` (rows, d_out) written where `inside`."""
    mask = torch.zeros(output.shape[:2], dtype=torch.bool, device=output.device)
    if replacement == "replace_last":
        mask[:, position] = True
    elif replacement == "replace_all":
        mask[:, :] = True
    else:
        mask[:, :position] = True
    mask &= inside[:, None]
    return torch.where(mask[..., None], values[:, None, :], output)


@dataclass
class GraceState(EditorState):
    """The edits so far and the codebook they built."""

    codebook: Codebook | None = None
    layer: CodebookLayer | None = field(default=None, repr=False, compare=False)

    def sync(self) -> None:
        """The hook in place exactly while the codebook holds an entry."""
        if self.layer is None:
            return
        self.layer.codebook = self.codebook
        if self.codebook is not None and len(self.codebook):
            self.layer.install()
        else:
            self.layer.remove()

    def reset(self) -> None:
        super().reset()
        self.codebook = None
        self.sync()

    def state_dict(self) -> dict[str, Any]:
        codebook = None if self.codebook is None else self.codebook.to_dict()
        return {**super().state_dict(), "codebook": codebook}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state.get("codebook")
        self.codebook = None if saved is None else Codebook.from_dict(saved)
        self.sync()


class GraceEditor:
    """Edits by adding (or widening) a codebook entry at one linear layer."""

    touches_audio_path = False

    def __init__(self, config: GraceConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = GraceState()
        self.extras: dict[str, float] = {}

    @property
    def edited_roles(self) -> tuple[str, ...]:
        return (self.config.role,)

    def prepare(self, lalm: LALM, train_cases: Sequence[EditCase]) -> None:
        """Hook the edited layer (GRACE needs no training data)."""
        self.attach(lalm)

    def attach(self, lalm: LALM) -> None:
        """Put the codebook's hooks on `lalm`'s edited layer (and its embedding, for audio
        keys); they act while the codebook holds an entry."""
        module = lalm.modules.resolve(self.config.role).module
        if not isinstance(module, nn.Linear):
            raise TypeError(
                f"{self.name}: role {self.config.role!r} is a {type(module).__name__}, "
                "GRACE keys a linear layer"
            )
        audio = self.config.key == "audio"
        self.state.layer = CodebookLayer(
            module,
            self.config.replacement,
            lalm.modules.resolve("llm.embed").module if audio else None,
            lalm.audio_token_id if audio else None,
        )
        self.state.sync()

    def apply(self, lalm: LALM, case: EditCase) -> EditOutcome:
        start = perf_counter()
        layer = self.state.layer
        if layer is None:
            raise RuntimeError(f"{self.name}: call prepare() before apply()")
        batch = lalm.prepare([case.reliability])
        position = int(batch.input_ids.shape[1]) - 1
        query, output = self._query(lalm, batch, layer, position)
        entry = self._place(query, output, case.y_e, len(self.state.edits))
        steps, loss = self._train(lalm, batch, case, entry, position)
        self.state.record(case)
        codebook = self.state.codebook
        assert codebook is not None
        self.extras = {"codebook/entries": float(len(codebook)), "codebook/entry": float(entry)}
        return EditOutcome(None, steps, loss, perf_counter() - start)

    def context(self) -> QueryContext:
        return QueryContext()

    def _query(
        self, lalm: LALM, batch: Any, layer: CodebookLayer, position: int
    ) -> tuple[Tensor, Tensor]:
        """The edit's key (the layer's input at the edit token, or its audio mean) and the
        layer's unedited output at the edit token."""
        seen: list[tuple[Tensor, Tensor]] = []
        audio = (batch.input_ids == lalm.audio_token_id).to(batch.input_ids.device)

        def record(_: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            layer.audio_positions = audio
            queries, asked = layer.queries(args[0].detach(), position)
            if not bool(asked[0]):
                raise ValueError(
                    f"{self.name}: audio keys need an edit prompt with audio; the reliability "
                    "probe has none"
                )
            seen.append((queries[0], output[0, position].detach()))

        handle = layer.module.register_forward_hook(record, prepend=True)
        try:
            with torch.no_grad():
                lalm.next_token_logits(batch)
        finally:
            handle.remove()
        return seen[-1]

    def _place(self, query: Tensor, output: Tensor, answer: str, count: int) -> int:
        """Add the query to the codebook or widen an entry; the entry the edit trains."""
        value = self._initial_value(output, count)
        codebook = self.state.codebook
        eps = self.config.eps
        if codebook is None or not len(codebook):
            self.state.codebook = Codebook(
                query[None].float(), value[None], torch.tensor([eps]), [answer]
            )
            self.state.sync()
            return 0
        distance, nearest = (t.item() for t in codebook.nearest(query[None]))
        nearest = int(nearest)
        if distance > eps + float(codebook.radii[nearest]) or codebook.answers[nearest] != answer:
            codebook.keys = torch.cat([codebook.keys, query[None].float()])
            codebook.values = torch.cat([codebook.values, value[None]])
            codebook.radii = torch.cat([codebook.radii, torch.tensor([eps])])
            codebook.answers.append(answer)
            if distance <= eps + float(codebook.radii[nearest]):
                codebook.radii[nearest] = distance / 2 - 1e-5
                codebook.radii[-1] = distance / 2
            return len(codebook) - 1
        if distance > float(codebook.radii[nearest]):
            if self.config.eps_expand == "moving_average":
                codebook.keys[nearest] = 0.5 * codebook.keys[nearest] + 0.5 * query.float()
            codebook.radii[nearest] = distance
        return nearest

    def _initial_value(self, output: Tensor, count: int) -> Tensor:
        if self.config.val_init == "warm":
            return output.float().clone()
        generator = torch.Generator().manual_seed(self.config.seed + count)
        return torch.rand(output.shape[-1], generator=generator)

    def _train(
        self, lalm: LALM, batch: Any, case: EditCase, entry: int, position: int
    ) -> tuple[int, float]:
        """Adam on the entry's value while it replaces the edit token's output."""
        layer = self.state.layer
        codebook = self.state.codebook
        assert layer is not None and codebook is not None
        value = codebook.values[entry].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([value], lr=self.config.edit_lr)
        layer.key_index, layer.trained, layer.trained_entry = position, value, entry
        target = [case.reliability.answer]
        loss = torch.tensor(float("nan"))
        try:
            with trainable_only(lalm.model, {}), torch.enable_grad():
                for _ in range(self.config.n_iter):
                    loss = lalm.target_nll(batch, target, include_end=self.config.supervise_end)
                    optimizer.zero_grad(set_to_none=True)
                    loss.sum().backward()
                    optimizer.step()
        finally:
            layer.key_index, layer.trained, layer.trained_entry = None, None, -1
        codebook.values[entry] = value.detach()
        return self.config.n_iter, float(loss.detach().mean())


def build_grace(**fields: object) -> GraceEditor:
    """Hydra factory: `configs/method/grace.yaml` points here."""
    return GraceEditor(GraceConfig(**fields))  # type: ignore[arg-type]
