"""Training KE and MEND hypernetworks on a dataset's training split.

Per step, every case of the batch is edited with its own predicted update: one teacher-forced
pass over the cases' reliability probes reads the edit signals (and, in the same pass, the
pre-edit distributions of the locality probes); the hypernetwork predicts one update per case;
a second pass runs every case's probes with its update added. Per case the loss is

    c_edit · NLL(generality [+ reliability]) + c_loc · KL(audio locality) + c_loc_text · KL(text)

averaged over the cases of the step. Two recipes fill it in (`recipe=reference|project`):

- reference, SAKE's (`easyeditor/trainer/LALMTrainer.py` `edit_step`, `losses.kl_loc_loss`,
  `hparams/TRAINING/{EFK,MEND}/*.yaml`): the generality NLLs (mean per answer token) and the
  locality KLs are summed over a case's probes, c_edit 0.1 and both c_loc 1; each KL follows
  the probe's dataset answer and is averaged over every position of prompt and answer; two
  cases per optimizer step (batch 1, gradient accumulation 2), clipping at 100.
- project: the terms are averaged over a case's probes and taken over answer tokens only;
  the KL follows the answer the unedited model itself gives to each locality probe (its
  greedy output, generated once per probe through the runner's pre-edit cache), so argmax
  agreement along it is exactly "the edited model still says the same", the locality
  agreement logged; text locality weighs more and is checked harder (below).

Text locality is the hard side: the test split asks text questions the training split never
does. A model that learnt the training split's text questions answers them with near
certainty, so their KL is close to zero whatever the edit does, while its answers to unseen
questions are full of near-ties that any stray change of its hidden states flips. Hence, in
the project's recipe, with `unfamiliar_text` every case also gets its text question asked with
another question's options, which the model has not learnt either (`with_unfamiliar_text`);
with `shared_text_locality` every edit of a batch is checked against the text-locality probes
of the batch's other cases too. Validation asks only text questions that training never sees,
and a network built with `preserve_rank` > 0 first fits the input directions its updates
leave alone to the training split's text questions (`sake.hypernets.subspace`). The model's
weights never change: updates enter through forward hooks, so only the hypernetwork learns.

Checkpoints hold only the hypernetwork (the model is not part of the LightningModule's state).
After every validation `last.ckpt` is rewritten (it resumes a killed run) and `best-*.ckpt`
follows the lowest validation loss; the best, not the last, becomes the trained hypernetwork.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset

from sake.data.schema import EditCase, Probe, ProbeKind
from sake.evaluation.pre_edit import PreEditCache
from sake.hypernets.manifest import HypernetManifest
from sake.hypernets.signals import (
    EditedMatrix,
    ScoredPass,
    capture_signals,
    edited_matrices,
    input_moments,
    scored_pass,
    updates_added,
)
from sake.methods.hypernet import HypernetConfig, expected_manifest, new_network
from sake.training.callbacks import NonFiniteLossError, NonFiniteLossGuard, StepLog, WallClock
from sake.training.data import PlannedBatches, PlannedDataModule, plan_batches
from sake.training.modules import warmup_cosine
from sake.training.trainer import StageContext, lightning_logger, stage_trainer_config
from sake.utils.run import seed_everything

MONITOR = "val/loss"
EDIT_LR_PARAMETER = "edit_lrs"
LOCALITY_ANSWERS: tuple[str, ...] = ("pre_edit", "dataset")
AGGREGATES: tuple[str, ...] = ("sum", "mean")
KL_POSITIONS: tuple[str, ...] = ("sequence", "answer")
Metrics = dict[str, float]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class EditLossSettings:
    """Weights of the loss terms, how they are formed, whether reliability joins the edit loss.

    `c_edit` weighs the edit NLL, `c_loc` the audio-locality KL, `c_loc_text` the text-locality
    KL; with `shared_text_locality` every edit is also checked against the batch's other
    text-locality probes. `loc_temperature` softens both distributions of the locality KL
    (scaled by T² as in distillation). `locality_answers` is what the KL follows: `pre_edit`,
    the unedited model's own answer, or `dataset`, the probe's answer; `kl_positions` where it
    is taken: `sequence`, every position of prompt and answer, or `answer`, the answer tokens.
    `aggregate` joins a case's probes of one kind: `sum` or `mean`.
    """

    c_edit: float = 1.0
    c_loc: float = 1.0
    c_loc_text: float = 1.0
    shared_text_locality: bool = True
    reliability: bool = True
    loc_temperature: float = 1.0
    locality_answers: str = "pre_edit"
    kl_positions: str = "answer"
    aggregate: str = "mean"
    include_end: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (
            ("locality_answers", LOCALITY_ANSWERS),
            ("kl_positions", KL_POSITIONS),
            ("aggregate", AGGREGATES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"task.loss.{name} must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, name)!r}"
                )
        if min(self.c_edit, self.c_loc, self.c_loc_text) < 0 or self.loc_temperature <= 0:
            raise ValueError(
                "task.loss: c_edit, c_loc and c_loc_text must not be negative, "
                "loc_temperature must be positive"
            )

    def joined(self, terms: Sequence[Tensor]) -> Tensor:
        """A case's terms of one kind, summed or averaged."""
        stacked = torch.stack(list(terms))
        return stacked.sum() if self.aggregate == "sum" else stacked.mean()


