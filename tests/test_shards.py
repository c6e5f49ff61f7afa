"""A run split over `eval.shard` jobs and merged by the sweep task equals the unsharded run."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import open_dict

from lalm_fixtures import release_on_disk, run_overrides
from sake.evaluation.records import RECORDS_FILE, read_records
from sake.evaluation.report import Job, load_job
from sake.evaluation.shards import merge_shards, merged_job
from sake.runner import EvalSettings
from sake.utils.run import run_task

RUN = ("method=ft_llm", "method.max_steps=1")


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return release_on_disk(tmp_path_factory)


def edit(compose_cfg, on_disk, output: Path, *extra: str) -> dict[str, float]:
    cfg = compose_cfg("edit", run_overrides(on_disk, "edit", *RUN, *extra))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output)
    return run_task(cfg)


def without_timings(records: list[dict]) -> list[dict]:
    return [{**r, "edit": {k: v for k, v in r["edit"].items() if k != "seconds"}} for r in records]


def assert_same(saved: object, expected: object) -> None:
    """Equal, floats up to the noise of other batch compositions (losses, KL ~1e-9)."""
    if isinstance(expected, dict):
        assert isinstance(saved, dict) and saved.keys() == expected.keys()
        for key in expected:
            assert_same(saved[key], expected[key])
    elif isinstance(expected, list):
        assert isinstance(saved, list) and len(saved) == len(expected)
        for left, right in zip(saved, expected, strict=True):
            assert_same(left, right)
    elif isinstance(expected, float):
        assert saved == pytest.approx(expected, rel=1e-4, abs=1e-6)
    else:
        assert saved == expected


def test_shards_take_every_nth_item_and_together_cover_the_run() -> None:
    items = list(range(7))
    shards = [EvalSettings(shard=k, num_shards=3).shard_of(items) for k in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="eval.shard"):
        EvalSettings(shard=3, num_shards=3)


def test_merged_shards_equal_the_unsharded_run(compose_cfg, on_disk, tmp_path) -> None:
    whole = edit(compose_cfg, on_disk, tmp_path / "whole")
    sweep = tmp_path / "multirun"
    for shard in (0, 1):
        edit(compose_cfg, on_disk, sweep / str(shard), "eval.num_shards=2", f"eval.shard={shard}")
    expected = read_records(tmp_path / "whole" / RECORDS_FILE)
    shards = [read_records(sweep / str(k) / RECORDS_FILE) for k in (0, 1)]
    assert [r["case_id"] for r in shards[0]] == [r["case_id"] for r in expected[0::2]]
    assert [r["case_id"] for r in shards[1]] == [r["case_id"] for r in expected[1::2]]

    (merged,) = merge_shards([load_job(sweep / "0"), load_job(sweep / "1")])
    assert_same(without_timings(merged.records), without_timings(expected))

    metrics = run_task(compose_cfg("evaluate", [f"sweep={sweep}", "logger=none"]))
    for key in ("single/reliability", "single/generality", "single/locality_audio"):
        assert metrics[key] == pytest.approx(whole[key])  # one job: its own metric names


def test_other_runs_are_not_merged(compose_cfg, on_disk, tmp_path) -> None:
    edit(compose_cfg, on_disk, tmp_path / "a", "eval.num_shards=2", "eval.shard=0")
    edit(compose_cfg, on_disk, tmp_path / "b", "eval.num_shards=2", "eval.shard=1", "seed=1")
    jobs = merge_shards([load_job(tmp_path / "a"), load_job(tmp_path / "b")])
    assert len(jobs) == 2


def test_sequential_shards_interleave_whole_sequences() -> None:
    def records(sequences: list[int]) -> list[dict]:
        return [
            {"protocol": "sequential", "sequence": s, "step": step}
            for s in sequences
            for step in (0, 1)
        ]

    merged = merged_job([Job("x", records([0, 2])), Job("x", records([1]))])
    assert [(r["sequence"], r["step"]) for r in merged.records] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
