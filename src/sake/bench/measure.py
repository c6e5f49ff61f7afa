"""Timing the project's runner and the re-enacted reference protocol on the same edits.

Every (method, protocol) pair is run by the project's `EditRunner` first, all of them, and
then by `ReferenceProtocol`, so that the peak memory of the project's runs is read before any
reference run has copied the model. Each project run starts with empty audio caches. Where its
pre-edit outputs come from is the `pre_edit` mode:

- `shared` (the default): for each protocol, the pre-edit outputs its runs need are generated
  once, timed, into one on-disk cache that every method's run reads, and each of those runs is
  charged an equal share of that time (phase `pre_edit_share`). This is how the cache serves
  several methods on one model, against the reference's generating them again per method.
- `cold`: every run starts with an empty pre-edit cache of its own and pays for all of it, as
  a model's very first method does.
- `warm`: the shared cache is filled untimed, as for any later run on the same cases.

Before anything is timed, one probe is generated and every editor applies one edit, then undoes
it, which takes one-off start-up costs (allocator, autograd, kernel selection) out of whichever
run would come first.
"""

from __future__ import annotations

import logging
import resource
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from time import perf_counter, process_time

from sake.bench.judgements import JudgementComparison, compare_records
from sake.bench.reference import ReferenceProtocol, forget_audio
from sake.data.schema import EditCase, Probe
from sake.data.schema import Sequence as EditSequence
from sake.evaluation.records import RECORDS_FILE, Record, RecordWriter
from sake.methods.base import Editor
from sake.models.base import LALM
from sake.runner import (
    PROTOCOLS,
    EditRunner,
    EvalSettings,
    PreEditCache,
    sequential_schedule,
)

log = logging.getLogger(__name__)

EDIT_PHASE = "edit"
TOTAL_PHASE = "total"
SHARE_PHASE = "pre_edit_share"
PRE_EDIT_MODES: tuple[str, ...] = ("shared", "cold", "warm")


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
    def speedup_ceiling(self) -> float:
        """The speed-up the project's runner would reach if everything but the method's own
        edit took no time: the reference's wall time over the runner's edit time (Amdahl's
        bound; infinite for methods whose edit takes no measurable time)."""
        edit = self.ours.phases.get(EDIT_PHASE, 0.0)
        return self.reference.seconds / edit if edit > 0 else float("inf")

    @property
    def cpu_speedup(self) -> float:
        """The speed-up in CPU time, which load from other processes does not inflate."""
        return self.reference.cpu_seconds / self.ours.cpu_seconds


@dataclass(frozen=True)
class Benchmark:
    """All results; peak resident memory after the project's runs and at the end; the pre-edit
    mode and, unless it is `cold`, the seconds each protocol's shared pre-edit fill took."""

    results: tuple[BenchResult, ...]
    peak_rss_ours_bytes: int
    peak_rss_bytes: int
    pre_edit_mode: str = "shared"
    pre_edit_fill_seconds: Mapping[str, float] = field(default_factory=dict)


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
    pre_edit: str = "shared",
) -> Benchmark:
    """Run every editor under every protocol both ways and compare the judgements.

    Editors must be prepared (`Editor.prepare`) already; `work_dir` receives the project
    runs' records and pre-edit caches; `pre_edit` is one of `PRE_EDIT_MODES` (module
    docstring).
    """
    _check_workload(workload, protocols)
    if pre_edit not in PRE_EDIT_MODES:
        raise ValueError(f"unknown pre-edit mode {pre_edit!r}; choose from {PRE_EDIT_MODES}")
    warm_up(lalm, editors, workload, settings)
    fingerprint = lalm.fingerprint()
    shared_cache = None if pre_edit == "cold" else work_dir / "shared"
    fills: dict[str, tuple[float, float]] = {}
    ours: dict[tuple[str, str], ProtocolRun] = {}
    for protocol in protocols:
        if shared_cache is not None:
            probes = pre_edit_probes(workload, protocol, settings)
            fills[protocol] = fill_pre_edit_cache(lalm, fingerprint, shared_cache, probes, settings)
        for editor in editors:
            run_dir = work_dir / f"{editor.name}-{protocol}"
            run = run_ours(
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
            if pre_edit == "shared":
                wall, cpu = fills[protocol]
                run = charged(run, wall / len(editors), cpu / len(editors))
            ours[editor.name, protocol] = run
    peak_ours = peak_rss_bytes()
    results = []
    for editor in editors:
        for protocol in protocols:
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
    fill_seconds = {protocol: wall for protocol, (wall, _) in fills.items()}
    return Benchmark(tuple(results), peak_ours, peak_rss_bytes(), pre_edit, fill_seconds)


def charged(run: ProtocolRun, seconds: float, cpu_seconds: float) -> ProtocolRun:
    """The run with a share of work done for it elsewhere added to its times."""
    return replace(
        run,
        seconds=run.seconds + seconds,
        cpu_seconds=run.cpu_seconds + cpu_seconds,
        phases={**run.phases, SHARE_PHASE: seconds},
    )


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


def pre_edit_probes(workload: Workload, protocol: str, settings: EvalSettings) -> list[Probe]:
    """The probes whose pre-edit outputs a protocol's runs ask for: every probe of every single
    case, or of every sequential edit the schedule evaluates."""
    if protocol == "single":
        cases = list(workload.cases)
    else:
        cases = []
        for sequence in workload.sequences:
            schedule = sequential_schedule(len(sequence), settings.max_edit, settings.max_gap)
            reported = sorted({j for evaluated in schedule for j in evaluated})
            cases.extend(sequence.cases[j] for j in reported)
    return [probe for case in cases for probe in case.probes()]


def fill_pre_edit_cache(
    lalm: LALM, fingerprint: str, root: Path, probes: Sequence[Probe], settings: EvalSettings
) -> tuple[float, float]:
    """Generate the pre-edit outputs of `probes` into the cache at `root`, with empty audio
    caches before and after; the wall and CPU seconds taken."""
    forget_audio(lalm)
    started, cpu_started = perf_counter(), process_time()
    cache = PreEditCache(root, fingerprint, settings.max_new_tokens)
    with lalm.cached_audio_embeddings():
        cache.outputs(lalm, probes, settings.batch_size)
    elapsed = perf_counter() - started, process_time() - cpu_started
    forget_audio(lalm)
    return elapsed


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
