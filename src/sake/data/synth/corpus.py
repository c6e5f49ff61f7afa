"""Construction of the synthetic SAKE corpus (SAKE §3.3 and §4.2).

- Edit pairs: per attribute, every label is y_o exactly as often as it is y_e.
- Generality: type 1 same audio + paraphrased question, type 2 other audio of y_o + the same
  question, type 3 both.
- Audio locality: type 1 another attribute, type 2 same attribute with a label that is
  neither y_o nor y_e (not for gender), type 3 same attribute with label y_e, type 4 a
  general auditory task.
- Portability: a knowledge category whose answer for y_e differs from the one for y_o.
- Sequences: test cases whose y_o and y_e are all distinct and whose audio-locality answers
  avoid every y_o of the sequence. They are planned first, then the rest of the test split
  is filled, so the rules hold by construction rather than by rejection sampling.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from sake.data.schema import (
    ATTRIBUTES,
    LABELS,
    EditCase,
    Probe,
    ProbeKind,
    locality_audio_types,
)
from sake.data.schema import Sequence as EditSequence
from sake.data.synth import auditory, knowledge, questions, textbank
from sake.data.synth.pools import ClipSpec, stable_seed, task_track
from sake.data.synth.scales import SynthScale

Pair = tuple[str, str]


def balanced_pairs(labels: Sequence[str], n: int, rng: np.random.Generator) -> list[Pair]:
    """n ordered pairs (y_o, y_e), y_o != y_e, each label as often y_o as y_e.

    Label counts differ by at most one; the y_e column is a shuffle of the y_o column with
    fixed points removed by swaps, so the balance is exact.
    """
    counts = [n // len(labels) + (1 if i < n % len(labels) else 0) for i in range(len(labels))]
    if 2 * max(counts) > n:
        raise ValueError(f"{n} cases over {len(labels)} labels cannot pair every label off")
    order = rng.permutation(len(labels))
    originals = [labels[order[i]] for i in range(len(labels)) for _ in range(counts[i])]
    originals = [originals[i] for i in rng.permutation(n)]
    edited = [originals[i] for i in rng.permutation(n)]
    for i in range(n):
        if edited[i] != originals[i]:
            continue
        swap = next(
            j for j in rng.permutation(n) if edited[j] != originals[i] and originals[j] != edited[i]
        )
        edited[i], edited[swap] = edited[swap], edited[i]
    return list(zip(originals, edited, strict=True))


class ClipCycler:
    """Hands out the clips of each (track, label) round-robin in a shuffled order."""

    def __init__(self, pools: dict[tuple[str, str], list[ClipSpec]], rng: np.random.Generator):
        self._pools = pools
        self._rng = rng
        self._queues: dict[tuple[str, str], list[ClipSpec]] = defaultdict(list)

    def next(self, track: str, label: str, *, avoid: ClipSpec | None = None) -> ClipSpec:
        queue = self._queues[(track, label)]
        if not queue:
            clips = self._pools[(track, label)]
            queue.extend(clips[i] for i in self._rng.permutation(len(clips)))
        clip = queue.pop()
        if clip == avoid and len(self._pools[(track, label)]) > 1:
            other = self.next(track, label)
            queue.append(clip)
            return other
        return clip


@dataclass
class CaseBuilder:
    """Builds the cases of one split from its clip pool."""

    split: str
    pools: dict[tuple[str, str], list[ClipSpec]]
    rng: np.random.Generator
    cycler: ClipCycler = field(init=False)
    text_questions: tuple[textbank.TextQuestion, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.cycler = ClipCycler(self.pools, self.rng)
        self.text_questions = textbank.split_text_questions(self.split)

    def build(
        self, attribute: str, pair: Pair, case_id: str, forbidden: frozenset[str] = frozenset()
    ) -> EditCase:
        """One case; `forbidden` labels (lower-case) never answer an audio-locality probe."""
        y_o, y_e = pair
        edit_clip = self.cycler.next(attribute, y_o)
        other_clip = self.cycler.next(attribute, y_o, avoid=edit_clip)
        first, second = self._two_templates(attribute)
        edit_question = self._recognition_question(attribute, first, must_include=pair)
        paraphrase = self._recognition_question(attribute, second, must_include=pair)
        reliability = self._probe(ProbeKind.RELIABILITY, None, edit_question, y_e, edit_clip, y_o)
        generality = (
            self._probe(ProbeKind.GENERALITY, 1, paraphrase, y_e, edit_clip, y_o),
            self._probe(ProbeKind.GENERALITY, 2, edit_question, y_e, other_clip, y_o),
            self._probe(ProbeKind.GENERALITY, 3, paraphrase, y_e, other_clip, y_o),
        )
        locality = tuple(
            self._locality_probe(type_, attribute, pair, forbidden)
            for type_ in locality_audio_types(attribute)
        )
        return EditCase(
            case_id=case_id,
            attribute=attribute,
            y_o=y_o,
            y_e=y_e,
            reliability=reliability,
            generality=generality,
            locality_audio=locality,
            locality_text=(self._text_probe(),),
            portability=(self._portability_probe(attribute, pair, edit_clip),),
        )

    def _two_templates(self, attribute: str) -> tuple[str, str]:
        templates = questions.recognition_templates(attribute, self.split)
        first, second = self.rng.choice(len(templates), size=2, replace=False)
        return templates[int(first)], templates[int(second)]

    def _recognition_question(
        self, attribute: str, template: str, must_include: Sequence[str]
    ) -> tuple[str, tuple[str, ...]]:
        options = self._options(attribute, must_include)
        return questions.format_mcq(template, options), options

    def _options(self, attribute: str, must_include: Sequence[str]) -> tuple[str, ...]:
        labels = LABELS[attribute]
        n = questions.option_count(attribute)
        others = [label for label in labels if label not in must_include]
        picked = list(must_include) + [
            others[i]
            for i in self.rng.choice(len(others), size=n - len(must_include), replace=False)
        ]
        return tuple(picked[i] for i in self.rng.permutation(n))

    def _probe(
        self,
        kind: ProbeKind,
        type_: int | None,
        question: tuple[str, tuple[str, ...]],
        answer: str,
        clip: ClipSpec | None,
        original_answer: str | None = None,
        category: str | None = None,
    ) -> Probe:
        text, options = question
        return Probe(
            kind=kind,
            type=type_,
            question=text,
            answer=answer,
            options=options,
            file=None if clip is None else clip.file,
            track=None if clip is None else clip.track,
            original_answer=original_answer,
            category=category,
        )

    def _locality_probe(
        self, type_: int, attribute: str, pair: Pair, forbidden: frozenset[str]
    ) -> Probe:
        y_o, y_e = pair
        if type_ == 4:
            return self._auditory_task_probe()
        if type_ == 1:
            track = str(self.rng.choice([a for a in ATTRIBUTES if a != attribute]))
            allowed = [label for label in LABELS[track] if label.lower() not in forbidden]
        elif type_ == 2:
            track = attribute
            allowed = [
                label
                for label in LABELS[attribute]
                if label not in pair and label.lower() not in forbidden
            ]
        else:
            track, allowed = attribute, [y_e]
        label = str(self.rng.choice(allowed))
        clip = self.cycler.next(track, label)
        template = self._one_template(track)
        options = self._options(track, [label])
        if track == "Gender" and self.rng.random() < 0.5:
            options, label = tuple(o.capitalize() for o in options), label.capitalize()
        question = (questions.format_mcq(template, options), options)
        return self._probe(ProbeKind.LOCALITY_AUDIO, type_, question, label, clip, label)

    def _one_template(self, attribute: str) -> str:
        templates = questions.recognition_templates(attribute, self.split)
        return templates[int(self.rng.integers(len(templates)))]

    def _auditory_task_probe(self) -> Probe:
        task = auditory.AUDITORY_TASKS[int(self.rng.integers(len(auditory.AUDITORY_TASKS)))]
        label = task.labels[int(self.rng.integers(len(task.labels)))]
        options = tuple(task.labels[i] for i in self.rng.permutation(len(task.labels)))
        template_index = int(self.rng.integers(len(task.questions)))
        text = auditory.format_question(task, template_index, options)
        clip = self.cycler.next(task_track(task.name), label)
        return self._probe(ProbeKind.LOCALITY_AUDIO, 4, (text, options), label, clip, label)

    def _text_probe(self) -> Probe:
        item = self.text_questions[int(self.rng.integers(len(self.text_questions)))]
        probe = self._probe(
            ProbeKind.LOCALITY_TEXT,
            None,
            (questions.format_mcq(item.question, item.options), tuple(item.options)),
            item.answer,
            None,
            item.answer,
        )
        return replace(probe, extra={"subject": item.subject, "original_answer": item.answer_index})

    def _portability_probe(self, attribute: str, pair: Pair, clip: ClipSpec) -> Probe:
        y_o, y_e = pair
        eligible = [
            c for c in knowledge.categories(attribute) if knowledge.is_portable(c, y_o, y_e)
        ]
        if not eligible:
            raise ValueError(f"no portability category separates {y_o!r} from {y_e!r}")
        category = eligible[int(self.rng.integers(len(eligible)))]
        templates = category.audio_questions[self.split]
        template = templates[int(self.rng.integers(len(templates)))]
        n = questions.option_count(attribute)
        options = tuple(knowledge.portability_options(category, y_o, y_e, n, self.rng))
        question = (questions.format_mcq(template, options), options)
        return self._probe(
            ProbeKind.PORTABILITY,
            None,
            question,
            category.answers[y_e],
            clip,
            category.answers[y_o],
            category.name,
        )


def sequence_composition(length: int, rng: np.random.Generator) -> dict[str, int]:
    """How many cases of each attribute a sequence holds, as in SAKE (e.g. 4/3/2/1 of 10).

    A sequence's y_o and y_e are all distinct, so an attribute with L labels fits at most
    L // 2 cases; the remaining slots go to the attributes with room, largest first.
    """
    capacity = {a: len(LABELS[a]) // 2 for a in ATTRIBUTES}
    if length > sum(capacity.values()):
        raise ValueError(f"a sequence of {length} cases cannot keep all labels distinct")
    counts = {"Gender": min(1, length), "Emotion": 0, "Animal": 0, "Language": 0}
    remaining = length - counts["Gender"]
    for attribute in ("Emotion",):
        counts[attribute] = min(2, remaining)
        remaining -= counts[attribute]
    big = ["Animal", "Language"]
    rng.shuffle(big)
    while remaining:
        for attribute in big:
            if remaining and counts[attribute] < capacity[attribute]:
                counts[attribute] += 1
                remaining -= 1
    return counts


def pick_sequence_pairs(
    available: dict[str, list[Pair]], composition: dict[str, int], rng: np.random.Generator
) -> list[tuple[str, Pair]]:
    """Take pairs from the remaining test pairs so that every label in the sequence is new.

    The composition is a target: when the remaining pairs of an attribute cannot supply its
    share with distinct labels, the other attributes fill the gap.
    """
    length = sum(composition.values())
    for _ in range(1000):
        used: set[str] = set()
        chosen: list[tuple[str, int]] = []
        for attribute, count in composition.items():
            _take_distinct(available[attribute], attribute, count, used, chosen, rng)
        for attribute in rng.permutation(list(composition)):
            _take_distinct(
                available[str(attribute)], str(attribute), length - len(chosen), used, chosen, rng
            )
        if len(chosen) == length:
            picked = [(a, available[a][i]) for a, i in chosen]
            for attribute, index in sorted(chosen, key=lambda c: -c[1]):
                available[attribute].pop(index)
            return [picked[i] for i in rng.permutation(len(picked))]
    raise ValueError("could not find test pairs with distinct labels for a sequence")


def _take_distinct(
    pool: list[Pair],
    attribute: str,
    count: int,
    used: set[str],
    chosen: list[tuple[str, int]],
    rng: np.random.Generator,
) -> None:
    """Add up to `count` pairs of `pool` whose labels are not yet used (in random order)."""
    taken = {index for a, index in chosen if a == attribute}
    added = 0
    for index in rng.permutation(len(pool)):
        if added == count:
            return
        y_o, y_e = pool[index]
        if int(index) in taken or y_o in used or y_e in used:
            continue
        used.update((y_o, y_e))
        chosen.append((attribute, int(index)))
        added += 1


@dataclass(frozen=True)
class SyntheticCorpus:
    """The cases of every split and the sequences drawn from the test split."""

    splits: dict[str, list[EditCase]]
    sequences: list[EditSequence]

    def cases(self) -> Iterator[EditCase]:
        for cases in self.splits.values():
            yield from cases


def build_corpus(
    scale: SynthScale, seed: int, pools: dict[str, dict[tuple[str, str], list[ClipSpec]]]
) -> SyntheticCorpus:
    """All splits and sequences of one corpus; deterministic for (scale, seed)."""
    train = _build_plain_split("train", scale, seed, pools["train"])
    test, sequences = _build_test_split(scale, seed, pools["test"])
    val = _sample_val(train, scale.val_cases, np.random.default_rng(stable_seed(seed, "val")))
    return SyntheticCorpus(splits={"train": train, "val": val, "test": test}, sequences=sequences)


def _build_plain_split(
    split: str, scale: SynthScale, seed: int, pools: dict[tuple[str, str], list[ClipSpec]]
) -> list[EditCase]:
    rng = np.random.default_rng(stable_seed(seed, "cases", split))
    builder = CaseBuilder(split, pools, rng)
    cases = []
    for attribute in ATTRIBUTES:
        pairs = balanced_pairs(LABELS[attribute], scale.cases_per_attribute(split), rng)
        cases.extend(
            builder.build(attribute, pair, f"{split}/{attribute}/{i}")
            for i, pair in enumerate(pairs)
        )
    return cases


def _build_test_split(
    scale: SynthScale, seed: int, pools: dict[tuple[str, str], list[ClipSpec]]
) -> tuple[list[EditCase], list[EditSequence]]:
    rng = np.random.default_rng(stable_seed(seed, "cases", "test"))
    builder = CaseBuilder("test", pools, rng)
    n = scale.cases_per_attribute("test")
    remaining = {a: balanced_pairs(LABELS[a], n, rng) for a in ATTRIBUTES}
    planned = []
    for _ in range(scale.sequences):
        composition = sequence_composition(scale.sequence_length, rng)
        planned.append(pick_sequence_pairs(remaining, composition, rng))
    by_attribute: dict[str, list[EditCase]] = defaultdict(list)
    sequence_cases: list[list[EditCase]] = []
    for members in planned:
        forbidden = frozenset(y_o.lower() for _, (y_o, _) in members)
        cases = [builder.build(a, pair, "", forbidden) for a, pair in members]
        for case in cases:
            by_attribute[case.attribute].append(case)
        sequence_cases.append(cases)
    for attribute in ATTRIBUTES:
        by_attribute[attribute].extend(
            builder.build(attribute, p, "") for p in remaining[attribute]
        )
    test: list[EditCase] = []
    for attribute in ATTRIBUTES:
        cases = by_attribute[attribute]
        order = rng.permutation(len(cases))
        test.extend(replace(cases[j], case_id=f"test/{attribute}/{i}") for i, j in enumerate(order))
    sequences = [
        EditSequence(
            index=s,
            cases=tuple(
                replace(case, case_id=f"seq{s}/{j}", track=case.attribute)
                for j, case in enumerate(cases)
            ),
        )
        for s, cases in enumerate(sequence_cases)
    ]
    return test, sequences


def _sample_val(train: list[EditCase], n: int, rng: np.random.Generator) -> list[EditCase]:
    """A validation slice drawn from train, balanced over attributes, as SAKE's ALL_val."""
    per_attribute = Counter({a: n // len(ATTRIBUTES) for a in ATTRIBUTES})
    for a in ATTRIBUTES[: n % len(ATTRIBUTES)]:
        per_attribute[a] += 1
    val = []
    for attribute in ATTRIBUTES:
        pool = [c for c in train if c.attribute == attribute]
        picked = sorted(rng.choice(len(pool), size=per_attribute[attribute], replace=False))
        val.extend(
            replace(pool[i], case_id=f"val/{len(val) + k}", track=attribute)
            for k, i in enumerate(picked)
        )
    return val
