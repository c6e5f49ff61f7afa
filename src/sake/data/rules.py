"""SAKE's construction rules (paper §3.3 and §4.2), each a named check returning violations.

Every rule holds on the real release as shipped, checked the way the release was built:
edit-pair balance is exact per attribute in train and test (the 400 validation cases are drawn
from train and are not balanced on their own); portability exists in test and the sequences
only; options of third-party probes (MMLU text locality, Dynamic-SUPERB type 4) are copied
from their sources, so mismatches there are advisories that do not fail a check.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Sequence as Ordered
from dataclasses import dataclass, field
from typing import Protocol

from sake.data.options import answer_in_options
from sake.data.schema import (
    ATTRIBUTES,
    GENERALITY_TYPES,
    EditCase,
    Probe,
    ProbeKind,
    Sequence,
    locality_audio_types,
)


class Corpus(Protocol):
    """What the rules read: cases per split and the editing sequences."""

    splits: Mapping[str, Ordered[EditCase]]
    sequences: Ordered[Sequence]


@dataclass(frozen=True)
class RuleConfig:
    """Which splits each rule applies to, and how strict balance is."""

    balance_tolerance: int = 0
    balanced_splits: tuple[str, ...] = ("train", "test")
    portability_splits: tuple[str, ...] = ("test",)
    portability_in_sequences: bool = True
    training_splits: tuple[str, ...] = ("train", "val")
    held_out_splits: tuple[str, ...] = ("test",)


@dataclass(frozen=True)
class Violation:
    case_id: str
    detail: str

    def __str__(self) -> str:
        return f"{self.case_id}: {self.detail}"


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule; advisory rules report without failing a check."""

    name: str
    description: str
    violations: tuple[Violation, ...] = ()
    advisory: bool = False
    checked: int = 0
    notes: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "advisory" if self.advisory else "violated"


def check_rules(corpus: Corpus, config: RuleConfig | None = None) -> list[RuleResult]:
    """Run every rule, strict ones first."""
    config = config or RuleConfig()
    return [rule(corpus, config) for rule in RULES]


def failed(results: Iterable[RuleResult]) -> list[RuleResult]:
    return [result for result in results if not result.ok and not result.advisory]


