"""Timing the project's runner and the re-enacted reference protocol on the same edits.

Every (method, protocol) pair is run by the project's `EditRunner` first, all of them, and
then by `ReferenceProtocol`, so that the peak memory of the project's runs is read before any
reference run has copied the model. Each project run starts with empty audio caches. By
default it also starts with an empty pre-edit cache of its own, so that no run profits from
work done by an earlier one; with `warm_pre_edit` the pre-edit outputs of every probe are
generated once, untimed, into one on-disk cache that every project run then reads, which is how
the cache serves repeated runs and several methods on one model. Before anything is timed, one
probe is generated and every editor applies one edit, then undoes it, which takes one-off
start-up costs (allocator, autograd, kernel selection) out of whichever run would come first.
"""

from __future__ import annotations

import logging
import resource
import sys
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter, process_time

from sake.bench.judgements import JudgementComparison, compare_records
from sake.bench.reference import ReferenceProtocol, forget_audio
from sake.data.schema import EditCase
from sake.data.schema import Sequence as EditSequence
from sake.evaluation.records import RECORDS_FILE, Record, RecordWriter
from sake.methods.base import Editor
from sake.models.base import LALM
from sake.runner import PROTOCOLS, EditRunner, EvalSettings, PreEditCache

log = logging.getLogger(__name__)

EDIT_PHASE = "edit"
TOTAL_PHASE = "total"


@dataclass(frozen=True)
class Workload:
    """The cases edited one at a time (single) and the sequences edited in order."""

    cases: tuple[EditCase, ...] = ()
    sequences: tuple[EditSequence, ...] = ()

    def all_cases(self) -> list[EditCase]:
        """The single cases, then every case of every sequence."""
        return [*self.cases, *(case for sequence in self.sequences for case in sequence.cases)]

    def edits(self, protocol: str) -> int:
        """How many cases a protocol edits: the cases, or every case of every sequence."""
        if protocol == "single":
            return len(self.cases)
        return sum(len(sequence) for sequence in self.sequences)


@dataclass(frozen=True)
class ProtocolRun:
    """One protocol run: cases edited, wall and CPU seconds, wall seconds per phase, records.

    CPU seconds (this process, all threads) beside the wall time show how much of the wall
    time other processes on a shared machine took.
    """

    cases: int
    seconds: float
    cpu_seconds: float
    phases: Mapping[str, float]
    records: Sequence[Record]
    pre_edit_generated: int | None = None

    @property
    def cases_per_s(self) -> float:
        return self.cases / self.seconds

    @property
    def outside_edit_share(self) -> float:
        """The share of the wall time not spent in the method's own edit computation."""
        return 1.0 - self.phases.get(EDIT_PHASE, 0.0) / self.seconds


@dataclass(frozen=True)
class BenchResult:
    """Both protocols' runs of one method under one editing protocol, and their agreement."""

    method: str
    protocol: str
    ours: ProtocolRun
    reference: ProtocolRun
    comparison: JudgementComparison

    @property
    def key(self) -> str:
        return f"{self.method}/{self.protocol}"

    @property
    def speedup(self) -> float:
        return self.ours.cases_per_s / self.reference.cases_per_s

    @property
    def cpu_speedup(self) -> float:
        """The speed-up in CPU time, which load from other processes does not inflate."""
        return self.reference.cpu_seconds / self.ours.cpu_seconds


@dataclass(frozen=True)
class Benchmark:
    """All results; peak resident memory after the project's runs and at the end."""

    results: tuple[BenchResult, ...]
    peak_rss_ours_bytes: int
    peak_rss_bytes: int
    pre_edit_fill_seconds: float | None = None


def run_benchmark(
    lalm: LALM,
    editors: Sequence[Editor],
    workload: Workload,
    settings: EvalSettings,
    *,
    protocols: Sequence[str],
    model_name: str,
    work_dir: Path,
    audio_root: Path | None = None,
    warm_pre_edit: bool = False,
) -> Benchmark:
    """Run every editor under every protocol both ways and compare the judgements.

    Editors must be prepared (`Editor.prepare`) already; `work_dir` receives the project
    runs' records and pre-edit caches.
    """
    _check_workload(workload, protocols)
    warm_up(lalm, editors, workload, settings)
    fingerprint = lalm.fingerprint()
    shared_cache = work_dir / "shared" if warm_pre_edit else None
    fill_seconds = None
    if shared_cache is not None:
        fill_seconds = fill_pre_edit_cache(lalm, fingerprint, shared_cache, workload, settings)
    pairs = [(editor, protocol) for editor in editors for protocol in protocols]
    ours: dict[tuple[str, str], ProtocolRun] = {}
    for editor, protocol in pairs:
        run_dir = work_dir / f"{editor.name}-{protocol}"
        ours[editor.name, protocol] = run_ours(
            lalm,
            editor,
            protocol,
            workload,
            settings,
            model_name=model_name,
            fingerprint=fingerprint,
            run_dir=run_dir,
            cache_root=shared_cache or run_dir,
            audio_root=audio_root,
        )
    peak_ours = peak_rss_bytes()
    results = []
    for editor, protocol in pairs:
        reference = run_reference(lalm, editor, protocol, workload, settings)
        mine = ours[editor.name, protocol]
        results.append(
            BenchResult(
                editor.name,
                protocol,
                mine,
                reference,
                compare_records(mine.records, reference.records),
            )
        )
    return Benchmark(tuple(results), peak_ours, peak_rss_bytes(), fill_seconds)


