"""The stages that build desta_tiny: tokenizer, backbone, audio encoder, connector.

Each stage takes its settings (the task config node), what earlier stages produced, and a
`StageContext` (trainer and logger configs, seed, output directory), trains with a Lightning
Trainer built from the trainer config, and writes its part of the model:

- tokenizer: `tokenizer/` (save_pretrained format, ChatML template);
- backbone: `tokenizer/`, `config.json`, `backbone.safetensors` (llm_model.* only);
- encoder: `encoder.safetensors` (perception.whisper.* only; the classification heads go);
- connector (distilled or ground truth): a complete model directory that `load_desta` reads,
  every part re-saved under the combined config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerFast

from sake.data.schema import LABELS
from sake.data.synth import auditory, chat, knowledge, questions, sentences, textbank
from sake.data.synth.build import build_clip_pool
from sake.data.synth.scales import resolve_scale
from sake.models.configuration_desta import (
    DestaAudioEncoderConfig,
    DestaConfig,
    DestaConnectorConfig,
)
from sake.models.desta import CONFIG_FILE, TOKENIZER_DIR, build_random_desta_tiny
from sake.models.desta_checkpoints import read_checkpoint, save_checkpoint
from sake.models.modeling_desta import (
    AUDIO_ENCODER_PREFIX,
    CONNECTOR_PREFIX,
    LLM_PREFIX,
    DestaForCausalLM,
    WhisperAudioEncoder,
)
from sake.models.tokenizer import load_tokenizer, train_tokenizer
from sake.training import distill, examples
from sake.training.clips import (
    Clip,
    ClipFeatures,
    cached_features,
    class_weights,
    compute_encoder_states,
    label_families,
    label_targets,
    manifest_clips,
)
from sake.training.data import (
    ClipEvalBatches,
    EvalBatches,
    EvalItem,
    PlannedDataModule,
    SpecAugment,
    clip_batches,
    group_counts,
    sequence_batches,
)
from sake.training.modules import (
    BackboneModule,
    ConnectorModule,
    EncoderModule,
    OptimizerSettings,
)
from sake.training.prompts import chat_prompt, encode_chats, placeholder_span, user_content
from sake.training.text import (
    BackboneMixture,
    backbone_eval_items,
    backbone_sequences,
    example_options,
    labelled_clip_questions,
)
from sake.training.trainer import (
    Metrics,
    PreparedStage,
    StageContext,
    run_prepared,
    stage_trainer_config,
)

PART_PREFIXES = {
    "backbone": LLM_PREFIX,
    "encoder": AUDIO_ENCODER_PREFIX,
    "connector": CONNECTOR_PREFIX,
}
DISTILLED, GROUND_TRUTH = "distilled", "ground_truth"
DEFAULT_MAX_NEW_TOKENS = 24


# --------------------------------------------------------------------------- model parts


def build_model(tokenizer: PreTrainedTokenizerFast, sizes: Mapping, seed: int) -> DestaForCausalLM:
    """desta_tiny with random weights, the tokenizer's ids and the configured sizes."""
    sections = {key: dict(sizes.get(key) or {}) for key in ("encoder", "connector", "llm")}
    return build_random_desta_tiny(tokenizer, seed=seed, **sections).model


def save_parts(
    model: DestaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    parts: Sequence[str],
) -> dict[str, Path]:
    """Tokenizer, config.json and one safetensors file per part, each holding only its tensors."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir / TOKENIZER_DIR))
    (out_dir / CONFIG_FILE).write_text(
        json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8"
    )
    written = {}
    for part in parts:
        path = out_dir / f"{part}.safetensors"
        save_checkpoint(model, path, prefixes=(PART_PREFIXES[part],))
        written[part] = path
    return written


def load_part(model: DestaForCausalLM, path: Path, part: str) -> None:
    """Copy one part's tensors in (strict names and shapes; the stored config may differ)."""
    _, tensors, _ = read_checkpoint(path)
    model.load_trainable_state_dict(tensors, (PART_PREFIXES[part],))


# --------------------------------------------------------------------------- tokenizer


