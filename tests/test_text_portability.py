"""Text-based portability: the reference's prompts, the task end to end, its counting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lalm_fixtures import edit_release, release_on_disk, run_overrides
from sake.evaluation.judges.sake import SakeJudge
from sake.evaluation.text_portability import (
    TextPortabilityPrompts,
    text_portability_items,
    text_portability_metrics,
)
from sake.tasks.text_portability import OUTPUTS_FILE, diagnostic_judge
from sake.utils.run import run_task

torch.set_num_threads(1)
SHARED_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "sake" / "reference_prompts.json"


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return release_on_disk(tmp_path_factory)


@pytest.mark.skipif(not SHARED_PROMPTS.is_file(), reason="the reference prompt file is absent")
def test_the_query_is_the_reference_layout(tmp_path: Path) -> None:
    case = edit_release(tmp_path).splits["test"][0]
    texts = {k: v["text"] for k, v in json.loads(SHARED_PROMPTS.read_text())["prompts"].items()}
    [item, *_] = text_portability_items([case], TextPortabilityPrompts.load(str(SHARED_PROMPTS)))
    rule = f"{case.y_o} → {case.y_e}"
    assert item.system == texts["ike_system"].replace("{edits}", rule)
    caption = texts[f"text_portability_caption_{case.attribute.lower()}"]
    caption = caption.replace("[answer]", case.y_o)
    query = texts["text_portability_query_template"].replace("[caption]", caption)
    assert item.asked.question == query.replace("[Instruction]", case.portability[0].question)
    assert item.asked.file is None and item.asked.answer == case.portability[0].answer


def test_the_task_asks_every_portability_question_as_text(compose_cfg, on_disk) -> None:
    cfg = compose_cfg("evaluate", run_overrides(on_disk, "text_portability"))
    metrics = run_task(cfg)
    run_dir = Path(cfg.paths.output_dir)
    records = [json.loads(line) for line in (run_dir / OUTPUTS_FILE).read_text().splitlines()]
    assert len(records) == sum(
        len(c.portability) for c in edit_release(run_dir / "r").splits["test"]
    )
    assert all("Clip: " in r["asked"] and r["question"] in r["asked"] for r in records)
    assert 0.0 <= metrics["text_portability"] <= 1.0
    assert "# Text-based portability" in (run_dir / "report.md").read_text()


def test_skipped_items_are_left_out_and_items_pool_over_attributes() -> None:
    records = [
        {"attribute": "Animal", "correct": True, "skipped": False},
        {"attribute": "Animal", "correct": False, "skipped": True},
        {"attribute": "Gender", "correct": False, "skipped": False},
        {"attribute": "Gender", "correct": True, "skipped": False},
    ]
    metrics = text_portability_metrics(records)
    assert metrics["text_portability/Animal"] == 1.0
    assert metrics["text_portability/Animal/skipped"] == 1.0
    assert metrics["text_portability"] == pytest.approx(2 / 3)  # pooled, not a mean of means


@pytest.mark.skipif(not SHARED_PROMPTS.is_file(), reason="the reference prompt file is absent")
def test_judge_sake_becomes_the_text_portability_evaluator(compose_cfg) -> None:
    overrides = [
        "task=text_portability",
        "judge=sake",
        f"paths.reference_prompts={SHARED_PROMPTS}",
        "judge.backend.api_key_env=null",
    ]
    judge = diagnostic_judge(compose_cfg("evaluate", overrides))
    texts = json.loads(SHARED_PROMPTS.read_text())["prompts"]
    assert isinstance(judge, SakeJudge) and judge.parser == "strict"
    assert judge.prompts.correctness == texts["judge_text_portability"]["text"]


def test_target_audio_portability_asks_about_a_clip_of_the_target(compose_cfg, on_disk) -> None:
    cfg = compose_cfg("evaluate", run_overrides(on_disk, "target_portability"))
    metrics = run_task(cfg)
    run_dir = Path(cfg.paths.output_dir)
    records = [json.loads(line) for line in (run_dir / OUTPUTS_FILE).read_text().splitlines()]
    cases = {c.case_id: c for c in edit_release(run_dir / "release").splits["test"]}
    assert records
    for record in records:
        target = next(p for p in cases[record["case_id"]].locality_audio if p.type == 3)
        assert record["audio"].endswith(target.file) and target.answer == record["y_e"]
        assert record["system"] is None and record["asked"] == record["question"]
    assert 0.0 <= metrics["target_audio_portability"] <= 1.0
    assert "# Target-audio portability" in (run_dir / "report.md").read_text()
