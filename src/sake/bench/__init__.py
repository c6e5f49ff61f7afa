"""Throughput benchmark: the project's runner against a re-enactment of the reference protocol.

`python -m sake.bench` edits the same cases with the same model and editors two ways, checks
that every probe is judged the same, and reports cases per second, the speed-up, the phases
the time went to and the peak memory (see `sake.bench.cli` for the options).
"""

from sake.bench.judgements import JudgementComparison, compare_records
from sake.bench.measure import (
    Benchmark,
    BenchResult,
    ProtocolRun,
    Workload,
    run_benchmark,
    run_ours,
    run_reference,
)
from sake.bench.reference import ReferenceProtocol
from sake.bench.report import report_lines, summary, summary_line

__all__ = [
    "BenchResult",
    "Benchmark",
    "JudgementComparison",
    "ProtocolRun",
    "ReferenceProtocol",
    "Workload",
    "compare_records",
    "report_lines",
    "run_benchmark",
    "run_ours",
    "run_reference",
    "summary",
    "summary_line",
]
