"""Readers for SAKE data: the release's nested JSON and the newer flat, one-row-per-case JSON.

Both formats map onto the same `EditCase`. Probe types follow the paper, never list positions:
a gender case's second audio-locality probe is type 3, because gender has no type 2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sake.data.errors import DataError
from sake.data.options import answer_in_options, parse_options
from sake.data.schema import (
    ATTRIBUTES,
    GENERALITY_TYPES,
    EditCase,
    Probe,
    ProbeKind,
    Sequence,
    canonical_label,
    locality_audio_types,
)

SPLITS: tuple[str, ...] = ("train", "val", "test")
VAL_FILE = "ALL_val.json"
SEQUENCES_FILE = "all_sequences.json"

# Flat-format key prefixes and the probes they hold.
FLAT_PROBES: dict[str, tuple[ProbeKind, int | None]] = {
    "reliability": (ProbeKind.RELIABILITY, None),
    "t-gen": (ProbeKind.GENERALITY, 1),
    "a-gen": (ProbeKind.GENERALITY, 2),
    "ta-gen": (ProbeKind.GENERALITY, 3),
    "inter-loc": (ProbeKind.LOCALITY_AUDIO, 1),
    "intra-loc": (ProbeKind.LOCALITY_AUDIO, 2),
    "tgt-loc": (ProbeKind.LOCALITY_AUDIO, 3),
    "cap-loc": (ProbeKind.LOCALITY_AUDIO, 4),
    "text-loc": (ProbeKind.LOCALITY_TEXT, None),
    "portability": (ProbeKind.PORTABILITY, None),
}
_FLAT_KEY = re.compile(rf"^({'|'.join(map(re.escape, FLAT_PROBES))})(?:-(\d+))?_(.+)$")
NESTED_FIELDS = (
    "file",
    "original_answer",
    "edited_answer",
    "reliability_question",
    "generality",
    "locality",
)
FLAT_FIELDS = ("file", "original_label", "edited_label", "reliability_question")
_PROBE_FIELDS = frozenset({"track", "file", "question", "answer", "options", "category"})
_SEQUENCE_FILE = re.compile(r"seq_(\d+)$")


@dataclass(frozen=True)
class SakeRelease:
    """A SAKE-format directory read into memory."""

    root: Path
    audio_root: Path
    splits: dict[str, list[EditCase]]
    sequences: list[Sequence] = field(default_factory=list)

    def all_cases(self) -> list[EditCase]:
        """Every case of every split, then every sequence case."""
        cases = [case for split_cases in self.splits.values() for case in split_cases]
        return cases + [case for sequence in self.sequences for case in sequence.cases]


@dataclass(frozen=True)
class _Where:
    """A record's location, for error messages."""

    path: Path
    index: int | str

    def error(self, message: str) -> DataError:
        return DataError(message, path=self.path, index=self.index)


def load_json(path: Path) -> Any:
    """Parse a JSON file; malformed or missing files raise `DataError` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"cannot read file: {error.strerror}", path=path) from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}", path=path
        ) from error


def is_flat_record(record: Mapping[str, Any]) -> bool:
    """Flat records carry `original_label`/`edited_label`; nested ones `original_answer`."""
    return "original_label" in record or "edited_label" in record


def read_nested_cases(
    path: Path,
    *,
    attribute: str | None = None,
    audio_root: Path | None = None,
    split: str = "test",
) -> list[EditCase]:
    """Cases of a nested-format file; the attribute is the record's `track` or `attribute`."""
    return _read_cases(path, attribute, audio_root, split, _nested_case)


def read_flat_cases(
    path: Path,
    *,
    attribute: str | None = None,
    audio_root: Path | None = None,
    split: str = "test",
) -> list[EditCase]:
    """Cases of a flat-format file (one record per case, track-prefixed audio files)."""
    return _read_cases(path, attribute, audio_root, split, _flat_case)


def read_cases(
    path: Path,
    *,
    attribute: str | None = None,
    audio_root: Path | None = None,
    split: str = "test",
) -> list[EditCase]:
    """Cases of a file in either format, detected per record."""
    return _read_cases(path, attribute, audio_root, split, _any_case)


def read_sequences(path: Path, *, audio_root: Path | None = None) -> list[Sequence]:
    """Sequences from `[[case, ...], ...]`, `{"sequences": [[...]]}` or one `[case, ...]`."""
    path = Path(path)
    data = load_json(path)
    if isinstance(data, Mapping):
        if "sequences" not in data:
            raise DataError("expected a list of sequences or a 'sequences' key", path=path)
        data = data["sequences"]
    if not isinstance(data, list):
        raise DataError("expected a list of sequences", path=path)
    if data and all(isinstance(item, Mapping) for item in data):
        return [_sequence(data, _sequence_index(path), path, audio_root)]
    sequences = []
    for index, records in enumerate(data):
        if not isinstance(records, list):
            raise DataError("a sequence must be a list of cases", path=path, index=index)
        sequences.append(_sequence(records, index, path, audio_root))
    return sequences


