"""`evaluate.py task=apply_edit edit=<file>`: apply a saved edit to a freshly loaded model.

The edit (written by `python edit.py ... save_edits=true` under `<run>/edits/`) is refused
unless the loaded model has the weights it was made on. Every probe of its cases is then
asked with the editor's query context; where the edit's run directory holds the records, each
output is compared with the post-edit output recorded for it (for a sequence, at its last
step), so the file is shown to carry the whole edit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from sake.data.schema import EditCase
from sake.evaluation.probing import generate_answers
from sake.evaluation.records import RECORDS_FILE, read_records
from sake.methods.saved import SavedEdit, apply_saved_edit, read_saved_edit
from sake.models.base import LALM
from sake.utils.run import RunContext

OUTPUTS_FILE = "applied_outputs.jsonl"


def apply_edit_task(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    if not cfg.get("edit"):
        raise ValueError("name the saved edit: python evaluate.py task=apply_edit edit=<file>")
    path = Path(str(cfg.edit))
    saved = read_saved_edit(path)
    dataset = instantiate(cfg.dataset)
    lalm: LALM = instantiate(cfg.model.load)
    editor, snapshot = apply_saved_edit(lalm, saved)
    try:
        cases = cases_by_id(dataset.release.all_cases(), saved.case_ids)
        probes = [probe for case in cases for probe in case.probes()]
        context = editor.context()
        outputs = generate_answers(
            lalm,
            probes,
            batch_size=int(cfg.eval.batch_size),
            max_new_tokens=int(cfg.eval.max_new_tokens),
            system=context.system,
            history=context.history,
        )
    finally:
        snapshot.restore()
    recorded = recorded_outputs(path, saved)
    rows = []
    start = 0
    for case in cases:
        count = len(list(case.probes()))
        expected = recorded.get(case.case_id)
        for index, output in enumerate(outputs[start : start + count]):
            rows.append(
                {
                    "case_id": case.case_id,
                    "probe": index,
                    "output": output,
                    "recorded": None if expected is None else expected[index],
                }
            )
        start += count
    write_rows(run.output_dir / OUTPUTS_FILE, rows)
    compared = [row for row in rows if row["recorded"] is not None]
    metrics = {
        "apply_edit/probes": float(len(rows)),
        "apply_edit/tensors": float(len(saved.tensors)),
    }
    if compared:
        same = sum(row["output"] == row["recorded"] for row in compared)
        metrics["apply_edit/same_as_recorded"] = same / len(compared)
        print(f"{same} of {len(compared)} outputs equal the outputs recorded by the edit run")
    return metrics


def cases_by_id(cases: Sequence[EditCase], wanted: Sequence[str]) -> list[EditCase]:
    """The dataset's cases with the edit's ids, in the edit's order."""
    found = {case.case_id: case for case in cases}
    missing = [case_id for case_id in wanted if case_id not in found]
    if missing:
        raise ValueError(
            f"the dataset holds no case {missing[:3]}; load the dataset the edit was made on "
            "(dataset=...)"
        )
    return [found[case_id] for case_id in wanted]


def recorded_outputs(path: Path, saved: SavedEdit) -> dict[str, list[str]]:
    """Per case id, the post-edit outputs its run recorded with exactly this edit in place:
    single editing's record, or the sequence's records at its last edited step. Empty when no
    records lie beside the edit's directory."""
    records_path = path.parent.parent / RECORDS_FILE
    if not records_path.is_file():
        return {}
    last_step = len(saved.case_ids) - 1
    found = {}
    for record in read_records(records_path):
        if saved.sequence is None:
            matches = record["protocol"] == "single" and record["case_id"] in saved.case_ids
        else:
            matches = record.get("sequence") == saved.sequence and record["step"] == last_step
        if matches:
            found[record["case_id"]] = [probe["post_output"] for probe in record["probes"]]
    return found


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
