"""Batches for every training stage, planned up front so that a run is reproducible and resumable.

A stage trains for `max_steps` optimizer steps; its data module plans exactly that many
batches from the stage seed (length-bucketed, so little compute goes to padding) and serves
them as one epoch. Resuming from a checkpoint skips the batches already trained on, so a
killed run continues with the batch it would have seen next.

Validation items are questions with a known answer: the model generates greedily, as at
evaluation, and the option judge decides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerFast

from sake.training.clips import ClipFeatures
from sake.training.prompts import IGNORE_INDEX, TokenSequence

BUCKET_BATCHES = 32


# --------------------------------------------------------------------------- batching


def plan_batches(
    lengths: Sequence[int], batch_size: int, n_batches: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """`n_batches` batches of indices: shuffled passes over the data, length-bucketed.

    Each pass is cut into buckets of BUCKET_BATCHES batches, sorted by length inside a bucket,
    and the batches of a pass are shuffled, so every batch holds sequences of similar length.
    """
    if not len(lengths):
        raise ValueError("cannot plan batches over an empty dataset")
    lengths = np.asarray(lengths)
    batches: list[np.ndarray] = []
    while len(batches) < n_batches:
        order = rng.permutation(len(lengths))
        pass_batches = []
        bucket = batch_size * BUCKET_BATCHES
        for begin in range(0, len(order), bucket):
            chunk = order[begin : begin + bucket]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            pass_batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        batches += [pass_batches[i] for i in rng.permutation(len(pass_batches))]
    return batches[:n_batches]


def pad_sequences(
    sequences: Sequence[TokenSequence], pad_id: int, padding_side: str = "right"
) -> dict[str, Tensor]:
    """input_ids, attention_mask, labels (IGNORE_INDEX on padding) and clip indices."""
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        n = len(sequence)
        span = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, span] = torch.from_numpy(sequence.input_ids.astype(np.int64))
        labels[row, span] = torch.from_numpy(sequence.labels.astype(np.int64))
        attention_mask[row, span] = 1
    clips = torch.tensor([sequence.clip for sequence in sequences], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "clips": clips,
    }


class PlannedBatches(Dataset):
    """Item i is planned batch `start + i` (cyclically), collated on access.

    A resumed run sets `start` to the number of batches already trained; the length stays
    that of the whole plan because Lightning resumes counting inside the epoch.
    """

    def __init__(
        self, batches: Sequence[np.ndarray], collate: Callable[[int, np.ndarray], dict]
    ) -> None:
        self.batches = list(batches)
        self.collate = collate
        self.start = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        _check_index(index, len(self))
        position = (self.start + index) % len(self.batches)
        return self.collate(position, self.batches[position])


def _check_index(index: int, length: int) -> None:
    """Plain iteration over a Dataset stops at the first IndexError."""
    if not 0 <= index < length:
        raise IndexError(f"batch {index} out of range (0..{length - 1})")


def sequence_batches(
    sequences: Sequence[TokenSequence],
    batch_size: int,
    n_batches: int,
    pad_id: int,
    rng: np.random.Generator,
    padding_side: str = "right",
) -> PlannedBatches:
    plan = plan_batches([len(s) for s in sequences], batch_size, n_batches, rng)
    return PlannedBatches(
        plan, lambda _, batch: pad_sequences([sequences[i] for i in batch], pad_id, padding_side)
    )


# --------------------------------------------------------------------------- evaluation items


@dataclass
class EvalItem:
    """A question asked at validation: the prompt text, what is judged right, a group name.

    Not frozen: Lightning rebuilds dataclasses found in a batch when it moves the batch.
    """

    prompt: str
    question: str
    answer: str
    group: str
    options: tuple[str, ...] = ()
    clip: int = -1


class EvalBatches(Dataset):
    """Left-padded prompt batches for greedy generation; items sorted by length."""

    def __init__(
        self, items: Sequence[EvalItem], tokenizer: PreTrainedTokenizerFast, batch_size: int
    ) -> None:
        ids = tokenizer([item.prompt for item in items], add_special_tokens=False)["input_ids"]
        order = np.argsort([len(row) for row in ids], kind="stable")
        self.pad_id = int(tokenizer.pad_token_id)
        self.rows = [(items[i], ids[i]) for i in order]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.rows) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, index: int) -> dict:
        _check_index(index, len(self))
        rows = self.rows[index * self.batch_size : (index + 1) * self.batch_size]
        sequences = [
            TokenSequence(np.asarray(ids), np.full(len(ids), IGNORE_INDEX), item.clip)
            for item, ids in rows
        ]
        batch = pad_sequences(sequences, self.pad_id, padding_side="left")
        batch["items"] = [item for item, _ in rows]
        return batch


def group_counts(items: Sequence[EvalItem]) -> dict[str, int]:
    return dict(sorted(Counter(item.group for item in items).items()))


# --------------------------------------------------------------------------- audio clips


@dataclass(frozen=True)
class SpecAugment:
    """Light augmentation in the log-mel domain: a time shift, frequency and time masks."""

    max_shift_frames: int = 40
    freq_masks: int = 2
    freq_width: int = 8
    time_masks: int = 2
    time_width: int = 20

    def __call__(self, features: Tensor, mask: Tensor, rng: np.random.Generator) -> tuple:
        """One clip's (n_mels, frames) features and (frames,) mask, augmented copies."""
        features, mask = features.clone(), mask.clone()
        floor = features.min()
        n_real = int(mask.sum())
        room = features.shape[-1] - n_real
        shift = int(rng.integers(0, min(self.max_shift_frames, room) + 1)) if room > 0 else 0
        if shift:
            features[:, shift : shift + n_real] = features[:, :n_real].clone()
            features[:, :shift] = floor
            mask[:] = False
            mask[shift : shift + n_real] = True
        for _ in range(self.freq_masks):
            width = int(rng.integers(0, self.freq_width + 1))
            start = int(rng.integers(0, features.shape[0] - width + 1))
            features[start : start + width, :] = floor
        for _ in range(self.time_masks):
            width = int(rng.integers(0, self.time_width + 1))
            start = shift + int(rng.integers(0, max(1, n_real - width)))
            features[:, start : start + width] = floor
        return features, mask


