"""The throughput benchmark: the reference re-enactment, judgement comparison, report, CLI."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from lalm_fixtures import edit_release, make_lalm, make_tokenizer, save_model_dir
from sake.bench import ReferenceProtocol, Workload, compare_records, run_benchmark, summary_line
from sake.bench.cli import main
from sake.bench.generation import main as generation_main
from sake.bench.generation import time_generation
from sake.bench.measure import SHARE_PHASE
from sake.bench.report import report_lines
from sake.data.readers import SakeRelease
from sake.data.writers import write_release
from sake.methods.ft import FineTuneConfig, FineTuneEditor
from sake.methods.ike import InstructionConfig, InstructionEditor
from sake.models.base import Batch, Generation
from sake.models.desta import DestaLALM
from sake.runner import EvalSettings

torch.set_num_threads(1)

SETTINGS = EvalSettings(max_new_tokens=3, batch_size=32)
SUMMARY_FIELDS = {"ours_cases_per_s", "reference_cases_per_s", "speedup", "same_judgements"}


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> SakeRelease:
    return edit_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def lalm(release: SakeRelease) -> DestaLALM:
    return make_lalm(make_tokenizer(release))


def editors() -> list[Any]:
    return [
        FineTuneEditor(FineTuneConfig(name="ft_audio", role="connector", lr=5e-2, max_steps=3)),
        FineTuneEditor(
            FineTuneConfig(name="ft_llm", role="llm.layer[-1].mlp", lr=1e-2, max_steps=3)
        ),
        InstructionEditor(InstructionConfig("i_ike", prompt="project")),
    ]


def workload(release: SakeRelease) -> Workload:
    return Workload(cases=tuple(release.splits["test"][:2]), sequences=(release.sequences[0],))


class CountingLALM:
    """Passes everything to the model and remembers the batch size of every generate call."""

    def __init__(self, inner: DestaLALM) -> None:
        self.inner = inner
        self.generated_batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, batch: Batch, max_new_tokens: int) -> list[str]:
        return self.generate_scored(batch, max_new_tokens).texts

    def generate_scored(self, batch: Batch, max_new_tokens: int) -> Generation:
        self.generated_batches.append(len(batch))
        return self.inner.generate_scored(batch, max_new_tokens)


def test_benchmark_judges_both_protocols_alike_and_ends_with_a_json_summary(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    chosen = editors()
    for editor in chosen:
        editor.prepare(lalm, release.splits["train"])
    before = copy.deepcopy(lalm.model.state_dict())
    benchmark = run_benchmark(
        lalm,
        chosen,
        workload(release),
        SETTINGS,
        protocols=("single", "sequential"),
        model_name="tiny",
        work_dir=tmp_path,
        audio_root=release.audio_root,
    )
    summary = json.loads(summary_line(benchmark))
    assert list(summary) == [
        f"{method}/{protocol}"
        for method in ("ft_audio", "ft_llm", "i_ike")
        for protocol in ("single", "sequential")
    ]
    for key, entry in summary.items():
        assert set(entry) == SUMMARY_FIELDS, key
        assert entry["same_judgements"] is True, report_lines(benchmark)
        assert entry["ours_cases_per_s"] > 0 and entry["reference_cases_per_s"] > 0
        assert entry["speedup"] == pytest.approx(
            entry["ours_cases_per_s"] / entry["reference_cases_per_s"], rel=0.02
        )
    results = {result.key: result for result in benchmark.results}
    ft_audio = results["ft_audio/single"]
    assert ft_audio.ours.phases["edit"] > 0
    assert ft_audio.speedup_ceiling == pytest.approx(
        ft_audio.reference.seconds / ft_audio.ours.phases["edit"]
    )
    assert all(result.speedup_ceiling >= result.speedup for result in benchmark.results)
    ceilings = [line for line in report_lines(benchmark) if "speed-up ceiling" in line]
    assert len(ceilings) == len(benchmark.results)
    assert "the edit takes almost no time" in ceilings[-1]  # i_ike/sequential: no weights change
    assert len(results["ft_llm/sequential"].reference.records) == 3  # (0,0), (1,0), (1,1)
    assert all(torch.equal(p, before[n]) for n, p in lalm.model.state_dict().items())
    assert benchmark.peak_rss_bytes >= benchmark.peak_rss_ours_bytes > 0
    assert report_lines(benchmark)[-1].startswith("peak RSS: ")


@pytest.mark.parametrize("mode", ["shared", "warm", "cold"])
def test_pre_edit_modes_decide_who_generates_and_who_pays(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path, mode: str
) -> None:
    editors = [
        InstructionEditor(InstructionConfig(name, prompt="project"))
        for name in ("i_ike", "i_ike_again")
    ]
    benchmark = run_benchmark(
        lalm,
        editors,
        workload(release),
        SETTINGS,
        protocols=("single", "sequential"),
        model_name="tiny",
        work_dir=tmp_path,
        pre_edit=mode,
    )
    generated = [result.ours.pre_edit_generated for result in benchmark.results]
    shares = [result.ours.phases.get(SHARE_PHASE) for result in benchmark.results]
    fills = benchmark.pre_edit_fill_seconds
    if mode == "cold":
        assert all(count > 0 for count in generated) and fills == {}
        assert shares == [None] * 4
    else:
        assert generated == [0] * 4 and set(fills) == {"single", "sequential"}
    if mode == "shared":  # each protocol's fill is split between the two methods' runs
        expected = [fills[result.protocol] / 2 for result in benchmark.results]
        assert shares == pytest.approx(expected)
        for result in benchmark.results:
            phases = sum(v for k, v in result.ours.phases.items() if k != "total")
            assert result.ours.seconds >= phases - 1e-6
    if mode == "warm":
        assert shares == [None] * 4
    assert all(result.comparison.same_judgements for result in benchmark.results)
    assert report_lines(benchmark)[0].startswith("pre-edit outputs: ")


def test_reference_generates_one_probe_at_a_time_and_regenerates_every_earlier_edit(
    lalm: DestaLALM, release: SakeRelease
) -> None:
    counting = CountingLALM(lalm)
    sequence = replace(release.sequences[1], cases=release.sequences[1].cases[:4])
    probes_per_case = [len(list(case.probes())) for case in sequence.cases]
    settings = replace(SETTINGS, max_edit=2, max_gap=1)
    editor = InstructionEditor(InstructionConfig("i_ike", prompt="project"))
    reference = ReferenceProtocol(counting, editor, settings=settings)
    records = reference.run_sequential([sequence])
    assert set(counting.generated_batches) == {1}
    post_edit = sum(sum(probes_per_case[: step + 1]) for step in range(len(sequence)))
    assert len(counting.generated_batches) == sum(probes_per_case) + post_edit
    assert [(r["step"], r["edit_index"]) for r in records] == [(0, 0), (1, 0), (1, 1), (2, 1)]
    assert reference.timings.seconds["copy"] > 0 and not editor.state.edits


def test_compare_records_reports_each_probe_judged_differently() -> None:
    probe = {
        "name": "reliability",
        "question": "Which animal?",
        "pre_output": "dog",
        "post_output": "cat",
        "pre_choice": 0,
        "post_choice": 1,
        "pre_correct": True,
        "post_correct": True,
        "consistent": None,
        "score": True,
    }
    ours = [{"protocol": "single", "case_id": "a", "probes": [probe]}]
    flipped = {**probe, "post_output": "dog", "post_choice": 0, "post_correct": False}
    reference = [{"protocol": "single", "case_id": "a", "probes": [{**flipped, "score": False}]}]
    assert compare_records(ours, copy.deepcopy(ours)).same_judgements
    comparison = compare_records(ours, reference)
    assert not comparison.same_judgements and comparison.same_outputs == 0
    assert "post_output: 'cat' vs 'dog'" in comparison.differences[0].describe()
    extra = [*reference, {"protocol": "single", "case_id": "b", "probes": [probe]}]
    assert compare_records(ours, extra).unmatched_records == (("single", "b"),)


@pytest.fixture(scope="module")
def on_disk(
    release: SakeRelease, lalm: DestaLALM, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sake")
    write_release(release.splits, release.sequences, root)
    shutil.copytree(release.audio_root, root / "audio")
    return root, save_model_dir(lalm, tmp_path_factory.mktemp("weights") / "desta_tiny")


def test_command_line_prints_the_report_and_ends_with_the_json_line(
    on_disk: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, weights = on_disk
    overrides = [
        "dataset=sake",
        f"dataset.root={root}",
        f"model.weights_dir={weights}",
        "eval.max_new_tokens=3",
        "method.prompt=project",
    ]
    options = ["--methods", "i_ike", "--cases", "1", "--threads", "1", "--pre-edit", "warm"]
    assert main([*options, *overrides]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == {"i_ike/single", "i_ike/sequential"}
    assert all(entry["same_judgements"] is True for entry in summary.values())
    assert any(line.startswith("peak RSS: ") for line in lines)
    assert any(line.startswith("pre-edit outputs: cache filled once, untimed") for line in lines)


def test_generation_benchmark_times_one_batch_cold_and_warm(
    on_disk: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, weights = on_disk
    overrides = ["dataset=sake", f"dataset.root={root}", f"model.weights_dir={weights}"]
    options = ["--batch", "6", "--repeats", "2", "--threads", "1", "eval.max_new_tokens=3"]
    assert generation_main([*options, *overrides]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    timing = json.loads(lines[-1])
    assert timing["batch"] == 6 and timing["max_new_tokens"] == 3
    assert 0 < timing["warm_best_s"] <= timing["warm_median_s"]
    assert 0 < timing["cold_best_s"] <= timing["cold_median_s"]
    assert timing["parameters"] > 0 and timing["peak_rss_gib"] > 0
    assert any(line.startswith("cold (decode") for line in lines)


def test_generation_benchmark_empties_audio_caches_before_each_cold_batch(
    lalm: DestaLALM, release: SakeRelease
) -> None:
    encoded: list[int] = []
    encoder = lalm.modules.resolve("audio_encoder").module
    hook = encoder.register_forward_hook(lambda module, args, out: encoded.append(len(args[0])))
    probes = [p for p in release.splits["test"][0].probes() if p.audio_path is not None]
    clips = len({p.audio_path for p in probes})
    try:
        time_generation(lalm, probes, max_new_tokens=2, repeats=2)
    finally:
        hook.remove()
    assert sum(encoded) == 5 * clips  # the untimed batch, two cold and two warm ones
    with pytest.raises(ValueError, match="repeats"):
        time_generation(lalm, probes, max_new_tokens=2, repeats=0)


def test_command_line_rejects_unknown_methods_and_too_many_cases(on_disk) -> None:
    with pytest.raises(SystemExit, match="choose from .*ft_audio"):
        main(["--methods", "nonsense"])
    root, weights = on_disk
    overrides = ["dataset=sake", f"dataset.root={root}", f"model.weights_dir={weights}"]
    with pytest.raises(SystemExit, match="--cases 99: the dataset has 4 cases"):
        main(["--methods", "i_ike", "--cases", "99", *overrides])
