"""Degenerate outputs of sequential editing by gap: does damage build up as edits pile on?

SAKE reports that hypernetwork editors (KE, MEND) make a model loop or fall silent after a few
sequential edits. A record of sequential editing is one evaluation of edit j after step i,
at gap i - j; this module pools every probe output of the records at each gap and reports
the share the detector of `sake.evaluation.degeneration` calls degenerate, beside the same
share of the unedited model's outputs of those probes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sake.evaluation.degeneration import DegenerationRules, degeneration_ratio
from sake.evaluation.metrics import GAPS

Record = Mapping[str, Any]


def degeneration_by_gap(
    records: Iterable[Record],
    gaps: Sequence[int] = GAPS,
    rules: DegenerationRules | None = None,
) -> dict[str, float]:
    """`sequential/degeneration/gap<g>` and `sequential/degeneration/pre_edit`.

    Gap g's value is the share of degenerate post-edit outputs over every probe of every record
    at gap g; `pre_edit` is the share of degenerate pre-edit outputs over the same probes (all
    reported gaps together), the baseline the gaps compare with. Gaps without records are
    left out; no records give no metrics.
    """
    post: dict[int, list[str]] = defaultdict(list)
    pre: list[str] = []
    for record in records:
        if record["gap"] not in gaps:
            continue
        for judged in record["probes"]:
            post[record["gap"]].append(judged["post_output"])
            pre.append(judged["pre_output"])
    if not pre:
        return {}
    metrics = {
        f"sequential/degeneration/gap{gap}": degeneration_ratio(outputs, rules)
        for gap, outputs in sorted(post.items())
    }
    metrics["sequential/degeneration/pre_edit"] = degeneration_ratio(pre, rules)
    return metrics