@dataclass(frozen=True)
class HypernetOptimizerSettings:
    """The hypernetwork's optimizer (a `torch.optim` class by name) and its rates.

    MEND's per-matrix edit learning rates get `lr_lr`; with `edit_lrs_in_outer` they are also
    stepped by the outer optimizer, as the reference steps them with both its optimizers
    (with the same gradients, two Adam or RMSprop states agree, so that is one step at
    `lr + lr_lr`).
    """

    name: str = "AdamW"
    lr: float = 1e-4
    lr_lr: float = 1e-4
    edit_lrs_in_outer: bool = False
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0

    def __post_init__(self) -> None:
        found = getattr(torch.optim, self.name, None)
        if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
            raise ValueError(
                f"task.optimizer.name must name a torch.optim optimizer (e.g. AdamW, Adam, "
                f"RMSprop), got {self.name!r}"
            )

    @property
    def edit_lr_rate(self) -> float:
        return self.lr_lr + (self.lr if self.edit_lrs_in_outer else 0.0)


# --------------------------------------------------------------------------- probes


def locality_probes(case: EditCase) -> list[Probe]:
    return [*case.locality_audio, *case.locality_text]


def edited_probes(case: EditCase) -> list[Probe]:
    return [case.reliability, *case.generality]


def outcome_key(probe: Probe) -> str:
    """Where a probe's outcome is logged: edit success or locality agreement, per type."""
    if probe.kind is ProbeKind.RELIABILITY:
        return "edit_success/reliability"
    if probe.kind is ProbeKind.GENERALITY:
        return f"edit_success/generality_type{probe.type}"
    if probe.kind is ProbeKind.LOCALITY_AUDIO:
        return f"locality/audio_type{probe.type}"
    if probe.kind is ProbeKind.LOCALITY_TEXT:
        return "locality/text"
    raise ValueError(f"hypernetwork training uses no {probe.kind.value} probe")