def tokenizer_texts(n_clips: int, knowledge_rounds: int, rng: np.random.Generator) -> list[str]:
    """Every kind of text the model meets, train and test split alike, so all of it
    tokenises compactly: clip questions with descriptions, facts, the text bank, chat,
    transcripts in all languages, every question template."""
    texts = ["user\n", "assistant\n", "system\n"]
    for clip in examples.imagined_clips(n_clips, rng):
        description = examples.seed_description(clip)
        for split in ("train", "test"):
            for example in examples.clip_examples(clip, split, rng):
                texts.append(f"{description}\n{example.question}\n{example.response}")
    for _ in range(knowledge_rounds):
        texts += [f"{e.question}\n{e.response}" for e in examples.knowledge_examples(rng)]
    texts += knowledge.facts()
    for split in ("train", "test"):
        texts += [f"{e.question}\n{e.response}" for e in examples.text_bank_examples(split)]
    texts += [f"{user}\n{reply}" for user, reply in chat.CHAT_EXCHANGES]
    texts += [sentence for group in sentences.SENTENCES.values() for sentence in group]
    for attribute, labels in LABELS.items():
        texts += [*labels]
        for split in questions.SPLITS:
            texts += list(questions.recognition_templates(attribute, split))
            for category in knowledge.categories(attribute):
                texts += list(category.audio_questions[split])
    for item in textbank.split_text_questions("test"):
        texts.append(item.question)
    for task in auditory.AUDITORY_TASKS:
        texts += list(task.labels)
    return texts


def train_tokenizer_stage(
    settings: DictConfig, out_dir: Path, seed: int
) -> tuple[PreTrainedTokenizerFast, Metrics]:
    """Train the BPE tokenizer and save it under `out_dir`."""
    start = time.perf_counter()
    rng = np.random.default_rng([seed, 3])
    texts = tokenizer_texts(int(settings.imagined_clips), int(settings.knowledge_rounds), rng)
    tokenizer = train_tokenizer(texts, vocab_size=int(settings.vocab_size))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    sample = texts[3 : 3 + 2000]
    n_tokens = sum(len(ids) for ids in tokenizer(sample, add_special_tokens=False)["input_ids"])
    return tokenizer, {
        "vocab_size": float(len(tokenizer)),
        "texts": float(len(texts)),
        "chars_per_token": sum(len(t) for t in sample) / max(1, n_tokens),
        "seconds": time.perf_counter() - start,
    }


def max_new_tokens(validation: DictConfig | None) -> int:
    """Generation length at validation (the evaluation's default without validation)."""
    return int(validation.max_new_tokens) if validation else DEFAULT_MAX_NEW_TOKENS


# --------------------------------------------------------------------------- backbone


def prepare_backbone(
    settings: DictConfig,
    context: StageContext,
    tokenizer: PreTrainedTokenizerFast,
    sizes: Mapping,
) -> PreparedStage:
    """A random desta_tiny whose LLM learns from the planned text mixture."""
    model = build_model(tokenizer, sizes, context.seed)
    trainer_cfg = stage_trainer_config(context, settings)
    batch_size, steps = int(settings.batch_size), int(trainer_cfg.max_steps)
    rng = context.rng(11)
    sequences, sources = backbone_sequences(
        tokenizer,
        steps * batch_size,
        BackboneMixture(**settings.mixture),
        rng,
        int(settings.max_length),
    )
    train = sequence_batches(sequences, batch_size, steps, int(tokenizer.pad_token_id), rng)
    validation = settings.get("validation")
    val = None
    if validation:
        items = backbone_eval_items(tokenizer, int(validation.clips), context.rng(12))
        val = EvalBatches(items, tokenizer, int(validation.batch_size))
    module = BackboneModule(
        model, tokenizer, OptimizerSettings(**settings.optimizer), max_new_tokens(validation)
    )
    metrics = {f"data/{name}": float(n) for name, n in sources.items()}
    metrics["data/tokens"] = float(sum(len(s) for s in sequences))
    return PreparedStage(module, PlannedDataModule(train, val), metrics)


def train_backbone_stage(
    settings: DictConfig,
    context: StageContext,
    tokenizer: PreTrainedTokenizerFast,
    sizes: Mapping,
) -> tuple[DestaForCausalLM, Metrics]:
    """Pretrain the LLM on the project's text; write tokenizer, config and backbone weights."""
    started = time.perf_counter()
    prepared = prepare_backbone(settings, context, tokenizer, sizes)
    metrics = run_prepared(prepared, context, settings, started)
    model = prepared.module.model
    save_parts(model, tokenizer, context.out_dir, ["backbone"])
    return model, metrics


# --------------------------------------------------------------------------- encoder


