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

Both distributions come from passes the runner makes anyway: the post-edit one from the first
step of the post-edit generation, the pre-edit one from the first step of the pre-edit
generation, or, where pre-edit outputs came from the on-disk cache, from one prompt-only pass
(`pre_edit_logits`) before the edit (in sequential editing, before the sequence's first edit,
so that every step is compared with the original model). Batches differ between the passes, so
an unchanged model scores KL 0 and 100% overlap up to float rounding. T-acc and C-acc read
single-token answers off the same first-step logits and teacher-force only longer answers.
`with_specificity` puts each score dict into the judged probe's record as
`probe["specificity"]`. `sake.evaluation.metrics` aggregates them into `metrics.json`;
`specificity_metrics` gives those keys alone.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sake.data.schema import EditCase, Probe
from sake.evaluation.metrics import (
    LOCALITY_KINDS,
    TOP_K,
    attribute_means,
    case_specificity,
    gap_means,
    specificity_values,
)
from sake.evaluation.metrics import SPECIFICITY_METRICS as SPECIFICITY_METRICS
from sake.evaluation.probing import BatchHook, mapped_hook
from sake.models.base import LALM, Turn

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

Record = Mapping[str, Any]
Scores = dict[str, float | None]


def locality_probes(case: EditCase) -> list[Probe]:
    """The case's locality probes (audio, then text), in the order of `case.probes()`."""
    return [probe for probe in case.probes() if probe.kind.value in LOCALITY_KINDS]


@dataclass(frozen=True)
class ForcedAnswers:
    """What one teacher-forced pass over probes and their answers gives, per probe.

    `first`: (probes, vocab) float32 logits predicting the answer's first token, i.e. the
    next-token distribution at the answer position; `token_accuracy`: the share of the
    answer's tokens that are the argmax given the ones before; `log_prob`: the answer's total
    log-probability.
    """

    first: Tensor
    token_accuracy: list[float]
    log_prob: list[float]


def force_answers(
    lalm: LALM,
    probes: Sequence[Probe],
    answers: Sequence[str],
    *,
    batch_size: int = 32,
    system: str | None = None,
    history: Sequence[Turn] = (),
    on_batch: BatchHook | None = None,
) -> ForcedAnswers:
    """Teacher-force `answers` on `probes` in fixed chunks of `batch_size`, on the CPU
    (`on_batch` hears each chunk's positions first)."""
    firsts: list[Tensor] = []
    accuracies: list[float] = []
    log_probs: list[float] = []
    for start in range(0, len(probes), batch_size):
        if on_batch is not None:
            on_batch(range(start, min(start + batch_size, len(probes))))
        batch = lalm.prepare(probes[start : start + batch_size], system=system, history=history)
        targets = list(answers[start : start + batch_size])
        with torch.no_grad():
            logits = lalm.answer_logits(batch, targets)
        for row, ids in zip(logits, lalm.target_token_ids(batch, targets), strict=True):
            row, expected = row.float().cpu(), torch.tensor(ids)
            firsts.append(row[0])
            accuracies.append(float((row.argmax(dim=-1) == expected).float().mean()))
            chosen = row.log_softmax(dim=-1).gather(1, expected[:, None])
            log_probs.append(float(chosen.sum()))
    first = torch.stack(firsts) if firsts else torch.zeros(0, 0)
    return ForcedAnswers(first, accuracies, log_probs)


def pre_edit_logits(lalm: LALM, probes: Sequence[Probe], *, batch_size: int = 32) -> Tensor:
    """(probes, vocab) float32 next-token logits at the answer position, unedited model."""
    return first_token_logits(lalm, probes, batch_size=batch_size)


def first_token_logits(
    lalm: LALM,
    probes: Sequence[Probe],
    *,
    batch_size: int = 32,
    system: str | None = None,
    history: Sequence[Turn] = (),
) -> Tensor:
    """(probes, vocab) float32 logits of the first answer token: one prompt-only pass."""
    rows = [
        lalm.next_token_logits(
            lalm.prepare(probes[start : start + batch_size], system=system, history=history)
        ).float()
        for start in range(0, len(probes), batch_size)
    ]
    return torch.cat(rows).cpu() if rows else torch.zeros(0, 0)


@dataclass(frozen=True)
class AnswerScores:
    """Per (probe, answer): teacher-forced token accuracy and total log-probability."""

    token_accuracy: list[float]
    log_prob: list[float]


