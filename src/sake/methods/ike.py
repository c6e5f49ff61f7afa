"""In-context editing: I-IKE (instruction only) and IE-IKE (instruction plus demonstrations).

Neither changes a weight. I-IKE states the edits in a system prompt that maps every pre-edit
label to its post-edit label. IE-IKE adds a dialogue of demonstrations before each query,
retrieved from the training split for the same (y_o, y_e) pair: reliability, generality,
audio-locality and text-locality examples, each a user turn with its own audio followed by
the expected answer, so the model sees the edit applied where it should be and ignored where
it should not.

By default both follow the SAKE reference (`easyeditor/editors/lalm_editor.py`,
`easyeditor/dataset/LALM_edit_dataset.py`): the system prompt is the reference's, read from
the reference prompt file (`prompts_file`; `ike_system`, one `ike_rule_format` line per edit),
never shipped with the project; `prompt: project` states the edits in the project's own words
instead.

Retrieval takes the training cases with the same (y_o, y_e) pair, in the training split's
order; when the training split has none (the reference stops there), the cases with the same
attribute and y_e, failing that any case of the same attribute. `selection: reference` draws
one of them with a `random.Random(seed)` (seed 42, as the reference seeds Python's generator)
kept across the whole run, one draw per edit in the order edits are applied; so a resumed run
draws differently from an uninterrupted one after the restart. `selection: hash` picks by a
hash of the seed and the edited case's id, independent of order and of resuming.

Sequential editing: the system prompt accumulates every edit applied since the last reset, and
so do IE-IKE's demonstrations (`accumulate_demonstrations`, as the reference); `false` keeps only
the latest edit's, which bounds the context at one demonstration set.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

from sake.data.reference_prompts import ReferencePrompts, fill
from sake.data.schema import EditCase, Probe
from sake.methods.base import AppliedEdit, EditorState, EditOutcome, QueryContext, check_choice
from sake.models.base import LALM, Turn

SUBJECTS: dict[str, str] = {
    "Animal": "animal making the sound",
    "Emotion": "emotion of the speaker",
    "Gender": "gender of the speaker",
    "Language": "language being spoken",
}

log = logging.getLogger(__name__)

PROJECT_INSTRUCTIONS = (
    "Some facts about audio have been updated. When an audio clip shows the first label of a "
    "line below, it now counts as the second label:\n{rules}\n"
    "Treat the new label as the truth and carry everything that follows from it over as well: "
    "its traits, the facts about it and what it is associated with, not only its name. "
    "These updates concern questions about audio clips only. Answer every other question, "
    "with or without audio, exactly as you would without them."
)
PROJECT_RULE = "- {subject}: {pre} -> {post}"
PROMPTS = ("reference", "project")
SELECTIONS = ("reference", "hash")


@dataclass(frozen=True)
class EditStatement:
    """How a system prompt states edits: a template whose `{slot}` takes the rules, one rule per
    edit (with `{pre}`, `{post}` and `{subject}`), joined by `joiner`; `unique` drops repeats."""

    template: str
    rule: str
    slot: str = "edits"
    joiner: str = "\n"
    unique: bool = False

    @classmethod
    def of(cls, prompt: str, prompts_file: str | None) -> EditStatement:
        if prompt == "project":
            return cls(PROJECT_INSTRUCTIONS, PROJECT_RULE, slot="rules", unique=True)
        if prompts_file is None:
            raise ValueError("the reference IKE prompt needs prompts_file (or prompt=project)")
        prompts = ReferencePrompts.load(prompts_file)
        return cls(prompts.text("ike_system"), prompts.text("ike_rule_format"))

    def render(self, edits: Sequence[AppliedEdit]) -> str | None:
        """The system prompt stating `edits`, or None when there is nothing to state."""
        if not edits:
            return None
        rules = [self._rule(edit) for edit in edits]
        if self.unique:
            rules = list(dict.fromkeys(rules))
        return fill(self.template, **{self.slot: self.joiner.join(rules)})

    def _rule(self, edit: AppliedEdit) -> str:
        subject = SUBJECTS.get(edit.attribute, edit.attribute.lower())
        return fill(self.rule, subject=subject, pre=edit.y_o, post=edit.y_e)


@dataclass(frozen=True)
class InstructionConfig:
    """Hyperparameters of I-IKE; exactly the fields of `configs/method/i_ike.yaml`."""

    name: str
    prompt: str = "reference"
    prompts_file: str | None = None

    def __post_init__(self) -> None:
        check_choice(self.name, "prompt", self.prompt, PROMPTS)


@dataclass(frozen=True)
class DemonstrationConfig:
    """Hyperparameters of IE-IKE; exactly the fields of `configs/method/ie_ike.yaml`.

    The counts are upper bounds per probe kind, taken in the retrieved case's order (gender
    cases carry three audio-locality probes, so they give three).
    """

    name: str
    reliability: int = 1
    generality: int = 3
    locality_audio: int = 4
    locality_text: int = 1
    seed: int = 42
    selection: str = "reference"
    accumulate_demonstrations: bool = True
    prompt: str = "reference"
    prompts_file: str | None = None

    def __post_init__(self) -> None:
        counts = (self.reliability, self.generality, self.locality_audio, self.locality_text)
        if min(counts) < 0:
            raise ValueError(f"{self.name}: demonstration counts must be non-negative")
        check_choice(self.name, "selection", self.selection, SELECTIONS)
        check_choice(self.name, "prompt", self.prompt, PROMPTS)


@dataclass
class InContextState(EditorState):
    """The edits so far and the demonstrations currently shown (IE-IKE only)."""

    demonstrations: list[Turn] = field(default_factory=list)

    def reset(self) -> None:
        super().reset()
        self.demonstrations.clear()

    def state_dict(self) -> dict[str, Any]:
        turns = [
            {"role": t.role, "text": t.text, "audio": [str(a) for a in t.audio]}
            for t in self.demonstrations
        ]
        return {**super().state_dict(), "demonstrations": turns}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.demonstrations = [
            Turn(t["role"], t["text"], tuple(Path(a) for a in t["audio"]))
            for t in state.get("demonstrations", ())
        ]


class InstructionEditor:
    """I-IKE: the edits live in the system prompt of every later query."""

    touches_audio_path = False
    edited_roles: tuple[str, ...] = ()

    def __init__(self, config: InstructionConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = InContextState()
        self.statement = EditStatement.of(config.prompt, config.prompts_file)

    @property
    def extras(self) -> dict[str, float]:
        """Nothing to report about an edit."""
        return {}

    def prepare(self, lalm: LALM, train_cases: Sequence[EditCase]) -> None:
        return None

    def apply(self, lalm: LALM, case: EditCase) -> EditOutcome:
        start = perf_counter()
        self.state.record(case)
        return EditOutcome(None, 0, None, perf_counter() - start)

    def context(self) -> QueryContext:
        return QueryContext(system=self.statement.render(self.state.edits))


class DemonstrationEditor(InstructionEditor):
    """IE-IKE: I-IKE's system prompt plus retrieved demonstrations as earlier turns."""

    def __init__(self, config: DemonstrationConfig) -> None:
        super().__init__(InstructionConfig(config.name, config.prompt, config.prompts_file))
        self.demo_config = config
        self._draws = random.Random(config.seed)
        self._by_pair: dict[tuple[str, str], list[EditCase]] = {}
        self._by_target: dict[tuple[str, str], list[EditCase]] = {}
        self._by_attribute: dict[str, list[EditCase]] = {}

    def prepare(self, lalm: LALM, train_cases: Sequence[EditCase]) -> None:
        """Index the training split by (attribute, y_o, y_e), (attribute, y_e) and attribute."""
        if not train_cases:
            raise ValueError(
                f"{self.name} retrieves demonstrations from the training split, but the dataset "
                "has no training cases; use a dataset with a train split or method=i_ike"
            )
        ordered = self.demo_config.selection == "reference"
        self._by_pair = _grouped(train_cases, lambda c: (c.y_o, c.y_e), keep_order=ordered)
        self._by_target = _grouped(train_cases, lambda c: (c.attribute, c.y_e), ordered)
        self._by_attribute = _grouped(train_cases, lambda c: c.attribute, ordered)

    def apply(self, lalm: LALM, case: EditCase) -> EditOutcome:
        start = perf_counter()
        self.state.record(case)
        turns = demonstration_turns(self.retrieve(case), self.demo_config)
        if self.demo_config.accumulate_demonstrations:
            self.state.demonstrations.extend(turns)
        else:
            self.state.demonstrations = turns
        return EditOutcome(None, 0, None, perf_counter() - start)

    def retrieve(self, case: EditCase) -> EditCase:
        """The training case whose probes demonstrate this edit (see the module docstring)."""
        candidates = self._by_pair.get((case.y_o, case.y_e))
        if not candidates:
            log.warning(
                "%s: no training case edits %r to %r (the reference stops here); "
                "demonstrating with another %s case",
                self.name,
                case.y_o,
                case.y_e,
                case.attribute,
            )
            candidates = self._by_target.get((case.attribute, case.y_e)) or self._by_attribute.get(
                case.attribute
            )
        if not candidates:
            raise ValueError(
                f"{self.name}: the training split has no {case.attribute} case to retrieve "
                f"demonstrations for case {case.case_id!r} from"
            )
        if self.demo_config.selection == "reference":
            return self._draws.choice(candidates)
        return candidates[_stable_index(self.demo_config.seed, case.case_id, len(candidates))]

    def context(self) -> QueryContext:
        return QueryContext(
            system=self.statement.render(self.state.edits),
            history=tuple(self.state.demonstrations),
        )