def prepare_encoder(
    settings: DictConfig, context: StageContext, sizes: Mapping, audio_root: Path
) -> PreparedStage:
    """The encoder with a head per label family; train clips to learn, test clips to check."""
    config = DestaAudioEncoderConfig(**dict(sizes.get("encoder") or {}))
    families = label_families()
    train_clips = manifest_clips(encoder_pool(settings.get("pool"), audio_root), "train")
    test_clips = manifest_clips(audio_root, "test") if settings.get("validation") else []
    progress = context.progress
    cache = feature_cache_dir(settings)
    train_features = cached_features(train_clips, config, cache, progress=progress)
    test_features = cached_features(test_clips, config, cache, progress=progress)
    trainer_cfg = stage_trainer_config(context, settings)
    augment = SpecAugment(**settings.augment) if settings.get("augment") else None
    train_targets = label_targets(
        train_clips, families, own_track_families=settings.get("own_track_families") or ()
    )
    train = clip_batches(
        train_features,
        train_targets,
        int(settings.batch_size),
        int(trainer_cfg.max_steps),
        context.seed,
        augment,
        repeats=track_repeats(train_clips, settings.get("oversample") or {}),
        plain_clips=track_clips(train_clips, settings.get("unaugmented_tracks") or []),
        **lead_phase(train_clips, settings.get("lead")),
    )
    val = None
    if settings.get("validation"):
        val = ClipEvalBatches(
            test_features,
            label_targets(test_clips, families, own_track_only=True),
            int(settings.validation.batch_size),
        )
    weights = class_weights(train_targets, families) if settings.balance_classes else None
    module = EncoderModule(
        config,
        families,
        OptimizerSettings(**settings.optimizer),
        context.seed,
        weights,
        pooling=str(settings.get("pooling", "mean")),
        family_weights=dict(settings.get("family_weights") or {}),
    )
    metrics = {
        "data/train_clips": float(len(train_clips)),
        "data/test_clips": float(len(test_clips)),
    }
    return PreparedStage(module, PlannedDataModule(train, val), metrics)


def encoder_pool(pool: DictConfig | None, audio_root: Path) -> Path:
    """Where the encoder's training clips are: a larger clip pool if configured, else the corpus.

    Whisper learns to hear from far more audio than any benchmark holds; the pool plays that
    part, drawn from the same generator (`pool.root` caches it, rendered on first use).
    """
    if pool is None:
        return audio_root
    base = resolve_scale(str(pool.scale))
    scale = resolve_scale(
        str(pool.scale),
        train_clips_per_label=round(base.train_clips_per_label * float(pool.clips_factor)),
        train_task_clips_per_label=round(
            base.train_task_clips_per_label * float(pool.task_clips_factor)
        ),
    )
    return build_clip_pool(
        Path(pool.root), scale, int(pool.seed), workers=int(pool.get("workers", 2))
    )


def feature_cache_dir(settings: DictConfig) -> Path | None:
    cache = settings.get("feature_cache")
    return Path(cache) if cache else None


def lead_phase(clips: Sequence[Clip], lead: DictConfig | None) -> dict:
    """clip_batches arguments for a first phase on some tracks alone (none if `lead` is null)."""
    if not lead or not int(lead.steps):
        return {}
    chosen = track_clips(clips, lead.tracks)
    if not chosen:
        raise ValueError(f"lead.tracks {sorted(lead.tracks)} match none of the training clips")
    return {"lead_clips": chosen, "lead_batches": int(lead.steps)}


def track_clips(clips: Sequence[Clip], tracks: Sequence[str]) -> list[int]:
    """Positions of the clips on any of `tracks`."""
    wanted = set(tracks)
    return [i for i, clip in enumerate(clips) if clip.info.track in wanted]


def track_repeats(clips: Sequence[Clip], oversample: Mapping[str, int]) -> list[int]:
    """How often each clip appears in one pass over the training clips (1 unless oversampled)."""
    tracks = {clip.info.track for clip in clips}
    unknown = sorted(set(oversample) - tracks)
    if unknown:
        raise ValueError(
            f"oversample names unknown tracks {unknown}; the clips have {sorted(tracks)}"
        )
    for track, times in oversample.items():
        if int(times) < 1:
            raise ValueError(f"oversample.{track} must be a whole number >= 1, got {times}")
    return [int(oversample.get(clip.info.track, 1)) for clip in clips]


