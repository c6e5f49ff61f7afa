"""Protocols, the pre-edit cache, records and resume, input errors, and the edit task."""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from lalm_fixtures import (
    edit_release,
    make_lalm,
    make_tokenizer,
    rooted,
    run_overrides,
    write_on_disk,
)
from sake.data.readers import SakeRelease
from sake.data.schema import EditCase
from sake.evaluation.metrics import sequential_metrics, single_metrics
from sake.evaluation.pre_edit import LogitsStore, PreEditCache, narrowest_exact
from sake.evaluation.records import RECORDS_FILE, RecordWriter, read_records, record_key
from sake.evaluation.specificity import SPECIFICITY_METRICS
from sake.methods.base import EditorState, EditOutcome, QueryContext
from sake.methods.ft import FineTuneConfig, FineTuneEditor
from sake.methods.ike import InstructionConfig, InstructionEditor
from sake.models.desta import DestaLALM
from sake.runner import (
    EditRunner,
    EvalSettings,
    audio_path_only,
    sequential_schedule,
    touches_audio_encoder,
)
from sake.utils.run import run_task

torch.set_num_threads(1)

MAX_NEW_TOKENS = 3
# Pre- and post-edit distributions come from differently padded batches, so an unchanged model
# shows float rounding, not exactly zero.
NOISE_KL = 1e-6


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> SakeRelease:
    return edit_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def lalm(release: SakeRelease) -> DestaLALM:
    return make_lalm(make_tokenizer(release))


@pytest.fixture(scope="module")
def fingerprint(lalm: DestaLALM) -> str:
    """Taken once: the tokenizer's padding state, which tokenising changes, enters the hash."""
    return lalm.fingerprint()


@pytest.fixture
def make(lalm: DestaLALM, release: SakeRelease, fingerprint: str) -> Any:
    return functools.partial(make_runner, lalm=lalm, release=release, fingerprint=fingerprint)


def ft_llm() -> FineTuneEditor:
    return FineTuneEditor(FineTuneConfig(name="ft_llm", role="llm.layer[-1].mlp", lr=1e-2))


def ft_audio() -> FineTuneEditor:
    return FineTuneEditor(FineTuneConfig(name="ft_audio", role="connector", lr=5e-2))


def i_ike() -> InstructionEditor:
    return InstructionEditor(InstructionConfig("i_ike", prompt="project"))


def make_runner(
    editor: Any,
    run_dir: Path,
    *,
    lalm: DestaLALM,
    release: SakeRelease,
    fingerprint: str,
    cache: Path | None,
    resume: bool = False,
    protocol: str = "single",
) -> EditRunner:
    editor.prepare(lalm, release.splits["train"])
    return EditRunner(
        lalm,
        editor,
        settings=EvalSettings(protocol, max_new_tokens=MAX_NEW_TOKENS, batch_size=32),
        pre_edit=PreEditCache(cache, fingerprint, MAX_NEW_TOKENS),
        writer=RecordWriter(run_dir / RECORDS_FILE, resume=resume),
        model_name="tiny",
        audio_root=release.audio_root,
    )


def parameters(lalm: DestaLALM) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in lalm.model.named_parameters()}