def answer_scores(
    lalm: LALM,
    probes: Sequence[Probe],
    answers: Sequence[str],
    first_logits: Tensor,
    *,
    batch_size: int = 32,
    system: str | None = None,
    history: Sequence[Turn] = (),
    on_batch: BatchHook | None = None,
) -> AnswerScores:
    """T-acc and log-probability of each answer, teacher-forcing only multi-token answers.

    `first_logits[i]` is the next-token distribution at probe i's answer position in the same
    context; for a one-token answer it is all the teacher-forced pass would compute.
    """
    token_ids = _answer_token_ids(lalm, probes, answers, batch_size, system, history)
    accuracy = [0.0] * len(probes)
    log_prob = [0.0] * len(probes)
    longer = []
    for i, ids in enumerate(token_ids):
        if len(ids) != 1:
            longer.append(i)
            continue
        row = first_logits[i].float()
        accuracy[i] = float(int(row.argmax()) == ids[0])
        log_prob[i] = float(row.log_softmax(dim=-1)[ids[0]])
    if longer:
        forced = force_answers(
            lalm,
            [probes[i] for i in longer],
            [answers[i] for i in longer],
            batch_size=batch_size,
            system=system,
            history=history,
            on_batch=mapped_hook(on_batch, longer),
        )
        for position, i in enumerate(longer):
            accuracy[i] = forced.token_accuracy[position]
            log_prob[i] = forced.log_prob[position]
    return AnswerScores(accuracy, log_prob)


def _answer_token_ids(
    lalm: LALM,
    probes: Sequence[Probe],
    answers: Sequence[str],
    batch_size: int,
    system: str | None,
    history: Sequence[Turn],
) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(probes), batch_size):
        batch = lalm.prepare(probes[start : start + batch_size], system=system, history=history)
        ids.extend(lalm.target_token_ids(batch, list(answers[start : start + batch_size])))
    return ids


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
    answers = [probe.answer for probe in probes]
    return force_answers(
        lalm, probes, answers, batch_size=max(1, len(probes)), system=system, history=history
    ).token_accuracy


def answer_log_probs(
    lalm: LALM,
    probes: Sequence[Probe],
    answers: Sequence[str],
    *,
    system: str | None = None,
    history: Sequence[Turn] = (),
) -> list[float]:
    """Per probe, the total teacher-forced log-probability of the given answer."""
    return force_answers(
        lalm, probes, answers, batch_size=max(1, len(probes)), system=system, history=history
    ).log_prob


def rival_option(probe: Probe, target: str) -> str | None:
    """The option that names the edit target, when the probe's own answer is another one."""
    wanted = normalise_answer(target)
    if normalise_answer(probe.answer) == wanted:
        return None
    return next((o for o in probe.options if normalise_answer(o) == wanted), None)


@dataclass(frozen=True)
class LocalityOutputs:
    """What the runner saw of one case's locality probes (in `locality_probes(case)` order):
    first-token logits on the unedited and on the edited model, post-edit greedy outputs."""

    case: EditCase
    pre_logits: Tensor
    post_logits: Tensor
    post_outputs: Sequence[str]

    def __post_init__(self) -> None:
        expected = len(locality_probes(self.case))
        counts = {len(self.pre_logits), len(self.post_logits), len(self.post_outputs)}
        if counts != {expected}:
            raise ValueError(
                f"case {self.case.case_id!r} has {expected} locality probes; got "
                f"{len(self.pre_logits)} pre-edit logits, {len(self.post_logits)} post-edit "
                f"logits and {len(self.post_outputs)} post-edit outputs"
            )


def specificity_scores(
    lalm: LALM,
    case: EditCase,
    pre_logits: Tensor,
    post_logits: Tensor,
    post_outputs: Sequence[str],
    *,
    batch_size: int = 32,
    system: str | None = None,
    history: Sequence[Turn] = (),
) -> list[Scores]:
    """One score dict per locality probe of `case` (see the module docstring).

    `pre_logits` and `post_logits` are the first-token logits of `locality_probes(case)` on
    the unedited and the edited model, `post_outputs` the post-edit greedy outputs of the same
    probes, and `system` / `history` the editor's query context.
    """
    seen = LocalityOutputs(case, pre_logits, post_logits, post_outputs)
    return specificity_of_cases(
        lalm, [seen], batch_size=batch_size, system=system, history=history
    )[0]


