"""`python -m sake.data.check`, run in-process through `main(argv)`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fixtures_data import tiny_release, write_tiny_audio
from sake.data.check import main
from sake.data.readers import SakeRelease
from sake.data.rules import audio_key
from sake.data.writers import write_release


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], dict | None, str]:
    """Exit code, human-readable lines, the final JSON object (if any) and stderr."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    return code, lines[:-1], summary, captured.err


def written(release: SakeRelease, root: Path, *, audio: bool = True) -> Path:
    write_release(release.splits, release.sequences, root)
    if audio:
        write_tiny_audio(release, root / "audio")
    return root


def test_real_release_statistics(shared_sake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, summary, _ = run(capsys, shared_sake, "--no-audio")
    assert code == 0
    splits = summary["splits"]
    assert splits["test"]["cases"] == 1200
    assert splits["test"]["by_attribute"] == {
        "Animal": 300,
        "Emotion": 300,
        "Gender": 300,
        "Language": 300,
    }
    assert splits["train"]["cases"] == 4000 and splits["val"]["cases"] == 400
    assert summary["sequences"] == {"count": 10, "lengths": [10] * 10}
    assert splits["test"]["probes_by_type"]["locality_audio/type2"] == 900
    assert splits["test"]["probes_by_type"]["portability"] == 1200
    assert splits["test"]["edit_pair_balance"]["Gender"]["male"] == {"as_y_o": 150, "as_y_e": 150}
    assert summary["overlaps"] == {"val_cases_in_train": 400, "sequence_cases_in_test": 100}
    assert set(summary["rules"].values()) == {"ok"} and len(summary["rules"]) == 10
    assert "audio" not in summary
    assert "split test: 1200 cases (Animal 300, Emotion 300, Gender 300, Language 300)" in lines


def test_clean_corpus_with_audio_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    release = tiny_release()
    root = written(release, tmp_path / "corpus")
    code, lines, summary, _ = run(capsys, root)
    assert code == 0
    assert summary["audio"] == {
        "files": len(
            {audio_key(p) for case in release.all_cases() for p in case.probes() if p.file}
        ),
        "missing": 0,
        "undecodable": 0,
        "duration_s": {"min": 0.5, "mean": 0.5, "max": 0.5},
    }
    assert summary["rules"]["audio_present"] == "ok"
    assert summary["rules"]["audio_decodable"] == "ok"


def test_audio_root_can_live_elsewhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    release = tiny_release()
    root = written(release, tmp_path / "corpus", audio=False)
    write_tiny_audio(release, tmp_path / "downloads")
    assert run(capsys, root)[0] == 1
    code, _, summary, _ = run(capsys, root, "--audio-root", tmp_path / "downloads")
    assert code == 0 and summary["audio"]["missing"] == 0


def test_broken_corpus_is_rejected_naming_the_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    release = tiny_release()
    test = release.splits["test"]
    broken = replace(release, splits={**release.splits, "test": test[1:]})
    code, lines, summary, _ = run(capsys, written(broken, tmp_path / "corpus"), "--no-audio")
    assert code == 1
    assert summary["rules"]["edit_pair_balance"] == "violated"
    assert "rule edit_pair_balance: VIOLATED by 2 records" in lines
    assert "  test/Animal: label 'cow' is y_o in 1 cases but y_e in 0" in lines
    assert run(capsys, tmp_path / "corpus", "--no-audio", "--balance-tolerance", "1")[0] == 0


def test_sequence_rule_violation_names_the_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    release = tiny_release()
    first, second = release.sequences[0].cases
    leaking = replace(
        first.locality_audio[0],
        track="Gender",
        answer=second.y_o,
        question="Gender?\n\nOptions:\nmale\nfemale",
        options=("male", "female"),
    )
    first = replace(first, locality_audio=(leaking, *first.locality_audio[1:]))
    sequences = [replace(release.sequences[0], cases=(first, second))]
    code, lines, summary, _ = run(
        capsys, written(replace(release, sequences=sequences), tmp_path / "c"), "--no-audio"
    )
    assert code == 1
    assert summary["rules"]["sequence_locality_independent"] == "violated"
    assert "  seq0/0: locality_audio/type1: answer 'female' is y_o of seq0/1" in lines


def test_missing_audio_is_listed_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = written(tiny_release(), tmp_path / "corpus")
    removed = sorted((root / "audio" / "Animal").glob("*.wav"))
    for path in removed:
        path.unlink()
    code, lines, summary, _ = run(capsys, root)
    assert code == 1
    assert summary["audio"]["missing"] == len(removed)
    assert summary["rules"]["audio_present"] == "violated"
    total = summary["audio"]["files"]
    assert f"{len(removed)} of {total} audio files are missing; first:" in lines
    assert f"  {removed[0]}" in lines


def test_malformed_json_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = written(tiny_release(), tmp_path / "corpus", audio=False)
    (root / "data" / "train" / "Gender.json").write_text("[{]", encoding="utf-8")
    code, lines, summary, err = run(capsys, root, "--no-audio")
    assert (code, lines, summary) == (2, [], None)
    assert "Gender.json: malformed JSON at line 1" in err


def test_missing_field_exits_2_naming_file_and_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = written(tiny_release(), tmp_path / "corpus", audio=False)
    path = root / "data" / "test" / "single_editing" / "Animal.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    del records[1]["reliability_question"]
    path.write_text(json.dumps(records), encoding="utf-8")
    code, _, _, err = run(capsys, root, "--no-audio")
    assert code == 2
    assert "Animal.json: record 1: missing field 'reliability_question'" in err


def test_directory_without_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _, err = run(capsys, tmp_path, "--no-audio")
    assert code == 2 and "not a SAKE-format directory" in err
