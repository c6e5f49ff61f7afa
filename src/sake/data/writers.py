"""Writers for SAKE data in the release's nested JSON and in the flat format.

Output is deterministic (fixed key order, two-space indent, UTF-8 kept as is), so a corpus
generated twice from the same seed is byte-identical. What the readers infer (options parsed
from the question, y_o as the original answer of reliability and generality probes, the case's
attribute as a probe's track) is written only when it differs from what would be inferred.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sake.data.options import parse_options
from sake.data.readers import SEQUENCES_FILE, VAL_FILE
from sake.data.schema import ATTRIBUTES, EditCase, Probe, ProbeKind, Sequence

_FLAT_PREFIX: dict[tuple[ProbeKind, int | None], str] = {
    (ProbeKind.GENERALITY, 1): "t-gen",
    (ProbeKind.GENERALITY, 2): "a-gen",
    (ProbeKind.GENERALITY, 3): "ta-gen",
    (ProbeKind.LOCALITY_AUDIO, 1): "inter-loc",
    (ProbeKind.LOCALITY_AUDIO, 2): "intra-loc",
    (ProbeKind.LOCALITY_AUDIO, 3): "tgt-loc",
    (ProbeKind.LOCALITY_AUDIO, 4): "cap-loc",
    (ProbeKind.LOCALITY_TEXT, None): "text-loc",
    (ProbeKind.PORTABILITY, None): "portability",
}


def dump_json(data: Any, path: Path) -> Path:
    """Write JSON deterministically, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def nested_record(case: EditCase, *, with_track: bool = False) -> dict[str, Any]:
    """A case as the release writes it; `track` appears when the case has one or when asked."""
    record: dict[str, Any] = {}
    if case.track is not None or with_track:
        record["track"] = case.track or case.attribute
    record.update(
        {
            "file": case.reliability.file,
            "original_answer": case.y_o,
            "edited_answer": case.y_e,
            "reliability_question": case.reliability.question,
        }
    )
    if case.reliability.options != parse_options(case.reliability.question):
        record["reliability_options"] = list(case.reliability.options)
    record["generality"] = [_probe_fields(case, probe) for probe in case.generality]
    record["locality"] = {
        "audio": [_probe_fields(case, probe) for probe in case.locality_audio],
        "text": [_probe_fields(case, probe) for probe in case.locality_text],
    }
    if case.portability:
        portability = [_probe_fields(case, probe) for probe in case.portability]
        record["portability"] = {"audio": portability[0] if len(portability) == 1 else portability}
    return record


def flat_record(case: EditCase, *, with_track: bool = False) -> dict[str, Any]:
    """A case as one flat row, audio files prefixed with their track (`Animal/cow_68.wav`)."""
    record: dict[str, Any] = {}
    if case.track is not None or with_track:
        record["track"] = case.track or case.attribute
    record.update(
        {
            "file": _prefixed_file(case.reliability),
            "original_label": case.y_o,
            "edited_label": case.y_e,
        }
    )
    record.update(_flat_fields("reliability", case, case.reliability))
    seen: dict[str, int] = {}
    for probe in [*case.generality, *case.locality_audio, *case.locality_text, *case.portability]:
        prefix = _FLAT_PREFIX[(probe.kind, probe.type)]
        seen[prefix] = seen.get(prefix, 0) + 1
        numbered = prefix if seen[prefix] == 1 else f"{prefix}-{seen[prefix]}"
        record.update(_flat_fields(numbered, case, probe))
    return record


def write_nested_cases(cases: Iterable[EditCase], path: Path, *, with_track: bool = False) -> Path:
    return dump_json([nested_record(case, with_track=with_track) for case in cases], path)


def write_flat_cases(cases: Iterable[EditCase], path: Path, *, with_track: bool = False) -> Path:
    return dump_json([flat_record(case, with_track=with_track) for case in cases], path)


def write_sequences(sequences: Iterable[Sequence], path: Path, *, flat: bool = False) -> Path:
    """All sequences in one file: `[[case, ...], ...]`, or `{"sequences": [[...]]}` when flat."""
    rows = [_sequence_rows(sequence, flat) for sequence in sequences]
    return dump_json({"sequences": rows} if flat else rows, path)