def load_release(
    root: Path,
    *,
    audio_root: Path | None = None,
    splits: Iterable[str] = SPLITS,
    with_sequences: bool = True,
) -> SakeRelease:
    """Read a release directory (`data/train`, `data/test/...`); audio under `root/audio`."""
    root = Path(root)
    data = root / "data"
    if not data.is_dir():
        raise DataError("not a SAKE-format directory (no data/ folder)", path=root)
    audio_root = Path(audio_root) if audio_root is not None else root / "audio"
    loaded = {split: _read_split(data, split, audio_root) for split in splits}
    sequences = _read_release_sequences(data, audio_root) if with_sequences else []
    return SakeRelease(root=root, audio_root=audio_root, splits=loaded, sequences=sequences)


def available_splits(root: Path) -> tuple[str, ...]:
    """The splits a release directory holds files for, in train, val, test order."""
    data = Path(root) / "data"
    return tuple(
        split for split in SPLITS if any(path.is_file() for path, _ in split_files(data, split))
    )


def split_files(data: Path, split: str) -> list[tuple[Path, str | None]]:
    """The files of a split, each with the attribute its name implies (None for ALL_val)."""
    if split == "val":
        return [(data / "train" / VAL_FILE, None)]
    folder = {"train": data / "train", "test": data / "test" / "single_editing"}.get(split)
    if folder is None:
        raise DataError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}", path=data)
    return [
        (folder / f"{name}.json", name)
        for name in ATTRIBUTES
        if (folder / f"{name}.json").is_file()
    ]


def _read_split(data: Path, split: str, audio_root: Path) -> list[EditCase]:
    files = split_files(data, split)
    if not files or not files[0][0].is_file():
        raise DataError(f"no files for split {split!r}", path=data)
    cases: list[EditCase] = []
    for path, attribute in files:
        cases += read_cases(path, attribute=attribute, audio_root=audio_root, split=split)
    return cases


def _read_release_sequences(data: Path, audio_root: Path) -> list[Sequence]:
    folder = data / "test" / "sequential_editing"
    if (folder / SEQUENCES_FILE).is_file():
        return read_sequences(folder / SEQUENCES_FILE, audio_root=audio_root)
    parts = sorted(folder.glob("sequences/seq_*.json"), key=_sequence_index)
    return [sequence for part in parts for sequence in read_sequences(part, audio_root=audio_root)]


def _sequence_index(path: Path) -> int:
    match = _SEQUENCE_FILE.search(Path(path).stem)
    return int(match.group(1)) if match else 0


def _sequence(records: list[Any], index: int, path: Path, audio_root: Path | None) -> Sequence:
    cases = []
    for position, record in enumerate(records):
        case = _any_case(record, _Where(path, f"{index}/{position}"), None)
        cases.append(_finished(case, f"seq{index}/{position}", audio_root))
    return Sequence(index=index, cases=tuple(cases))


def _read_cases(
    path: Path,
    attribute: str | None,
    audio_root: Path | None,
    split: str,
    parse: Callable[[Any, _Where, str | None], EditCase],
) -> list[EditCase]:
    path = Path(path)
    records = load_json(path)
    if not isinstance(records, list):
        raise DataError("expected a JSON list of cases", path=path)
    cases = []
    for index, record in enumerate(records):
        case = parse(record, _Where(path, index), attribute)
        cases.append(_finished(case, f"{split}/{case.attribute}/{index}", audio_root))
    return cases


def _finished(case: EditCase, case_id: str, audio_root: Path | None) -> EditCase:
    case = replace(case, case_id=case_id)
    return case if audio_root is None else case.with_audio_root(audio_root)


def _any_case(record: Any, where: _Where, attribute: str | None) -> EditCase:
    _require_mapping(record, where, "case")
    parse = _flat_case if is_flat_record(record) else _nested_case
    return parse(record, where, attribute)