def mean_kl(pre_logits: Tensor, post_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(pre ‖ post) of the next-token distributions at `temperature`, times its square,
    averaged over the positions (rows) given."""
    pre = torch.log_softmax(pre_logits.float() / temperature, dim=-1)
    post = torch.log_softmax(post_logits.float() / temperature, dim=-1)
    return (pre.exp() * (pre - post)).sum(dim=-1).mean() * temperature**2


def all_tokens_right(logits: Tensor, token_ids: Tensor) -> float:
    return float(bool((logits.argmax(dim=-1) == token_ids).all()))


def same_choices(pre_logits: Tensor, post_logits: Tensor) -> float:
    return float(bool((pre_logits.argmax(dim=-1) == post_logits.argmax(dim=-1)).all()))


class LocalityAnswers:
    """The answer each locality probe's KL is taken over.

    With a pre-edit cache, the unedited model's greedy answer (the model is frozen during
    training, so one generation per probe serves every step); a probe whose answer is empty or
    does not tokenise back the same way inside the chat sequence keeps its dataset answer.
    Without a cache, every probe uses its dataset answer.
    """

    def __init__(self, cache: PreEditCache | None, batch_size: int = 32) -> None:
        self.cache = cache
        self.batch_size = batch_size
        self._chosen: dict[str, str] = {}

    def answers(self, lalm: Any, probes: Sequence[Probe]) -> list[str]:
        cache = self.cache
        if cache is None:
            return [probe.answer for probe in probes]
        outputs = cache.outputs(lalm, probes, self.batch_size)
        return [
            self._choose(lalm, cache.key(probe), probe, output)
            for probe, output in zip(probes, outputs, strict=True)
        ]

    def prefetch(self, lalm: Any, cases: Iterable[EditCase]) -> None:
        """Generate the answers of every locality probe of `cases` at once, before training."""
        probes = list({probe: None for case in cases for probe in locality_probes(case)})
        if self.cache is not None and probes:
            self.answers(lalm, probes)

    def _choose(self, lalm: Any, key: str, probe: Probe, output: str) -> str:
        if key not in self._chosen:
            self._chosen[key] = output if _scorable(lalm, probe, output) else probe.answer
        return self._chosen[key]


def _scorable(lalm: Any, probe: Probe, answer: str) -> bool:
    """Whether `answer` can be teacher-forced after the probe's prompt.

    How the answer tokenises depends on the text around it, never on the audio placeholders
    earlier in the prompt, so the probe is checked without its audio (nothing to decode).
    """
    if not answer:
        return False
    text_only = replace(probe, file=None, audio_path=None)
    try:
        lalm.target_token_ids(lalm.prepare([text_only]), [answer])
    except ValueError:
        return False
    return True


@dataclass
class EditLosses:
    """The loss of a batch of edits, its terms, and 0/1 outcomes per probe group."""

    total: Tensor
    edit: Tensor
    locality_audio: Tensor
    locality_text: Tensor
    outcomes: dict[str, list[float]] = field(default_factory=dict)

    @property
    def locality(self) -> Tensor:
        """Both locality KLs, unweighted."""
        return self.locality_audio + self.locality_text


@dataclass(frozen=True)
class EditRows:
    """Where one case sits in the two passes: its reliability row before the edit, and the
    pre-edit rows of the locality probes its edit is checked against (its own, then shared)."""

    edit_row: int
    locality_rows: tuple[int, ...]


def mean_or_zero(terms: Sequence[Tensor], like: Tensor) -> Tensor:
    return torch.stack(list(terms)).mean() if terms else like.new_zeros(())


# --------------------------------------------------------------------------- module


class HypernetModule(pl.LightningModule):
    """Trains `network` to edit `lalm`'s `matrices`; the model itself stays frozen.

    The model is kept outside the module's state (it is not an `nn.Module` attribute), so
    checkpoints hold exactly the hypernetwork, running statistics included.
    """

    def __init__(
        self,
        network: nn.Module,
        lalm: Any,
        matrices: Sequence[EditedMatrix],
        losses: EditLossSettings,
        optimizer: HypernetOptimizerSettings,
        locality_answers: LocalityAnswers | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.lalm = lalm
        self.matrices = list(matrices)
        self.loss_settings = losses
        self.optimizer_settings = optimizer
        self.locality_answers = locality_answers or LocalityAnswers(None)
        self.validation_metrics: Metrics = {}
        self.validation_history: dict[int, Metrics] = {}
        self.validated_step = -1
        self._validation: dict[str, list[float]] = defaultdict(list)
        lalm.model.requires_grad_(False)

    # ---------------------------------------------------------------- the edit loss

    def edit_losses(self, cases: Sequence[EditCase]) -> EditLosses:
        """Edit every case with its own predicted update and score the result."""
        include_end = self.loss_settings.include_end
        sequence = self.loss_settings.kl_positions == "sequence"
        pre_probes, pre_targets, placed = self.pre_edit_rows(cases)
        post_probes: list[Probe] = []
        post_targets: list[str] = []
        for case, rows in zip(cases, placed, strict=True):
            post_probes += [*edited_probes(case), *(pre_probes[row] for row in rows.locality_rows)]
            post_targets += [probe.answer for probe in edited_probes(case)]
            post_targets += [pre_targets[row] for row in rows.locality_rows]
        signals, pre = capture_signals(
            self.lalm,
            self.lalm.prepare(pre_probes),
            pre_targets,
            self.matrices,
            [rows.edit_row for rows in placed],
            include_end=include_end,
            sequence=sequence,
        )
        updates = [self.network(signal) for signal in signals]
        group_sizes = [
            len(edited_probes(case)) + len(rows.locality_rows)
            for case, rows in zip(cases, placed, strict=True)
        ]
        with updates_added(self.matrices, updates, group_sizes):
            post = scored_pass(
                self.lalm,
                self.lalm.prepare(post_probes),
                post_targets,
                include_end,
                sequence=sequence,
            )
        return self._combine(cases, pre_probes, pre, post, placed)

    def pre_edit_rows(
        self, cases: Sequence[EditCase]
    ) -> tuple[list[Probe], list[str], list[EditRows]]:
        """The pre-edit pass (each case's reliability probe, then its locality probes, with
        the answers the KL follows) and, per case, the rows its edit is checked against."""
        answers = iter(
            self.locality_answers.answers(
                self.lalm, [probe for case in cases for probe in locality_probes(case)]
            )
        )
        probes: list[Probe] = []
        targets: list[str] = []
        edit_rows: list[int] = []
        own_rows: list[list[int]] = []
        for case in cases:
            edit_rows.append(len(probes))
            probes.append(case.reliability)
            targets.append(case.reliability.answer)
            own_rows.append(list(range(len(probes), len(probes) + len(locality_probes(case)))))
            for probe in locality_probes(case):
                probes.append(probe)
                targets.append(next(answers))
        text_rows = [
            row for rows in own_rows for row in rows if probes[row].kind is ProbeKind.LOCALITY_TEXT
        ]
        placed = []
        for edit_row, rows in zip(edit_rows, own_rows, strict=True):
            checked = list(rows)
            if self.loss_settings.shared_text_locality:
                seen = {probes[row] for row in rows}
                for row in text_rows:
                    if probes[row] not in seen:
                        seen.add(probes[row])
                        checked.append(row)
            placed.append(EditRows(edit_row, tuple(checked)))
        return probes, targets, placed

    def _combine(
        self,
        cases: Sequence[EditCase],
        pre_probes: Sequence[Probe],
        pre: ScoredPass,
        post: ScoredPass,
        placed: Sequence[EditRows],
    ) -> EditLosses:
        settings = self.loss_settings
        temperature = settings.loc_temperature
        outcomes: dict[str, list[float]] = defaultdict(list)
        edit_terms: list[Tensor] = []
        kind_terms: dict[ProbeKind, list[Tensor]] = defaultdict(list)
        post_row = 0
        for case, rows in zip(cases, placed, strict=True):
            nlls = []
            for probe in edited_probes(case):
                if probe.kind is ProbeKind.GENERALITY or settings.reliability:
                    nlls.append(post.nll(post_row))
                logits, ids = post.logits[post_row], post.token_ids[post_row]
                outcomes[outcome_key(probe)].append(all_tokens_right(logits, ids))
                post_row += 1
            kls: dict[ProbeKind, list[Tensor]] = defaultdict(list)
            for row in rows.locality_rows:
                before, after = pre.logits[row], post.logits[post_row]
                if pre.sequence is not None and post.sequence is not None:
                    kl = mean_kl(pre.sequence[row], post.sequence[post_row], temperature)
                else:
                    kl = mean_kl(before, after, temperature)
                kls[pre_probes[row].kind].append(kl)
                outcomes[outcome_key(pre_probes[row])].append(same_choices(before, after))
                post_row += 1
            edit_terms.append(settings.joined(nlls))
            for kind, values in kls.items():
                kind_terms[kind].append(settings.joined(values))
        edit = torch.stack(edit_terms).mean()
        audio = mean_or_zero(kind_terms[ProbeKind.LOCALITY_AUDIO], edit)
        text = mean_or_zero(kind_terms[ProbeKind.LOCALITY_TEXT], edit)
        total = settings.c_edit * edit + settings.c_loc * audio + settings.c_loc_text * text
        return EditLosses(total, edit, audio, text, dict(outcomes))

    # ---------------------------------------------------------------- training

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        cases = batch["cases"]
        losses = self.edit_losses(cases)
        self.check_finite(losses)
        logged = {
            "train/loss": losses.total,
            "train/edit_loss": losses.edit,
            "train/loc_loss": losses.locality,
            "train/loc_audio_loss": losses.locality_audio,
            "train/loc_text_loss": losses.locality_text,
        }
        logged.update({f"train/{key}": float(np.mean(v)) for key, v in losses.outcomes.items()})
        self.log_dict(logged, batch_size=len(cases))
        return losses.total

    def check_finite(self, losses: EditLosses) -> None:
        """Stop before the update when a loss term is NaN or infinite, naming it and the step."""
        for name, value in (("edit", losses.edit), ("locality", losses.locality)):
            number = float(value.detach())
            if not math.isfinite(number):
                raise NonFiniteLossError(
                    f"hypernetwork training: the {name} loss is {number} at step "
                    f"{self.global_step}; stopping before the update. Lower the learning rate "
                    "or check the data, then resume from the last checkpoint with "
                    "task.ckpt_path=..."
                )

    # ---------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._validation = defaultdict(list)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        cases = batch["cases"]
        losses = self.edit_losses(cases)
        for name, value in (
            ("loss", losses.total),
            ("edit_loss", losses.edit),
            ("loc_loss", losses.locality),
            ("loc_audio_loss", losses.locality_audio),
            ("loc_text_loss", losses.locality_text),
        ):
            self._validation[name] += [float(value)] * len(cases)
        for key, values in losses.outcomes.items():
            self._validation[key] += values

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._validation:
            return
        metrics = {key: float(np.mean(values)) for key, values in self._validation.items()}
        self.validation_metrics = metrics
        self.validated_step = self.global_step
        self.validation_history[self.global_step] = metrics
        self.log_dict({f"val/{key}": value for key, value in metrics.items()}, batch_size=1)

    # ---------------------------------------------------------------- optimisation

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The edit learning rates (MEND) apart from every other hypernetwork weight."""
        settings = self.optimizer_settings
        named = list(self.network.named_parameters())
        rates = [p for name, p in named if name.split(".")[-1] == EDIT_LR_PARAMETER]
        others = [p for name, p in named if name.split(".")[-1] != EDIT_LR_PARAMETER]
        groups = [{"params": others, "lr": settings.lr, "weight_decay": settings.weight_decay}]
        if rates:
            groups.append({"params": rates, "lr": settings.edit_lr_rate, "weight_decay": 0.0})
        return groups

    def make_optimizer(self) -> torch.optim.Optimizer:
        optimizer_class = getattr(torch.optim, self.optimizer_settings.name)
        return optimizer_class(self.parameter_groups())

    def configure_optimizers(self) -> dict:
        settings = self.optimizer_settings
        optimizer = self.make_optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, settings.warmup_steps, total, settings.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["validation_history"] = dict(self.validation_history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.validation_history = dict(checkpoint.get("validation_history", {}))


# --------------------------------------------------------------------------- data


class CaseBatches(Dataset):
    """Fixed batches of validation cases, in order."""

    def __init__(self, cases: Sequence[EditCase], batch_size: int) -> None:
        if not cases:
            raise ValueError("validation needs at least one case")
        self.cases = list(cases)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.cases) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, index: int) -> dict[str, list[EditCase]]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        return {"cases": self.cases[index * self.batch_size : (index + 1) * self.batch_size]}


