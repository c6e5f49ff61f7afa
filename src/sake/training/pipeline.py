"""`experiment=desta_tiny`: every stage in order, then the shipped weights and their recipe.

tokenizer -> backbone -> encoder -> distillation (stage 1 responses, stage 2 connector), each
in its own subdirectory of the run, seeded from the run's seed. A killed build continues with
`task.resume_dir=<its run directory>`: finished stages are reused, the interrupted one
resumes from its last checkpoint. The distilled model is then
cast to float16 (the loader copies tensors into a float32 model, so nothing changes for its
users but the file size), written over `task.out_dir` part by part, measured once more through
`load_desta` exactly as evaluation loads it, and described in `MANIFEST.json`: the recipe
(configs, seeds, corpus), the metrics of every stage, the wall time of every stage and the
digest of every file.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import tokenizers
import torch
import transformers
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerFast

from sake.data.options import parse_options
from sake.data.schema import EditCase, Probe, ProbeKind
from sake.evaluation.judges.option import is_correct
from sake.models.desta import CONFIG_FILE, TOKENIZER_DIR, DestaLALM, load_desta
from sake.models.tokenizer import load_tokenizer
from sake.training import examples
from sake.training.stages import (
    DISTILLED,
    PART_PREFIXES,
    save_parts,
    train_backbone_stage,
    train_connector_stage,
    train_encoder_stage,
    train_tokenizer_stage,
)
from sake.training.trainer import Metrics, StageContext
from sake.utils.run import atomic_write_text

MANIFEST_FILE = "MANIFEST.json"
STAGE_RECORD = "stage.json"
BUILD_COMMAND = "python train.py experiment=desta_tiny"
PATH_KEYS = (
    "out_dir",
    "resume_dir",
    "tokenizer_dir",
    "backbone",
    "encoder",
    "ckpt_path",
    "root",
    "feature_cache",
    "default_root_dir",
)


def prepare_corpus(dataset_cfg: DictConfig) -> tuple[Any, Path]:
    """The configured dataset, generated if needed, and the folder holding its clips."""
    dataset = instantiate(dataset_cfg)
    dataset.prepare()
    return dataset, Path(dataset.audio_root)


@dataclass(frozen=True)
class PipelineStage:
    """One stage of the build: its name, the file that marks it finished, how to run it.

    `run` gets the stage's context and settings (with `ckpt_path` set when resuming).
    """

    name: str
    product: str
    run: Callable[[StageContext, DictConfig], Metrics]


def build_desta_tiny(cfg: DictConfig, output_dir: Path) -> Metrics:
    """Run every stage, export the float16 weights, measure them, write the manifest.

    With `task.resume_dir` (an earlier run of this pipeline) the stages work in that
    directory: finished stages are kept, and a stage that was killed resumes from its last
    checkpoint.
    """
    task = cfg.task
    work_dir = Path(task.resume_dir) if task.get("resume_dir") else output_dir
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    dataset, audio_root = prepare_corpus(cfg.dataset)
    seconds["corpus"] = time.perf_counter() - start
    metrics: Metrics = {}
    for stage in pipeline_stages(cfg, work_dir, audio_root):
        stage_metrics, stage_seconds = run_stage(stage, cfg, work_dir)
        metrics.update(prefixed(stage.name, stage_metrics))
        seconds[stage.name] = stage_seconds
    out_dir = Path(task.out_dir)
    start = time.perf_counter()
    files = export_weights(work_dir / "distill", out_dir, task.dtype)
    seconds["export"] = time.perf_counter() - start
    start = time.perf_counter()
    final = measure_model(
        load_desta(out_dir),
        dataset.cases("test"),
        per_group=int(task.measure.per_group),
        batch_size=int(task.measure.batch_size),
        max_new_tokens=int(task.measure.max_new_tokens),
        rng=np.random.default_rng([int(cfg.seed), 31]),
    )
    seconds["measure"] = time.perf_counter() - start
    metrics.update(prefixed("shipped", final))
    training = sum(v for k, v in seconds.items() if k not in ("corpus", "measure"))
    metrics.update(prefixed("seconds", {**seconds, "training_total": training}))
    write_manifest(out_dir / MANIFEST_FILE, cfg, metrics, seconds, files)
    return metrics


def pipeline_stages(cfg: DictConfig, work_dir: Path, audio_root: Path) -> list[PipelineStage]:
    """tokenizer -> backbone -> encoder -> distillation, each reading the earlier outputs."""
    sizes, seed = cfg.model.sizes, int(cfg.seed)

    def tokenizer() -> PreTrainedTokenizerFast:
        return load_tokenizer(work_dir / "tokenizer")

    return [
        PipelineStage(
            "tokenizer",
            "tokenizer_config.json",
            lambda context, settings: train_tokenizer_stage(settings, context.out_dir, seed)[1],
        ),
        PipelineStage(
            "backbone",
            "backbone.safetensors",
            lambda context, settings: train_backbone_stage(settings, context, tokenizer(), sizes)[
                1
            ],
        ),
        PipelineStage(
            "encoder",
            "encoder.safetensors",
            lambda context, settings: train_encoder_stage(
                settings, context, tokenizer(), sizes, audio_root
            )[1],
        ),
        PipelineStage(
            "distill",
            "connector.safetensors",
            lambda context, settings: train_connector_stage(
                settings,
                context,
                work_dir / "backbone",
                work_dir / "encoder" / "encoder.safetensors",
                sizes,
                audio_root,
                Path(cfg.paths.cache_dir),
                DISTILLED,
            )[1],
        ),
    ]


def run_stage(stage: PipelineStage, cfg: DictConfig, work_dir: Path) -> tuple[Metrics, float]:
    """Run a stage into `work_dir/<name>`, or reuse it when an earlier run finished it.

    A finished stage has its product and its `metrics.json` (written last); an unfinished
    one with a `checkpoints/last.ckpt` resumes from it.
    """
    stage_dir = work_dir / stage.name
    record = stage_dir / STAGE_RECORD
    if (stage_dir / stage.product).is_file() and record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        print(f"[desta_tiny] stage {stage.name}: finished earlier, reused", flush=True)
        return saved["metrics"], float(saved["seconds"])
    settings = OmegaConf.create(OmegaConf.to_container(cfg.task.stages[stage.name], resolve=True))
    last = stage_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and not settings.get("ckpt_path"):
        settings.ckpt_path = str(last)
    context = StageContext(
        trainer=cfg.trainer,
        logger=cfg.logger,
        seed=int(cfg.seed),
        out_dir=stage_dir,
        name=f"{stage.name}-{cfg.model.name}-{cfg.seed}",
    )
    start = time.perf_counter()
    metrics = stage.run(context, settings)
    seconds = time.perf_counter() - start
    atomic_write_text(record, json.dumps({"metrics": metrics, "seconds": seconds}, indent=2))
    print(f"[desta_tiny] stage {stage.name} done in {seconds:.0f} s", flush=True)
    return metrics, seconds


def prefixed(prefix: str, metrics: Mapping[str, float]) -> Metrics:
    return {f"{prefix}/{key}": float(value) for key, value in metrics.items()}


# --------------------------------------------------------------------------- export


def export_weights(model_dir: Path, out_dir: Path, dtype: str) -> dict[str, dict]:
    """Cast the trained model to `dtype` and replace its files in `out_dir`, one by one.

    The parts are written to a sibling folder first, so a failure leaves the old weights.
    Files in `out_dir` that this export does not write are left alone.
    """
    lalm = load_desta(model_dir)
    model = lalm.model.to(getattr(torch, dtype))
    staging = out_dir.with_name(f".{out_dir.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    save_parts(model, lalm.tokenizer, staging, list(PART_PREFIXES))
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / TOKENIZER_DIR, ignore_errors=True)
    for entry in staging.iterdir():
        entry.replace(out_dir / entry.name)
    staging.rmdir()
    names = [CONFIG_FILE, *(f"{part}.safetensors" for part in PART_PREFIXES)]
    names += sorted(f"{TOKENIZER_DIR}/{p.name}" for p in (out_dir / TOKENIZER_DIR).iterdir())
    return {name: file_record(out_dir / name) for name in names}


def file_record(path: Path) -> dict:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def recipe(cfg: DictConfig) -> dict:
    """The resolved task and model configs without machine-specific paths."""
    task = OmegaConf.to_container(cfg.task, resolve=True)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return {
        "task": _without_paths(task),
        "model_sizes": model.get("sizes"),
        "trainer": _without_paths(OmegaConf.to_container(cfg.trainer, resolve=True)),
        "seed": int(cfg.seed),
        "corpus": {
            "name": cfg.dataset.name,
            "scale": cfg.dataset.get("scale"),
            "seed": cfg.dataset.get("seed"),
        },
    }


def _without_paths(node: Any) -> Any:
    """`node` without path settings; a stage's whole config (e.g. `encoder`) is kept."""
    if isinstance(node, dict):
        return {
            k: _without_paths(v)
            for k, v in node.items()
            if isinstance(v, dict) or k not in PATH_KEYS
        }
    return node


