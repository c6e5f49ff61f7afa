"""`task=corpus`: build (or reuse) the dataset, check SAKE's construction rules, report."""

from __future__ import annotations

import json
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from sake.data.check import run_checks
from sake.data.rules import failed
from sake.utils.run import RunContext, flatten_metrics


def corpus_task(cfg: DictConfig, run: RunContext) -> dict[str, float]:
    """Statistics of every split as metrics; the full summary goes to `corpus_stats.json`."""
    dataset = instantiate(cfg.dataset)
    summary, results = run_checks(dataset.release, audio=bool(cfg.task.check_audio))
    (run.output_dir / "corpus_stats.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    broken = failed(results)
    for result in broken:
        print(f"rule violated: {result.name}: {result.description}")
    return {"corpus": _numeric_summary(summary), "corpus/rules_violated": len(broken)}


def _numeric_summary(summary: dict[str, Any]) -> dict[str, float]:
    """Case and probe counts, sequence count and audio figures (no per-label balance)."""
    numbers: dict[str, Any] = {
        split: {"cases": stats["cases"], "probes": stats["probes_by_type"]}
        for split, stats in summary["splits"].items()
    }
    numbers["sequences"] = {"count": summary["sequences"]["count"]}
    if "audio" in summary:
        numbers["audio"] = summary["audio"]
    return flatten_metrics(numbers)
