"""The single and sequential editing protocols: edit, ask, judge, record, undo.

Single editing (SAKE §4.1): for every case, apply its edit, ask all of its probes in one
batched call, judge them against the pre-edit outputs and the answers, append one record,
restore the touched weights.

Sequential editing (SAKE §4.2): for every sequence, apply its edits in order without
restoring; after edit i, evaluate every earlier edit j with j < `max_edit` and i - j <=
`max_gap`, i.e. exactly the (edit, step) pairs the protocol reports, and nothing after the
last step any of them needs; pre-edit outputs are asked only of the edits that are evaluated.
Locality is always judged against the original model's outputs. One record per (sequence,
step, edit); the model is restored at the end of each sequence.

Every record keeps what the editor reported about its edit (`record["edit"]["extras"]`, e.g.
MEMIT's regularizer per layer) and, on each locality probe, the GT-free and GT-based
specificity scores (`probe["specificity"]`, see `sake.evaluation.specificity`). Their
next-token distributions come from the generations themselves: the post-edit side from the
first step of the post-edit generation, the pre-edit side from the first step of the pre-edit
generation, kept on disk with the cached outputs; only for cached outputs whose logits were not
kept, from one prompt-only pass over the locality probes before any edit of the case (in
sequential editing, before the sequence's first edit, so every step is compared with the
original model). Single editing asks pre-edit outputs a block of cases at a time, so those
distributions are held in memory for one block only.

Pre-edit outputs come from `PreEditCache` (`sake.evaluation.pre_edit`): generated once per
model (by fingerprint) and probe, in large batches ahead of the edits, kept on disk and shared
by every method and run.
Audio-encoder and connector outputs are cached for the whole run when the method cannot
change them, and within one evaluation otherwise; a method that edits only the connector
(FT (Audio)) still has the encoder's states cached for the whole run, its edit included. An
editor that changes only the audio path cannot change the answer to a text-only probe (one
without audio, asked without an editing context): such probes keep their pre-edit outputs and
logits instead of being asked again.

Resuming: the runner skips every record the writer already holds (single: by case; a
sequence with missing records is replayed from its first edit, since its model state is not
on disk, and only the missing records are written). Editors are deterministic, so the
replayed records equal the lost ones.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

import torch
from torch import Tensor
from tqdm import tqdm

from sake.data.audio import case_audio_paths, clips_longer_than
from sake.data.schema import EditCase, Probe
from sake.data.schema import Sequence as EditSequence
from sake.evaluation.judges.base import Judge, OptionJudge
from sake.evaluation.metrics import judge_probes
from sake.evaluation.pre_edit import PRE_EDIT_CHUNK_BATCHES, PreEditCache, is_locality
from sake.evaluation.probing import Answers, BatchHook, answer_probes, mapped_hook
from sake.evaluation.records import Record, RecordWriter, record_key
from sake.evaluation.specificity import (
    LocalityOutputs,
    Scores,
    pre_edit_logits,
    specificity_of_cases,
    with_specificity,
)
from sake.methods.base import (
    Editor,
    EditOutcome,
    ParallelEditor,
    RowRouting,
    WeightSnapshot,
    role_touches_audio_path,
)
from sake.methods.parallel import auto_parallel_edits, free_memory_bytes, parallel_groups
from sake.methods.saved import EditSaver
from sake.models.base import LALM

log = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("single", "sequential")
MAX_REPORTED_PROBLEMS = 5
CONNECTOR_ROLE = "connector"
T = TypeVar("T")


@dataclass(frozen=True)
class EvalSettings:
    """How probes are asked and which sequential pairs are evaluated (`configs/eval`)."""

    protocol: str = "single"
    max_new_tokens: int = 24
    batch_size: int = 32
    max_edit: int = 5
    max_gap: int = 5
    shard: int = 0
    num_shards: int = 1
    parallel_edits: int | str = 1
    memory_budget_gb: float | None = None

    def __post_init__(self) -> None:
        if self.parallel_edits != "auto" and (
            not isinstance(self.parallel_edits, int) or self.parallel_edits < 1
        ):
            raise ValueError(
                f"eval.parallel_edits must be auto or a whole number of at least 1, got "
                f"{self.parallel_edits!r}"
            )
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"unknown protocol {self.protocol!r}; set eval.protocol to one of "
                f"{', '.join(PROTOCOLS)}"
            )
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("eval.max_new_tokens and eval.batch_size must be at least 1")
        if self.num_shards < 1 or not 0 <= self.shard < self.num_shards:
            raise ValueError(
                f"eval.shard must lie in 0..eval.num_shards-1, got shard {self.shard} of "
                f"{self.num_shards}"
            )

    def shard_of(self, items: Sequence[T]) -> list[T]:
        """This job's share of the cases (single) or sequences (sequential): every
        `num_shards`-th one from position `shard`, so that the shards together are the run."""
        return list(items[self.shard :: self.num_shards])


@dataclass(frozen=True)
class PreEdit:
    """What the unedited model gives for one case: the outputs of all of its probes, and the
    (locality probes, vocab) first-token logits of its locality probes."""

    outputs: list[str]
    locality_logits: Tensor


def eval_settings(config: Mapping[str, Any]) -> EvalSettings:
    sequential = config.get("sequential") or {}
    return EvalSettings(
        protocol=str(config.protocol),
        max_new_tokens=int(config.max_new_tokens),
        batch_size=int(config.batch_size),
        max_edit=int(sequential.get("max_edit", 5)),
        max_gap=int(sequential.get("max_gap", 5)),
        shard=int(config.get("shard", 0)),
        num_shards=int(config.get("num_shards", 1)),
        parallel_edits=parallel_setting(config.get("parallel_edits", 1)),
        memory_budget_gb=config.get("memory_budget_gb"),
    )


def parallel_setting(value: Any) -> int | str:
    """`auto`, or a number of edits (as given on the command line or in a config)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"eval.parallel_edits must be auto or a number, got {value!r}") from None


