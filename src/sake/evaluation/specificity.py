"""Specificity of an edit on every locality probe, with and without ground truth.

GT-free, from the next-token distribution at the answer position (the first answer token),
pre-edit (unedited model, no editing context) against post-edit (edited model, with the
editor's context):
- `kl`: KL(pre || post) in nats;
- `top1`, `top5`, `top10`: overlap of the pre- and post-edit top-k token sets, in percent.

GT-based, beside them:
- `s_acc`: the greedy post-edit output equals the ground truth after normalisation (case,
  punctuation, articles and spacing ignored);
- `t_acc`: teacher-forced token accuracy on the ground-truth answer (the share of its tokens
  that are the post-edit model's argmax given the ones before);
- `c_acc`: for locality probes that offer the edit target y_e as an option and whose answer is
  another label (same-attribute probes, SAKE's audio-locality type 2): the post-edit model
  gives the true answer a higher log-probability than y_e. None where it does not apply.

The runner computes `pre_edit_logits` for a case's `locality_probes` before the edit (in
sequential editing, before the sequence's first edit) and `specificity_scores` after it, both
with the same batch size so that an unchanged model gives exactly KL 0 and 100% overlap;
each score dict goes into the judged probe's record as `probe["specificity"]`.
`specificity_metrics` aggregates records the way `sake.evaluation.metrics` does.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sake.data.schema import EditCase, Probe
from sake.evaluation.metrics import GAPS, LOCALITY_KINDS
from sake.models.base import LALM, Turn

TOP_K: tuple[int, ...] = (1, 5, 10)
SPECIFICITY_METRICS: tuple[str, ...] = (
    "kl",
    *(f"top{k}" for k in TOP_K),
    "s_acc",
    "t_acc",
    "c_acc",
)
POOLED = "locality"
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

Record = Mapping[str, Any]
Scores = dict[str, float | None]


def locality_probes(case: EditCase) -> list[Probe]:
    """The case's locality probes (audio, then text), in the order of `case.probes()`."""
    return [probe for probe in case.probes() if probe.kind.value in LOCALITY_KINDS]


def pre_edit_logits(lalm: LALM, probes: Sequence[Probe], *, batch_size: int = 32) -> Tensor:
    """(probes, vocab) float32 next-token logits of the unedited model, on the CPU."""
    return answer_position_logits(lalm, probes, batch_size=batch_size)


def answer_position_logits(
    lalm: LALM,
    probes: Sequence[Probe],
    *,
    batch_size: int = 32,
    system: str | None = None,
    history: Sequence[Turn] = (),
) -> Tensor:
    """(probes, vocab) float32 logits of the first answer token, in fixed-size chunks."""
    if not probes:
        return torch.zeros(0, 0)
    chunks = []
    for start in range(0, len(probes), batch_size):
        batch = lalm.prepare(probes[start : start + batch_size], system=system, history=history)
        chunks.append(lalm.next_token_logits(batch).float().cpu())
    return torch.cat(chunks)


def kl_divergence(pre_logits: Tensor, post_logits: Tensor) -> Tensor:
    """(n,) KL(pre || post) of the softmax distributions, in nats; differentiable in post."""
    pre = torch.log_softmax(pre_logits.float(), dim=-1)
    post = torch.log_softmax(post_logits.float(), dim=-1)
    return (pre.exp() * (pre - post)).sum(dim=-1)


def topk_overlap(pre_logits: Tensor, post_logits: Tensor, k: int) -> Tensor:
    """(n,) percentage of the pre-edit top-k tokens that are among the post-edit top-k."""
    k = min(k, pre_logits.shape[-1])
    pre = pre_logits.topk(k, dim=-1).indices
    post = post_logits.topk(k, dim=-1).indices
    shared = (pre[:, :, None] == post[:, None, :]).any(dim=-1).sum(dim=-1)
    return 100.0 * shared.float() / k


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style)."""
    text = _ARTICLES.sub(" ", text.casefold().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(output: str, answer: str) -> bool:
    return normalise_answer(output) == normalise_answer(answer)


def token_accuracy(
    lalm: LALM,
    probes: Sequence[Probe],
    *,
    system: str | None = None,
    history: Sequence[Turn] = (),
) -> list[float]:
    """Per probe, the share of its answer's tokens that are the teacher-forced argmax."""
    if not probes:
        return []
    batch = lalm.prepare(probes, system=system, history=history)
    answers = [probe.answer for probe in probes]
    with torch.no_grad():
        logits = lalm.answer_logits(batch, answers)
    expected = lalm.target_token_ids(batch, answers)
    return [
        float((row.argmax(dim=-1).cpu() == torch.tensor(ids)).float().mean())
        for row, ids in zip(logits, expected, strict=True)
    ]


def answer_log_probs(
    lalm: LALM,
    probes: Sequence[Probe],
    answers: Sequence[str],
    *,
    system: str | None = None,
    history: Sequence[Turn] = (),
) -> list[float]:
    """Per probe, the total teacher-forced log-probability of the given answer."""
    if not probes:
        return []
    batch = lalm.prepare(probes, system=system, history=history)
    with torch.no_grad():
        mean_nll = lalm.target_nll(batch, answers)
    lengths = [len(ids) for ids in lalm.target_token_ids(batch, answers)]
    return [-float(nll) * n for nll, n in zip(mean_nll, lengths, strict=True)]


