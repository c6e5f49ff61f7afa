"""Readers, writers and the options parser, on the real release and on hand-built inputs."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest

from fixtures_data import tiny_release
from sake.data.errors import DataError
from sake.data.options import answer_in_options, normalise_option, parse_options
from sake.data.readers import (
    load_json,
    load_release,
    read_cases,
    read_flat_cases,
    read_nested_cases,
    read_sequences,
)
from sake.data.writers import (
    flat_record,
    nested_record,
    write_flat_cases,
    write_nested_cases,
    write_release,
    write_sequences,
)


def _release_files(shared_sake: Path) -> dict[str, Path]:
    data = shared_sake / "data"
    return {
        "gender_test": data / "test" / "single_editing" / "Gender.json",
        "animal_test": data / "test" / "single_editing" / "Animal.json",
        "val": data / "train" / "ALL_val.json",
        "sequences": data / "test" / "sequential_editing" / "all_sequences.json",
    }


def _with_extras(cases) -> list[tuple]:
    """Cases plus every probe's `extra`, which probe equality leaves out."""
    return [(case, [probe.extra for probe in case.probes()]) for case in cases]


# --- the real release ---------------------------------------------------------------------


def test_release_counts_and_case_ids(shared_sake: Path) -> None:
    release = load_release(shared_sake)
    assert {split: len(cases) for split, cases in release.splits.items()} == {
        "train": 4000,
        "val": 400,
        "test": 1200,
    }
    assert [len(sequence) for sequence in release.sequences] == [10] * 10
    assert release.splits["test"][0].case_id == "test/Animal/0"
    assert release.splits["val"][0].case_id.startswith("val/")
    assert release.sequences[3].cases[7].case_id == "seq3/7"
    per_attribute = defaultdict(int)
    for case in release.splits["test"]:
        per_attribute[case.attribute] += 1
    assert set(per_attribute.values()) == {300}


def test_nested_reader_maps_positions_to_paper_types(shared_sake: Path) -> None:
    files = _release_files(shared_sake)
    gender = read_nested_cases(files["gender_test"], attribute="Gender")
    animal = read_nested_cases(files["animal_test"], attribute="Animal")
    assert {tuple(p.type for p in case.locality_audio) for case in gender} == {(1, 3, 4)}
    assert {tuple(p.type for p in case.locality_audio) for case in animal} == {(1, 2, 3, 4)}
    assert {tuple(p.type for p in case.generality) for case in animal} == {(1, 2, 3)}
    case = gender[0]
    type3 = case.locality_audio_of(3)
    assert type3.track == "Gender" and type3.answer.lower() == case.y_e
    assert case.locality_audio_of(2) is None
    assert case.locality_audio_of(4).track.startswith("DynamicSuperb/")


def test_nested_reader_fields_and_options(shared_sake: Path) -> None:
    case = read_nested_cases(_release_files(shared_sake)["gender_test"], attribute="Gender")[0]
    assert (case.y_o, case.y_e, case.track) == ("female", "male", None)
    assert case.reliability.options == ("male", "female")
    assert case.reliability.answer == "male"
    assert case.reliability.original_answer == "female"
    assert all(probe.original_answer == "female" for probe in case.generality)
    assert case.locality_audio_of(3).options == ("Male", "Female")
    assert case.locality_audio_of(4).options == ("spoofed", "authentic")
    text = case.locality_text[0]
    assert text.options == ("5", "7", "9", "12") and text.answer == "7"
    assert text.original_answer is None
    assert text.extra == {"original_answer": 1, "subject": "astronomy"}
    (portability,) = case.portability
    assert portability.answer == "Dhoti" and portability.options == ("Dhoti", "Qipao")
    assert portability.original_answer is None