# --------------------------------------------------------------------------- inputs


def check_cases(cases: Sequence[EditCase], audio_root: Path | None) -> None:
    """Fail before any edit on probes the runner cannot ask or judge.

    Raises ValueError naming the case and probe when a probe has no options, and
    FileNotFoundError naming the missing files and the audio root when audio is absent.
    """
    if not cases:
        raise ValueError(
            "there is no case to edit: the dataset's split is empty or dataset.limit leaves none"
        )
    missing: list[str] = []
    for case in cases:
        for probe in case.probes():
            if not probe.options:
                raise ValueError(
                    f"case {case.case_id!r}: probe {probe.name!r} has no options, so its answer "
                    f"cannot be judged; give the probe an options list (or an 'Options:' block "
                    f"in its question): {probe.question!r}"
                )
            if probe.file is not None and not _audio_exists(probe):
                missing.append(
                    f"case {case.case_id!r}, {probe.name}: {probe.audio_path or probe.file}"
                )
    if missing:
        shown = "\n  ".join(missing[:MAX_REPORTED_PROBLEMS])
        more = len(missing) - MAX_REPORTED_PROBLEMS
        raise FileNotFoundError(
            f"{len(missing)} probe audio files are missing under dataset.audio_root={audio_root}:"
            f"\n  {shown}" + (f"\n  ... and {more} more" if more > 0 else "") + "\n"
            "generate or copy the audio there, or point dataset.audio_root at it"
        )


def edit_progress(total: int, what: str) -> tqdm:
    """A progress bar over the edits still to make, with the time left (on stderr)."""
    return tqdm(total=total, desc=what, unit="edit", dynamic_ncols=True, disable=total == 0)


def warn_long_clips(cases: Sequence[EditCase], window_seconds: float) -> list[Path]:
    """Warn once when clips last longer than the model hears (it cuts them); return them."""
    paths = case_audio_paths(cases)
    long = clips_longer_than(paths, window_seconds)
    if long:
        shown = ", ".join(f"{path.name} ({seconds:.1f} s)" for path, seconds in long[:3])
        log.warning(
            "%d of %d clips last longer than the model's %.1f s audio window and are cut to it "
            "(longest: %s); `python -m sake.data.check DIR --max-seconds %g` lists them",
            len(long),
            len(paths),
            window_seconds,
            shown,
            window_seconds,
        )
    return [path for path, _ in long]


def _audio_exists(probe: Probe) -> bool:
    return probe.audio_path is not None and Path(probe.audio_path).is_file()


