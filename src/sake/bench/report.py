"""What the benchmark prints: a readable report, then one JSON line for scripts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sake.bench.measure import Benchmark, BenchResult, ProtocolRun

MAX_SHOWN_DIFFERENCES = 5
MAX_SHOWN_CEILING = 100.0
GIB = 1024**3


def summary(benchmark: Benchmark) -> dict[str, dict[str, Any]]:
    """Per `<method>/<protocol>`: both throughputs, the speed-up and whether judgements agree."""
    return {
        result.key: {
            "ours_cases_per_s": round(result.ours.cases_per_s, 4),
            "reference_cases_per_s": round(result.reference.cases_per_s, 4),
            "speedup": round(result.speedup, 2),
            "same_judgements": result.comparison.same_judgements,
        }
        for result in benchmark.results
    }


def summary_line(benchmark: Benchmark) -> str:
    return json.dumps(summary(benchmark), sort_keys=False)


def report_lines(benchmark: Benchmark) -> list[str]:
    """Per result: throughput both ways, phases, judgement agreement; then peak memory."""
    lines: list[str] = []
    lines.append(pre_edit_line(benchmark))
    for result in benchmark.results:
        lines.extend(result_lines(result))
    lines.append(
        f"peak RSS: {benchmark.peak_rss_ours_bytes / GIB:.2f} GiB after the project's runs, "
        f"{benchmark.peak_rss_bytes / GIB:.2f} GiB after the reference runs"
    )
    return lines


def pre_edit_line(benchmark: Benchmark) -> str:
    """Where the project runs' pre-edit outputs came from, and what filling the cache took."""
    fills = ", ".join(
        f"{protocol} {seconds:.1f} s"
        for protocol, seconds in benchmark.pre_edit_fill_seconds.items()
    )
    if benchmark.pre_edit_mode == "shared":
        return (
            f"pre-edit outputs: generated once per protocol ({fills}) into the cache every "
            "method's run reads; each run is charged an equal share (pre_edit_share)"
        )
    if benchmark.pre_edit_mode == "warm":
        return f"pre-edit outputs: cache filled once, untimed ({fills}); every run reads it"
    return "pre-edit outputs: every run generates its own (cold cache)"


def result_lines(result: BenchResult) -> list[str]:
    comparison = result.comparison
    verdict = "yes" if comparison.same_judgements else "NO"
    lines = [
        f"{result.key}: {result.ours.cases} cases; project runner "
        f"{result.ours.cases_per_s:.3f} cases/s ({run_time(result.ours)}), reference protocol "
        f"{result.reference.cases_per_s:.3f} cases/s ({run_time(result.reference)}), "
        f"speedup {result.speedup:.2f}x (by CPU time {result.cpu_speedup:.2f}x)",
        f"  same judgements: {verdict} ({comparison.probes - len(comparison.differences)}/"
        f"{comparison.probes} probes, identical outputs {comparison.same_outputs}/"
        f"{comparison.probes})",
        f"  project runner phases: {phases_text(result.ours)}; outside the edit "
        f"{result.ours.outside_edit_share:.0%} of the time; pre-edit outputs generated: "
        f"{result.ours.pre_edit_generated}",
        f"  speed-up ceiling with everything but the edit free: {ceiling_text(result)}",
        f"  reference phases: {phases_text(result.reference)}",
    ]
    if comparison.unmatched_records:
        lines.append(f"  records in only one run: {list(comparison.unmatched_records)}")
    for difference in comparison.differences[:MAX_SHOWN_DIFFERENCES]:
        lines.append(f"  differs: {difference.describe()}")
    hidden = len(comparison.differences) - MAX_SHOWN_DIFFERENCES
    if hidden > 0:
        lines.append(f"  ... and {hidden} more differing probes")
    return lines


def ceiling_text(result: BenchResult) -> str:
    ceiling = result.speedup_ceiling
    if ceiling > MAX_SHOWN_CEILING:
        return f"over {MAX_SHOWN_CEILING:.0f}x (the edit takes almost no time)"
    return f"{ceiling:.2f}x"


def run_time(run: ProtocolRun) -> str:
    return f"{run.seconds:.1f} s wall, {run.cpu_seconds:.1f} s CPU"


def phases_text(run: ProtocolRun) -> str:
    """Seconds per phase, largest first, with its share of the run's wall time."""
    shown: Mapping[str, float] = {
        phase: seconds for phase, seconds in run.phases.items() if phase != "total"
    }
    ordered = sorted(shown.items(), key=lambda item: -item[1])
    return ", ".join(
        f"{phase} {seconds:.1f} s ({seconds / run.seconds:.0%})" for phase, seconds in ordered
    )