def specificity_of_cases(
    lalm: LALM,
    seen: Sequence[LocalityOutputs],
    *,
    batch_size: int = 32,
    system: str | None = None,
    history: Sequence[Turn] = (),
    on_batch: BatchHook | None = None,
) -> list[list[Scores]]:
    """`specificity_scores` of several cases asked in the same context (one sequential step).

    T-acc and C-acc of all of them (true answers, and the edit target where C-acc applies) come
    from one `answer_scores` call, so the few answers that need teacher forcing share batches.
    `on_batch` hears, before each batch, the positions in `seen` of the cases its rows ask about.
    """
    rows: list[tuple[Probe, str, Tensor]] = []
    row_cases: list[int] = []
    for position, outputs in enumerate(seen):
        for probe, logits in zip(locality_probes(outputs.case), outputs.post_logits, strict=True):
            rows.append((probe, probe.answer, logits))
            row_cases.append(position)
    contrasted: list[int] = []
    for position, outputs in enumerate(seen):
        for probe, logits in zip(locality_probes(outputs.case), outputs.post_logits, strict=True):
            rival = rival_option(probe, outputs.case.y_e)
            if rival is not None:
                contrasted.append(len(rows))
                rows.append((probe, rival, logits))
                row_cases.append(position)
    if not rows:
        return [[] for _ in seen]
    scores = answer_scores(
        lalm,
        [probe for probe, _, _ in rows],
        [answer for _, answer, _ in rows],
        torch.stack([logits for _, _, logits in rows]),
        batch_size=batch_size,
        system=system,
        history=history,
        on_batch=None
        if on_batch is None
        else lambda batch: on_batch([row_cases[r] for r in batch]),
    )
    return _case_scores(seen, scores, contrasted)


def _case_scores(
    seen: Sequence[LocalityOutputs], scores: AnswerScores, contrasted: Sequence[int]
) -> list[list[Scores]]:
    """Split scores of all true-answer rows, then all rival rows, back into cases."""
    rival_rows = iter(contrasted)
    result: list[list[Scores]] = []
    row = 0
    for outputs in seen:
        probes = locality_probes(outputs.case)
        kl = kl_divergence(outputs.pre_logits, outputs.post_logits).clamp_min(0)
        overlaps = {k: topk_overlap(outputs.pre_logits, outputs.post_logits, k) for k in TOP_K}
        case_scores: list[Scores] = []
        for i, probe in enumerate(probes):
            c_acc = None
            if rival_option(probe, outputs.case.y_e) is not None:
                rival = next(rival_rows)
                c_acc = float(scores.log_prob[row + i] > scores.log_prob[rival])
            case_scores.append(
                {
                    "kl": float(kl[i]),
                    **{f"top{k}": float(overlaps[k][i]) for k in TOP_K},
                    "s_acc": float(exact_match(outputs.post_outputs[i], probe.answer)),
                    "t_acc": scores.token_accuracy[row + i],
                    "c_acc": c_acc,
                }
            )
        result.append(case_scores)
        row += len(probes)
    return result


# --------------------------------------------------------------------------- records


def with_specificity(
    judged: Sequence[dict[str, Any]], scores: Sequence[Scores]
) -> list[dict[str, Any]]:
    """The judged probes of a case with each locality probe's scores as `specificity`.

    `scores` are `specificity_scores` of the same case, one per locality probe in order.
    """
    local = [i for i, entry in enumerate(judged) if entry["kind"] in LOCALITY_KINDS]
    if len(local) != len(scores):
        raise ValueError(
            f"{len(local)} judged locality probes but {len(scores)} specificity scores; "
            "score the case's locality_probes() in order"
        )
    found = dict(zip(local, scores, strict=True))
    return [
        {**entry, "specificity": found[i]} if i in found else dict(entry)
        for i, entry in enumerate(judged)
    ]


# --------------------------------------------------------------------------- aggregation


def specificity_metrics(records: Iterable[Record]) -> dict[str, float]:
    """Specificity metrics of single or sequential records, alone.

    Single: `single/<group>/<metric>` and `single/<Attribute>/<group>/<metric>`, where group is
    `locality` (all locality probes), `locality_audio`, `locality_audio/type<k>` or
    `locality_text`; per attribute the mean over probes, overall the unweighted mean over the
    attributes that have the key. Sequential: `sequential/<group>/<metric>/gap<g>`, the mean
    over evaluated edits of each edit's mean. `single_metrics` and `sequential_metrics` include
    the same keys.
    """
    records = list(records)
    if not records:
        return {}
    if records[0]["protocol"] == "single":
        return attribute_means(records, specificity_values)
    return gap_means(records, case_specificity)