def test_audio_resolves_under_track_folders(shared_sake: Path, tmp_path: Path) -> None:
    case = read_nested_cases(
        _release_files(shared_sake)["gender_test"], attribute="Gender", audio_root=tmp_path
    )[0]
    assert case.edit_audio == tmp_path / "Gender" / "en_test_0_common_voice_en_31696187.wav"
    type4 = case.locality_audio_of(4)
    assert type4.audio_path == tmp_path / "DynamicSuperb/SpoofDetection_ASVspoof/E_1002259.wav"
    assert case.locality_text[0].audio_path is None


def test_val_and_sequence_records_carry_their_track(shared_sake: Path) -> None:
    files = _release_files(shared_sake)
    val = read_nested_cases(files["val"], split="val")
    assert {case.track for case in val} == {"Animal", "Emotion", "Gender", "Language"}
    assert all(case.track == case.attribute for case in val)
    sequences = read_sequences(files["sequences"])
    flagged = [
        probe
        for sequence in sequences
        for case in sequence.cases
        for probe in case.locality_audio
        if probe.extra.get("update")
    ]
    assert len(flagged) == 38


def test_real_release_round_trips_through_flat_format(shared_sake: Path, tmp_path: Path) -> None:
    files = _release_files(shared_sake)
    for name in ("gender_test", "animal_test", "val"):
        original = json.loads(files[name].read_text(encoding="utf-8"))
        attribute = None if name == "val" else files[name].stem
        cases = read_nested_cases(files[name], attribute=attribute)
        write_flat_cases(cases, tmp_path / f"{name}.flat.json")
        from_flat = read_flat_cases(tmp_path / f"{name}.flat.json")
        assert _with_extras(from_flat) == _with_extras(cases)
        assert [nested_record(case) for case in from_flat] == original


def test_real_sequences_round_trip_in_both_formats(shared_sake: Path, tmp_path: Path) -> None:
    path = _release_files(shared_sake)["sequences"]
    sequences = read_sequences(path)
    write_sequences(sequences, tmp_path / "nested.json")
    assert json.loads((tmp_path / "nested.json").read_text()) == load_json(path)
    write_sequences(sequences, tmp_path / "flat.json", flat=True)
    flat = load_json(tmp_path / "flat.json")
    assert list(flat) == ["sequences"] and len(flat["sequences"]) == 10
    again = read_sequences(tmp_path / "flat.json")
    assert again == sequences
    parts = read_sequences(path.parent / "sequences" / "seq_4.json")
    assert parts[0].index == 4 and parts[0].cases == sequences[4].cases


def test_options_of_every_type4_task_are_parsed(shared_sake: Path) -> None:
    test = load_release(shared_sake, splits=("test",), with_sequences=False).splits["test"]
    by_task = defaultdict(list)
    for case in test:
        probe = case.locality_audio_of(4)
        by_task[probe.track].append(probe)
    assert len(by_task) == 30
    assert all(probe.options for probes in by_task.values() for probe in probes)
    probes = [probe for task in by_task.values() for probe in task]
    covered = sum(answer_in_options(probe.answer, probe.options) for probe in probes)
    assert covered / len(probes) > 0.98


# --- flat format ------------------------------------------------------------------------


def test_flat_records_prefix_files_with_their_track() -> None:
    release = tiny_release()
    animal, gender = release.splits["test"][0], release.splits["test"][2]
    record = flat_record(animal)
    assert record["file"] == "Animal/pig_te0_edit.wav"
    assert record["a-gen_file"] == "Animal/pig_te0_other.wav"
    assert record["inter-loc_track"] == "Language"
    assert record["inter-loc_file"] == "Language/German_te0_loc1.wav"
    assert record["cap-loc_file"] == "Synthetic/BeepCounting/two_te0_loc4.wav"
    assert record["portability_original_answer"] == "fact of pig"
    assert record["portability_category"] == "facts"
    assert record["text-loc_subject"] == "arithmetic"
    assert "track" not in record
    assert not any(key.startswith("intra-loc") for key in flat_record(gender))