def demonstration_turns(case: EditCase, config: DemonstrationConfig) -> list[Turn]:
    """User/assistant turn pairs for the chosen probes of a training case."""
    chosen: list[Probe] = [
        *(case.reliability,)[: config.reliability],
        *case.generality[: config.generality],
        *case.locality_audio[: config.locality_audio],
        *case.locality_text[: config.locality_text],
    ]
    turns: list[Turn] = []
    for probe in chosen:
        audio = () if probe.audio_path is None else (Path(probe.audio_path),)
        turns.append(Turn("user", probe.question, audio))
        turns.append(Turn("assistant", probe.answer))
    return turns


def _grouped(
    cases: Iterable[EditCase], key: Any, keep_order: bool = False
) -> dict[Any, list[EditCase]]:
    """Cases by `key`, in their own order (`keep_order`) or sorted by case id."""
    groups: dict[Any, list[EditCase]] = defaultdict(list)
    for case in cases if keep_order else sorted(cases, key=lambda c: c.case_id):
        groups[key(case)].append(case)
    return dict(groups)


def _stable_index(seed: int, case_id: str, size: int) -> int:
    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % size


def build_i_ike(**fields: object) -> InstructionEditor:
    """Hydra factory for `configs/method/i_ike.yaml`."""
    return InstructionEditor(InstructionConfig(**fields))


def build_ie_ike(**fields: object) -> DemonstrationEditor:
    """Hydra factory for `configs/method/ie_ike.yaml`."""
    return DemonstrationEditor(DemonstrationConfig(**fields))