def sequential_schedule(length: int, max_edit: int = 5, max_gap: int = 5) -> list[list[int]]:
    """For each step i that needs an edit, the earlier edits j evaluated after it.

    j < max_edit and 0 <= i - j <= max_gap; steps after the last one any such pair needs are
    left out, since their edits would never be evaluated.
    """
    last = min(length, max_edit + max_gap) - 1
    return [
        [j for j in range(min(step, max_edit - 1) + 1) if step - j <= max_gap]
        for step in range(last + 1)
    ]


# --------------------------------------------------------------------------- runner


class Timings:
    """Wall-clock seconds per phase of a run, for the run summary and throughput work."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        return {f"time/{phase}_s": value for phase, value in sorted(self.seconds.items())}


class EditRunner:
    """Runs one editor over cases or sequences under one protocol, writing records."""

    def __init__(
        self,
        lalm: LALM,
        editor: Editor,
        *,
        settings: EvalSettings,
        pre_edit: PreEditCache,
        writer: RecordWriter,
        model_name: str,
        audio_root: Path | None = None,
        judge: Judge | None = None,
        saver: EditSaver | None = None,
    ) -> None:
        self.lalm = lalm
        self.saver = saver
        self.judge = judge or OptionJudge()
        self.editor = editor
        self.settings = settings
        self.pre_edit = pre_edit
        self.writer = writer
        self.audio_root = audio_root
        self.identity = {
            "method": editor.name,
            "model": model_name,
            "fingerprint": pre_edit.fingerprint,
        }
        self.timings = Timings()
        self._audio_path_only = audio_path_only(editor)
        self._records: dict[Hashable, Record] = {}
        for record in writer.existing:
            self._check_same_run(record)
            self._records[record_key(record)] = record

    # ------------------------------------------------------------------ single

    def run_single(self, cases: Sequence[EditCase]) -> list[Record]:
        """Edit, evaluate and restore each case; the records of all cases, in case order."""
        check_cases(cases, self.audio_root)
        warn_long_clips(cases, self.lalm.audio_window_seconds)
        keys = [("single", case.case_id) for case in cases]
        pending = [case for case, key in zip(cases, keys, strict=True) if key not in self._records]
        log.info(
            "single editing: %d cases, %d already recorded", len(cases), len(cases) - len(pending)
        )
        together = self._parallel_edits(pending)
        with self._run_scope(), edit_progress(len(pending), "single editing") as progress:
            for block in self._blocks(pending):
                pre_edit = self._pre_edit(block)
                for group in parallel_groups(block, together):
                    self._single_group(group, pre_edit)
                    progress.update(len(group))
        return [self._records[key] for key in keys]

    def _parallel_edits(self, cases: Sequence[EditCase]) -> int:
        """How many single edits run together (1 for an editor that makes one at a time)."""
        setting = self.settings.parallel_edits
        if not isinstance(self.editor, ParallelEditor) or not cases or setting == 1:
            return 1
        if setting != "auto":
            return int(setting)
        role_bytes = sum(
            parameter.numel() * 4
            for role in self.editor.edited_roles
            for parameter in self.lalm.modules.parameters(role).values()
        )
        device = next(self.lalm.model.parameters()).device
        budget_gb = self.settings.memory_budget_gb
        budget = free_memory_bytes(device) // 2 if budget_gb is None else int(budget_gb * 2**30)
        chosen = min(len(cases), auto_parallel_edits(role_bytes, budget))
        log.info(
            "eval.parallel_edits=auto: %d edits at once (edited parameters %.1f MB, memory "
            "budget %.1f GB)",
            chosen,
            role_bytes / 2**20,
            budget / 2**30,
        )
        return chosen

    def _blocks(self, cases: Sequence[EditCase]) -> Iterator[list[EditCase]]:
        """Consecutive cases with about `PRE_EDIT_CHUNK_BATCHES` batches of probes in all.

        Pre-edit outputs are asked a block at a time, so that their first-token logits are
        held for one block only.
        """
        budget = self.settings.batch_size * PRE_EDIT_CHUNK_BATCHES
        block: list[EditCase] = []
        size = 0
        for case in cases:
            count = len(list(case.probes()))
            if block and size + count > budget:
                yield block
                block, size = [], 0
            block.append(case)
            size += count
        if block:
            yield block

    def _single_group(self, cases: Sequence[EditCase], pre_edit: Mapping[str, PreEdit]) -> None:
        """Edit and evaluate `cases`: one at a time, or fitted together and then asked side by
        side (where the edits can be routed row by row) or installed one after the other."""
        if len(cases) == 1 or not isinstance(self.editor, ParallelEditor):
            for case in cases:
                self._single_case(case, pre_edit, partial(self.editor.apply, self.lalm, case))
            return
        with self.timings.measure("edit"):
            group = self.editor.apply_many(self.lalm, cases)
        if group.routing is None or self.saver is not None:  # a saved edit is read off the model
            for case, install in zip(cases, group.installs, strict=True):
                self._single_case(case, pre_edit, install)
            return
        self._routed_cases(cases, pre_edit, group.outcomes, group.routing)

    def _routed_cases(
        self,
        cases: Sequence[EditCase],
        pre_edit: Mapping[str, PreEdit],
        outcomes: Sequence[EditOutcome],
        routing: RowRouting,
    ) -> None:
        """Ask every case's probes with its own edit, all in the same batches; one record each."""
        for case, outcome in zip(cases, outcomes, strict=True):
            self._check_divergence(case, outcome)
        position = {case.case_id: k for k, case in enumerate(cases)}
        case_of_probe = [position[slot.case_id] for slot in _probe_slots(cases)]
        try:
            with routing.routed():
                post_edit = self._ask(cases, pre_edit, case_of_probe, routing.route)
                specificity = self._specificity(cases, pre_edit, post_edit, routing.route)
        finally:
            self.editor.state.reset()
        fields = [
            {"protocol": "single", **self._case_fields(case, outcome, {})}
            for case, outcome in zip(cases, outcomes, strict=True)
        ]
        self._write_cases(cases, fields, pre_edit, post_edit, specificity)

    def _single_case(
        self, case: EditCase, pre_edit: Mapping[str, PreEdit], edit: Callable[[], EditOutcome]
    ) -> None:
        outcome, extras = self._apply(case, edit)
        try:
            self._save(outcome.snapshot, [case.case_id])
            post_edit = self._ask([case], pre_edit)
            [specificity] = self._specificity([case], pre_edit, post_edit)
        finally:
            self._undo(outcome.snapshot)
        self._write(
            {"protocol": "single", **self._case_fields(case, outcome, extras)},
            case,
            pre_edit[case.case_id].outputs,
            post_edit.texts,
            specificity,
        )

    # ------------------------------------------------------------------ sequential

    def run_sequential(self, sequences: Sequence[EditSequence]) -> list[Record]:
        """Edit each sequence in order, evaluating the scheduled pairs; records in order."""
        every_case = [case for sequence in sequences for case in sequence.cases]
        check_cases(every_case, self.audio_root)
        warn_long_clips(every_case, self.lalm.audio_window_seconds)
        all_keys: list[Hashable] = []
        pending = []
        for sequence in sequences:
            keys = self._sequence_keys(sequence)
            all_keys.extend(keys)
            if not all(key in self._records for key in keys):
                pending.append(sequence)
        steps = sum(len(self._schedule(sequence)) for sequence in pending)
        with edit_progress(steps, "sequential editing") as progress:
            for sequence in pending:
                self._sequence(sequence, progress)
        return [self._records[key] for key in all_keys]

    def _schedule(self, sequence: EditSequence) -> list[list[int]]:
        return sequential_schedule(len(sequence), self.settings.max_edit, self.settings.max_gap)

    def _sequence_keys(self, sequence: EditSequence) -> list[Hashable]:
        return [
            ("sequential", sequence.index, step, j)
            for step, evaluated in enumerate(self._schedule(sequence))
            for j in evaluated
        ]

    def _sequence(self, sequence: EditSequence, progress: tqdm) -> None:
        cases = sequence.cases
        schedule = self._schedule(sequence)
        snapshot: WeightSnapshot | None = None
        applied: list[tuple[EditOutcome, dict[str, float]]] = []
        try:
            with self._run_scope():
                reported = sorted({j for evaluated in schedule for j in evaluated})
                pre_edit = self._pre_edit([cases[j] for j in reported])
                for step, evaluated in enumerate(schedule):
                    outcome, extras = self._apply(cases[step])
                    applied.append((outcome, extras))
                    snapshot = _merged(snapshot, outcome.snapshot)
                    todo = [
                        j
                        for j in evaluated
                        if ("sequential", sequence.index, step, j) not in self._records
                    ]
                    if todo:
                        self._sequential_step(sequence, step, todo, applied, pre_edit)
                    progress.update()
                edited = [case.case_id for case in cases[: len(schedule)]]
                self._save(snapshot, edited, sequence.index)
        finally:
            self._undo(snapshot)

    def _sequential_step(
        self,
        sequence: EditSequence,
        step: int,
        evaluated: Sequence[int],
        applied: Sequence[tuple[EditOutcome, dict[str, float]]],
        pre_edit: Mapping[str, PreEdit],
    ) -> None:
        """Ask the probes of every evaluated edit in one batched call, score their specificity
        together, then write a record each."""
        cases = [sequence.cases[j] for j in evaluated]
        post_edit = self._ask(cases, pre_edit)
        specificity = self._specificity(cases, pre_edit, post_edit)
        fields = [
            {
                "protocol": "sequential",
                "sequence": sequence.index,
                "step": step,
                "edit_index": j,
                "gap": step - j,
                **self._case_fields(case, *applied[j]),
            }
            for j, case in zip(evaluated, cases, strict=True)
        ]
        self._write_cases(cases, fields, pre_edit, post_edit, specificity)

    # ------------------------------------------------------------------ shared steps

    def _pre_edit(self, cases: Sequence[EditCase]) -> dict[str, PreEdit]:
        """The unedited model's outputs and locality first-token logits for `cases`, by id.

        Logits come from the pre-edit generation, now or kept on disk by the cache; where the
        cache holds outputs without logits, from one prompt-only pass over those locality
        probes, whose logits the cache then keeps.
        """
        probes = [probe for case in cases for probe in case.probes()]
        local = [i for i, probe in enumerate(probes) if is_locality(probe)]
        with self.timings.measure("pre_edit"), self._audio_cache():
            answers = self.pre_edit.answers(
                self.lalm, probes, self.settings.batch_size, logits_for=local
            )
        logits = dict(answers.first_logits)
        missing = [i for i in local if i not in logits]
        if missing:
            with self.timings.measure("specificity"), self._audio_cache():
                fresh = pre_edit_logits(
                    self.lalm, [probes[i] for i in missing], batch_size=self.settings.batch_size
                )
                self.pre_edit.keep_logits([probes[i] for i in missing], fresh)
            logits.update(zip(missing, fresh, strict=True))
        by_case: dict[str, PreEdit] = {}
        start = 0
        for case in cases:
            count = len(list(case.probes()))
            rows = [logits[i] for i in range(start, start + count) if i in logits]
            by_case[case.case_id] = PreEdit(answers.texts[start : start + count], _stacked(rows))
            start += count
        return by_case

    def _apply(
        self, case: EditCase, edit: Callable[[], EditOutcome] | None = None
    ) -> tuple[EditOutcome, dict[str, float]]:
        """Apply the edit (`edit`, else the editor's `apply`); its outcome and what the editor
        reported about it.

        A diverged edit (non-finite loss or weights) is undone and stops the run: its outputs
        would say nothing about the method, and records already written stay as they are.
        """
        with self.timings.measure("edit"):
            outcome = edit() if edit is not None else self.editor.apply(self.lalm, case)
        self._check_divergence(case, outcome)
        return outcome, editor_extras(self.editor)

    def _check_divergence(self, case: EditCase, outcome: EditOutcome) -> None:
        """A diverged edit is undone and stops the run (see `_apply`)."""
        problem = divergence(outcome)
        if problem is not None:
            self._undo(outcome.snapshot)
            raise EditDivergedError(
                f"the edit of case {case.case_id!r} by {self.editor.name} diverged: {problem}. "
                "Nothing of it was recorded; lower the method's learning rate (method.lr) or "
                "check its other settings, then start a new run directory"
            )

    def _ask(
        self,
        cases: Sequence[EditCase],
        pre_edit: Mapping[str, PreEdit],
        case_of_probe: Sequence[int] = (),
        route: BatchHook | None = None,
    ) -> Answers:
        """Post-edit answers to all probes of `cases` (case after case), with the first-token
        logits of the locality probes.

        A probe the edit cannot reach (no audio, no editing context, an editor that changes
        only the audio path) is not asked again: its pre-edit output and logits stand. With
        `route`, each batch first hears the case (position in `cases`) of each of its rows,
        `case_of_probe` giving it for every probe.
        """
        context = self.editor.context()
        slots = _probe_slots(cases)
        kept = self._audio_path_only and context.system is None and not context.history
        asked = [i for i, slot in enumerate(slots) if not (kept and slot.probe.file is None)]
        local = [k for k, i in enumerate(asked) if slots[i].locality is not None]
        with self.timings.measure("post_edit"), self._audio_cache():
            fresh = answer_probes(
                self.lalm,
                [slots[i].probe for i in asked],
                batch_size=self.settings.batch_size,
                max_new_tokens=self.settings.max_new_tokens,
                system=context.system,
                history=context.history,
                logits_for=local,
                on_batch=mapped_hook(route, [case_of_probe[i] for i in asked]) if route else None,
            )
        texts: list[str] = []
        first_logits: dict[int, Tensor] = {}
        for i, slot in enumerate(slots):
            before = pre_edit[slot.case_id]
            texts.append(before.outputs[slot.index])
            if slot.locality is not None:
                first_logits[i] = before.locality_logits[slot.locality]
        for k, i in enumerate(asked):
            texts[i] = fresh.texts[k]
            if k in fresh.first_logits:
                first_logits[i] = fresh.first_logits[k]
        return Answers(texts, first_logits)

    def _specificity(
        self,
        cases: Sequence[EditCase],
        pre_edit: Mapping[str, PreEdit],
        post_edit: Answers,
        route: BatchHook | None = None,
    ) -> list[list[Scores]]:
        """Scores of each case's locality probes on the edited model, in its query context.

        `post_edit` holds the answers to all probes of `cases`, case after case, each in
        `case.probes()` order; `route` hears each batch's cases first.
        """
        seen = []
        start = 0
        for case in cases:
            probes = list(case.probes())
            local = [start + i for i, p in enumerate(probes) if is_locality(p)]
            seen.append(
                LocalityOutputs(
                    case,
                    pre_edit[case.case_id].locality_logits,
                    _stacked([post_edit.first_logits[i] for i in local]),
                    [post_edit.texts[i] for i in local],
                )
            )
            start += len(probes)
        context = self.editor.context()
        with self.timings.measure("specificity"), self._audio_cache():
            return specificity_of_cases(
                self.lalm,
                seen,
                batch_size=self.settings.batch_size,
                system=context.system,
                history=context.history,
                on_batch=route,
            )

    def _save(
        self, snapshot: WeightSnapshot | None, case_ids: Sequence[str], sequence: int | None = None
    ) -> None:
        """Keep the edit in a file, when the run saves its edits."""
        if self.saver is not None:
            with self.timings.measure("save"):
                self.saver.save(snapshot, self.editor, case_ids, sequence)

    def _undo(self, snapshot: WeightSnapshot | None) -> None:
        with self.timings.measure("restore"):
            if snapshot is not None:
                snapshot.restore()
            self.editor.state.reset()

    def _write_cases(
        self,
        cases: Sequence[EditCase],
        fields: Sequence[Mapping[str, Any]],
        pre_edit: Mapping[str, PreEdit],
        post_edit: Answers,
        specificity: Sequence[Sequence[Scores]],
    ) -> None:
        """One record per case, from answers asked together (case after case in `post_edit`)."""
        start = 0
        for case, own, scores in zip(cases, fields, specificity, strict=True):
            count = len(list(case.probes()))
            outputs = post_edit.texts[start : start + count]
            self._write(own, case, pre_edit[case.case_id].outputs, outputs, scores)
            start += count

    def _write(
        self,
        fields: Mapping[str, Any],
        case: EditCase,
        pre_outputs: Sequence[str],
        post_outputs: Sequence[str],
        specificity: Sequence[Scores],
    ) -> None:
        with self.timings.measure("judge"):
            judged = judge_probes(list(case.probes()), pre_outputs, post_outputs, self.judge)
            probes = with_specificity(judged, specificity)
        record = {**fields, "probes": probes}
        with self.timings.measure("write"):
            record = self.writer.append(record)
        self._records[record_key(record)] = record

    def _case_fields(
        self, case: EditCase, outcome: EditOutcome, extras: Mapping[str, float]
    ) -> dict[str, Any]:
        return {
            **self.identity,
            "case_id": case.case_id,
            "attribute": case.attribute,
            "y_o": case.y_o,
            "y_e": case.y_e,
            "edit": {
                "steps": outcome.steps,
                "final_loss": outcome.final_loss,
                "seconds": outcome.seconds,
                "extras": dict(extras),
            },
        }

    def _run_scope(self) -> AbstractContextManager[None]:
        """Audio work cached across edits as far as the method leaves it unchanged.

        Connector outputs when the method touches neither encoder nor connector; otherwise the
        encoder's states, unless the method may change the encoder itself.
        """
        if not self.editor.touches_audio_path:
            return self._audio_cache()
        if not touches_audio_encoder(self.editor):
            return self.lalm.cached_encoder_states()
        return nullcontext()

    def _audio_cache(self) -> AbstractContextManager[None]:
        return self.lalm.cached_audio_embeddings()

    def _check_same_run(self, record: Mapping[str, Any]) -> None:
        found = {key: record.get(key) for key in self.identity}
        if found != self.identity:
            raise ValueError(
                f"{self.writer.path} holds records of another run ({found}); this run is "
                f"{self.identity}. Resume with the same method and model, or use a new run "
                "directory"
            )