@dataclass(frozen=True)
class _CaseContext:
    """What a case's probes inherit: its attribute, labels and location."""

    attribute: str
    y_o: str
    y_e: str
    where: _Where

    def probe(self, raw: Any, kind: ProbeKind, type_: int | None, label: str) -> Probe:
        _require_mapping(raw, self.where, label)
        question = _text(raw, "question", self.where, label)
        has_audio = kind is not ProbeKind.LOCALITY_TEXT
        original = raw.get("original_answer")
        probe = Probe(
            kind=kind,
            question=question,
            answer=_text(raw, "answer", self.where, label),
            options=_options(raw, question, self.where, label),
            type=type_,
            file=_text(raw, "file", self.where, label) if has_audio else raw.get("file"),
            track=self._track(raw, kind, label),
            original_answer=original if isinstance(original, str) else self._original(kind),
            category=raw.get("category"),
            extra={
                key: value
                for key, value in raw.items()
                if key not in _PROBE_FIELDS
                and not (key == "original_answer" and isinstance(value, str))
            },
        )
        self._check_answer(probe, label)
        return probe

    def _track(self, raw: Mapping[str, Any], kind: ProbeKind, label: str) -> str | None:
        if kind is ProbeKind.LOCALITY_AUDIO:
            return _text(raw, "track", self.where, label)
        if kind is ProbeKind.LOCALITY_TEXT:
            return raw.get("track")
        return raw.get("track", self.attribute)

    def _original(self, kind: ProbeKind) -> str | None:
        return self.y_o if kind in (ProbeKind.RELIABILITY, ProbeKind.GENERALITY) else None

    def _check_answer(self, probe: Probe, label: str) -> None:
        """SAKE's own probes must offer their answer; third-party ones are left to the rules."""
        third_party = probe.kind is ProbeKind.LOCALITY_TEXT or probe.track not in ATTRIBUTES
        if third_party or answer_in_options(probe.answer, probe.options):
            return
        raise self.where.error(
            f"{label}: answer {probe.answer!r} is not one of the options {list(probe.options)}"
        )


def _nested_case(record: Any, where: _Where, attribute: str | None) -> EditCase:
    _require_mapping(record, where, "case")
    _require_fields(record, NESTED_FIELDS, where)
    context = _case_context(
        record, where, record.get("track", attribute), "original_answer", "edited_answer"
    )
    reliability_raw = {
        "file": record["file"],
        "question": record["reliability_question"],
        "answer": context.y_e,
    }
    if "reliability_options" in record:
        reliability_raw["options"] = record["reliability_options"]
    reliability = context.probe(reliability_raw, ProbeKind.RELIABILITY, None, "reliability")
    locality = record["locality"]
    _require_mapping(locality, where, "locality")
    return EditCase(
        case_id="",
        attribute=context.attribute,
        y_o=context.y_o,
        y_e=context.y_e,
        reliability=reliability,
        generality=_typed_probes(
            context, _list(record, "generality", where), ProbeKind.GENERALITY, GENERALITY_TYPES
        ),
        locality_audio=_typed_probes(
            context,
            _list(locality, "audio", where, "locality.audio"),
            ProbeKind.LOCALITY_AUDIO,
            locality_audio_types(context.attribute),
        ),
        locality_text=tuple(
            context.probe(raw, ProbeKind.LOCALITY_TEXT, None, f"locality.text[{index}]")
            for index, raw in enumerate(_list(locality, "text", where, "locality.text"))
        ),
        portability=_nested_portability(context, record.get("portability")),
        track=record.get("track"),
    )


def _typed_probes(
    context: _CaseContext, raws: list[Any], kind: ProbeKind, types: tuple[int, ...]
) -> tuple[Probe, ...]:
    """Probes listed in type order: position i holds the i-th type of `types`."""
    if len(raws) != len(types):
        raise context.where.error(
            f"{kind.value}: expected {len(types)} probes (types {', '.join(map(str, types))} "
            f"for {context.attribute}), found {len(raws)}"
        )
    return tuple(
        context.probe(raw, kind, type_, f"{kind.value}[{index}]")
        for index, (type_, raw) in enumerate(zip(types, raws, strict=True))
    )


def _nested_portability(context: _CaseContext, portability: Any) -> tuple[Probe, ...]:
    if portability is None:
        return ()
    _require_mapping(portability, context.where, "portability")
    raws = portability.get("audio", [])
    raws = raws if isinstance(raws, list) else [raws]
    return tuple(
        context.probe(raw, ProbeKind.PORTABILITY, None, f"portability.audio[{index}]")
        for index, raw in enumerate(raws)
    )