def train_encoder_stage(
    settings: DictConfig,
    context: StageContext,
    tokenizer: PreTrainedTokenizerFast,
    sizes: Mapping,
    audio_root: Path,
) -> tuple[WhisperAudioEncoder, Metrics]:
    """Pretrain the audio encoder on the training clips' labels; test-split accuracy per head.

    Writes `encoder.safetensors` (the tokenizer fixes the config stored beside the tensors).
    """
    started = time.perf_counter()
    prepared = prepare_encoder(settings, context, sizes, audio_root)
    metrics = run_prepared(prepared, context, settings, started)
    encoder = prepared.module.encoder
    model = build_model(tokenizer, sizes, context.seed)
    model.perception.whisper.load_state_dict(encoder.state_dict())
    context.out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        model, context.out_dir / "encoder.safetensors", prefixes=(AUDIO_ENCODER_PREFIX,)
    )
    return encoder, metrics


# --------------------------------------------------------------------------- connector


def assemble_model(
    backbone_dir: Path, encoder_path: Path, connector: Mapping, seed: int
) -> tuple[DestaForCausalLM, PreTrainedTokenizerFast]:
    """The backbone's tokenizer and LLM, the pretrained encoder, a fresh connector."""
    tokenizer = load_tokenizer(backbone_dir / TOKENIZER_DIR)
    backbone_config = DestaConfig.from_dict(
        json.loads((backbone_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    )
    encoder_config, _, _ = read_checkpoint(encoder_path)
    config = replace(
        backbone_config,
        encoder=encoder_config.encoder,
        connector=replace(DestaConnectorConfig(), **dict(connector)),
    )
    model = DestaForCausalLM.from_config(config, seed=seed)
    load_part(model, backbone_dir / "backbone.safetensors", "backbone")
    load_part(model, encoder_path, "encoder")
    return model, tokenizer


def select_per_track(clips: Sequence[Clip], per_track: int, rng: np.random.Generator) -> list[Clip]:
    """Up to `per_track` clips of every track, so each attribute and task is checked."""
    by_track: dict[str, list[Clip]] = {}
    for clip in clips:
        by_track.setdefault(clip.info.track, []).append(clip)
    chosen = []
    for track in sorted(by_track):
        pool = by_track[track]
        picks = rng.choice(len(pool), size=min(per_track, len(pool)), replace=False)
        chosen += [pool[int(i)] for i in sorted(picks)]
    return chosen


def ground_truth_records(
    instructions: Sequence[distill.Instruction],
) -> list[distill.DistillRecord]:
    """The non-distilled baseline's targets: the instructions' ground-truth answers."""
    return [
        distill.DistillRecord(i.clip, i.question, i.reference, i.reference, i.options)
        for i in instructions
    ]


def stage1_records(
    model: DestaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    clips: Sequence[Clip],
    settings: distill.InstructionSettings,
    backbone_dir: Path,
    cache_dir: Path,
    *,
    batch_size: int,
    progress: bool,
) -> tuple[list[distill.DistillRecord], Metrics]:
    """Stage-1 responses from the cache, or generated by the backbone and cached."""
    start = time.perf_counter()
    instructions = distill.sample_instructions(clips, settings)
    path = distill.cache_path(cache_dir, backbone_dir, clips, instructions, settings)
    hit = path.is_file()
    if hit:
        records = distill.read_records(path)
    else:
        records = distill.generate_responses(
            model,
            tokenizer,
            clips,
            instructions,
            max_new_tokens=settings.max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        distill.write_records(path, records)
    return records, {
        "stage1/cache_hit": float(hit),
        "stage1/records": float(len(records)),
        "stage1/empty": float(sum(not r.response for r in records)),
        "stage1/agreement": distill.agreement(records),
        "stage1/seconds": time.perf_counter() - start,
    }


def connector_eval_items(
    tokenizer: PreTrainedTokenizerFast,
    clips: Sequence[Clip],
    first_index: int,
    prompt_size: int,
    rng: np.random.Generator,
) -> list[EvalItem]:
    """Test-split questions (test templates) asked through the audio, judged against the truth."""
    items = []
    for offset, clip in enumerate(clips):
        for group, example in labelled_clip_questions(clip.info, "test", rng, own_track_only=True):
            prompt = chat_prompt(
                tokenizer, user_content(example.question, placeholder_span(prompt_size))
            )
            items.append(
                EvalItem(
                    prompt,
                    example.question,
                    example.response,
                    group,
                    example_options(example),
                    first_index + offset,
                )
            )
    return items


def prepare_connector(
    settings: DictConfig,
    context: StageContext,
    backbone_dir: Path,
    encoder_path: Path,
    sizes: Mapping,
    audio_root: Path,
    cache_dir: Path,
    targets: str,
) -> PreparedStage:
    """Frozen backbone and encoder, a fresh connector, and its (clip, question, target) data.

    `targets` is `distilled` (the backbone's own stage-1 responses, cached) or
    `ground_truth` (the instructions' reference answers).
    """
    model, tokenizer = assemble_model(
        backbone_dir, encoder_path, dict(sizes.get("connector") or {}), context.seed
    )
    instruction_settings = distill.InstructionSettings(
        rounds=int(settings.stage1.rounds),
        portability_share=float(settings.stage1.portability_share),
        max_new_tokens=int(settings.stage1.max_new_tokens),
        seed=context.seed,
        off_track_share=float(settings.stage1.get("off_track_share", 1.0)),
    )
    validation = settings.get("validation")
    train_clips = manifest_clips(encoder_pool(settings.get("pool"), audio_root), "train")
    val_clips = []
    if validation:
        val_clips = select_per_track(
            manifest_clips(audio_root, "test"), int(validation.clips_per_track), context.rng(21)
        )
    metrics: Metrics = {}
    if targets == DISTILLED:
        records, stage1 = stage1_records(
            model,
            tokenizer,
            train_clips,
            instruction_settings,
            backbone_dir,
            cache_dir,
            batch_size=int(settings.stage1.batch_size),
            progress=context.progress,
        )
        metrics.update(stage1)
    elif targets == GROUND_TRUTH:
        records = ground_truth_records(
            distill.sample_instructions(train_clips, instruction_settings)
        )
    else:
        raise ValueError(f"targets must be {DISTILLED!r} or {GROUND_TRUTH!r}, got {targets!r}")
    records = [r for r in records if r.response]
    if not records:
        raise ValueError(
            f"the backbone in {backbone_dir} answered none of the stage-1 instructions "
            "(every response empty); train it longer before distilling"
        )
    cache = feature_cache_dir(settings)
    features = ClipFeatures.concatenate(
        [
            cached_features(train_clips, model.config.encoder, cache),
            cached_features(val_clips, model.config.encoder, cache),
        ]
    )
    states = compute_encoder_states(
        model.perception.whisper, features, model.config.connector.tapped_layers
    )
    prompt_size = model.config.prompt_size
    sequences = audio_sequences(tokenizer, records, train_clips, prompt_size)
    trainer_cfg = stage_trainer_config(context, settings)
    train = sequence_batches(
        sequences,
        int(settings.batch_size),
        int(trainer_cfg.max_steps),
        int(tokenizer.pad_token_id),
        context.rng(22),
        padding_side="left",
    )
    items = connector_eval_items(
        tokenizer, val_clips, len(train_clips), prompt_size, context.rng(23)
    )
    val = EvalBatches(items, tokenizer, int(validation.batch_size)) if items else None
    module = ConnectorModule(
        model,
        tokenizer,
        states,
        OptimizerSettings(**settings.optimizer),
        max_new_tokens(validation),
    )
    metrics.update(
        {
            "data/records": float(len(records)),
            "data/train_clips": float(len(train_clips)),
            **{f"data/val/{k}": float(v) for k, v in group_counts(items).items()},
        }
    )
    return PreparedStage(module, PlannedDataModule(train, val), metrics)


def audio_sequences(
    tokenizer: PreTrainedTokenizerFast,
    records: Sequence[distill.DistillRecord],
    clips: Sequence[Clip],
    prompt_size: int,
) -> list:
    """Each record as an audio prompt (placeholders where the clip goes) and its target."""
    index = {clip.info.relative_path: i for i, clip in enumerate(clips)}
    prompts = {
        question: chat_prompt(tokenizer, user_content(question, placeholder_span(prompt_size)))
        for question in {r.question for r in records}
    }
    return encode_chats(
        tokenizer,
        [prompts[r.question] for r in records],
        [r.response for r in records],
        clips=[index[r.clip] for r in records],
    )


def train_connector_stage(
    settings: DictConfig,
    context: StageContext,
    backbone_dir: Path,
    encoder_path: Path,
    sizes: Mapping,
    audio_root: Path,
    cache_dir: Path,
    targets: str,
) -> tuple[DestaForCausalLM, Metrics]:
    """DeSTA stage 2 (or the ground-truth baseline): train only the connector on audio prompts.

    Writes a complete model directory: tokenizer, config, backbone, encoder, connector.
    """
    started = time.perf_counter()
    prepared = prepare_connector(
        settings, context, backbone_dir, encoder_path, sizes, audio_root, cache_dir, targets
    )
    metrics = run_prepared(prepared, context, settings, started)
    module = prepared.module
    save_parts(module.model, module.tokenizer, context.out_dir, list(PART_PREFIXES))
    return module.model, metrics