class EditDivergedError(ValueError):
    """An edit left a non-finite loss or non-finite weights behind."""


def divergence(outcome: EditOutcome) -> str | None:
    """What is non-finite after an edit (its final loss, the weights it changed), or None."""
    loss = outcome.final_loss
    if loss is not None and not math.isfinite(loss):
        return f"its final loss is {loss} after {outcome.steps} steps"
    broken = () if outcome.snapshot is None else outcome.snapshot.non_finite()
    if broken:
        return f"{len(broken)} edited tensors hold NaN or infinity (first: {broken[0]})"
    return None


def editor_extras(editor: Editor) -> dict[str, float]:
    """What the editor reported about its last edit (its `extras`), as plain floats.

    MEMIT reports its regularizer per layer there, WISE its activation distances, UnKE its
    losses; read right after each edit, since the next one replaces them.
    """
    return {key: float(value) for key, value in editor.extras.items()}


def touches_audio_encoder(editor: Editor) -> bool:
    """Whether the editor may change the audio encoder itself, not only the connector.

    An editor of the audio path that names no role is assumed to.
    """
    if not editor.touches_audio_path:
        return False
    roles = editor.edited_roles
    return not roles or not all(_under_role(role, CONNECTOR_ROLE) for role in roles)


def _under_role(role: str, root: str) -> bool:
    return role == root or role.startswith(f"{root}.")


def audio_path_only(editor: Editor) -> bool:
    """Whether every module the editor changes lies in the audio path (encoder, connector), so
    that answers to text-only probes cannot change. Editors naming no role are assumed not to."""
    roles = editor.edited_roles
    return bool(roles) and all(role_touches_audio_path(role) for role in roles)


@dataclass(frozen=True)
class ProbeSlot:
    """Where a probe of a flat list over several cases comes from: its case, its index in
    `case.probes()`, and its index among the case's locality probes (None if it is none)."""

    case_id: str
    index: int
    locality: int | None
    probe: Probe


def _probe_slots(cases: Sequence[EditCase]) -> list[ProbeSlot]:
    slots = []
    for case in cases:
        local = 0
        for index, probe in enumerate(case.probes()):
            is_local = is_locality(probe)
            slots.append(ProbeSlot(case.case_id, index, local if is_local else None, probe))
            local += is_local
    return slots


def _stacked(rows: Sequence[Tensor]) -> Tensor:
    return torch.stack(list(rows)) if rows else torch.zeros(0, 0)


def _merged(first: WeightSnapshot | None, later: WeightSnapshot | None) -> WeightSnapshot | None:
    if first is None:
        return later
    return first.merged_with(later)
