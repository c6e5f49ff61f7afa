"""Faults and bad input of editing runs: each gives a clear message, or works, and nothing
already written is lost or mixed."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lalm_fixtures import edit_release, release_on_disk, run_overrides
from sake.data.audio import write_audio
from sake.data.check import run_checks
from sake.data.readers import load_release
from sake.data.writers import write_release
from sake.evaluation.records import RECORDS_FILE, RecordWriter, read_records
from sake.hypernets.manifest import (
    HypernetManifest,
    HypernetUnavailableError,
    load_hypernet,
    save_hypernet,
)
from sake.models.hub import ModelUnavailableError, resolve_model_dir
from sake.runner import EditDivergedError, warn_long_clips
from sake.utils.run import RunDirectoryError, run_task, run_task_for_user

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return release_on_disk(tmp_path_factory)


FT = ("method=ft_llm", "method.max_steps=1")


def overrides(on_disk: tuple[Path, Path], *extra: str) -> list[str]:
    method = FT if not any(e.startswith("method=") for e in extra) else ()
    return run_overrides(on_disk, "edit", *method, *extra)


def killed_run(compose_cfg, on_disk, *extra: str) -> Path:
    """A run that finished two cases (as a run killed after them would leave it)."""
    cfg = compose_cfg("edit", overrides(on_disk, "dataset.limit=2", *extra))
    run_task(cfg)
    return Path(cfg.paths.output_dir)


def snapshot(run_dir: Path) -> tuple[bytes, bytes]:
    return (run_dir / "config.yaml").read_bytes(), (run_dir / RECORDS_FILE).read_bytes()


@pytest.mark.parametrize(
    ("changed", "named"),
    [("method.lr=1e-5", "method.lr"), ("seed=1", "seed"), ("eval.batch_size=2", "eval.batch_size")],
)
def test_resume_with_other_settings_is_refused_and_names_them(
    compose_cfg, on_disk, changed: str, named: str
) -> None:
    run_dir = killed_run(compose_cfg, on_disk)
    before = snapshot(run_dir)
    resumed = compose_cfg("edit", overrides(on_disk, "dataset.limit=4", "resume=true", changed))
    with pytest.raises(RunDirectoryError, match=rf"{named}: .* -> "):
        run_task(resumed)
    assert snapshot(run_dir) == before


def test_resume_with_the_same_settings_continues_with_a_larger_limit(compose_cfg, on_disk) -> None:
    run_dir = killed_run(compose_cfg, on_disk)
    resumed = compose_cfg("edit", overrides(on_disk, "dataset.limit=4", "resume=true"))
    run_task(resumed)
    records = read_records(run_dir / RECORDS_FILE)
    assert len(records) == 4 and len({r["case_id"] for r in records}) == 4


def test_a_refused_rerun_leaves_the_run_directory_as_it_was(compose_cfg, on_disk) -> None:
    run_dir = killed_run(compose_cfg, on_disk)
    before = snapshot(run_dir)
    for extra in (["method=i_ike"], ["method=i_ike", "resume=true"]):
        with pytest.raises(RunDirectoryError):
            run_task(compose_cfg("edit", overrides(on_disk, "dataset.limit=2", *extra)))
        assert snapshot(run_dir) == before


def test_a_diverged_edit_stops_the_run_and_records_nothing_of_it(compose_cfg, on_disk) -> None:
    cfg = compose_cfg("edit", overrides(on_disk, "dataset.limit=2", "method.lr=1e30"))
    with pytest.raises(EditDivergedError, match=r"diverged: .*method\.lr"):
        run_task(cfg)
    records = Path(cfg.paths.output_dir) / RECORDS_FILE
    assert not records.is_file() or read_records(records) == []


def test_records_are_strict_json_whatever_the_numbers(tmp_path: Path) -> None:
    writer = RecordWriter(tmp_path / RECORDS_FILE)
    written = writer.append({"edit": {"final_loss": math.nan}, "kl": [math.inf, 0.5]})
    line = (tmp_path / RECORDS_FILE).read_text()
    assert json.loads(line, parse_constant=pytest.fail) == written
    assert written == {"edit": {"final_loss": None}, "kl": [None, 0.5]}


@pytest.mark.parametrize("setting", ["method.lr=nan", "method.lr=inf", "method.stop_loss=-inf"])
def test_non_finite_settings_are_refused_before_the_model_loads(
    compose_cfg, on_disk, setting: str
) -> None:
    cfg = compose_cfg("edit", overrides(on_disk, setting, "model.weights_dir=/nonexistent/weights"))
    key = setting.split("=")[0]
    with pytest.raises(ValueError, match=rf"{key} = -?(nan|inf); every setting must be a finite"):
        run_task(cfg)


def test_a_limit_of_zero_is_refused(compose_cfg, on_disk) -> None:
    cfg = compose_cfg("edit", overrides(on_disk, "dataset.limit=0"))
    with pytest.raises(Exception, match=r"dataset.limit=0 leaves no case"):
        run_task(cfg)


def test_clips_longer_than_the_window_are_warned_about_once_and_checked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = edit_release(tmp_path / "release")
    cases = release.splits["test"]
    long_clip = Path(cases[0].reliability.audio_path)
    write_audio(long_clip, np.zeros(16_000 * 9, dtype=np.float32))
    with caplog.at_level(logging.WARNING, logger="sake.runner"):
        cut = warn_long_clips(cases, window_seconds=4.0)
    assert cut == [long_clip]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "1 of" in warning.message and "9.0 s" in warning.message

    root = tmp_path / "sake"
    write_release(release.splits, release.sequences, root)
    shutil.copytree(release.audio_root, root / "audio")
    summary, results = run_checks(load_release(root), max_seconds=4.0)
    [rule] = [r for r in results if r.name == "audio_within_window"]
    assert rule.advisory and len(rule.violations) == 1 and "9.0 s" in rule.violations[0].detail
    assert summary["advisories"]["audio_within_window"]["count"] == 1


def test_a_truncated_hypernetwork_file_is_named_with_what_to_do(tmp_path: Path) -> None:
    manifest = HypernetManifest(
        method="mend",
        model="desta_tiny",
        dataset="sake",
        fingerprint="f",
        roles=["llm.layer[-1].mlp"],
        matrices={},
        network={},
        include_end=False,
    )
    path = save_hypernet(tmp_path / "mend.pt", manifest, {"w": torch.ones(64, 64)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(HypernetUnavailableError, match=rf"{path}.*truncated.*train it again"):
        load_hypernet(path, manifest)


@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_model_path_says_what_to_set(path: str) -> None:
    with pytest.raises(ModelUnavailableError, match="model.path is empty"):
        resolve_model_dir(path, what="Qwen2-Audio", expected_file="config.json")


def test_a_directory_without_the_model_files_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=rf"{tmp_path} holds no config.json"):
        resolve_model_dir(tmp_path, what="Qwen2-Audio", expected_file="config.json")


def test_entry_points_print_a_user_error_without_traceback(
    compose_cfg, on_disk, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_cfg("edit", overrides(on_disk, "method.lr=nan"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_task_for_user(cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: method 'ft_llm': method.lr = nan") and "Traceback" not in err
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    cfg.paths.output_dir = str(Path(cfg.paths.output_dir).with_name("again"))
    with pytest.raises(ValueError, match="finite"):
        run_task_for_user(cfg)


def test_faults_of_the_code_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(cfg):
        raise IndexError("a bug")

    monkeypatch.setattr("sake.utils.run.run_task", broken)
    with pytest.raises(IndexError):
        run_task_for_user(None)


def test_a_finished_run_ends_with_its_table_directory_and_report(
    compose_cfg, on_disk, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose_cfg("edit", overrides(on_disk, "dataset.limit=2"))
    run_task(cfg)
    lines = capsys.readouterr().out.strip().splitlines()
    run_dir = Path(cfg.paths.output_dir)
    assert lines[-2:] == [f"run directory: {run_dir}", f"report: {run_dir / 'report.md'}"]
    assert lines[0].split() == ["Rel", "Gen", "Loc-A", "Loc-T", "Port"]
    assert not any("/" in line.split()[0] for line in lines[:-2])
    assert "## Audio-locality overfitting" in (run_dir / "report.md").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert any(key.startswith("single/diagnostics/audio_locality_overfitting/") for key in metrics)
