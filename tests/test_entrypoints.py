"""The Hydra entry points: config composition, run directories, what every run writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sake.utils.run import flatten_metrics, run_task

REPO_ROOT = Path(__file__).resolve().parents[1]

GROUPS = ("model", "method", "dataset", "eval", "task", "logger", "paths")


@pytest.mark.parametrize("entry", ["train", "edit", "evaluate"])
def test_entry_configs_compose_with_every_group(compose_cfg, entry: str) -> None:
    cfg = compose_cfg(entry)
    for group in GROUPS:
        assert group in cfg, f"{entry}.yaml lacks the {group} group"
    assert cfg.dataset.name == "sake_synth"
    assert cfg.model.name == "desta_tiny"
    if entry == "train":
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_run_dir_names_task_method_model_dataset(compose_cfg) -> None:
    cfg = compose_cfg("edit", ["task=corpus", "method=none", "dataset=sake_synth_small"])
    run_dir = Path(OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"])
    assert run_dir.parts[-3] == "corpus"
    assert run_dir.name.startswith(tuple("0123456789"))
    assert "_none_desta_tiny_sake_synth_small_" in run_dir.name
    again = Path(OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"])
    assert again == run_dir, "the run id must be fixed within one process"


def test_launcher_configs_compose(compose_cfg) -> None:
    joblib = compose_cfg("edit", ["hydra/launcher=joblib_local"])
    assert "JoblibLauncher" in joblib.hydra.launcher._target_
    slurm = compose_cfg("edit", ["hydra/launcher=slurm"])
    assert "SlurmLauncher" in slurm.hydra.launcher._target_
    assert slurm.hydra.launcher.gpus_per_node == 1


def test_wandb_logger_is_offline_by_default(compose_cfg) -> None:
    cfg = compose_cfg("edit")
    assert cfg.logger.mode == "offline"
    assert cfg.logger._target_.endswith("WandbTracker")


def test_flatten_metrics_keeps_finite_numbers_only() -> None:
    flat = flatten_metrics({"single": {"reliability": 0.5, "note": "x"}, "bad": float("nan")})
    assert flat == {"single/reliability": 0.5}


def test_run_task_writes_resolved_config_and_metrics(compose_cfg, tiny_corpus: Path) -> None:
    cfg = compose_cfg(
        "edit",
        [
            "task=corpus",
            "logger=none",
            "dataset.scale=tiny",
            f"dataset.root={tiny_corpus}",
            "task.check_audio=false",
        ],
    )
    metrics = run_task(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.dataset.root == str(tiny_corpus)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == metrics
    assert written["corpus/test/cases"] == 48


def _edit_command(tiny_corpus: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "edit.py",
        "task=corpus",
        "logger=none",
        "dataset.scale=tiny",
        f"dataset.root={tiny_corpus}",
        *overrides,
    ]


def test_cli_honours_run_dir_and_separates_simultaneous_jobs(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    run_dir = tmp_path / "my_run"
    log_dir = tmp_path / "outputs"
    jobs = [
        subprocess.Popen(_edit_command(tiny_corpus, f"hydra.run.dir={run_dir}"), cwd=REPO_ROOT),
        *(
            subprocess.Popen(_edit_command(tiny_corpus, f"paths.log_dir={log_dir}"), cwd=REPO_ROOT)
            for _ in range(2)
        ),
    ]
    assert [job.wait(timeout=600) for job in jobs] == [0, 0, 0]
    assert json.loads((run_dir / "metrics.json").read_text())["corpus/rules_violated"] == 0
    assert (run_dir / "config.yaml").is_file()
    simultaneous = sorted(p.parent for p in log_dir.rglob("metrics.json"))
    assert len(simultaneous) == 2 and simultaneous[0] != simultaneous[1]
