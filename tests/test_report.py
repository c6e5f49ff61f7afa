"""Reports from records: SAKE's tables and figures, Wilson intervals, and what trackers get."""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from fixtures_data import tiny_release
from sake.data.schema import EditCase, ProbeKind
from sake.evaluation.estimates import Estimate, wilson_interval
from sake.evaluation.metrics import judge_probes, sequential_metrics, single_metrics
from sake.evaluation.overfitting import overfitting_counts
from sake.evaluation.probing import expected_answer
from sake.evaluation.records import RECORDS_FILE
from sake.evaluation.report import (
    ENTANGLEMENT_TYPES,
    Job,
    distinct_labels,
    entanglement_points,
    load_job,
    portability_categories,
    publish_run_report,
    ranked_row,
    sequential_estimates,
    single_estimates,
    write_report,
)
from sake.utils.tracking import NullTracker, WandbTracker

LOOP = "hen hen hen hen hen hen hen hen hen hen"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- fixture records


def post_outputs(case: EditCase, policy: str) -> list[str]:
    """What the edited model says: `edited` gives every post-edit answer, `failed` the
    pre-edit ones, `broken` loops on every probe but the first."""
    pre = pre_outputs(case)
    if policy == "edited":
        return [probe.answer for probe in case.probes()]
    if policy == "failed":
        return pre
    return [pre[0], *([LOOP] * (len(pre) - 1))]


def pre_outputs(case: EditCase) -> list[str]:
    return [expected_answer(probe, edited=False) for probe in case.probes()]


def make_record(case: EditCase, method: str, policy: str, **position: Any) -> dict[str, Any]:
    """A record as the runner writes it, judged by the real judging code."""
    probes = list(case.probes())
    protocol = "sequential" if position else "single"
    return {
        "protocol": protocol,
        "method": method,
        "model": "desta_tiny",
        "fingerprint": "0" * 16,
        "case_id": case.case_id,
        **position,
        "attribute": case.attribute,
        "y_o": case.y_o,
        "y_e": case.y_e,
        "edit": {"steps": 1, "final_loss": 0.1, "seconds": 0.01},
        "probes": judge_probes(probes, pre_outputs(case), post_outputs(case, policy)),
    }


def single_records(method: str, policies: Sequence[str]) -> list[dict[str, Any]]:
    """One record per test case of the tiny release (pig->cow, cow->pig, female->male,
    male->female), the i-th edited under `policies[i]`."""
    cases = tiny_release().splits["test"]
    return [make_record(c, method, p) for c, p in zip(cases, policies, strict=True)]


def sequential_records(method: str) -> list[dict[str, Any]]:
    """The tiny release's sequence of two edits: edit 0 at steps 0 and 1, edit 1 at step 1."""
    first, second = tiny_release().sequences[0].cases
    return [
        make_record(first, method, "edited", sequence=0, step=0, edit_index=0, gap=0),
        make_record(first, method, "failed", sequence=0, step=1, edit_index=0, gap=1),
        make_record(second, method, "edited", sequence=0, step=1, edit_index=1, gap=0),
    ]


def write_run(directory: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(record) + "\n" for record in records)
    (directory / RECORDS_FILE).write_text(lines, encoding="utf-8")
    return directory


CATEGORIES = portability_categories(tiny_release().all_cases())


# --------------------------------------------------------------------------- statistics


def test_wilson_interval_matches_the_closed_form():
    low, high = wilson_interval(0.5, 100)
    assert (low, high) == (pytest.approx(0.40383, abs=1e-5), pytest.approx(0.59617, abs=1e-5))
    low, high = wilson_interval(0.0, 10)  # upper bound z^2 / (n + z^2)
    assert low == 0.0 and high == pytest.approx(1.959964**2 / (10 + 1.959964**2))
    assert wilson_interval(1.0, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(bound) for bound in wilson_interval(0.3, 0))


def test_estimates_equal_the_metrics_and_count_the_probes_behind_them():
    records = single_records("ft_llm", ["edited", "failed", "edited", "broken"])
    estimates = single_estimates(records)
    metrics = single_metrics(records)
    for key, estimate in estimates.items():
        assert estimate.value == pytest.approx(metrics[key]), key
    assert estimates["single/reliability"] == Estimate(0.5, 4)
    # Animal cases carry audio-locality types 1-4, Gender cases 1, 3 and 4.
    assert estimates["single/locality_audio"].n == 2 * 4 + 2 * 3
    assert estimates["single/Gender/locality_audio"].n == 6
    assert "single/Gender/locality_audio/type2" not in estimates
    assert estimates["single/Gender/locality_audio"].value == pytest.approx(3 / 6)


def test_sequential_estimates_by_gap():
    records = sequential_records("ft_llm")
    estimates = sequential_estimates(records)
    metrics = sequential_metrics(records)
    assert estimates["sequential/reliability/gap0"] == Estimate(1.0, 2)
    assert estimates["sequential/reliability/gap1"] == Estimate(0.0, 1)
    assert estimates["sequential/generality/gap0"].n == 6
    for key, estimate in estimates.items():
        assert estimate.value == pytest.approx(metrics[key]), key


