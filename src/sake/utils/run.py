"""What every run does around its task: seed, record the resolved config, write metrics."""

from __future__ import annotations

import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sake.utils.errors import UserError

Metrics = dict[str, float]

CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.md"
# Settings that do not shape a run's records: a resumed run may change them (a new
# `dataset.limit` chooses how many cases, and the first ones are the same cases; edits made
# together equal edits made one at a time up to float rounding).
RECORD_NEUTRAL_KEYS: tuple[str, ...] = (
    "resume",
    "logger",
    "paths",
    "hydra",
    "task.threads",
    "dataset.limit",
    "eval.parallel_edits",
    "eval.memory_budget_gb",
)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a run is reproducible from its config."""
    random.seed(seed)
    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> Metrics:
    """Flatten nested mappings into `a/b/c -> number`, keeping only finite numbers."""
    flat: Metrics = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, (int, float)) and math.isfinite(value):
            flat[name] = float(value)
    return flat


@dataclass(frozen=True)
class RunContext:
    """The run directory of one job and the files every job writes there."""

    output_dir: Path

    def save_config(self, cfg: DictConfig) -> Path:
        path = self.output_dir / CONFIG_FILE
        atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
        return path

    def write_metrics(self, metrics: Mapping[str, Any], name: str = "metrics.json") -> Path:
        path = self.output_dir / name
        atomic_write_text(path, json.dumps(flatten_metrics(metrics), indent=2, sort_keys=True))
        return path


TaskFn = Callable[..., Mapping[str, Any] | None]


class RunDirectoryError(UserError, FileExistsError):
    """The run directory holds another run (or a run this one may not continue)."""


def config_differences(
    saved: Any, current: Any, prefix: str = "", neutral: tuple[str, ...] = RECORD_NEUTRAL_KEYS
) -> list[str]:
    """`key: saved -> current` for every leaf that differs, leaving out `neutral` keys."""
    if prefix in neutral:
        return []
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        lines: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            lines += config_differences(saved.get(key), current.get(key), name, neutral)
        return lines
    if saved != current:
        return [f"{prefix}: {saved!r} -> {current!r}"]
    return []


def check_run_directory(cfg: DictConfig, run: RunContext) -> None:
    """Refuse, before anything is written, to run in a directory that holds another run.

    Only runs of tasks that can resume (their config has `resume`) are guarded, in directories
    that hold such a run: without `resume=true` the directory is refused; with it, every
    setting that shapes the records (all but `RECORD_NEUTRAL_KEYS`) must equal the run's own
    `config.yaml`.
    """
    saved_path = run.output_dir / CONFIG_FILE
    if "resume" not in cfg or not saved_path.is_file():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False)
    if not isinstance(saved, dict) or "resume" not in saved:
        return
    if not cfg.resume:
        raise RunDirectoryError(
            f"{run.output_dir} already holds a run; continue it with resume=true, or start a "
            "new run directory (leave out hydra.run.dir, or point it elsewhere)"
        )
    current = OmegaConf.to_container(cfg, resolve=True)
    differences = config_differences(saved, current)
    if differences:
        shown = "\n  ".join(differences)
        raise RunDirectoryError(
            f"cannot resume the run in {run.output_dir}: these settings differ from its "
            f"{CONFIG_FILE} (saved -> now):\n  {shown}\nresume with the run's own settings, "
            "or start a new run directory"
        )


def run_task(cfg: DictConfig) -> Metrics | None:
    """Seed, save the resolved config, instantiate `cfg.task` and call it; write its metrics."""
    from hydra.utils import instantiate

    seed_everything(int(cfg.seed))
    run = RunContext(Path(cfg.paths.output_dir))
    check_run_directory(cfg, run)
    run.save_config(cfg)
    task: TaskFn = instantiate(cfg.task.fn, _partial_=True)
    metrics = task(cfg=cfg, run=run)
    if not metrics:
        return None
    flat = flatten_metrics(metrics)
    run.write_metrics(flat)
    print(f"run directory: {run.output_dir}")
    report = run.output_dir / REPORT_FILE
    if report.is_file():
        print(f"report: {report}")
    return flat


def user_error(error: BaseException) -> BaseException | None:
    """The error to show a user without a traceback, or None when it is a fault of the code.

    Bad input and bad configs raise `UserError`, `ValueError` or `OSError` with a message that
    says what to do; Hydra wraps errors raised while instantiating a config.
    """
    from hydra.errors import InstantiationException

    for candidate in _causes(error):
        if isinstance(candidate, (UserError, ValueError, OSError)):
            return candidate
        if not isinstance(candidate, InstantiationException):
            return None
    return None


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__


def run_task_for_user(cfg: DictConfig) -> Metrics | None:
    """`run_task` for the entry points: a user error ends the run with its message alone.

    `HYDRA_FULL_ERROR=1` keeps the traceback, as it does for Hydra's own errors.
    """
    try:
        return run_task(cfg)
    except Exception as error:
        shown = user_error(error)
        if shown is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {shown}", file=sys.stderr)
        print("(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