def unchanged(lalm: DestaLALM, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[name]) for name, p in lalm.model.named_parameters())


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its wall time and specificity scores, its loss to 5 digits.

    Cached audio embeddings differ in the last bits with the batch a clip was encoded in,
    so a replayed edit's loss and scores may too (`specificity_values` compares those
    approximately); outputs and judgements must not differ.
    """
    loss = round(record["edit"]["final_loss"], 5)
    probes = [{k: v for k, v in p.items() if k != "specificity"} for p in record["probes"]]
    edit = {**record["edit"], "seconds": None, "final_loss": loss}
    return {**record, "probes": probes, "edit": edit}


def specificity_values(records: list[dict[str, Any]]) -> list[float | None]:
    return [
        value
        for record in records
        for probe in record["probes"]
        for value in (probe.get("specificity") or {}).values()
    ]


def same_replay(records: list[dict[str, Any]], whole: list[dict[str, Any]]) -> None:
    """Same records; specificity equal up to float rounding, and undefined (None, C-acc on
    probes without y_e among their options) in exactly the same places."""
    assert [without_timing(r) for r in records] == [without_timing(r) for r in whole]
    replayed, expected = specificity_values(records), specificity_values(whole)
    assert [v is None for v in replayed] == [v is None for v in expected]
    assert any(v is None for v in expected) and any(v is not None for v in expected)
    defined = [v for v in replayed if v is not None]
    assert defined == pytest.approx([v for v in expected if v is not None], rel=1e-4)


class Interrupting:
    """Wraps an editor and stops the run (as a kill would) at the n-th edit."""

    def __init__(self, editor: Any, at: int) -> None:
        self.inner, self.at, self.calls = editor, at, 0
        self.name, self.state = editor.name, editor.state
        self.touches_audio_path = editor.touches_audio_path
        self.edited_roles, self.extras = editor.edited_roles, editor.extras

    def prepare(self, lalm: DestaLALM, train_cases: list[EditCase]) -> None:
        self.inner.prepare(lalm, train_cases)

    def apply(self, lalm: DestaLALM, case: EditCase) -> EditOutcome:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner.apply(lalm, case)

    def context(self):
        return self.inner.context()


# --------------------------------------------------------------------------- single


def test_single_protocol_records_every_probe_and_restores(
    make: Any, lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    before = parameters(lalm)
    cases = release.splits["test"]
    runner = make(ft_llm(), tmp_path / "run", cache=tmp_path / "cache")
    records = runner.run_single(cases)
    assert unchanged(lalm, before)
    assert [r["case_id"] for r in records] == [c.case_id for c in cases]
    assert read_records(tmp_path / "run" / RECORDS_FILE) == records
    for record, case in zip(records, cases, strict=True):
        assert [p["name"] for p in record["probes"]] == [p.name for p in case.probes()]
        assert record["edit"]["steps"] >= 1 and record["method"] == "ft_llm"
        first = record["probes"][0]
        assert first["question"] == case.reliability.question and first["answer"] == case.y_e
        assert {"pre_output", "post_output", "post_reason", "consistent", "score"} <= first.keys()
    metrics = single_metrics(records)
    assert {"single/reliability", "single/locality_audio/type2", "single/Gender/portability"} <= (
        metrics.keys()
    )
    assert runner.timings.seconds["edit"] > 0


def test_pre_edit_outputs_are_generated_once_per_model(
    make: Any,
    lalm: DestaLALM,
    release: SakeRelease,
    fingerprint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    generate = lalm.generate_scored
    monkeypatch.setattr(
        lalm, "generate_scored", lambda batch, n: calls.append(len(batch)) or generate(batch, n)
    )
    cases = release.splits["test"]
    probes = sum(len(list(c.probes())) for c in cases)
    first = make(ft_llm(), tmp_path / "a", cache=tmp_path / "cache")
    first.run_single(cases)
    assert first.pre_edit.generated > 0 and first.pre_edit.hits == 0
    stored = tmp_path / "cache" / "pre_edit" / fingerprint / "outputs.jsonl"
    assert stored.is_file()
    calls.clear()
    second = make(ft_audio(), tmp_path / "b", cache=tmp_path / "cache")
    records = second.run_single(cases)
    assert second.pre_edit.generated == 0 and second.pre_edit.hits == probes
    # post-edit only, one call per case; FT (Audio) cannot change text-only answers
    assert calls == [sum(p.file is not None for p in c.probes()) for c in cases]
    pre_first = [
        p["pre_output"] for r in read_records(tmp_path / "a" / RECORDS_FILE) for p in r["probes"]
    ]
    assert [p["pre_output"] for r in records for p in r["probes"]] == pre_first
    calls.clear()
    make(ft_llm(), tmp_path / "c", cache=tmp_path / "cache").run_single(cases)
    assert calls == [len(list(c.probes())) for c in cases]  # the LLM's edits reach every probe


def test_pre_edit_cache_keeps_the_first_token_logits_of_locality_probes(
    lalm: DestaLALM, release: SakeRelease, fingerprint: str, tmp_path: Path
) -> None:
    probes = [probe for case in release.splits["test"] for probe in case.probes()]
    local = [i for i, probe in enumerate(probes) if "locality" in probe.kind.value]
    others = [i for i in range(len(probes)) if i not in local]
    first = PreEditCache(tmp_path, fingerprint, MAX_NEW_TOKENS).answers(
        lalm, probes, 32, logits_for=local
    )
    assert sorted(first.first_logits) == local
    later = PreEditCache(tmp_path, fingerprint, MAX_NEW_TOKENS)
    read = later.answers(lalm, probes, 32, logits_for=range(len(probes)))
    assert later.generated == 0 and read.texts == first.texts
    assert sorted(read.first_logits) == local  # only locality probes' logits are kept
    for i in local:
        assert read.first_logits[i].dtype == torch.float32
        assert torch.equal(read.first_logits[i], first.first_logits[i])
    memory_only = PreEditCache(None, fingerprint, MAX_NEW_TOKENS)
    assert not memory_only.answers(lalm, probes[:2], 32, logits_for=[]).first_logits
    assert others  # the split has probes that are not locality probes


def test_a_run_on_cached_outputs_reads_the_kept_logits_instead_of_a_prompt_pass(
    make: Any,
    release: SakeRelease,
    fingerprint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sake.runner as runner_module

    passes: list[int] = []
    prompt_pass = runner_module.pre_edit_logits
    monkeypatch.setattr(
        runner_module,
        "pre_edit_logits",
        lambda lalm, probes, **kw: passes.append(len(probes)) or prompt_pass(lalm, probes, **kw),
    )
    cases = release.splits["test"]
    cache = tmp_path / "cache"
    first = make(ft_llm(), tmp_path / "a", cache=cache).run_single(cases)
    shutil.rmtree(cache / "pre_edit" / fingerprint / "logits")  # a cache kept without logits
    second = make(ft_llm(), tmp_path / "b", cache=cache).run_single(cases)
    local_probes = sum(len(c.locality_audio) + 1 for c in cases)
    assert passes == [local_probes]  # one pass for the whole block, whose logits are kept
    third = make(ft_llm(), tmp_path / "c", cache=cache).run_single(cases)
    assert passes == [local_probes]
    same_replay(second, first)
    same_replay(third, first)


def test_a_failed_logits_write_leaves_no_torn_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sake.evaluation.pre_edit as pre_edit_module

    def disk_full(tensors: dict[str, torch.Tensor], path: str) -> None:
        Path(path).write_bytes(b"torn")
        raise OSError("No space left on device")

    monkeypatch.setattr(pre_edit_module, "save_file", disk_full)
    store = LogitsStore(tmp_path)
    with pytest.raises(OSError, match="No space"):
        store.write({"key": torch.zeros(4)})
    assert list(tmp_path.iterdir()) == [] and store.read(["key"]) == {}


def test_kept_logits_take_the_narrowest_exact_float_type() -> None:
    in_bf16 = torch.tensor([1.5, -3.0, float("-inf"), 2.0**-20])
    in_fp16 = torch.tensor([1.0 + 2.0**-10, -2.5])
    in_fp32 = torch.tensor([1.0 / 3.0, 7.0])
    assert narrowest_exact(in_bf16).dtype == torch.bfloat16
    assert narrowest_exact(in_fp16).dtype == torch.float16
    assert narrowest_exact(in_fp32).dtype == torch.float32
    for row in (in_bf16, in_fp16, in_fp32):
        assert torch.equal(narrowest_exact(row).float(), row)


def test_only_editors_of_the_audio_path_alone_leave_text_answers_alone() -> None:
    assert audio_path_only(ft_audio())
    assert not audio_path_only(ft_llm()) and not audio_path_only(i_ike())


def test_ft_audio_keeps_every_text_only_answer(
    make: Any, lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    encoded: list[int] = []
    encoder = lalm.modules.resolve("audio_encoder").module
    hook = encoder.register_forward_hook(lambda module, args, out: encoded.append(len(args[0])))
    try:
        records = make(ft_audio(), tmp_path, cache=None).run_single(release.splits["test"])
    finally:
        hook.remove()
    clips = {p.audio_path for c in release.splits["test"] for p in c.probes() if p.audio_path}
    assert sum(encoded) == len(clips)  # the encoder is fixed: each clip is encoded once per run
    text = [p for r in records for p in r["probes"] if p["audio"] is None]
    assert text and all(p["post_output"] == p["pre_output"] and p["score"] for p in text)
    assert single_metrics(records)["single/locality_text"] == 1.0
    audio = [p for r in records for p in r["probes"] if p["audio"] is not None]
    assert any(p["post_output"] != p["pre_output"] for p in audio)
    text_locality = [p["specificity"] for p in text if p["kind"] == "locality_text"]
    assert text_locality and all(s["kl"] < NOISE_KL and s["top1"] == 100.0 for s in text_locality)
    assert any(p["specificity"]["kl"] > 0 for p in audio if p["kind"] == "locality_audio")


class Unchanging:
    """Edits nothing and reports a fixed regularizer per layer, as a method at λ → ∞ would."""

    name = "unchanging"
    extras = {"regularizer/layer1": 0.5, "regularizer/layer2": 1.5, "regularizer/mean": 1.0}
    edited_roles: tuple[str, ...] = ()

    def __init__(self, touches_audio_path: bool = False) -> None:
        self.state = EditorState()
        self.touches_audio_path = touches_audio_path

    def prepare(self, lalm: DestaLALM, train_cases: list[EditCase]) -> None:
        pass

    def apply(self, lalm: DestaLALM, case: EditCase) -> EditOutcome:
        self.state.record(case)
        return EditOutcome(None, 0, None, 0.0)

    def context(self) -> QueryContext:
        return QueryContext()


class FirstOnly(Unchanging):
    """Fine-tunes the model on a sequence's first case only; later edits change nothing."""

    name = "first_only"

    def __init__(self) -> None:
        super().__init__()
        self.inner = FineTuneEditor(
            FineTuneConfig(name="ft_llm", role="llm.layer[-1].mlp", lr=5e-2)
        )
        self.edited_roles = self.inner.edited_roles

    def apply(self, lalm: DestaLALM, case: EditCase) -> EditOutcome:
        if not self.state.edits:
            self.state.record(case)
            return self.inner.apply(lalm, case)
        return super().apply(lalm, case)