def test_rows_mark_the_best_and_the_second_best():
    row = [Estimate(0.9, 10), Estimate(0.5, 10), None, Estimate(0.9, 10), Estimate(0.7, 10)]
    assert [cell.rank for cell in ranked_row(row)] == [1, None, None, 1, 2]
    assert [cell.rank for cell in ranked_row([Estimate(0.4, 5)])] == [None]


# --------------------------------------------------------------------------- the report


def test_report_of_two_methods_and_a_sequential_run(tmp_path: Path):
    # Gender's two cases get different categories: FT (LLM) gets one right, breaks the other.
    categories = {**CATEGORIES, "test/Gender/0": ("title",), "test/Gender/1": ("vocal range",)}
    jobs = [
        Job("I-IKE", single_records("i_ike", ["failed"] * 4), None, categories, rank=8),
        Job(
            "FT (LLM)",
            single_records("ft_llm", ["edited"] * 3 + ["broken"]),
            None,
            categories,
            rank=1,
        ),
        Job("MEMIT", sequential_records("memit"), None, categories, rank=6),
    ]
    report = write_report(jobs, tmp_path, "fixture sweep")
    text = report.path.read_text(encoding="utf-8")

    # Table 2 layout: metrics as rows, methods as columns in SAKE's order; 3 of 4 edits held.
    assert "| metric | FT (LLM) | I-IKE |" in text
    assert "| Reliability | **75.0** [30.1, 95.4] | <ins>0.0</ins> [0.0, 49.0] |" in text
    assert "| Text locality | <ins>75.0</ins> [30.1, 95.4] | **100.0** [51.0, 100.0] |" in text
    assert (
        "| Audio locality, GT accuracy before | 100.0 [78.5, 100.0] | 100.0 [78.5, 100.0] |" in text
    )
    gender = text.split("### Gender", 1)[1].split("###", 1)[0]
    assert "| Audio locality type 3 | <ins>50.0</ins> [9.5, 90.5] |" in gender
    assert "Audio locality type 2" not in gender
    assert "| facts (n=2) | **100.0** | <ins>0.0</ins> |" in text
    assert "| title (n=1) | **100.0** | <ins>0.0</ins> |" in text
    assert "| Gender std | 50.0 | 0.0 |" in text and "| Gender range | 100.0 | 0.0 |" in text
    for metric in ("reliability", "generality", "locality_audio", "locality_text", "portability"):
        assert f"](sequential_{metric}.png)" in text
    assert "| 1 | 0.0 [0.0, 79.3] |" in text  # MEMIT's reliability one step after its edit
    assert "| degenerate after edit | 21.1 [11.1, 36.3] | 0.0 [0.0, 11.7] |" in text
    assert "| rule: repeated_ngram | 8 | 0 | 0 |" in text

    names = (
        "main",
        "types",
        "portability",
        "degeneration",
        "sequential_reliability",
        "sequential_heatmap",
        "generality3_locality2",
        "entanglement",
    )
    assert "type_radar" not in report.figures  # two single-editing jobs make no polygon
    for name in names:
        path = report.figures[name]
        assert path.parent == tmp_path and path.read_bytes()[:8] == PNG_MAGIC
        assert f"]({path.name})" in text
    assert report.summary["FT (LLM)/single/reliability"] == 0.75
    assert report.summary["FT (LLM)/single/reliability/ci95_low"] == pytest.approx(0.30064, 1e-4)
    assert report.summary["FT (LLM)/single/degeneration/post"] == pytest.approx(8 / 38)
    assert report.summary["MEMIT/sequential/reliability/gap0"] == 1.0
    assert report.tables["report/main"][0] == ["row", "FT (LLM)", "I-IKE"]
    assert "FT (LLM)" in report.headline and "reliability by gap" in report.headline


def test_jobs_take_their_name_and_place_from_the_method_configs_display(
    compose_cfg, tmp_path: Path
):
    jobs = []
    for method in ("i_ike", "memit", "ft_audio"):
        directory = write_run(tmp_path / method, single_records(method, ["edited"] * 4))
        config = {
            "method": OmegaConf.to_container(compose_cfg("edit", [f"method={method}"]).method)
        }
        OmegaConf.save(OmegaConf.create(config), directory / "config.yaml")
        jobs.append(load_job(directory))
    jobs.append(load_job(write_run(tmp_path / "old", single_records("toy", ["edited"] * 4))))
    assert [job.label for job in distinct_labels(jobs)] == ["FT (Audio)", "MEMIT", "I-IKE", "toy"]


def test_twin_jobs_are_told_apart_by_their_own_overrides(tmp_path: Path):
    jobs = []
    for number, lam in enumerate(("1e2", "1e4")):
        directory = tmp_path / f"{number}_memit"
        (directory / ".hydra").mkdir(parents=True)
        (directory / ".hydra" / "overrides.yaml").write_text(
            f"- method=memit\n- method.lam={lam}\n", encoding="utf-8"
        )
        jobs.append(Job("MEMIT", single_records("memit", ["edited"] * 4), directory))
    jobs.append(Job("FT (LLM)", single_records("ft_llm", ["edited"] * 4), None))
    labels = [job.label for job in distinct_labels(jobs)]
    assert labels == ["FT (LLM)", "MEMIT (method.lam=1e2)", "MEMIT (method.lam=1e4)"]


