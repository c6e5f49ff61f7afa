"""The reference SAKE/EasyEdit evaluation protocol, re-enacted on the project's models.

The reference toolkit evaluates one prompt at a time and shares nothing between prompts,
methods or steps. This class does the same work the same way, so that the benchmark measures
what the project's runner saves and nothing else:

- every probe is one unbatched greedy `generate` (a batch of one);
- every probe decodes its audio from disk and encodes it again (the model's feature and
  embedding caches are cleared before each probe);
- pre-edit outputs are generated again for every method and run (no disk cache): per case
  just before its edit in single editing, for the whole sequence before its first edit in
  sequential editing;
- the model is restored from a full copy (`copy.deepcopy`) taken before each edit (single)
  or each sequence (sequential), loaded back with `load_state_dict`;
- sequential editing evaluates every earlier edit at every step, then keeps only the
  (edit, step) pairs that SAKE reports.

Edits are made by the very editor object the project's runner uses, so both protocols apply
identical edits, and records are judged by the same judge into the same record layout.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from sake.data.schema import EditCase, Probe
from sake.data.schema import Sequence as EditSequence
from sake.evaluation.judges.base import Judge, OptionJudge
from sake.evaluation.metrics import judge_probes
from sake.evaluation.records import Record
from sake.methods.base import Editor, QueryContext
from sake.models.base import LALM
from sake.runner import EvalSettings, Timings, sequential_schedule

UNEDITED = QueryContext()


class ReferenceProtocol:
    """Single and sequential editing the reference way; `timings` holds seconds per phase."""

    def __init__(
        self,
        lalm: LALM,
        editor: Editor,
        *,
        settings: EvalSettings,
        judge: Judge | None = None,
    ) -> None:
        self.lalm = lalm
        self.editor = editor
        self.settings = settings
        self.judge = judge or OptionJudge()
        self.timings = Timings()

    # ------------------------------------------------------------------ protocols

    def run_single(self, cases: Sequence[EditCase]) -> list[Record]:
        """For each case: pre-edit outputs, full copy, edit, post-edit outputs, restore."""
        records = []
        for case in cases:
            probes = list(case.probes())
            with self.timings.measure("pre_edit"):
                pre_outputs = self._ask_each(probes, UNEDITED)
            original = self._copy_model()
            try:
                self._apply(case)
                with self.timings.measure("post_edit"):
                    post_outputs = self._ask_each(probes, self.editor.context())
            finally:
                self._restore(original)
            records.append(self._record({"protocol": "single"}, case, pre_outputs, post_outputs))
        return records

    def run_sequential(self, sequences: Sequence[EditSequence]) -> list[Record]:
        """Every edit of each sequence in order, every earlier edit evaluated at every step."""
        records: list[Record] = []
        for sequence in sequences:
            records.extend(self._sequence(sequence))
        return records

    def _sequence(self, sequence: EditSequence) -> list[Record]:
        cases = sequence.cases
        with self.timings.measure("pre_edit"):
            pre_outputs = {
                case.case_id: self._ask_each(list(case.probes()), UNEDITED) for case in cases
            }
        reported = self._reported_pairs(len(cases))
        records: list[Record] = []
        original = self._copy_model()
        try:
            for step, case in enumerate(cases):
                self._apply(case)
                context = self.editor.context()
                for j, earlier in enumerate(cases[: step + 1]):
                    with self.timings.measure("post_edit"):
                        post_outputs = self._ask_each(list(earlier.probes()), context)
                    if (step, j) in reported:
                        fields = {
                            "protocol": "sequential",
                            "sequence": sequence.index,
                            "step": step,
                            "edit_index": j,
                            "gap": step - j,
                        }
                        records.append(
                            self._record(
                                fields, earlier, pre_outputs[earlier.case_id], post_outputs
                            )
                        )
        finally:
            self._restore(original)
        return records

    def _reported_pairs(self, length: int) -> set[tuple[int, int]]:
        schedule = sequential_schedule(length, self.settings.max_edit, self.settings.max_gap)
        return {(step, j) for step, evaluated in enumerate(schedule) for j in evaluated}

    # ------------------------------------------------------------------ steps

    def _ask_each(self, probes: Sequence[Probe], context: QueryContext) -> list[str]:
        """One unbatched generate per probe, its audio decoded and encoded afresh."""
        answers = []
        for probe in probes:
            forget_audio(self.lalm)
            batch = self.lalm.prepare([probe], system=context.system, history=context.history)
            answers.append(self.lalm.generate(batch, self.settings.max_new_tokens)[0])
        return answers

    def _apply(self, case: EditCase) -> None:
        with self.timings.measure("edit"):
            self.editor.apply(self.lalm, case)

    def _copy_model(self) -> nn.Module:
        with self.timings.measure("copy"):
            return copy.deepcopy(self.lalm.model)

    def _restore(self, original: nn.Module) -> None:
        with self.timings.measure("restore"):
            self.lalm.model.load_state_dict(original.state_dict())
            self.editor.state.reset()

    def _record(
        self,
        fields: Mapping[str, Any],
        case: EditCase,
        pre_outputs: Sequence[str],
        post_outputs: Sequence[str],
    ) -> Record:
        with self.timings.measure("judge"):
            probes = judge_probes(list(case.probes()), pre_outputs, post_outputs, self.judge)
        return {**fields, "method": self.editor.name, "case_id": case.case_id, "probes": probes}


def forget_audio(lalm: LALM) -> None:
    """Drop the model's decoded-audio and embedding caches."""
    lalm.clear_caches()