def locality_scores(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p["specificity"] for r in records for p in r["probes"] if "locality" in p["kind"]]


@pytest.mark.parametrize("touches_audio_path", [False, True])
def test_an_unchanged_model_scores_zero_kl_and_full_overlap(
    make: Any, release: SakeRelease, tmp_path: Path, touches_audio_path: bool
) -> None:
    cases = release.splits["test"]
    runner = make(Unchanging(touches_audio_path), tmp_path, cache=None)
    records = runner.run_single(cases)
    assert read_records(tmp_path / RECORDS_FILE) == records
    scores = locality_scores(records)
    assert len(scores) == sum(len(c.locality_audio) + 1 for c in cases)
    for score in scores:
        assert set(score) == set(SPECIFICITY_METRICS)
        assert score["kl"] < NOISE_KL  # both sides come from differently padded batches
        assert score["top1"] == score["top5"] == score["top10"] == 100.0
    edit_probes = [p for r in records for p in r["probes"] if "locality" not in p["kind"]]
    assert not any("specificity" in p for p in edit_probes)
    metrics = single_metrics(records)
    assert metrics["single/locality/kl"] < NOISE_KL
    assert metrics["single/Animal/locality_text/kl"] < NOISE_KL
    assert metrics["single/locality_audio/type2/top5"] == metrics["single/locality/top10"] == 100.0
    assert "single/locality/c_acc" in metrics and "single/locality_audio/s_acc" in metrics
    assert runner.timings.seconds["specificity"] > 0