class RecordingTracker(NullTracker):
    """Keeps what it is given, so that a test can read it back."""

    def __init__(self) -> None:
        self.summary: dict[str, float] = {}
        self.tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
        self.images: dict[str, Path] = {}
        self.files: list[Path] = []

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        self.summary.update(metrics)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.tables[key] = (list(columns), [list(row) for row in rows])

    def log_image(self, key: str, path: Path) -> None:
        self.images[key] = path

    def log_file(self, path: Path) -> None:
        self.files.append(path)


def test_an_edit_run_writes_its_report_and_logs_it(compose_cfg, tmp_path: Path):
    records = single_records("ft_audio", ["edited", "failed", "edited", "edited"])
    method = compose_cfg("edit", ["method=ft_audio"]).method
    OmegaConf.save(OmegaConf.create({"method": method}), tmp_path / "config.yaml")
    tracker = RecordingTracker()
    report = publish_run_report(tmp_path, records, tracker, CATEGORIES)
    assert report is not None and report.path == tmp_path / "report.md"
    assert "| metric | FT (Audio) |" in report.path.read_text(encoding="utf-8")
    assert tracker.summary["single/reliability"] == 0.75
    assert tracker.summary["single/portability/ci95_high"] > 0.75
    assert tracker.tables["report/main"][1][0] == ["Reliability", 0.75]
    assert set(tracker.images) >= {f"report/figure/{n}" for n in ("main", "types", "degeneration")}
    assert tracker.files == [report.path]
    assert publish_run_report(tmp_path / "empty", [], tracker) is None


# --------------------------------------------------------------------------- W&B offline


def wandb_records(path: Path) -> Iterator[bytes]:
    """The serialized records of a `.wandb` file (LevelDB log framing, 32 KiB blocks)."""
    data = path.read_bytes()
    position, block, chunks = 7, 32768, []
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            break
        chunks.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            yield b"".join(chunks)
            chunks = []


def summary_keys(run_file: Path) -> set[str]:
    from wandb.proto import wandb_internal_pb2

    keys = set()
    for raw in wandb_records(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "summary":
            keys |= {item.key or "/".join(item.nested_key) for item in record.summary.update}
    return keys


def wait_for_summary(run_file: Path, timeout_s: float = 60.0) -> set[str]:
    """The run's summary keys, once W&B's service process has written them."""
    deadline = time.monotonic() + timeout_s
    while not (keys := summary_keys(run_file)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return keys


def test_an_offline_wandb_run_holds_summary_tables_figures_and_report(tmp_path: Path):
    pytest.importorskip("wandb")
    tracker = WandbTracker(project="sake-test", name="report", dir=str(tmp_path))
    tracker.start({"method": "ft_llm"})
    try:
        publish_run_report(tmp_path, single_records("ft_llm", ["edited"] * 4), tracker)
    finally:
        tracker.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    files = run_dir / "files"
    assert (files / "report.md").read_text(encoding="utf-8").startswith("# ft_llm on desta_tiny")
    assert list((files / "media" / "table").glob("report/main_*.table.json"))
    assert len(list((files / "media" / "images").rglob("*.png"))) >= 3
    keys = wait_for_summary(next(run_dir.glob("run-*.wandb")))
    assert {"single/reliability", "single/reliability/ci95_low", "report/main/nrows"} <= keys
    assert "report/figure/main/_type" in keys
    assert ProbeKind.PORTABILITY.value in {key.split("/")[1] for key in keys if "/" in key}


def test_entanglement_points_pair_each_types_locality_with_its_entanglement():
    broken = Job("FT (LLM)", single_records("ft_llm", ["edited"] * 3 + ["broken"]))
    points = entanglement_points([broken])
    counts = overfitting_counts(broken.records)
    assert set(points) <= set(ENTANGLEMENT_TYPES) and points
    for type_, by_job in points.items():
        locality, entangled = by_job["FT (LLM)"]
        assert locality == pytest.approx(
            100 * broken.single[f"single/locality_audio/type{type_}"].value
        )
        overfit, failed = counts.get(type_, (0, 0))
        assert (math.isnan(entangled) and failed == 0) or entangled == pytest.approx(
            100 * overfit / failed
        )


def test_three_single_jobs_get_the_type_radar(tmp_path: Path):
    jobs = [
        Job(label, single_records(method, outcomes))
        for label, method, outcomes in (
            ("I-IKE", "i_ike", ["failed"] * 4),
            ("FT (LLM)", "ft_llm", ["edited"] * 3 + ["broken"]),
            ("FT (Audio)", "ft_audio", ["edited"] * 4),
        )
    ]
    report = write_report(jobs, tmp_path, "three methods")
    assert report.figures["type_radar"].read_bytes()[:8] == PNG_MAGIC
    assert "](type_radar.png)" in report.path.read_text(encoding="utf-8")
