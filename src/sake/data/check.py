"""Validate a SAKE-format directory and print its statistics.

    python -m sake.data.check DIR [--no-audio] [--audio-root PATH]

Reads DIR/data (schema), checks the construction rules and, unless --no-audio, that every
audio file under the audio root exists and decodes. Human-readable lines come first; the last
line is one JSON object with the statistics. Exit status: 0 when every rule holds, 1 when a
rule is broken (its name and first offending records are printed), 2 when the input cannot be
read at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sake.data.audio import AudioSurvey, case_audio_paths, survey_audio
from sake.data.errors import DataError, MissingAudioError
from sake.data.readers import SakeRelease, available_splits, load_release
from sake.data.rules import (
    RuleConfig,
    RuleResult,
    Violation,
    audio_key,
    check_rules,
    failed,
    label_counts,
)
from sake.data.schema import ATTRIBUTES, GENERALITY_TYPES, EditCase

DEFAULT_MAX_SECONDS = 30.0
PROBE_NAMES: tuple[str, ...] = (
    "reliability",
    *(f"generality/type{type_}" for type_ in GENERALITY_TYPES),
    *(f"locality_audio/type{type_}" for type_ in (1, 2, 3, 4)),
    "locality_text",
    "portability",
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        release = _load(args.root, args.audio_root)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"SAKE data check of {release.root}")
    config = RuleConfig(balance_tolerance=args.balance_tolerance)
    summary, results = run_checks(
        release, audio=not args.no_audio, config=config, max_seconds=args.max_seconds
    )
    _print_contents(summary)
    if "audio" in summary:
        print(f"audio under {release.audio_root}: {json.dumps(summary['audio'])}")
    for result in results:
        _print_result(result, args.show)
    print(json.dumps(summary, ensure_ascii=False))
    return 1 if failed(results) else 0


def run_checks(
    release: SakeRelease,
    *,
    audio: bool = True,
    config: RuleConfig | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> tuple[dict[str, Any], list[RuleResult]]:
    """Statistics and rule results of a release; audio is surveyed only when asked.

    Clips longer than `max_seconds` (a model's audio window) are reported, not failed: a model
    cuts them to its window.
    """
    results = check_rules(release, config)
    summary = release_statistics(release)
    if audio:
        users = case_audio_paths(release.all_cases())
        survey = survey_audio(users)
        summary["audio"] = audio_statistics(survey)
        results += audio_rules(survey, users)
        results.append(long_clips_rule(survey, users, max_seconds))
        if survey.missing:
            print(MissingAudioError(list(survey.missing), total=survey.files))
    summary["rules"] = {result.name: result.status for result in results if not result.advisory}
    summary["advisories"] = {
        result.name: {"count": len(result.violations), **result.notes}
        for result in results
        if result.advisory
    }
    return summary, results


def _load(root: Path, audio_root: Path | None) -> SakeRelease:
    """Every split the directory holds; a directory with none cannot be checked."""
    splits = available_splits(root)
    if (root / "data").is_dir() and not splits:
        raise DataError("no train, val or test files under data/", path=root)
    return load_release(root, audio_root=audio_root, splits=splits)


def release_statistics(release: SakeRelease) -> dict[str, Any]:
    """Counts per split, sequence lengths and how splits overlap."""
    return {
        "splits": {split: split_statistics(cases) for split, cases in release.splits.items()},
        "sequences": {
            "count": len(release.sequences),
            "lengths": [len(sequence) for sequence in release.sequences],
        },
        "overlaps": {
            "val_cases_in_train": _shared_cases(
                release.splits.get("val", ()), release.splits.get("train", ())
            ),
            "sequence_cases_in_test": _shared_cases(
                [case for sequence in release.sequences for case in sequence.cases],
                release.splits.get("test", ()),
            ),
        },
    }


def split_statistics(cases: list[EditCase]) -> dict[str, Any]:
    attributes = Counter(case.attribute for case in cases)
    probes = Counter(probe.name for case in cases for probe in case.probes())
    return {
        "cases": len(cases),
        "by_attribute": {name: attributes[name] for name in ATTRIBUTES if attributes[name]},
        "probes_by_type": {name: probes[name] for name in PROBE_NAMES},
        "edit_pair_balance": {
            attribute: {
                label: {"as_y_o": as_y_o, "as_y_e": as_y_e}
                for label, (as_y_o, as_y_e) in counts.items()
            }
            for attribute, counts in label_counts(cases).items()
        },
    }


def audio_statistics(survey: AudioSurvey) -> dict[str, Any]:
    return {
        "files": survey.files,
        "missing": len(survey.missing),
        "undecodable": len(survey.undecodable),
        "duration_s": survey.duration_summary(),
    }


def audio_rules(survey: AudioSurvey, users: dict[Path, str]) -> list[RuleResult]:
    """Missing and undecodable audio as rule results naming the first case using each file."""
    present = RuleResult(
        "audio_present",
        "every audio file named by the corpus exists under the audio root",
        tuple(Violation(users[path], f"missing {path}") for path in survey.missing),
        checked=survey.files,
    )
    decodable = RuleResult(
        "audio_decodable",
        "every audio file decodes",
        tuple(Violation(users[path], f"{path}: {why}") for path, why in survey.undecodable),
        checked=survey.files - len(survey.missing),
    )
    return [present, decodable]


def long_clips_rule(survey: AudioSurvey, users: dict[Path, str], max_seconds: float) -> RuleResult:
    """Advisory: the clips a model with a `max_seconds` audio window would cut, longest first."""
    long = sorted(
        (
            (duration, path)
            for path, duration in zip(survey.decoded, survey.durations, strict=True)
            if duration > max_seconds + 1e-6
        ),
        reverse=True,
    )
    return RuleResult(
        "audio_within_window",
        f"every clip fits a {max_seconds:g} s audio window (longer clips are cut by the model)",
        tuple(Violation(users[path], f"{path} lasts {seconds:.1f} s") for seconds, path in long),
        advisory=True,
        checked=len(survey.durations),
        notes={"max_seconds": max_seconds},
    )


def _shared_cases(cases: Iterable[EditCase], pool: Iterable[EditCase]) -> int:
    known = {_case_key(case) for case in pool}
    return sum(_case_key(case) in known for case in cases)


def _case_key(case: EditCase) -> tuple[str, ...]:
    return (case.attribute, *audio_key(case.reliability), case.question, case.y_o, case.y_e)


def _print_contents(summary: dict[str, Any]) -> None:
    for split, stats in summary["splits"].items():
        by_attribute = ", ".join(f"{name} {count}" for name, count in stats["by_attribute"].items())
        print(f"split {split}: {stats['cases']} cases ({by_attribute})")
    sequences = summary["sequences"]
    print(f"sequences: {sequences['count']} (lengths {sequences['lengths']})")
    overlaps = summary["overlaps"]
    print(
        f"val cases also in train: {overlaps['val_cases_in_train']}; "
        f"sequence cases also in test: {overlaps['sequence_cases_in_test']}"
    )


def _print_result(result: RuleResult, shown: int) -> None:
    notes = f" {json.dumps(result.notes)}" if result.notes else ""
    if result.ok:
        print(f"rule {result.name}: ok ({result.checked} checked){notes}")
        return
    label = "advisory" if result.advisory else "rule"
    state = "reported" if result.advisory else "VIOLATED"
    print(f"{label} {result.name}: {state} by {len(result.violations)} records{notes}")
    for violation in result.violations[:shown]:
        print(f"  {violation}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sake.data.check",
        description="Validate a SAKE-format directory and print its statistics.",
    )
    parser.add_argument("root", type=Path, metavar="DIR", help="release root holding data/")
    parser.add_argument("--no-audio", action="store_true", help="skip the audio checks")
    parser.add_argument(
        "--audio-root", type=Path, default=None, help="audio folder (default: DIR/audio)"
    )
    parser.add_argument(
        "--balance-tolerance",
        type=int,
        default=0,
        help="allowed |#y_o - #y_e| per label (default: exact balance)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help="report clips longer than a model's audio window of this many seconds (default: "
        f"{DEFAULT_MAX_SECONDS:g}, Whisper's window; desta_tiny hears 4 s)",
    )
    parser.add_argument(
        "--show", type=int, default=5, help="offending records shown per rule (default: 5)"
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