def test_editor_extras_are_recorded_and_averaged(
    make: Any, release: SakeRelease, tmp_path: Path
) -> None:
    records = make(Unchanging(), tmp_path, cache=None).run_single(release.splits["test"])
    assert all(r["edit"]["extras"] == Unchanging.extras for r in records)
    metrics = single_metrics(records)
    assert metrics["single/edit/regularizer/layer2"] == 1.5
    assert metrics["single/edit/regularizer/mean"] == 1.0
    plain = make(ft_llm(), tmp_path / "ft", cache=None).run_single(release.splits["test"][:1])
    assert plain[0]["edit"]["extras"] == {}


def test_resumed_run_equals_an_uninterrupted_one(
    make: Any, lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    cases = release.splits["test"]
    cache = tmp_path / "cache"
    whole = make(ft_llm(), tmp_path / "whole", cache=cache).run_single(cases)
    killed = make(Interrupting(ft_llm(), at=3), tmp_path / "run", cache=cache)
    with pytest.raises(KeyboardInterrupt):
        killed.run_single(cases)
    path = tmp_path / "run" / RECORDS_FILE
    assert len(read_records(path)) == 2
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"protocol": "single", "case_id": "test/Gen')  # torn by the kill
    with pytest.raises(FileExistsError, match="resume=true"):
        RecordWriter(path)
    resumed = make(ft_llm(), tmp_path / "run", cache=cache, resume=True)
    records = resumed.run_single(cases)
    assert single_metrics(records) == pytest.approx(single_metrics(whole), rel=1e-4)
    on_disk = read_records(path)
    assert len(on_disk) == len(cases) == len({record_key(r) for r in on_disk})
    same_replay(on_disk, whole)


def test_resume_refuses_records_of_another_method(
    make: Any, lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    make(i_ike(), tmp_path, cache=None).run_single(release.splits["test"][:1])
    with pytest.raises(ValueError, match="another run"):
        make(ft_llm(), tmp_path, cache=None, resume=True)


# --------------------------------------------------------------------------- sequential


def expected_pairs(length: int) -> set[tuple[int, int]]:
    return {(i, j) for i in range(length) for j in range(min(length, 5)) if 0 <= i - j <= 5}


@pytest.mark.parametrize("length", [3, 8, 10, 14])
def test_sequential_schedule_is_the_protocol(length: int) -> None:
    schedule = sequential_schedule(length)
    assert {(i, j) for i, js in enumerate(schedule) for j in js} == expected_pairs(length)
    assert len(schedule) == min(length, 10)  # no edit is applied that nobody evaluates


def test_sequential_runner_evaluates_only_the_scheduled_pairs(
    make: Any, lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    before = parameters(lalm)
    sequence = release.sequences[1]
    editor = Interrupting(ft_llm(), at=0)
    runner = make(editor, tmp_path, cache=tmp_path / "cache", protocol="sequential")
    records = runner.run_sequential([sequence])
    assert {(r["step"], r["edit_index"]) for r in records} == expected_pairs(len(sequence))
    assert editor.calls == len(sequence) and editor.state.edits == []
    assert unchanged(lalm, before)
    asked = {runner.pre_edit.key(p) for case in sequence.cases[:5] for p in case.probes()}
    every = {runner.pre_edit.key(p) for case in sequence.cases for p in case.probes()}
    assert runner.pre_edit.generated == len(asked) < len(every)  # only evaluated edits' probes
    original = runner.pre_edit.outputs(lalm, list(sequence.cases[0].probes()), batch_size=32)
    for record in records:
        assert record["gap"] == record["step"] - record["edit_index"]
        if record["edit_index"] == 0:
            assert [p["pre_output"] for p in record["probes"]] == original
    metrics = sequential_metrics(records)
    assert {f"sequential/reliability/gap{g}" for g in range(6)} <= metrics.keys()


def test_sequential_specificity_is_measured_against_the_original_model(
    make: Any, lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    before = parameters(lalm)
    sequence = release.sequences[1]
    unchanged_run = make(Unchanging(), tmp_path / "none", cache=None, protocol="sequential")
    assert all(
        s["kl"] < NOISE_KL and s["top10"] == 100.0
        for s in locality_scores(unchanged_run.run_sequential([sequence]))
    )
    records = make(FirstOnly(), tmp_path / "first", cache=None, protocol="sequential")
    records = records.run_sequential([sequence])
    assert unchanged(lalm, before)
    # edit 1 changes nothing, yet its scores show the first edit: the reference is the original
    later = [r for r in records if r["edit_index"] == 1 and r["gap"] == 0]
    assert later and all(s["kl"] > 100 * NOISE_KL for s in locality_scores(later))
    metrics = sequential_metrics(records)
    assert metrics["sequential/locality/kl/gap0"] > 100 * NOISE_KL
    assert {f"sequential/locality_audio/top1/gap{g}" for g in range(6)} <= metrics.keys()
    assert metrics["sequential/edit/regularizer/mean"] == 1.0


def test_sequential_resume_replays_the_sequence(
    make: Any, lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    sequences = release.sequences
    whole = make(ft_llm(), tmp_path / "whole", cache=None, protocol="sequential").run_sequential(
        sequences
    )
    killed = make(Interrupting(ft_llm(), at=7), tmp_path / "run", cache=None, protocol="sequential")
    with pytest.raises(KeyboardInterrupt):
        killed.run_sequential(sequences)
    partial = read_records(tmp_path / "run" / RECORDS_FILE)
    assert 0 < len(partial) < len(whole)
    records = make(
        ft_llm(), tmp_path / "run", cache=None, resume=True, protocol="sequential"
    ).run_sequential(sequences)
    same_replay(records, whole)
    assert len(read_records(tmp_path / "run" / RECORDS_FILE)) == len(whole)


# --------------------------------------------------------------------------- bad input


def test_missing_audio_fails_before_editing_and_keeps_records(
    make: Any, lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    own = rooted(release, tmp_path / "audio")
    shutil.copytree(release.audio_root, own.audio_root)
    cases = own.splits["test"]
    make(ft_llm(), tmp_path / "run", cache=None, release=own).run_single(cases[:2])
    lost = cases[3].generality[1].audio_path
    lost.unlink()
    editor = Interrupting(ft_llm(), at=0)
    runner = make(editor, tmp_path / "run", cache=None, resume=True, release=own)
    with pytest.raises(FileNotFoundError) as error:
        runner.run_single(cases)
    assert str(lost) in str(error.value) and f"dataset.audio_root={own.audio_root}" in str(
        error.value
    )
    assert cases[3].case_id in str(error.value)
    assert editor.calls == 0
    assert len(read_records(tmp_path / "run" / RECORDS_FILE)) == 2


def test_probe_without_options_names_the_case_and_probe(
    make: Any, lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    case = release.splits["test"][1]
    broken = replace(case, portability=(replace(case.portability[0], options=()),))
    runner = make(ft_llm(), tmp_path, cache=None)
    with pytest.raises(ValueError, match="has no options") as error:
        runner.run_single([release.splits["test"][0], broken])
    assert repr(case.case_id) in str(error.value) and "'portability'" in str(error.value)
    assert not (tmp_path / RECORDS_FILE).exists() or read_records(tmp_path / RECORDS_FILE) == []


def test_only_editors_of_the_encoder_itself_forgo_its_cache() -> None:
    assert not touches_audio_encoder(ft_llm())
    assert not touches_audio_encoder(ft_audio())
    encoder = FineTuneConfig(name="ft_encoder", role="audio_encoder", lr=1e-3)
    assert touches_audio_encoder(FineTuneEditor(encoder))
    assert touches_audio_encoder(Unchanging(touches_audio_path=True))  # no role: assume it does
    assert not touches_audio_encoder(Unchanging(touches_audio_path=False))


def test_unknown_protocol_names_the_choices() -> None:
    with pytest.raises(ValueError, match="single, sequential"):
        EvalSettings("batch")


# --------------------------------------------------------------------------- edit task


@pytest.fixture(scope="module")
def on_disk(
    release: SakeRelease, lalm: DestaLALM, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The release in SAKE layout (with audio) and the model in `load_desta` layout."""
    return write_on_disk(release, lalm, tmp_path_factory)


def edit_overrides(on_disk: tuple[Path, Path], *extra: str) -> list[str]:
    return run_overrides(on_disk, "edit", *extra)


def test_edit_task_writes_records_metrics_and_timings(compose_cfg, on_disk) -> None:
    cfg = compose_cfg("edit", edit_overrides(on_disk, "method=ft_audio", "dataset.limit=3"))
    metrics = run_task(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert len(read_records(run_dir / RECORDS_FILE)) == 3
    assert metrics["single/locality_text"] == 1.0
    timing = json.loads((run_dir / "timing.json").read_text())
    assert timing["time/total_s"] >= timing["time/edit_s"] > 0
    cfg.resume = True
    assert run_task(cfg) == metrics
    assert json.loads((run_dir / "timing.json").read_text())["records/new"] == 0


@pytest.mark.parametrize("keep", [True, False])
def test_edit_task_keeps_pre_edit_logits_unless_told_not_to(
    compose_cfg, on_disk, keep: bool
) -> None:
    overrides = ["method=i_ike", "dataset.limit=1", f"eval.pre_edit_logits={keep}"]
    cfg = compose_cfg("edit", edit_overrides(on_disk, *overrides))
    run_task(cfg)
    [model_dir] = (Path(cfg.paths.cache_dir) / "pre_edit").iterdir()
    assert (model_dir / "outputs.jsonl").is_file()
    assert bool(list(model_dir.glob("logits/*.safetensors"))) is keep


def test_edit_task_logs_summary_and_records_to_the_tracker(
    compose_cfg, on_disk, tmp_path: Path
) -> None:
    logged_to = tmp_path / "tracker.json"
    overrides = [
        "method=i_ike",
        "logger._target_=lalm_fixtures.FileTracker",
        f"+logger.path={logged_to}",
    ]
    metrics = run_task(compose_cfg("edit", edit_overrides(on_disk, *overrides)))
    logged = json.loads(logged_to.read_text())
    assert logged["started"] and metrics.items() <= logged["summary"].items()
    assert "single/reliability/ci95_low" in logged["summary"]  # the report's own summary
    table = logged["tables"]["records"]
    assert len(table["rows"]) == 4 and table["columns"][:2] == ["case_id", "attribute"]
    assert table["columns"][-5:] == [
        "reliability",
        "generality",
        "locality_audio",
        "locality_text",
        "portability",
    ]


def test_edit_task_runs_the_sequential_protocol(compose_cfg, on_disk) -> None:
    cfg = compose_cfg(
        "edit",
        edit_overrides(on_disk, "method=ie_ike", "eval.protocol=sequential", "dataset.limit=10"),
    )
    metrics = run_task(cfg)
    assert metrics["sequential/reliability/gap0"] >= 0.0
    assert {f"sequential/locality_audio/gap{g}" for g in (0, 1)} <= metrics.keys()
    assert not any(key.endswith("gap2") for key in metrics)  # a sequence of two edits
    assert all(key.startswith("sequential/") for key in metrics)
    degenerate = [f"sequential/degeneration/{key}" for key in ("gap0", "gap1", "pre_edit")]
    assert all(0.0 <= metrics[key] <= 1.0 for key in degenerate)


def test_edit_task_without_an_editing_method_says_what_to_choose(compose_cfg, on_disk) -> None:
    cfg = compose_cfg("edit", edit_overrides(on_disk, "method=none"))
    with pytest.raises(ValueError, match="does not edit anything") as error:
        run_task(cfg)
    assert all(name in str(error.value) for name in ("ft_audio", "ft_llm", "i_ike", "ie_ike"))