def edit_pair_balance(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """Per split and attribute, every label is y_o as often as it is y_e (within tolerance)."""
    violations = []
    for split in config.balanced_splits:
        for attribute, counts in label_counts(corpus.splits.get(split, ())).items():
            for label, (as_y_o, as_y_e) in counts.items():
                if abs(as_y_o - as_y_e) > config.balance_tolerance:
                    violations.append(
                        Violation(
                            f"{split}/{attribute}",
                            f"label {label!r} is y_o in {as_y_o} cases but y_e in {as_y_e}",
                        )
                    )
    return RuleResult(
        "edit_pair_balance",
        "each label is as often the original as the edited label",
        tuple(violations),
        checked=sum(len(corpus.splits.get(split, ())) for split in config.balanced_splits),
    )


def label_counts(cases: Iterable[EditCase]) -> dict[str, dict[str, tuple[int, int]]]:
    """attribute -> label -> (#cases with it as y_o, #cases with it as y_e)."""
    as_y_o: Counter[tuple[str, str]] = Counter()
    as_y_e: Counter[tuple[str, str]] = Counter()
    for case in cases:
        as_y_o[case.attribute, case.y_o] += 1
        as_y_e[case.attribute, case.y_e] += 1
    counts: dict[str, dict[str, tuple[int, int]]] = {}
    for attribute, label in sorted(set(as_y_o) | set(as_y_e)):
        counts.setdefault(attribute, {})[label] = (
            as_y_o[attribute, label],
            as_y_e[attribute, label],
        )
    return counts


def edit_changes_label(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """y_o != y_e."""
    return _per_case(
        corpus,
        "edit_changes_label",
        "the edited label differs from the original label",
        lambda case: ["y_o equals y_e"] if _same(case.y_o, case.y_e) else [],
    )


def generality_types(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """Types 1-3 once each: 1 = edit audio + paraphrase, 2 = other audio + edit question,
    3 = type-2 audio + type-1 question; every answer is y_e."""
    return _per_case(
        corpus,
        "generality_types",
        "generality types 1-3 built from the edit as SAKE defines them",
        _generality_problems,
    )


def audio_locality_types(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """Type 1 other attribute; 2 same attribute, neither y_o nor y_e (not for gender);
    3 same attribute, y_e; 4 a general auditory task (no attribute track)."""
    return _per_case(
        corpus,
        "audio_locality_types",
        "audio-locality types 1-4 (gender 1, 3, 4) with the tracks and answers SAKE defines",
        _audio_locality_problems,
    )


def text_locality(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """Exactly one text-only locality probe per case."""
    return _per_case(
        corpus,
        "text_locality",
        "exactly one text-locality probe, without audio",
        _text_locality_problems,
    )


def portability(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """Portability present where required; its answer is an option; when the probe records
    the answer true of the unedited world, the two differ (the exclusion rule)."""
    required = {
        case.case_id for split in config.portability_splits for case in corpus.splits.get(split, ())
    }
    if config.portability_in_sequences:
        required |= {case.case_id for sequence in corpus.sequences for case in sequence.cases}

    def problems(case: EditCase) -> list[str]:
        found = [] if case.portability or case.case_id not in required else ["no portability"]
        return found + [
            problem for probe in case.portability for problem in _portability_problems(probe)
        ]

    return _per_case(
        corpus,
        "portability",
        "portability present, answer among options, differing from the unedited answer",
        problems,
    )


def answer_in_options_rule(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """Every answer of SAKE's own probes is one of the probe's options."""
    return _per_case(
        corpus,
        "answer_in_options",
        "every answer of a SAKE-built probe is one of its options",
        lambda case: [
            _not_an_option(probe)
            for probe in case.probes()
            if not _third_party(probe) and not answer_in_options(probe.answer, probe.options)
        ],
    )


def third_party_answer_in_options(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """Advisory: answers of probes copied from MMLU and Dynamic-SUPERB among parsed options."""
    result = _per_case(
        corpus,
        "third_party_answer_in_options",
        "answers of third-party probes (text locality, type-4) among their parsed options",
        lambda case: [
            _not_an_option(probe)
            for probe in case.probes()
            if _third_party(probe) and not answer_in_options(probe.answer, probe.options)
        ],
    )
    probes = [probe for case in all_cases(corpus) for probe in case.probes() if _third_party(probe)]
    return RuleResult(
        result.name,
        result.description,
        result.violations,
        advisory=True,
        checked=result.checked,
        notes={
            name: option_coverage(probe for probe in probes if probe.name == name)
            for name in ("locality_audio/type4", "locality_text")
        },
    )


def option_coverage(probes: Iterable[Probe]) -> dict[str, float | int]:
    """How many probes offer their own answer among their options."""
    probes = list(probes)
    covered = sum(answer_in_options(probe.answer, probe.options) for probe in probes)
    fraction = covered / len(probes) if probes else 1.0
    return {"probes": len(probes), "answer_in_options": covered, "fraction": round(fraction, 4)}


def train_test_disjoint(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """No edit, generality or portability audio of a held-out case occurs in training splits.

    Audio is identified by track and file name. Locality audio may recur; how many held-out
    locality clips also occur in training is reported in `notes`.
    """
    training = {
        audio_key(probe)
        for split in config.training_splits
        for case in corpus.splits.get(split, ())
        for probe in case.probes()
        if probe.file is not None
    }
    held_out = [case for split in config.held_out_splits for case in corpus.splits.get(split, ())]
    held_out += [case for sequence in corpus.sequences for case in sequence.cases]
    violations = [
        Violation(case.case_id, f"{probe.name}: audio {'/'.join(audio_key(probe))} is in training")
        for case in held_out
        for probe in (case.reliability, *case.generality, *case.portability)
        if probe.file is not None and audio_key(probe) in training
    ]
    shared_locality = {
        audio_key(probe)
        for case in held_out
        for probe in case.locality_audio
        if audio_key(probe) in training
    }
    return RuleResult(
        "train_test_disjoint",
        "edit, generality and portability audio of held-out cases never occur in training",
        tuple(violations),
        checked=len(held_out),
        notes={"shared_locality_audio": len(shared_locality)},
    )


def sequence_labels_distinct(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """Within a sequence, all y_o and y_e are distinct (20 labels for 10 cases)."""
    violations = []
    for sequence in corpus.sequences:
        labels = Counter(_key(label) for case in sequence.cases for label in (case.y_o, case.y_e))
        violations += [
            Violation(f"seq{sequence.index}", f"label {label!r} occurs {count} times as y_o/y_e")
            for label, count in labels.items()
            if count > 1
        ]
    return RuleResult(
        "sequence_labels_distinct",
        "all original and edited labels within a sequence are distinct",
        tuple(violations),
        checked=len(corpus.sequences),
    )


def sequence_locality_independent(corpus: Corpus, config: RuleConfig) -> RuleResult:
    """No audio-locality answer in a sequence equals the y_o of any of its cases."""
    violations = []
    for sequence in corpus.sequences:
        originals = {_key(case.y_o): case.case_id for case in sequence.cases}
        violations += [
            Violation(
                case.case_id,
                f"{probe.name}: answer {probe.answer!r} is y_o of {originals[_key(probe.answer)]}",
            )
            for case in sequence.cases
            for probe in case.locality_audio
            if _key(probe.answer) in originals
        ]
    return RuleResult(
        "sequence_locality_independent",
        "no audio-locality answer of a sequence equals one of its original labels",
        tuple(violations),
        checked=len(corpus.sequences),
    )


RULES: tuple[Callable[[Corpus, RuleConfig], RuleResult], ...] = (
    edit_pair_balance,
    edit_changes_label,
    generality_types,
    audio_locality_types,
    text_locality,
    portability,
    answer_in_options_rule,
    train_test_disjoint,
    sequence_labels_distinct,
    sequence_locality_independent,
    third_party_answer_in_options,
)


def all_cases(corpus: Corpus) -> Iterator[EditCase]:
    for cases in corpus.splits.values():
        yield from cases
    for sequence in corpus.sequences:
        yield from sequence.cases


def audio_key(probe: Probe) -> tuple[str, str]:
    """Identity of a probe's audio: its track and file name."""
    return (probe.track or "", probe.file or "")


def _per_case(
    corpus: Corpus, name: str, description: str, problems: Callable[[EditCase], list[str]]
) -> RuleResult:
    cases = list(all_cases(corpus))
    violations = tuple(
        Violation(case.case_id, problem) for case in cases for problem in problems(case)
    )
    return RuleResult(name, description, violations, checked=len(cases))


def _generality_problems(case: EditCase) -> list[str]:
    problems = _type_count_problems(case.generality, GENERALITY_TYPES, "generality")
    if problems:
        return problems
    edit = case.reliability
    first, second, third = (case.generality_of(type_) for type_ in GENERALITY_TYPES)
    checks = [
        (audio_key(first) == audio_key(edit), "generality/type1: audio is not the edit audio"),
        (first.question != edit.question, "generality/type1: question is the edit question"),
        (audio_key(second) != audio_key(edit), "generality/type2: audio is the edit audio"),
        (second.question == edit.question, "generality/type2: question is not the edit question"),
        (audio_key(third) == audio_key(second), "generality/type3: audio is not the type-2 audio"),
        (third.question == first.question, "generality/type3: question is not the type-1 one"),
    ]
    problems = [message for holds, message in checks if not holds]
    return problems + [
        f"{probe.name}: answer {probe.answer!r} is not y_e {case.y_e!r}"
        for probe in case.generality
        if not _same(probe.answer, case.y_e)
    ]


def _audio_locality_problems(case: EditCase) -> list[str]:
    expected = locality_audio_types(case.attribute)
    problems = _type_count_problems(case.locality_audio, expected, "locality_audio")
    for probe in case.locality_audio:
        if probe.type in expected and not _locality_type_holds(case, probe):
            problems.append(
                f"{probe.name}: track {probe.track!r} with answer {probe.answer!r} "
                f"does not fit type {probe.type}"
            )
    return problems


def _locality_type_holds(case: EditCase, probe: Probe) -> bool:
    same_track = probe.track == case.attribute
    return {
        1: probe.track in ATTRIBUTES and not same_track,
        2: same_track and _key(probe.answer) not in {_key(case.y_o), _key(case.y_e)},
        3: same_track and _same(probe.answer, case.y_e),
        4: probe.track not in ATTRIBUTES,
    }[probe.type]


def _type_count_problems(probes: Ordered[Probe], expected: tuple[int, ...], kind: str) -> list[str]:
    counts = Counter(probe.type for probe in probes)
    problems = [
        f"{kind}/type{type_}: {counts[type_]} probes, expected 1"
        for type_ in expected
        if counts[type_] != 1
    ]
    return problems + [
        f"{kind}/type{type_}: unexpected type" for type_ in sorted(set(counts) - set(expected))
    ]


def _text_locality_problems(case: EditCase) -> list[str]:
    problems = []
    if len(case.locality_text) != 1:
        problems.append(f"{len(case.locality_text)} text-locality probes, expected 1")
    problems += [
        f"{probe.name}: has audio {probe.file!r}" for probe in case.locality_text if probe.has_audio
    ]
    return problems


def _portability_problems(probe: Probe) -> list[str]:
    problems = []
    if not answer_in_options(probe.answer, probe.options):
        problems.append(_not_an_option(probe))
    if probe.original_answer is not None and _same(probe.original_answer, probe.answer):
        problems.append(f"portability: answer {probe.answer!r} is also true of the unedited label")
    return problems


def _third_party(probe: Probe) -> bool:
    """Probes whose question and answer come verbatim from another benchmark."""
    if probe.kind is ProbeKind.LOCALITY_TEXT:
        return True
    return probe.kind is ProbeKind.LOCALITY_AUDIO and probe.track not in ATTRIBUTES


def _not_an_option(probe: Probe) -> str:
    return f"{probe.name}: answer {probe.answer!r} is not one of {list(probe.options)[:12]}"


def _key(label: str) -> str:
    return label.strip().casefold()


def _same(first: str, second: str) -> bool:
    return _key(first) == _key(second)