def _case_batch(cases: Sequence[EditCase], position: int, indices: np.ndarray) -> dict:
    return {"cases": [cases[int(i)] for i in indices]}


class EditCaseDataModule(PlannedDataModule):
    """`steps` planned batches of training cases (shuffled passes, resumable) and the
    validation cases in fixed batches."""

    def __init__(
        self,
        train_cases: Sequence[EditCase],
        val_cases: Sequence[EditCase],
        *,
        cases_per_step: int,
        steps: int,
        val_batch_size: int,
        rng: np.random.Generator,
    ) -> None:
        plan = plan_batches([1] * len(train_cases), cases_per_step, steps, rng)
        train = PlannedBatches(plan, partial(_case_batch, list(train_cases)))
        super().__init__(train, CaseBatches(val_cases, val_batch_size))
        self.train_cases = list(train_cases)
        self.val_cases = list(val_cases)

    def planned_cases(self) -> list[EditCase]:
        """Every case the run will edit: its planned training cases and the validation cases."""
        planned = {int(i) for batch in self.train.batches for i in batch}
        return [self.train_cases[i] for i in sorted(planned)] + self.val_cases

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Batches hold cases, not tensors: the model prepares them on its own device."""
        return batch


def split_for_training(
    splits: Mapping[str, Sequence[EditCase]], validation_cases: int
) -> tuple[list[EditCase], list[EditCase]]:
    """Training cases and a held-out validation slice of `validation_cases` cases.

    The slice comes from the release's validation split (SAKE's ALL_val) when it has one,
    else from the end of the training split, which then no longer trains on it. Training
    never asks the validation slice's text-locality questions (see `without_text_of`).
    """
    train = list(splits.get("train") or [])
    if validation_cases < 1:
        raise ValueError("task.validation.cases must be at least 1")
    if splits.get("val"):
        val = list(splits["val"])[:validation_cases]
        return without_text_of(val, train), val
    if len(train) <= validation_cases:
        raise ValueError(
            f"the training split has {len(train)} cases, too few to hold out "
            f"{validation_cases} for validation"
        )
    val = train[-validation_cases:]
    return without_text_of(val, train[:-validation_cases]), val


def with_unfamiliar_text(cases: Sequence[EditCase], rng: np.random.Generator) -> list[EditCase]:
    """Every case with one more text-locality probe: its text question with foreign options.

    The options come from another case's text question with as many (other) options, drawn
    with `rng`; the probe's answer is that question's answer (the locality KL follows the
    unedited model's own output). A question whose options are not lines of its text gets no
    such probe.
    """
    donors = list({probe: None for case in cases for probe in case.locality_text})
    return [
        replace(
            case,
            locality_text=(
                *case.locality_text,
                *filter(None, (unfamiliar(probe, donors, rng) for probe in case.locality_text)),
            ),
        )
        for case in cases
    ]


def unfamiliar(probe: Probe, donors: Sequence[Probe], rng: np.random.Generator) -> Probe | None:
    """`probe` asked with the options of a donor question drawn from `donors`, if it has any."""
    lines = probe.question.split("\n")
    if not probe.options or not set(probe.options) <= set(lines):
        return None
    fitting = [
        donor
        for donor in donors
        if donor.question != probe.question
        and len(donor.options) == len(probe.options)
        and donor.options != probe.options
    ]
    if not fitting:
        return None
    donor = fitting[int(rng.integers(len(fitting)))]
    swapped = dict(zip(probe.options, donor.options, strict=True))
    question = "\n".join(swapped.get(line, line) for line in lines)
    return replace(probe, question=question, options=donor.options, answer=donor.answer)


def without_text_of(held_out: Sequence[EditCase], cases: Sequence[EditCase]) -> list[EditCase]:
    """`cases` without the text-locality probes whose question a `held_out` case asks.

    Validation and training draw text questions from the same bank while the test split asks
    unseen ones; keeping validation's questions out of training makes validation measure text
    locality the way the test does.
    """
    asked = {probe.question for case in held_out for probe in case.locality_text}
    return [
        replace(
            case,
            locality_text=tuple(p for p in case.locality_text if p.question not in asked),
        )
        for case in cases
    ]


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class TrainedHypernet:
    """The best hypernetwork of a run, its manifest and the run's metrics."""

    manifest: HypernetManifest
    state_dict: dict[str, Tensor]
    metrics: Metrics


def build_module(
    config: HypernetConfig,
    lalm: Any,
    settings: DictConfig,
    seed: int,
    cache_root: Path | None = None,
) -> HypernetModule:
    """A fresh hypernetwork (seeded) for the config's roles on `lalm`, ready to train.

    Pre-edit answers of the locality probes are kept under `cache_root` (shared with the
    editing runs on the same model), or in memory when it is None.
    """
    matrices = edited_matrices(lalm, config.roles)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = new_network(config, lalm, matrices)
    losses = EditLossSettings(**settings.loss, include_end=bool(config.include_end))
    return HypernetModule(
        network,
        lalm,
        matrices,
        losses,
        HypernetOptimizerSettings(**settings.optimizer),
        locality_answers(losses, lalm, settings, cache_root),
    )


def locality_answers(
    losses: EditLossSettings, lalm: Any, settings: DictConfig, cache_root: Path | None
) -> LocalityAnswers:
    if losses.locality_answers == "dataset":
        return LocalityAnswers(None)
    max_new_tokens = int(settings.pre_edit.max_new_tokens)
    cache = PreEditCache(cache_root, lalm.fingerprint(), max_new_tokens)
    return LocalityAnswers(cache, int(settings.pre_edit.batch_size))


def train_hypernet(
    config: HypernetConfig,
    lalm: Any,
    train_cases: Sequence[EditCase],
    val_cases: Sequence[EditCase],
    settings: DictConfig,
    context: StageContext,
    cache_root: Path | None = None,
) -> TrainedHypernet:
    """Train from scratch (or resume `settings.ckpt_path`); keep the best validation model."""
    fingerprint = lalm.fingerprint()
    module = build_module(config, lalm, settings, context.seed, cache_root)
    fit_preserved_subspace(module, train_cases)
    if settings.get("unfamiliar_text"):
        train_cases = with_unfamiliar_text(train_cases, context.rng(37))
        val_cases = with_unfamiliar_text(val_cases, context.rng(41))
    trainer_cfg = stage_trainer_config(context, settings)
    data = EditCaseDataModule(
        train_cases,
        val_cases,
        cases_per_step=int(settings.cases_per_step),
        steps=int(trainer_cfg.max_steps),
        val_batch_size=int(settings.validation.batch_size),
        rng=context.rng(31),
    )
    metrics, best_state = fit_hypernet(module, data, context, settings)
    training = {
        "settings": {
            key: value
            for key, value in _plain(settings).items()
            if key
            in (
                "cases_per_step",
                "loss",
                "unfamiliar_text",
                "pre_edit",
                "optimizer",
                "validation",
                "trainer",
            )
        },
        "losses": asdict(module.loss_settings),
        "train_cases": len(train_cases),
        "val_cases": len(val_cases),
        "metrics": metrics,
    }
    manifest = expected_manifest(config, module.matrices, fingerprint, training)
    return TrainedHypernet(manifest, best_state, metrics)


def fit_preserved_subspace(module: HypernetModule, cases: Sequence[EditCase]) -> None:
    """Fit the network's preserved input directions, if it has any, to the text-locality
    probes of `cases` with the answers the locality KL follows."""
    preserved = getattr(module.network, "preserved", None)
    if preserved is None or not preserved.rank:
        return
    probes = list({probe: None for case in cases for probe in case.locality_text})
    if not probes:
        raise ValueError("preserve_rank > 0 needs training cases with text-locality probes")
    answers = module.locality_answers.answers(module.lalm, probes)
    include_end = module.loss_settings.include_end
    preserved.fit(input_moments(module.lalm, probes, answers, module.matrices, include_end))


def fit_hypernet(
    module: HypernetModule,
    data: EditCaseDataModule,
    context: StageContext,
    settings: DictConfig,
) -> tuple[Metrics, dict[str, Tensor]]:
    """Fit, then return the best validation step's metrics and hypernetwork state.

    Both checkpoints are written after validations: `best-*.ckpt` when the validation loss
    improves, `last.ckpt` every time (the callback order makes it carry the updated best).
    """
    trainer_cfg = stage_trainer_config(context, settings)
    check_validation_schedule(trainer_cfg)
    checkpoint_dir = str(context.out_dir / "checkpoints")
    best = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="best-{step:06d}", monitor=MONITOR, mode="min"
    )
    latest = ModelCheckpoint(dirpath=checkpoint_dir, filename="{step:06d}", save_last=True)
    clock = WallClock()
    progress = StepLog(context.name, int(settings.get("progress_every") or 50))
    callbacks = [NonFiniteLossGuard(), clock, progress, best, latest]
    logger = lightning_logger(context.logger, context.out_dir, context.name)
    trainer: pl.Trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=logger)
    seed_everything(context.seed)
    with module.lalm.cached_audio_embeddings():
        module.locality_answers.prefetch(module.lalm, data.planned_cases())
        trainer.fit(module, datamodule=data, ckpt_path=settings.get("ckpt_path"))
    stored = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
    best_step = int(stored["global_step"])
    state = {key.removeprefix("network."): tensor for key, tensor in stored["state_dict"].items()}
    metrics: Metrics = {
        "train/steps": float(trainer.global_step),
        "train/seconds": clock.seconds,
        "best/step": float(best_step),
        **{f"best/val/{k}": v for k, v in module.validation_history[best_step].items()},
        **{f"last/val/{k}": v for k, v in module.validation_metrics.items()},
    }
    if logger:
        logger.log_metrics(metrics)
        logger.experiment.finish()
    return metrics, state


def check_validation_schedule(trainer_cfg: DictConfig) -> None:
    """The last step must be validated, so that the final weights compete for the best."""
    interval = trainer_cfg.get("val_check_interval")
    max_steps = int(trainer_cfg.max_steps)
    if not isinstance(interval, int) or max_steps % interval:
        raise ValueError(
            f"hypernetwork training validates every val_check_interval steps and keeps the "
            f"best: set task.trainer.val_check_interval to a whole number of steps dividing "
            f"task.trainer.max_steps ({max_steps}), got {interval!r}"
        )


def _plain(settings: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(settings, resolve=True)  # type: ignore[return-value]
