"""LightningModules of the embedded model's stages: backbone, audio encoder, connector.

All of them checkpoint only what they train: `on_save_checkpoint` drops every frozen tensor,
and `on_load_checkpoint` checks that a checkpoint holds exactly the trainable tensors, naming
any missing or unexpected key, before Lightning copies them in.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerFast

from sake.evaluation.judges.option import is_correct
from sake.models.audio_lalm import answer_text
from sake.models.configuration_desta import DestaAudioEncoderConfig
from sake.models.modeling_desta import (
    CONNECTOR_PREFIX,
    LLM_PREFIX,
    DestaForCausalLM,
    WhisperAudioEncoder,
    check_state_dict_keys,
    position_ids_from_attention_mask,
)
from sake.training.clips import EncoderStates
from sake.training.data import EvalItem
from sake.training.prompts import IGNORE_INDEX, stop_token_ids


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW with linear warmup and cosine decay to `min_lr_ratio * lr`."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    beta2: float = 0.98


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier at `step`."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scored_token_loss(
    llm: nn.Module,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
) -> Tensor:
    """Mean next-token cross-entropy over labelled positions; logits only where scored.

    Positions come from the attention mask, as in `DestaForCausalLM`, so left and right
    padding give the same loss.
    """
    hidden = llm.get_decoder()(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids_from_attention_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    if not bool(scored.any()):
        raise ValueError("the batch has no scored tokens")
    logits = llm.get_output_embeddings()(hidden[:, :-1][scored])
    return nn.functional.cross_entropy(logits.float(), targets[scored])


class TrainableSubsetModule(pl.LightningModule):
    """Checkpoints hold the trainable parameters only; resuming checks their names strictly."""

    def __init__(self, optimizer: OptimizerSettings) -> None:
        super().__init__()
        self.optimizer_settings = optimizer
        self.strict_loading = False
        self.validation_metrics: dict[str, float] = {}
        self.validated_step = -1

    def record_validation(self, metrics: dict[str, float]) -> None:
        """Keep the latest validation metrics and log them (not during the sanity check)."""
        if self.trainer.sanity_checking:
            return
        self.validation_metrics = metrics
        self.validated_step = self.global_step
        if metrics:
            self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=1)

    def loss(self, batch: Mapping) -> Tensor:
        """The training loss of one batch (also usable outside a Trainer)."""
        raise NotImplementedError

    def training_step(self, batch: Mapping, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        size = len(next(iter(batch.values())))
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def trainable_keys(self) -> list[str]:
        return [name for name, parameter in self.named_parameters() if parameter.requires_grad]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keys = set(self.trainable_keys())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_state_dict_keys(self.trainable_keys(), checkpoint["state_dict"].keys())

    def configure_optimizers(self) -> dict:
        settings = self.optimizer_settings
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        groups = [
            {
                "params": [p for _, p in named if p.dim() >= 2],
                "weight_decay": settings.weight_decay,
            },
            {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, settings.beta2))
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, settings.warmup_steps, total, settings.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class GenerationModule(TrainableSubsetModule):
    """Validation by greedy generation judged with the option judge, accuracy per group."""

    def __init__(
        self,
        model: DestaForCausalLM,
        tokenizer: PreTrainedTokenizerFast,
        optimizer: OptimizerSettings,
        max_new_tokens: int,
    ) -> None:
        super().__init__(optimizer)
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.stop_ids = stop_token_ids(tokenizer)
        self._outcomes: dict[str, list[bool]] = defaultdict(list)

    def audio_embeds(self, clips: Tensor) -> Tensor | None:
        return None

    @torch.no_grad()
    def generate_answers(self, batch: Mapping) -> list[str]:
        new_tokens = self.model.generate(
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=int(self.tokenizer.pad_token_id),
            audio_embeds=self.audio_embeds(batch["clips"]),
        )
        return [answer_text(self.tokenizer, row, self.stop_ids) for row in new_tokens.tolist()]

    def on_validation_epoch_start(self) -> None:
        self._outcomes = defaultdict(list)

    def validation_step(self, batch: Mapping, batch_idx: int) -> None:
        items: Sequence[EvalItem] = batch["items"]
        for item, output in zip(items, self.generate_answers(batch), strict=True):
            self._outcomes[item.group].append(is_correct(output, item.options, item.answer))

    def on_validation_epoch_end(self) -> None:
        self.record_validation(group_accuracies(self._outcomes))


def group_accuracies(outcomes: Mapping[str, Sequence[bool]]) -> dict[str, float]:
    """Accuracy per group and the unweighted mean over groups (`mean`)."""
    accuracies = {group: sum(ok) / len(ok) for group, ok in sorted(outcomes.items()) if ok}
    if accuracies:
        accuracies["mean"] = sum(accuracies.values()) / len(accuracies)
    return accuracies


class BackboneModule(GenerationModule):
    """Language-model pretraining of `llm_model`; everything else stays frozen."""

    def __init__(
        self,
        model: DestaForCausalLM,
        tokenizer: PreTrainedTokenizerFast,
        optimizer: OptimizerSettings,
        max_new_tokens: int = 24,
    ) -> None:
        super().__init__(model, tokenizer, optimizer, max_new_tokens)
        model.freeze_except((LLM_PREFIX,))
        model.eval()
        model.llm_model.train()

    def loss(self, batch: Mapping) -> Tensor:
        return scored_token_loss(
            self.model.llm_model,
            batch["attention_mask"],
            batch["labels"],
            input_ids=batch["input_ids"],
        )


class ConnectorModule(GenerationModule):
    """Connector training with the encoder and the LLM frozen (DeSTA stage 2).

    The frozen encoder's tapped-layer outputs come precomputed (`EncoderStates`), so a step
    runs only the connector and the LLM.
    """

    def __init__(
        self,
        model: DestaForCausalLM,
        tokenizer: PreTrainedTokenizerFast,
        states: EncoderStates,
        optimizer: OptimizerSettings,
        max_new_tokens: int = 24,
    ) -> None:
        super().__init__(model, tokenizer, optimizer, max_new_tokens)
        self.states = states
        model.freeze_except((CONNECTOR_PREFIX,))
        model.eval()
        model.perception.connector.train()

    def audio_embeds(self, clips: Tensor) -> Tensor | None:
        if bool((clips < 0).any()):
            raise ValueError("every connector training row needs a clip")
        hidden = self.states.hidden_states(clips, self.device)
        frame_mask = self.states.frame_mask(clips, self.device)
        embeds = self.model.perception.connect(hidden, frame_mask)
        return embeds.to(self.model.llm_model.get_input_embeddings().weight.dtype)

    def loss(self, batch: Mapping) -> Tensor:
        embeds = self.model.build_inputs_embeds(
            batch["input_ids"], self.audio_embeds(batch["clips"])
        )
        return scored_token_loss(
            self.model.llm_model, batch["attention_mask"], batch["labels"], inputs_embeds=embeds
        )


class EncoderModule(TrainableSubsetModule):
    """Audio-encoder pretraining: a linear head per label family on a pooled output.

    Pooling is the mean over frames or, per family, attention with one learned query (as the
    connector's queries will read the encoder): with a shared mean, every family competes for
    the same 192 numbers and language identification loses. The queries start at zero, which
    is the mean. Heads and queries exist only for this stage; the model keeps the encoder.
    """

    def __init__(
        self,
        config: DestaAudioEncoderConfig,
        families: Mapping[str, Sequence[str]],
        optimizer: OptimizerSettings,
        seed: int,
        class_weights: Sequence[Tensor] | None = None,
        *,
        pooling: str = "mean",
        family_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(optimizer)
        if pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got {pooling!r}")
        unknown = sorted(set(family_weights or {}) - set(families))
        if unknown:
            raise ValueError(f"family_weights names unknown families {unknown}")
        self.families = list(families)
        self.family_weights = {f: float((family_weights or {}).get(f, 1.0)) for f in families}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = WhisperAudioEncoder(config)
            self.heads = nn.ModuleList(
                nn.Linear(config.d_model, len(labels)) for labels in families.values()
            )
        self.pool_queries = (
            nn.Parameter(torch.zeros(len(families), config.d_model))
            if pooling == "attention"
            else None
        )
        for index, weights in enumerate(class_weights or ()):
            self.register_buffer(f"class_weights_{index}", weights.float(), persistent=False)
        self._correct: dict[str, list[bool]] = defaultdict(list)

    def forward(self, features: Tensor, feature_mask: Tensor) -> list[Tensor]:
        """Logits of every family's head, each (clips, labels)."""
        last = self.encoder.encoder.layer_norm(self.encoder(features, feature_mask)[-1])
        frame_mask = self.encoder.frame_mask(feature_mask)
        if self.pool_queries is None:
            pooled = masked_mean(last, frame_mask)
            return [head(pooled) for head in self.heads]
        pooled = attention_pool(last, self.pool_queries, frame_mask)
        return [head(pooled[:, i]) for i, head in enumerate(self.heads)]

    def family_losses(self, logits: Sequence[Tensor], targets: Tensor) -> dict[str, Tensor]:
        """Cross-entropy of each family over the clips that carry one of its labels."""
        losses = {}
        for column, (family, family_logits) in enumerate(zip(self.families, logits, strict=True)):
            labelled = targets[:, column] >= 0
            if bool(labelled.any()):
                losses[family] = nn.functional.cross_entropy(
                    family_logits[labelled],
                    targets[labelled, column],
                    weight=getattr(self, f"class_weights_{column}", None),
                )
        return losses

    def loss(self, batch: Mapping) -> Tensor:
        """Weighted sum over label families of each family's mean cross-entropy."""
        logits = self(batch["features"], batch["feature_mask"])
        losses = self.family_losses(logits, batch["targets"])
        return torch.stack([self.family_weights[f] * loss for f, loss in losses.items()]).sum()

    def on_validation_epoch_start(self) -> None:
        self._correct = defaultdict(list)

    def validation_step(self, batch: Mapping, batch_idx: int) -> None:
        logits = self(batch["features"], batch["feature_mask"])
        targets = batch["targets"]
        for column, (family, family_logits) in enumerate(zip(self.families, logits, strict=True)):
            labelled = targets[:, column] >= 0
            hits = family_logits[labelled].argmax(-1) == targets[labelled, column]
            self._correct[family].extend(bool(h) for h in hits)

    def on_validation_epoch_end(self) -> None:
        self.record_validation(group_accuracies(self._correct))


def attention_pool(hidden: Tensor, queries: Tensor, mask: Tensor | None) -> Tensor:
    """(clips, frames, width) pooled by each of (n, width) queries -> (clips, n, width)."""
    scores = torch.einsum("btd,nd->bnt", hidden, queries.to(hidden.dtype)) / math.sqrt(
        hidden.shape[-1]
    )
    if mask is not None:
        scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
    return torch.einsum("bnt,btd->bnd", scores.softmax(dim=-1), hidden)


def masked_mean(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the real frames of (clips, frames, width); all frames without a mask."""
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