def clip_batches(
    features: ClipFeatures,
    targets: Tensor,
    batch_size: int,
    n_batches: int,
    seed: int,
    augment: SpecAugment | None,
    *,
    repeats: Sequence[int] | None = None,
    lead_clips: Sequence[int] = (),
    lead_batches: int = 0,
    plain_clips: Sequence[int] = (),
) -> PlannedBatches:
    """Encoder-pretraining batches; augmentation is seeded by the batch's position.

    `repeats[i]` is how many times clip i appears in a pass (oversampling a track); the first
    `lead_batches` batches hold only `lead_clips` (a skill learnt alone before the rest);
    `plain_clips` are never augmented (a skill the augmentation would erase).
    """
    rng = np.random.default_rng([seed, 1])
    counts = np.ones(len(features), dtype=np.int64) if repeats is None else np.asarray(repeats)
    if len(counts) != len(features):
        raise ValueError(f"{len(counts)} repeat counts for {len(features)} clips")
    lead_batches = min(lead_batches, n_batches)
    plan = []
    if lead_batches:
        lead = np.asarray(lead_clips, dtype=np.int64)
        plan += [lead[b] for b in plan_batches([1] * len(lead), batch_size, lead_batches, rng)]
    pass_clips = np.repeat(np.arange(len(features)), counts)
    rest = n_batches - lead_batches
    plan += [pass_clips[b] for b in plan_batches([1] * len(pass_clips), batch_size, rest, rng)]

    plain = set(int(i) for i in plain_clips)

    def collate(position: int, batch: np.ndarray) -> dict:
        index = torch.from_numpy(batch.astype(np.int64))
        chosen = features.features[index].float()
        masks = features.masks[index]
        if augment is not None:
            batch_rng = np.random.default_rng([seed, 2, position])
            pairs = [
                (f, m) if int(i) in plain else augment(f, m, batch_rng)
                for i, f, m in zip(batch, chosen, masks, strict=True)
            ]
            chosen = torch.stack([f for f, _ in pairs])
            masks = torch.stack([m for _, m in pairs])
        return {"features": chosen, "feature_mask": masks, "targets": targets[index]}

    return PlannedBatches(plan, collate)


class ClipEvalBatches(Dataset):
    """Fixed evaluation batches of (features, mask, targets)."""

    def __init__(self, features: ClipFeatures, targets: Tensor, batch_size: int) -> None:
        self.features, self.targets, self.batch_size = features, targets, batch_size

    def __len__(self) -> int:
        return (len(self.features) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, index: int) -> dict:
        _check_index(index, len(self))
        span = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return {
            "features": self.features.features[span].float(),
            "feature_mask": self.features.masks[span],
            "targets": self.targets[span],
        }


# --------------------------------------------------------------------------- data module


class PlannedDataModule(pl.LightningDataModule):
    """Serves a planned training epoch (resuming where a restored run stopped) and eval sets."""

    def __init__(self, train: PlannedBatches, val: Dataset | None = None) -> None:
        super().__init__()
        self.train = train
        self.val = val

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=None, shuffle=False, num_workers=0)

    def state_dict(self) -> dict:
        """Saved in every checkpoint: how many planned batches the run has trained on."""
        trainer = self.trainer
        if trainer is None:
            return {"batches_trained": 0}
        return {"batches_trained": trainer.global_step * trainer.accumulate_grad_batches}

    def load_state_dict(self, state: Mapping) -> None:
        """Restored before the loaders are built, so the next batch is the one not yet seen."""
        self.train.start = int(state["batches_trained"]) % len(self.train.batches)

    def val_dataloader(self) -> DataLoader | list:
        if self.val is None:
            return []
        return DataLoader(self.val, batch_size=None, shuffle=False, num_workers=0, collate_fn=_keep)


def _keep(batch: Mapping) -> Mapping:
    return batch
