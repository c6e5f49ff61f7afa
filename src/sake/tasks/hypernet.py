"""`python train.py method=ke|mend model=<model>`: train the method's hypernetwork.

The hypernetwork learns on the dataset's training split (validation on its ALL_val slice) to
edit the model's weights named by the method's roles, and is written with its manifest to
`hypernets/<method>-<model>-<dataset>.pt` (`-<network>` added for a network other than the
reference's), where `python edit.py method=<method>` finds it.
A killed run resumes with `task.ckpt_path=<run>/checkpoints/last.ckpt`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from sake.hypernets.manifest import save_hypernet
from sake.methods.base import build_editor
from sake.methods.hypernet import HypernetEditor
from sake.runner import check_cases
from sake.training.hypernet import Metrics, split_for_training, train_hypernet
from sake.training.trainer import StageContext
from sake.utils.run import RunContext

HYPERNET_METHODS: tuple[str, ...] = ("ke", "mend")


def hypernet_editor(method: DictConfig) -> HypernetEditor:
    """The method's editor, if the method is one that a hypernetwork drives."""
    editor = build_editor(method, available=HYPERNET_METHODS) if "_target_" in method else None
    if not isinstance(editor, HypernetEditor):
        raise ValueError(
            f"method {method.get('name', '?')!r} has no hypernetwork to train; choose one of "
            f"{', '.join(f'method={name}' for name in HYPERNET_METHODS)} (or another task with "
            "task=<name>)"
        )
    return editor


def hypernet_task(cfg: DictConfig, run: RunContext) -> Metrics:
    if cfg.task.get("threads"):
        torch.set_num_threads(int(cfg.task.threads))
    editor = hypernet_editor(cfg.method)
    dataset = instantiate(cfg.dataset)
    train_cases, val_cases = split_for_training(
        dataset.release.splits, int(cfg.task.validation.cases)
    )
    check_cases([*train_cases, *val_cases], getattr(dataset, "audio_root", None))
    lalm = instantiate(cfg.model.load)
    context = StageContext(
        trainer=cfg.trainer,
        logger=cfg.logger,
        seed=int(cfg.seed),
        out_dir=run.output_dir,
        name=f"hypernet-{editor.name}-{cfg.model.name}-{cfg.seed}",
    )
    cache_root = Path(cfg.paths.cache_dir) if cfg.task.pre_edit.cache else None
    trained = train_hypernet(
        editor.config, lalm, train_cases, val_cases, cfg.task, context, cache_root
    )
    path = save_hypernet(editor.path, trained.manifest, trained.state_dict)
    print(f"{editor.name} hypernetwork written to {path}")
    return trained.metrics
