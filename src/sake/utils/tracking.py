"""Experiment trackers behind one small interface, so runs work with or without W&B."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class NullTracker:
    """Tracks nothing: the run's files on disk are the record."""

    def start(self, config: Mapping[str, Any] | None = None) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        return None

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        return None

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        return None

    def log_image(self, key: str, path: Path) -> None:
        return None

    def log_file(self, path: Path) -> None:
        return None

    def finish(self) -> None:
        return None


class WandbTracker(NullTracker):
    """Weights & Biases run, offline by default; the run lives under the job's directory."""

    def __init__(
        self,
        project: str,
        name: str,
        dir: str,
        mode: str = "offline",
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        self.settings = {
            "project": project,
            "name": name,
            "dir": dir,
            "mode": mode,
            "entity": entity,
            "group": group,
            "tags": list(tags),
        }
        self._run = None

    def start(self, config: Mapping[str, Any] | None = None) -> None:
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed; this run is recorded on disk only")
            return
        Path(self.settings["dir"]).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(config=dict(config or {}), reinit="finish_previous", **self.settings)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._run is not None:
            self._run.log(dict(metrics), step=step)

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        if self._run is not None:
            self._run.summary.update(dict(metrics))

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def log_image(self, key: str, path: Path) -> None:
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Image(str(path))})

    def log_file(self, path: Path) -> None:
        """Keep a file (a report) with the run; an offline run copies it into its files."""
        if self._run is not None:
            path = Path(path).resolve()
            self._run.save(str(path), base_path=str(path.parent), policy="now")

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def start_tracker(cfg: DictConfig, name: str) -> Any:
    """The configured tracker, started under `name` where it takes one."""
    tracker = (
        instantiate(cfg.logger, name=name) if "name" in cfg.logger else instantiate(cfg.logger)
    )
    tracker.start(
        {
            key: OmegaConf.to_container(value, resolve=True)
            if OmegaConf.is_config(value)
            else value
            for key, value in cfg.items()
            if key in ("run", "sweep", "judge")
        }
    )
    return tracker
