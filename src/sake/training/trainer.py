"""What every training stage shares: its context, the Lightning Trainer, fit and report.

The Trainer comes from the run's trainer config with the stage's overrides (`task.trainer`)
on top. Every fit stops on a non-finite loss, checkpoints only the trainable tensors (every
`checkpoint_every` steps and `last.ckpt`), resumes from `ckpt_path`, logs to W&B offline when
the run's logger is the wandb one, and ends with one validation whose metrics it returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from sake.training.callbacks import NonFiniteLossGuard, StepLog, WallClock
from sake.training.data import PlannedDataModule
from sake.training.modules import TrainableSubsetModule
from sake.utils.run import seed_everything

Metrics = dict[str, float]


@dataclass(frozen=True)
class StageContext:
    """What every stage shares: the trainer and logger configs, the seed, its directory."""

    trainer: DictConfig
    logger: DictConfig | None
    seed: int
    out_dir: Path
    name: str

    @property
    def progress(self) -> bool:
        return bool(self.trainer.get("enable_progress_bar", True))

    def rng(self, *stream: int) -> np.random.Generator:
        """An independent generator per use, all derived from the run's seed."""
        return np.random.default_rng([self.seed, *stream])


def lightning_logger(logger_cfg: DictConfig | None, save_dir: Path, name: str) -> Any:
    """W&B (offline unless the logger says online) for the wandb logger config, else none."""
    if logger_cfg is None or not str(logger_cfg.get("_target_", "")).endswith("WandbTracker"):
        return False
    from lightning.pytorch.loggers import WandbLogger

    save_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        name=name,
        save_dir=str(save_dir),
        project=logger_cfg.get("project", "sake"),
        entity=logger_cfg.get("entity"),
        group=logger_cfg.get("group"),
        tags=list(logger_cfg.get("tags") or []),
        offline=logger_cfg.get("mode", "offline") != "online",
    )


def stage_trainer_config(context: StageContext, settings: DictConfig) -> DictConfig:
    """The run's trainer config with the stage's overrides (`task.trainer`) on top."""
    base = OmegaConf.create(OmegaConf.to_container(context.trainer, resolve=True))
    merged = OmegaConf.merge(base, settings.get("trainer") or {})
    merged.default_root_dir = str(context.out_dir)
    max_steps = int(merged.get("max_steps", -1))
    if max_steps <= 0:
        raise ValueError(
            f"stage {context.name} plans its data by steps: set task.trainer.max_steps (got "
            f"{max_steps})"
        )
    if isinstance(merged.get("val_check_interval"), int):
        merged.check_val_every_n_epoch = None  # validate every N steps, across epochs
    return merged


def fit(
    module: TrainableSubsetModule,
    data: PlannedDataModule,
    context: StageContext,
    settings: DictConfig,
) -> tuple[Metrics, float]:
    """Train (resuming from `settings.ckpt_path` if set), validate once more, report.

    Returns the final validation metrics and the wall time of training.
    """
    trainer_cfg = stage_trainer_config(context, settings)
    if data.val is None:
        trainer_cfg.limit_val_batches = 0
    clock = WallClock()
    checkpoints = ModelCheckpoint(
        dirpath=str(context.out_dir / "checkpoints"),
        filename="{step:06d}",
        every_n_train_steps=int(settings.get("checkpoint_every") or trainer_cfg.max_steps),
        save_top_k=1,
        save_last=True,
    )
    logger = lightning_logger(context.logger, context.out_dir, context.name)
    callbacks = [NonFiniteLossGuard(), clock, StepLog(context.name), checkpoints]
    trainer: pl.Trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=logger)
    seed_everything(context.seed)
    trainer.fit(module, datamodule=data, ckpt_path=settings.get("ckpt_path"))
    metrics: Metrics = {"train/steps": float(trainer.global_step)}
    loss = trainer.callback_metrics.get("train/loss")
    if loss is not None:
        metrics["train/loss"] = float(loss)
    if data.val is not None:
        if module.validated_step != trainer.global_step:
            trainer.validate(module, datamodule=data, verbose=False)
        metrics.update(module.validation_metrics)
    if logger:
        logger.log_metrics({f"final/{k}": v for k, v in metrics.items()})
        logger.experiment.finish()
    return metrics, clock.seconds


# --------------------------------------------------------------------------- prepared stages


@dataclass
class PreparedStage:
    """A stage ready to train: its module, its planned data, what preparing it measured."""

    module: TrainableSubsetModule
    data: PlannedDataModule
    metrics: Metrics


def run_prepared(
    prepared: PreparedStage, context: StageContext, settings: DictConfig, started: float
) -> Metrics:
    """Fit a prepared stage and merge its metrics with the preparation's and the timings."""
    prepare_seconds = time.perf_counter() - started
    metrics, seconds = fit(prepared.module, prepared.data, context, settings)
    return {
        **prepared.metrics,
        **metrics,
        "seconds/prepare": prepare_seconds,
        "seconds/train": seconds,
    }