def write_release(
    splits: Mapping[str, Iterable[EditCase]],
    sequences: Iterable[Sequence],
    root: Path,
    *,
    flat: bool = False,
) -> list[Path]:
    """Write the release layout under `root/data`; returns the files written.

    train -> data/train/{attribute}.json, val -> data/train/ALL_val.json,
    test -> data/test/single_editing/{attribute}.json, sequences ->
    data/test/sequential_editing/all_sequences.json and sequences/seq_{i}.json.
    """
    data = Path(root) / "data"
    unknown = sorted(set(splits) - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"unknown splits {unknown}; a release has train, val and test")
    write_cases = write_flat_cases if flat else write_nested_cases
    written: list[Path] = []
    folders = {"train": data / "train", "test": data / "test" / "single_editing"}
    for split, folder in folders.items():
        for attribute, cases in _by_attribute(splits.get(split, ())).items():
            written.append(write_cases(cases, folder / f"{attribute}.json"))
    if "val" in splits:
        written.append(write_cases(splits["val"], data / "train" / VAL_FILE, with_track=True))
    sequences = list(sequences)
    if sequences:
        written += _write_release_sequences(sequences, data / "test" / "sequential_editing", flat)
    return written


def _write_release_sequences(sequences: list[Sequence], folder: Path, flat: bool) -> list[Path]:
    written = [write_sequences(sequences, folder / SEQUENCES_FILE, flat=flat)]
    for sequence in sequences:
        rows = _sequence_rows(sequence, flat)
        written.append(dump_json(rows, folder / "sequences" / f"seq_{sequence.index}.json"))
    return written


def _sequence_rows(sequence: Sequence, flat: bool) -> list[dict[str, Any]]:
    to_record = flat_record if flat else nested_record
    return [to_record(case, with_track=True) for case in sequence.cases]


def _by_attribute(cases: Iterable[EditCase]) -> dict[str, list[EditCase]]:
    grouped: dict[str, list[EditCase]] = {}
    for case in cases:
        grouped.setdefault(case.attribute, []).append(case)
    return {attribute: grouped[attribute] for attribute in ATTRIBUTES if attribute in grouped}


def _probe_fields(case: EditCase, probe: Probe, *, prefixed: bool = False) -> dict[str, Any]:
    """A probe's fields in the release's key order; flat rows prefix files with the track."""
    fields: dict[str, Any] = {}
    if probe.kind is ProbeKind.LOCALITY_AUDIO or _own_track(case, probe):
        fields["track"] = probe.track
    if probe.file is not None:
        fields["file"] = _prefixed_file(probe) if prefixed else probe.file
    fields["question"] = probe.question
    fields["answer"] = probe.answer
    fields.update(_inferred_overrides(case, probe))
    for key, value in probe.extra.items():
        fields.setdefault(key, value)
    return fields


def _flat_fields(prefix: str, case: EditCase, probe: Probe) -> dict[str, Any]:
    fields = _probe_fields(case, probe, prefixed=True)
    return {f"{prefix}_{key}": value for key, value in fields.items()}


def _inferred_overrides(case: EditCase, probe: Probe) -> dict[str, Any]:
    """Options, original answer and category, where a reader could not infer them."""
    fields: dict[str, Any] = {}
    if probe.options != parse_options(probe.question):
        fields["options"] = list(probe.options)
    if probe.original_answer != _default_original(case, probe):
        fields["original_answer"] = probe.original_answer
    if probe.category is not None:
        fields["category"] = probe.category
    return fields


def _default_original(case: EditCase, probe: Probe) -> str | None:
    return case.y_o if probe.kind in (ProbeKind.RELIABILITY, ProbeKind.GENERALITY) else None


def _own_track(case: EditCase, probe: Probe) -> bool:
    """Whether a non-locality probe's track differs from the one a reader would assume."""
    if probe.kind is ProbeKind.LOCALITY_TEXT:
        return probe.track is not None
    return probe.track != case.attribute


def _prefixed_file(probe: Probe) -> str | None:
    if probe.file is None or probe.track is None:
        return probe.file
    return f"{probe.track}/{probe.file}"