def test_flat_reader_takes_the_attribute_from_the_file_prefix(tmp_path: Path) -> None:
    written = tiny_release().splits["test"]
    write_flat_cases(written, tmp_path / "mixed.json")
    cases = read_flat_cases(tmp_path / "mixed.json", split="test")
    assert [case.attribute for case in cases] == ["Animal", "Animal", "Gender", "Gender"]
    assert [case.case_id for case in cases] == [
        f"test/{case.attribute}/{i}" for i, case in enumerate(cases)
    ]
    renamed = [
        replace(case, case_id=read.case_id) for case, read in zip(written, cases, strict=True)
    ]
    assert _with_extras(cases) == _with_extras(renamed)


def test_read_cases_detects_the_format_per_file(tmp_path: Path) -> None:
    cases = tiny_release().splits["train"]
    write_flat_cases(cases, tmp_path / "flat.json", with_track=True)
    write_nested_cases(cases, tmp_path / "nested.json", with_track=True)
    from_flat = read_cases(tmp_path / "flat.json", split="train")
    from_nested = read_cases(tmp_path / "nested.json", split="train")
    assert from_flat == from_nested
    assert [case.track for case in from_flat] == [case.attribute for case in cases]


# --- writers ----------------------------------------------------------------------------


def test_release_layout_round_trips_and_is_byte_identical(tmp_path: Path) -> None:
    release = tiny_release()
    first = write_release(release.splits, release.sequences, tmp_path / "a")
    write_release(release.splits, release.sequences, tmp_path / "b")
    relative = sorted(str(path.relative_to(tmp_path / "a")) for path in first)
    assert relative == [
        "data/test/sequential_editing/all_sequences.json",
        "data/test/sequential_editing/sequences/seq_0.json",
        "data/test/single_editing/Animal.json",
        "data/test/single_editing/Gender.json",
        "data/train/ALL_val.json",
        "data/train/Animal.json",
        "data/train/Gender.json",
    ]
    for name in relative:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    loaded = load_release(tmp_path / "a")
    for split, cases in release.splits.items():
        assert _with_extras(loaded.splits[split]) == _with_extras(
            [case.with_audio_root(tmp_path / "a" / "audio") for case in cases]
        )
    assert loaded.sequences[0].cases == tuple(
        case.with_audio_root(tmp_path / "a" / "audio") for case in release.sequences[0].cases
    )


def test_options_that_differ_from_the_question_are_written(tmp_path: Path) -> None:
    case = tiny_release().splits["test"][0]
    explicit = replace(case.locality_audio_of(4), options=("one", "two", "three", "four"))
    changed = replace(case, locality_audio=(*case.locality_audio[:3], explicit))
    record = nested_record(changed)
    assert record["locality"]["audio"][3]["options"] == ["one", "two", "three", "four"]
    assert "options" not in record["locality"]["audio"][0]
    write_nested_cases([changed], tmp_path / "cases.json")
    (again,) = read_nested_cases(tmp_path / "cases.json", attribute="Animal")
    assert again.locality_audio_of(4).options == ("one", "two", "three", "four")


# --- bad input --------------------------------------------------------------------------


def _nested_records() -> list[dict]:
    return [nested_record(case) for case in tiny_release().splits["test"][:2]]


def _write(path: Path, records) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "Animal.json"
    path.write_text('[{"file": "a.wav",', encoding="utf-8")
    with pytest.raises(DataError, match=r"Animal\.json: malformed JSON at line 1"):
        read_nested_cases(path, attribute="Animal")


def test_missing_field_names_file_and_record(tmp_path: Path) -> None:
    records = _nested_records()
    del records[1]["edited_answer"]
    path = _write(tmp_path / "Animal.json", records)
    with pytest.raises(DataError, match=r"Animal\.json: record 1: missing field 'edited_answer'"):
        read_nested_cases(path, attribute="Animal")
    records = _nested_records()
    del records[0]["generality"][2]["file"]
    path = _write(tmp_path / "Animal.json", records)
    with pytest.raises(DataError, match=r"record 0: generality\[2\]: missing field 'file'"):
        read_nested_cases(path, attribute="Animal")


