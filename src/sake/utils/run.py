"""What every run does around its task: seed, record the resolved config, write metrics."""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

Metrics = dict[str, float]


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
        path = self.output_dir / "config.yaml"
        atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
        return path

    def write_metrics(self, metrics: Mapping[str, Any], name: str = "metrics.json") -> Path:
        path = self.output_dir / name
        atomic_write_text(path, json.dumps(flatten_metrics(metrics), indent=2, sort_keys=True))
        return path


TaskFn = Callable[..., Mapping[str, Any] | None]


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """A two-column plain-text table for the end of a run."""
    if not metrics:
        return "(no metrics)"
    width = max(len(key) for key in metrics)
    return "\n".join(f"{key:<{width}}  {value:.4f}" for key, value in sorted(metrics.items()))


def run_task(cfg: DictConfig) -> Metrics | None:
    """Seed, save the resolved config, instantiate `cfg.task` and call it; write its metrics."""
    from hydra.utils import instantiate

    seed_everything(int(cfg.seed))
    run = RunContext(Path(cfg.paths.output_dir))
    run.save_config(cfg)
    task: TaskFn = instantiate(cfg.task.fn, _partial_=True)
    metrics = task(cfg=cfg, run=run)
    if not metrics:
        return None
    flat = flatten_metrics(metrics)
    run.write_metrics(flat)
    print(format_metrics_table(flat))
    print(f"run directory: {run.output_dir}")
    return flat