def _flat_case(record: Any, where: _Where, attribute: str | None) -> EditCase:
    _require_mapping(record, where, "case")
    _require_fields(record, FLAT_FIELDS, where)
    edit_file = _text(
        record, "reliability_file" if "reliability_file" in record else "file", where, "case"
    )
    attribute = record.get("track") or _track_prefix(edit_file) or attribute
    context = _case_context(record, where, attribute, "original_label", "edited_label")
    groups = _flat_groups(record)
    reliability_raw = {
        "file": edit_file,
        "answer": context.y_e,
        **groups.pop(("reliability", 0), {}),
    }
    probes: dict[ProbeKind, list[Probe]] = {kind: [] for kind in ProbeKind}
    for (prefix, number), raw in sorted(groups.items(), key=_flat_order):
        kind, type_ = FLAT_PROBES[prefix]
        label = prefix if number == 0 else f"{prefix}-{number}"
        probes[kind].append(context.probe(_unprefixed(raw), kind, type_, label))
    return EditCase(
        case_id="",
        attribute=context.attribute,
        y_o=context.y_o,
        y_e=context.y_e,
        reliability=context.probe(
            _unprefixed(reliability_raw),
            ProbeKind.RELIABILITY,
            None,
            "reliability",
        ),
        generality=tuple(probes[ProbeKind.GENERALITY]),
        locality_audio=tuple(probes[ProbeKind.LOCALITY_AUDIO]),
        locality_text=tuple(probes[ProbeKind.LOCALITY_TEXT]),
        portability=tuple(probes[ProbeKind.PORTABILITY]),
        track=record.get("track"),
    )


def _flat_groups(record: Mapping[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """`t-gen_question` -> {("t-gen", 0): {"question": ...}}; `portability-2_file` -> number 2."""
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    for key, value in record.items():
        match = _FLAT_KEY.match(key)
        if match:
            prefix, number, name = match.groups()
            groups.setdefault((prefix, int(number or 0)), {})[name] = value
    return groups


def _flat_order(item: tuple[tuple[str, int], dict[str, Any]]) -> tuple[int, int, int]:
    (prefix, number), _ = item
    kind, type_ = FLAT_PROBES[prefix]
    return list(ProbeKind).index(kind), type_ or 0, number


def _unprefixed(raw: dict[str, Any]) -> dict[str, Any]:
    """Split a track-prefixed file (`Animal/cow_68.wav`) into its track and bare file name."""
    file = raw.get("file")
    if not isinstance(file, str) or "/" not in file:
        return raw
    track = raw.get("track")
    if isinstance(track, str) and file.startswith(f"{track}/"):
        return {**raw, "file": file[len(track) + 1 :]}
    prefix, name = file.rsplit("/", 1)
    return {**raw, "track": track or prefix, "file": name}


def _track_prefix(file: str) -> str | None:
    return file.rsplit("/", 1)[0] if "/" in file else None


def _case_context(
    record: Mapping[str, Any], where: _Where, attribute: Any, original_key: str, edited_key: str
) -> _CaseContext:
    if attribute not in ATTRIBUTES:
        raise where.error(
            f"unknown attribute {attribute!r}; known attributes: {', '.join(ATTRIBUTES)}"
            if attribute is not None
            else "no attribute: the record has no 'track' and the file name names none"
        )
    y_o = _label(attribute, _text(record, original_key, where, "case"), where)
    y_e = _label(attribute, _text(record, edited_key, where, "case"), where)
    return _CaseContext(attribute, y_o, y_e, where)


def _label(attribute: str, label: str, where: _Where) -> str:
    try:
        return canonical_label(attribute, label)
    except ValueError as error:
        raise where.error(str(error)) from error


def _options(raw: Mapping[str, Any], question: str, where: _Where, label: str) -> tuple[str, ...]:
    if "options" not in raw:
        return parse_options(question)
    options = raw["options"]
    if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
        raise where.error(f"{label}: 'options' must be a list of strings")
    return tuple(options)


def _text(raw: Mapping[str, Any], key: str, where: _Where, label: str) -> str:
    if key not in raw or raw[key] is None:
        raise where.error(f"{label}: missing field {key!r}")
    value = raw[key]
    if not isinstance(value, str):
        raise where.error(f"{label}: field {key!r} must be a string, not {type(value).__name__}")
    return value


def _list(raw: Mapping[str, Any], key: str, where: _Where, label: str | None = None) -> list[Any]:
    label = label or key
    if key not in raw:
        raise where.error(f"missing field {label!r}")
    if not isinstance(raw[key], list):
        raise where.error(f"field {label!r} must be a list")
    return raw[key]


def _require_fields(record: Mapping[str, Any], names: tuple[str, ...], where: _Where) -> None:
    missing = [name for name in names if name not in record]
    if missing:
        raise where.error(
            f"missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
        )


def _require_mapping(value: Any, where: _Where, label: str) -> None:
    if not isinstance(value, Mapping):
        raise where.error(f"{label}: expected a JSON object, not {type(value).__name__}")
