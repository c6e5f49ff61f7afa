"""DeSTA self-distillation, stage 1: the backbone answers instructions about seed descriptions.

For every training clip the backbone reads the clip's seed description (timestamped
transcript and attribute labels, written where the audio goes) and a sampled instruction,
and writes its own response greedily. Stage 2 then teaches the connector to make the audio
stand in for the description, with these responses as targets.

Responses depend on the backbone and on the instructions, so they are cached per backbone
fingerprint (its weights and tokenizer files) and per hash of the instruction settings; a
swapped backbone regenerates them, the same backbone reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from sake.evaluation.judges.option import is_correct
from sake.models.audio_lalm import answer_text
from sake.models.modeling_desta import DestaForCausalLM
from sake.training import examples
from sake.training.clips import Clip
from sake.training.data import EvalBatches, EvalItem
from sake.training.prompts import stop_token_ids
from sake.training.text import description_prompt, example_options

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Instruction:
    """A question about one clip and its ground-truth answer."""

    clip: str
    question: str
    reference: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class DistillRecord:
    """A stage-1 record: the backbone's own response to an instruction about a clip."""

    clip: str
    question: str
    response: str
    reference: str
    options: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, line: str) -> DistillRecord:
        fields = json.loads(line)
        return cls(**{**fields, "options": tuple(fields.get("options", ()))})


@dataclass(frozen=True)
class InstructionSettings:
    """What decides the sampled instructions and the generated responses."""

    rounds: int
    portability_share: float
    max_new_tokens: int
    seed: int
    off_track_share: float = 1.0


def sample_instructions(clips: Sequence[Clip], settings: InstructionSettings) -> list[Instruction]:
    """`rounds` passes over the clips, each asking one question per attribute (train templates)."""
    rng = np.random.default_rng([settings.seed, 7])
    found = []
    for _ in range(settings.rounds):
        for clip in clips:
            for example in examples.clip_examples(
                clip.info, "train", rng, settings.portability_share, settings.off_track_share
            ):
                found.append(
                    Instruction(
                        clip.info.relative_path,
                        example.question,
                        example.response,
                        example_options(example),
                    )
                )
    return found


def file_digest(paths: Sequence[Path]) -> str:
    """sha256 over the names and bytes of files, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def backbone_fingerprint(backbone_dir: Path) -> str:
    """Identity of a backbone: its weights and every tokenizer file."""
    tokenizer_files = sorted((backbone_dir / "tokenizer").iterdir())
    return file_digest([backbone_dir / "backbone.safetensors", *tokenizer_files])[:16]


def instruction_key(
    clips: Sequence[Clip], instructions: Sequence[Instruction], settings: InstructionSettings
) -> str:
    """Hash of everything the backbone reads and the settings: each instruction with the
    description of its clip. Changed question templates or labels give another key."""
    descriptions = {clip.info.relative_path: examples.seed_description(clip.info) for clip in clips}
    payload = {
        "format": CACHE_FORMAT,
        "settings": asdict(settings),
        "instructions": [(i.clip, descriptions[i.clip], i.question) for i in instructions],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(
    cache_dir: Path,
    backbone_dir: Path,
    clips: Sequence[Clip],
    instructions: Sequence[Instruction],
    settings: InstructionSettings,
) -> Path:
    """`<cache>/distill/<backbone fingerprint>/<instruction key>.jsonl`."""
    key = instruction_key(clips, instructions, settings)
    return Path(cache_dir) / "distill" / backbone_fingerprint(backbone_dir) / f"{key}.jsonl"


def read_records(path: Path) -> list[DistillRecord]:
    with open(path, encoding="utf-8") as handle:
        return [DistillRecord.from_json(line) for line in handle if line.strip()]


def write_records(path: Path, records: Sequence[DistillRecord]) -> None:
    """Written whole through a temporary file: a cache file that exists is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@torch.no_grad()
def generate_responses(
    model: DestaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    clips: Sequence[Clip],
    instructions: Sequence[Instruction],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
) -> list[DistillRecord]:
    """The backbone's greedy responses to each instruction, given the clip's description."""
    by_path = {clip.info.relative_path: clip.info for clip in clips}
    items = [
        EvalItem(
            description_prompt(
                tokenizer,
                examples.ChatExample(
                    instruction.question, instruction.reference, by_path[instruction.clip]
                ),
            ),
            instruction.question,
            instruction.reference,
            group=str(index),
        )
        for index, instruction in enumerate(instructions)
    ]
    batches = EvalBatches(items, tokenizer, batch_size)
    stops = stop_token_ids(tokenizer)
    was_training = model.training
    model.eval()
    responses: dict[int, str] = {}
    for batch in tqdm(batches, desc="stage 1 responses", unit="batch", disable=not progress):
        new_tokens = model.generate(
            batch["input_ids"].to(model.device),
            batch["attention_mask"].to(model.device),
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=int(tokenizer.pad_token_id),
        )
        for item, row in zip(batch["items"], new_tokens.tolist(), strict=True):
            responses[int(item.group)] = answer_text(tokenizer, row, stops)
    model.train(was_training)
    return [
        DistillRecord(
            instruction.clip,
            instruction.question,
            responses[index],
            instruction.reference,
            instruction.options,
        )
        for index, instruction in enumerate(instructions)
    ]


def agreement(records: Sequence[DistillRecord]) -> float:
    """Share of stage-1 responses the option judge accepts as the ground-truth answer."""
    if not records:
        return 0.0
    return sum(is_correct(r.response, r.options, r.reference) for r in records) / len(records)