def run_ours(
    lalm: LALM,
    editor: Editor,
    protocol: str,
    workload: Workload,
    settings: EvalSettings,
    *,
    model_name: str,
    fingerprint: str,
    run_dir: Path,
    cache_root: Path,
    audio_root: Path | None = None,
) -> ProtocolRun:
    """The project's runner as `python edit.py` runs it; pre-edit outputs under `cache_root`.

    `fingerprint` is the model's, taken once by the caller: the weights are the same in every
    run, while a fingerprint that hashes the tokenizer's serialised state also sees the padding
    setting of its latest call, which would move the cache between runs.
    """
    forget_audio(lalm)
    started, cpu_started = perf_counter(), process_time()
    runner = EditRunner(
        lalm,
        editor,
        settings=replace(settings, protocol=protocol),
        pre_edit=PreEditCache(cache_root, fingerprint, settings.max_new_tokens),
        writer=RecordWriter(run_dir / RECORDS_FILE),
        model_name=model_name,
        audio_root=audio_root,
    )
    with runner.timings.measure(TOTAL_PHASE):
        if protocol == "single":
            records = runner.run_single(workload.cases)
        else:
            records = runner.run_sequential(workload.sequences)
    run = ProtocolRun(
        workload.edits(protocol),
        perf_counter() - started,
        process_time() - cpu_started,
        dict(runner.timings.seconds),
        records,
        runner.pre_edit.generated,
    )
    log.info("%s/%s, project runner: %.1f s", editor.name, protocol, run.seconds)
    return run


def run_reference(
    lalm: LALM, editor: Editor, protocol: str, workload: Workload, settings: EvalSettings
) -> ProtocolRun:
    """The re-enacted reference protocol over the same workload."""
    forget_audio(lalm)
    started, cpu_started = perf_counter(), process_time()
    reference = ReferenceProtocol(lalm, editor, settings=replace(settings, protocol=protocol))
    if protocol == "single":
        records = reference.run_single(workload.cases)
    else:
        records = reference.run_sequential(workload.sequences)
    run = ProtocolRun(
        workload.edits(protocol),
        perf_counter() - started,
        process_time() - cpu_started,
        dict(reference.timings.seconds),
        records,
    )
    log.info("%s/%s, reference protocol: %.1f s", editor.name, protocol, run.seconds)
    return run


def warm_up(
    lalm: LALM, editors: Sequence[Editor], workload: Workload, settings: EvalSettings
) -> None:
    """Generate one answer and apply (then undo) one edit per editor, untimed."""
    case = workload.all_cases()[0]
    lalm.generate(lalm.prepare([case.reliability]), settings.max_new_tokens)
    for editor in editors:
        outcome = editor.apply(lalm, case)
        if outcome.snapshot is not None:
            outcome.snapshot.restore()
        editor.state.reset()
    forget_audio(lalm)


def fill_pre_edit_cache(
    lalm: LALM, fingerprint: str, root: Path, workload: Workload, settings: EvalSettings
) -> float:
    """Generate the pre-edit outputs of every probe into the cache at `root`; the seconds taken."""
    started = perf_counter()
    cache = PreEditCache(root, fingerprint, settings.max_new_tokens)
    probes = [probe for case in workload.all_cases() for probe in case.probes()]
    cached = getattr(lalm, "cached_audio_embeddings", None)
    with nullcontext() if cached is None else cached():
        cache.outputs(lalm, probes, settings.batch_size)
    forget_audio(lalm)
    return perf_counter() - started


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _check_workload(workload: Workload, protocols: Sequence[str]) -> None:
    unknown = [protocol for protocol in protocols if protocol not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {', '.join(PROTOCOLS)}")
    if not protocols:
        raise ValueError(f"no protocol to benchmark; choose from {', '.join(PROTOCOLS)}")
    for protocol in protocols:
        if workload.edits(protocol) == 0:
            raise ValueError(
                f"the {protocol} protocol has no cases to edit; ask for at least one "
                f"{'case' if protocol == 'single' else 'sequence'}"
            )