def rival_option(probe: Probe, target: str) -> str | None:
    """The option that names the edit target, when the probe's own answer is another one."""
    wanted = normalise_answer(target)
    if normalise_answer(probe.answer) == wanted:
        return None
    return next((o for o in probe.options if normalise_answer(o) == wanted), None)


def specificity_scores(
    lalm: LALM,
    case: EditCase,
    pre_logits: Tensor,
    post_outputs: Sequence[str],
    *,
    batch_size: int = 32,
    system: str | None = None,
    history: Sequence[Turn] = (),
) -> list[Scores]:
    """One score dict per locality probe of `case` (see the module docstring).

    `pre_logits` come from `pre_edit_logits(lalm, locality_probes(case))` on the unedited
    model, `post_outputs` are the post-edit greedy outputs of the same probes, and `system` /
    `history` the editor's query context.
    """
    probes = locality_probes(case)
    if len(post_outputs) != len(probes) or len(pre_logits) != len(probes):
        raise ValueError(
            f"case {case.case_id!r} has {len(probes)} locality probes; got {len(pre_logits)} "
            f"pre-edit logits and {len(post_outputs)} post-edit outputs"
        )
    if not probes:
        return []
    post = answer_position_logits(
        lalm, probes, batch_size=batch_size, system=system, history=history
    )
    kl = kl_divergence(pre_logits, post).clamp_min(0)
    overlaps = {k: topk_overlap(pre_logits, post, k) for k in TOP_K}
    t_acc = token_accuracy(lalm, probes, system=system, history=history)
    c_acc = _contrast(lalm, probes, case.y_e, system=system, history=history)
    return [
        {
            "kl": float(kl[i]),
            **{f"top{k}": float(overlaps[k][i]) for k in TOP_K},
            "s_acc": float(exact_match(post_outputs[i], probe.answer)),
            "t_acc": t_acc[i],
            "c_acc": c_acc[i],
        }
        for i, probe in enumerate(probes)
    ]


def _contrast(
    lalm: LALM,
    probes: Sequence[Probe],
    target: str,
    *,
    system: str | None,
    history: Sequence[Turn],
) -> list[float | None]:
    rivals = [rival_option(probe, target) for probe in probes]
    chosen = [i for i, rival in enumerate(rivals) if rival is not None]
    if not chosen:
        return [None] * len(probes)
    subset = [probes[i] for i in chosen]
    true = answer_log_probs(
        lalm, subset, [p.answer for p in subset], system=system, history=history
    )
    rival = answer_log_probs(
        lalm, subset, [rivals[i] for i in chosen], system=system, history=history
    )
    wins: list[float | None] = [None] * len(probes)
    for i, t, r in zip(chosen, true, rival, strict=True):
        wins[i] = float(t > r)
    return wins


# --------------------------------------------------------------------------- aggregation


def _probe_values(judged: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """(key, value) pairs of one judged probe: per kind, per type, and pooled over locality."""
    scores = judged.get("specificity")
    if not scores:
        return
    kind = judged["kind"]
    groups = [POOLED, kind] + ([] if judged["type"] is None else [f"{kind}/type{judged['type']}"])
    for metric in SPECIFICITY_METRICS:
        value = scores.get(metric)
        if value is None:
            continue
        for group in groups:
            yield f"{group}/{metric}", float(value)


def specificity_metrics(records: Iterable[Record]) -> dict[str, float]:
    """Specificity metrics of single or sequential records.

    Single: `single/<group>/<metric>` and `single/<Attribute>/<group>/<metric>`, where group is
    `locality` (all locality probes), `locality_audio`, `locality_audio/type<k>` or
    `locality_text`; per attribute the mean over probes, overall the unweighted mean over the
    attributes that have the key (as `single_metrics` does). Sequential:
    `sequential/<group>/<metric>/gap<g>`, the mean over evaluated edits of each edit's mean.
    """
    records = list(records)
    if not records:
        return {}
    if records[0]["protocol"] == "single":
        return _single(records)
    return _sequential(records)


def _single(records: Sequence[Record]) -> dict[str, float]:
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        for judged in record["probes"]:
            for key, value in _probe_values(judged):
                groups[record["attribute"]][key].append(value)
    per_attribute = {
        attribute: {key: float(np.mean(values)) for key, values in keys.items()}
        for attribute, keys in groups.items()
    }
    metrics: dict[str, float] = {}
    for key in sorted({key for values in per_attribute.values() for key in values}):
        present = [values[key] for values in per_attribute.values() if key in values]
        metrics[f"single/{key}"] = float(np.mean(present))
    for attribute in sorted(per_attribute):
        for key, value in sorted(per_attribute[attribute].items()):
            metrics[f"single/{attribute}/{key}"] = value
    return metrics


def _sequential(records: Sequence[Record], gaps: Sequence[int] = GAPS) -> dict[str, float]:
    pooled: dict[tuple[str, int], list[float]] = defaultdict(list)
    for record in records:
        if record["gap"] not in gaps:
            continue
        per_case: dict[str, list[float]] = defaultdict(list)
        for judged in record["probes"]:
            for key, value in _probe_values(judged):
                per_case[key].append(value)
        for key, values in per_case.items():
            pooled[(key, record["gap"])].append(float(np.mean(values)))
    return {
        f"sequential/{key}/gap{gap}": float(np.mean(values))
        for (key, gap), values in sorted(pooled.items())
    }
