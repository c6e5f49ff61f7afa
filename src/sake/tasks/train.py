"""`python train.py task=…`: the stages that build the embedded model desta_tiny.

- `task=tokenizer`: the byte-level BPE tokenizer, into `<run>/tokenizer`.
- `task=backbone`: LLM pretraining (tokenizer from `task.tokenizer_dir`).
- `task=encoder`: audio-encoder pretraining on the synthetic training clips.
- `task=distill`: DeSTA self-distillation with the backbone `model.backbone` (stage-1
  responses cached per backbone) and the encoder `task.encoder`; a complete model directory.
- `task=connector`: the same connector training on ground-truth answers (the baseline).
- `experiment=desta_tiny`: all of them, then the shipped weights in `weights/desta_tiny`.

Every stage resumes a killed run with `task.ckpt_path=<run>/checkpoints/last.ckpt`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from sake.models.tokenizer import load_tokenizer
from sake.training.pipeline import build_desta_tiny, prepare_corpus
from sake.training.stages import (
    DISTILLED,
    GROUND_TRUTH,
    train_backbone_stage,
    train_connector_stage,
    train_encoder_stage,
    train_tokenizer_stage,
)
from sake.training.trainer import Metrics, StageContext
from sake.utils.run import RunContext


def _threads(cfg: DictConfig) -> None:
    threads = cfg.task.get("threads")
    if threads:
        torch.set_num_threads(int(threads))


def _context(cfg: DictConfig, run: RunContext) -> StageContext:
    return StageContext(
        trainer=cfg.trainer,
        logger=cfg.logger,
        seed=int(cfg.seed),
        out_dir=run.output_dir,
        name=f"{cfg.task.name}-{cfg.model.name}-{cfg.seed}",
    )


def tokenizer_task(cfg: DictConfig, run: RunContext) -> Metrics:
    _threads(cfg)
    _, metrics = train_tokenizer_stage(cfg.task, run.output_dir / "tokenizer", int(cfg.seed))
    return metrics


def backbone_task(cfg: DictConfig, run: RunContext) -> Metrics:
    _threads(cfg)
    tokenizer = load_tokenizer(Path(cfg.task.tokenizer_dir))
    _, metrics = train_backbone_stage(cfg.task, _context(cfg, run), tokenizer, cfg.model.sizes)
    return metrics


def encoder_task(cfg: DictConfig, run: RunContext) -> Metrics:
    _threads(cfg)
    tokenizer = load_tokenizer(Path(cfg.task.tokenizer_dir))
    _, audio_root = prepare_corpus(cfg.dataset)
    _, metrics = train_encoder_stage(
        cfg.task, _context(cfg, run), tokenizer, cfg.model.sizes, audio_root
    )
    return metrics


def _connector(cfg: DictConfig, run: RunContext, targets: str) -> Metrics:
    _threads(cfg)
    _, audio_root = prepare_corpus(cfg.dataset)
    _, metrics = train_connector_stage(
        cfg.task,
        _context(cfg, run),
        Path(cfg.task.backbone),
        Path(cfg.task.encoder),
        cfg.model.sizes,
        audio_root,
        Path(cfg.paths.cache_dir),
        targets,
    )
    return metrics


def distill_task(cfg: DictConfig, run: RunContext) -> Metrics:
    """DeSTA stage 1 + 2 with the configured backbone: the self-distilled backbone swap."""
    return _connector(cfg, run, DISTILLED)


def connector_task(cfg: DictConfig, run: RunContext) -> Metrics:
    """The non-distilled baseline: connector fine-tuning on ground-truth answers."""
    return _connector(cfg, run, GROUND_TRUTH)


def desta_tiny_task(cfg: DictConfig, run: RunContext) -> Metrics:
    """Every stage, then the shipped float16 weights and their MANIFEST.json."""
    _threads(cfg)
    return build_desta_tiny(cfg, run.output_dir)
