"""evaluate.py on saved runs: re-judging a run, aggregating a sweep, judge agreement."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from fixtures_data import tiny_release
from sake.data.schema import EditCase
from sake.evaluation.judges.agreement import item_ids
from sake.evaluation.metrics import judge_probes
from sake.evaluation.rejudging import run_metrics
from sake.tasks.judge_agreement import read_human_labels
from sake.utils.run import run_task
from test_report import make_record, pre_outputs, single_records, write_run


def verbose_record(case: EditCase, method: str) -> dict[str, Any]:
    """A successful edit whose every answer comes inside a sentence, so only a judge that
    reads options (not SAKE's exact-match shortcut) can accept it."""
    record = make_record(case, method, "edited")
    sentences = [f"The answer is {probe.answer}." for probe in case.probes()]
    record["probes"] = judge_probes(list(case.probes()), pre_outputs(case), sentences)
    return record


def verbose_run(directory: Path) -> Path:
    """Cases 0 and 1 answered in sentences, cases 2 and 3 with the bare labels."""
    cases = tiny_release().splits["test"]
    records = [verbose_record(case, "ft_llm") for case in cases[:2]]
    records += [make_record(case, "ft_llm", "edited") for case in cases[2:]]
    write_run(directory, records)
    (directory / "metrics.json").write_text('{"single/reliability": 1.0}', encoding="utf-8")
    return directory


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- re-judging a run


def test_rejudging_with_the_option_judge_reproduces_the_saved_verdicts(compose_cfg, tmp_path):
    run = verbose_run(tmp_path / "edit_run")
    metrics = run_task(compose_cfg("evaluate", [f"run={run}", "logger=none"]))
    out = run / "rescore-option"
    assert read_json(run / "metrics.json") == {"single/reliability": 1.0}  # left as it was
    assert read_json(out / "metrics.json")["single/reliability"] == 1.0
    assert metrics["saved_verdicts/agreement/overall/percent"] == 100.0
    assert metrics["saved_verdicts/agreement/overall/compared"] == 38.0
    assert read_json(out / "agreement.json")["overall"]["agreed"] == 38
    assert "| Reliability | 100.0 [51.0, 100.0] |" in (out / "report.md").read_text()
    saved = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    rescored = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert rescored == saved
    # the metrics an edit run reports, diagnostics included, from the same function
    assert read_json(out / "metrics.json") == run_metrics("single", rescored)


def test_rejudging_with_shortcuts_only_rejects_sentences(compose_cfg, tmp_path):
    run = verbose_run(tmp_path / "edit_run")
    overrides = [f"run={run}", "logger=none", "judge=llm_http", "judge.backend=null"]
    metrics = run_task(compose_cfg("evaluate", [*overrides, "judge.name=shortcuts"]))
    out = run / "rescore-shortcuts"
    # The sentences of cases 0 and 1, both Animal, stay undecided and count as wrong.
    assert metrics["single/Animal/reliability"] == 0.0
    assert metrics["single/Gender/reliability"] == 1.0
    assert metrics["saved_verdicts/agreement/reliability/percent"] == 50.0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert "no judge model" in records[0]["probes"][0]["verdict"]
    assert records[2]["probes"][0]["score"] is True  # an exact answer needs no model
    assert read_json(run / "metrics.json") == {"single/reliability": 1.0}


def test_evaluate_without_a_run_or_sweep_says_what_to_name(compose_cfg):
    with pytest.raises(ValueError, match=r"run=<run dir>.*sweep=<multirun dir>"):
        run_task(compose_cfg("evaluate", ["logger=none"]))


def test_rejudging_a_directory_without_records_says_so(compose_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="records.jsonl"):
        run_task(compose_cfg("evaluate", [f"run={tmp_path}", "logger=none"]))


# --------------------------------------------------------------------------- a sweep


METHOD_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "method"


def fixture_sweep(root: Path) -> Path:
    """A multirun directory with an FT (LLM) job (3 of 4 edits held) and an I-IKE job (none)."""
    jobs = {
        "0_ft_llm_desta_tiny_sake_synth": single_records("ft_llm", ["edited"] * 3 + ["failed"]),
        "1_i_ike_desta_tiny_sake_synth": single_records("i_ike", ["failed"] * 4),
    }
    for name, records in jobs.items():
        write_run(root / name, records)
        method = OmegaConf.load(METHOD_CONFIGS / f"{records[0]['method']}.yaml")
        OmegaConf.save(OmegaConf.create({"method": method}), root / name / "config.yaml")
        (root / name / ".hydra").mkdir()
        (root / name / ".hydra" / "overrides.yaml").write_text(f"- method={records[0]['method']}\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


@pytest.mark.parametrize("task", [[], ["task=sweep"]])
def test_a_sweep_becomes_one_report(compose_cfg, tmp_path, task):
    sweep = fixture_sweep(tmp_path / "multirun")
    cfg = compose_cfg("evaluate", [*task, f"sweep={sweep}", "logger=none"])
    metrics = run_task(cfg)
    report = (Path(cfg.paths.output_dir) / "report.md").read_text(encoding="utf-8")
    assert "| metric | FT (LLM) | I-IKE |" in report
    assert "| Reliability | **75.0** [30.1, 95.4] | <ins>0.0</ins> [0.0, 49.0] |" in report
    assert (Path(cfg.paths.output_dir) / "main.png").is_file()
    assert metrics["FT (LLM)/single/reliability"] == 0.75
    assert metrics["I-IKE/single/reliability"] == 0.0
    assert read_json(Path(cfg.paths.output_dir) / "metrics.json") == metrics


def test_a_sweep_without_jobs_says_where_to_look(compose_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="outputs/edit/multirun"):
        run_task(compose_cfg("evaluate", [f"sweep={tmp_path}", "logger=none"]))


# --------------------------------------------------------------------------- judge agreement


def test_agreement_with_human_labels_matches_a_hand_computation(compose_cfg, tmp_path):
    # Reliability verdicts of the run: case 0 and 1 held, case 2 and 3 failed (T, T, F, F).
    run = write_run(tmp_path / "a", single_records("ft_llm", ["edited"] * 2 + ["failed"] * 2))
    ids = [item_ids(record)[0] for record in single_records("ft_llm", ["failed"] * 4)]
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label"])
        writer.writerows(zip(ids, ["correct", "correct", "correct", "incorrect"], strict=True))
    cfg = compose_cfg(
        "evaluate", ["task=judge_agreement", f"a={run}", f"b={labels}", "logger=none"]
    )
    metrics = run_task(cfg)
    # Pairs (T,T) (T,T) (F,T) (F,F): p_o = 3/4; a says yes 2/4, b 3/4;
    # p_e = 2/4 * 3/4 + 2/4 * 1/4 = 1/2; kappa = (3/4 - 1/2) / (1 - 1/2) = 1/2.
    assert metrics["agreement/overall/percent"] == pytest.approx(75.0)
    assert metrics["agreement/overall/kappa"] == pytest.approx(0.5)
    assert metrics["agreement/reliability/kappa"] == pytest.approx(0.5)
    assert metrics["agreement/overall/compared"] == 4.0
    out = Path(cfg.paths.output_dir)
    saved = read_json(out / "agreement.json")
    assert saved["overall"]["unmatched"] == 38 - 4
    assert saved["generality"]["compared"] == 0 and saved["generality"]["kappa"] is None
    disagreements = (out / "disagreements.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in disagreements] == ["test/Gender/0/reliability"]
    with open(out / "annotation_sheet.csv", encoding="utf-8") as handle:
        sheet = list(csv.DictReader(handle))
    assert len(sheet) == 38 and sheet[0]["id"] == "test/Animal/0/reliability"
    blank = read_human_labels(out / "annotation_sheet.csv")  # nothing filled in yet
    assert len(blank) == 38 and set(blank.values()) == {None}


def test_agreement_between_two_runs_per_metric(compose_cfg, tmp_path):
    run_a = write_run(tmp_path / "a", single_records("ft_llm", ["edited"] * 4))
    run_b = write_run(tmp_path / "b", single_records("ft_llm", ["edited"] * 3 + ["failed"]))
    cfg = compose_cfg(
        "evaluate", ["task=judge_agreement", f"a={run_a}", f"b={run_b}", "logger=none"]
    )
    metrics = run_task(cfg)
    # Case 3 (male -> female, 9 probes) failed in b: reliability, 3 generality and the
    # portability probe flip; its 3 audio- and 1 text-locality probes stay consistent.
    assert metrics["agreement/overall/compared"] == 38.0
    assert metrics["agreement/overall/percent"] == pytest.approx(100 * 33 / 38)
    assert metrics["agreement/generality/percent"] == pytest.approx(100 * 9 / 12)
    assert metrics["agreement/locality_audio/percent"] == 100.0
    assert "agreement/locality_audio/kappa" not in metrics  # one label on both sides


def test_unknown_human_labels_are_refused_with_the_accepted_ones(tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "x", "label": "maybe"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="unknown label 'maybe'.*consistent"):
        read_human_labels(labels)