def write_manifest(
    path: Path, cfg: DictConfig, metrics: Metrics, seconds: Mapping[str, float], files: dict
) -> None:
    manifest = {
        "model": cfg.model.name,
        "command": BUILD_COMMAND,
        "dtype": cfg.task.dtype,
        "recipe": recipe(cfg),
        "metrics": dict(sorted(metrics.items())),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "files": files,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "lightning": lightning.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    atomic_write_text(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- measurement


def measured_probes(
    cases: Sequence[EditCase], per_group: int, rng: np.random.Generator
) -> dict[str, list[tuple[Probe, str]]]:
    """Probes with the answer that is true of the unedited world, grouped and capped.

    Recognition uses each case's edit clip (its original label), portability the case's
    portability probe about the original label, auditory tasks the type-4 locality probes,
    and the backbone's knowledge every fact as a text question.
    """
    groups: dict[str, list[tuple[Probe, str]]] = {}
    for case in cases:
        probe = case.reliability
        groups.setdefault(f"recognition/{case.attribute}", []).append((probe, case.y_o))
        for portability in case.portability:
            truth = portability.original_answer
            if truth is not None:
                groups.setdefault(f"portability/{case.attribute}", []).append((portability, truth))
        for locality in case.locality_audio:
            if locality.type == 4:
                groups.setdefault("auditory_task", []).append((locality, locality.answer))
    groups["text/knowledge"] = [
        (
            Probe(
                kind=ProbeKind.PORTABILITY,
                question=e.question,
                answer=e.response,
                options=parse_options(e.question),
            ),
            e.response,
        )
        for e in examples.knowledge_examples(rng)
    ]
    return {name: _capped(found, per_group, rng) for name, found in sorted(groups.items())}


def _capped(items: list, n: int, rng: np.random.Generator) -> list:
    if len(items) <= n:
        return items
    return [items[int(i)] for i in sorted(rng.choice(len(items), size=n, replace=False))]


def measure_model(
    lalm: DestaLALM,
    cases: Sequence[EditCase],
    *,
    per_group: int,
    batch_size: int,
    max_new_tokens: int,
    rng: np.random.Generator,
) -> Metrics:
    """Accuracy per group through the inference path (`prepare` + greedy `generate`)."""
    metrics: Metrics = {}
    for group, probes in measured_probes(cases, per_group, rng).items():
        correct = 0
        for begin in range(0, len(probes), batch_size):
            chunk = probes[begin : begin + batch_size]
            outputs = lalm.generate(lalm.prepare([p for p, _ in chunk]), max_new_tokens)
            correct += sum(
                is_correct(output, probe.options, truth)
                for output, (probe, truth) in zip(outputs, chunk, strict=True)
            )
        metrics[group] = correct / max(1, len(probes))
    return metrics