def test_answer_not_among_options_is_rejected(tmp_path: Path) -> None:
    records = _nested_records()
    records[1]["generality"][0]["answer"] = "unicorn"
    path = _write(tmp_path / "Animal.json", records)
    with pytest.raises(DataError, match=r"record 1: generality\[0\]: answer 'unicorn' is not one"):
        read_nested_cases(path, attribute="Animal")


def test_unknown_label_and_attribute_are_rejected(tmp_path: Path) -> None:
    records = _nested_records()
    records[0]["original_answer"] = "unicorn"
    path = _write(tmp_path / "Animal.json", records)
    with pytest.raises(DataError, match=r"record 0: unknown Animal label 'unicorn'"):
        read_nested_cases(path, attribute="Animal")
    with pytest.raises(DataError, match=r"record 0: unknown attribute 'Bird'"):
        read_nested_cases(_write(tmp_path / "Bird.json", _nested_records()), attribute="Bird")


def test_wrong_number_of_typed_probes_is_rejected(tmp_path: Path) -> None:
    records = _nested_records()
    records[0]["locality"]["audio"].pop(1)
    path = _write(tmp_path / "Animal.json", records)
    with pytest.raises(DataError, match=r"record 0: locality_audio: expected 4 probes"):
        read_nested_cases(path, attribute="Animal")


def test_flat_reader_errors_name_file_and_record(tmp_path: Path) -> None:
    records = [flat_record(case) for case in tiny_release().splits["test"]]
    del records[3]["original_label"]
    path = _write(tmp_path / "flat.json", records)
    with pytest.raises(DataError, match=r"flat\.json: record 3: missing field 'original_label'"):
        read_flat_cases(path)


def test_missing_release_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a SAKE-format directory"):
        load_release(tmp_path)


# --- options parser ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "options"),
    [
        ("Identify the gender.\n\nOptions:\nmale\nfemale", ("male", "female")),
        (
            "Detect spoofing. The answer could be spoofed or authentic.",
            ("spoofed", "authentic"),
        ),
        (
            "Which effect: 'Chorus', 'Distortion', 'Delay', 'Reverb', or 'Compressor'.",
            ("Chorus", "Distortion", "Delay", "Reverb", "Compressor"),
        ),
        (
            "Classify. Possible genres are one of the following: classical, jazz, pop, rock.",
            ("classical", "jazz", "pop", "rock"),
        ),
        ("Is the speaker happy? Answer with yes or no.", ("yes", "no")),
        ("Pick the best reply. (A) Sure.\n(B) No way. (C) Maybe later.", ("A", "B", "C")),
        (
            "If we split humans into four age groups: Teenager (younger than 20), Young adult "
            "(20-39), Middle-aged adult (40-59), and Elderly adult (60 and up). Which one?",
            ("Teenager", "Young adult", "Middle-aged adult", "Elderly adult"),
        ),
        (
            "Identify the spoken word from the list: up, down and stop. If it is not in the "
            "list, respond with <unknown>; if there is no speech, respond with <silence>.",
            ("up", "down", "stop", "<unknown>", "<silence>"),
        ),
        (
            "Classify this musical note as originating from an acoustic, electronic, or "
            "synthetic instrument.",
            ("acoustic", "electronic", "synthetic"),
        ),
        ("Describe the weather, the season, and the time of day in detail.", ()),
    ],
)
def test_parse_options(question: str, options: tuple[str, ...]) -> None:
    assert parse_options(question) == options


def test_answers_match_options_ignoring_case_and_separators() -> None:
    assert normalise_option("Middle-aged adult") == normalise_option("middle_aged_adult")
    assert answer_in_options("vocal_fry", ("belt", "vocal fry"))
    assert answer_in_options("Male", ("male", "female"))
    assert not answer_in_options("crying", ("cry", "laugh"))
