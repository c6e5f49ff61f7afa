"""Callbacks every training stage uses: stop on a non-finite loss, time the run."""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Stop before the backward pass of a NaN or infinite loss, naming the step.

    Stopping before the update keeps the weights (and the last checkpoint) usable: resume from
    it with `ckpt_path=...` after lowering the learning rate or fixing the data.
    """

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        value = float(loss.detach().float().cpu())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss is {value} at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {trainer.fit_loop.batch_idx}); "
                "stopping before the update. Lower the learning rate or check the data, then "
                "resume from the last checkpoint with ckpt_path=..."
            )


class WallClock(Callback):
    """Seconds spent in `fit`, for the stage's metrics."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None


class StepLog(Callback):
    """A plain progress line every `every_n_steps` steps, readable in log files."""

    def __init__(self, name: str, every_n_steps: int = 100) -> None:
        self.name = name
        self.every_n_steps = max(1, every_n_steps)
        self._start = 0.0
        self._first_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._first_step = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        elapsed = time.perf_counter() - self._start
        rate = (step - self._first_step) / max(elapsed, 1e-9)
        remaining = (trainer.max_steps - step) / max(rate, 1e-9) if trainer.max_steps > 0 else 0
        loss = trainer.callback_metrics.get("train/loss")
        shown = "n/a" if loss is None else f"{float(loss):.4f}"
        print(
            f"[{self.name}] step {step}/{trainer.max_steps} loss {shown} "
            f"({rate:.2f} steps/s, {remaining / 60:.1f} min left)",
            flush=True,
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = getattr(pl_module, "validation_metrics", {})
        if metrics and not trainer.sanity_checking:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items()))
            print(f"[{self.name}] validation at step {trainer.global_step}: {shown}", flush=True)
