"""Training of desta_tiny: prompts, batching, every stage's loss, checkpoints, resume, guards."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from transformers import PreTrainedTokenizerFast

from sake.data.schema import Probe, ProbeKind
from sake.data.synth import questions
from sake.models.configuration_desta import DestaAudioEncoderConfig
from sake.models.desta import build_random_desta_tiny, load_desta
from sake.models.modeling_desta import (
    AUDIO_ENCODER_PREFIX,
    CONNECTOR_PREFIX,
    LLM_PREFIX,
    CheckpointMismatchError,
    WhisperAudioEncoder,
)
from sake.models.tokenizer import AUDIO_END, AUDIO_START, IM_END, load_tokenizer
from sake.training.callbacks import NonFiniteLossError
from sake.training.clips import (
    Clip,
    ClipFeatures,
    cached_features,
    class_weights,
    compute_encoder_states,
    compute_features,
    label_families,
    label_targets,
    manifest_clips,
)
from sake.training.data import clip_batches, plan_batches
from sake.training.distill import (
    InstructionSettings,
    cache_path,
    read_records,
    sample_instructions,
    write_records,
)
from sake.training.examples import ChatExample, ClipInfo
from sake.training.modules import (
    BackboneModule,
    TrainableSubsetModule,
    attention_pool,
    masked_mean,
)
from sake.training.pipeline import recipe
from sake.training.prompts import (
    IGNORE_INDEX,
    chat_prompt,
    description_span,
    encode_chats,
    placeholder_span,
    user_content,
)
from sake.training.stages import (
    DISTILLED,
    GROUND_TRUTH,
    ground_truth_records,
    prepare_backbone,
    prepare_connector,
    prepare_encoder,
    track_clips,
    track_repeats,
    train_backbone_stage,
    train_connector_stage,
    train_encoder_stage,
    train_tokenizer_stage,
)
from sake.training.text import example_options, with_option_mention
from sake.training.trainer import PreparedStage, StageContext, fit, lightning_logger
from sake.utils.run import run_task

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

TINY_SIZES = [
    "model.sizes.encoder.n_mels=16",
    "model.sizes.encoder.d_model=32",
    "model.sizes.encoder.n_layers=2",
    "model.sizes.encoder.n_heads=2",
    "model.sizes.encoder.ffn_dim=64",
    "model.sizes.encoder.max_seconds=2.0",
    "model.sizes.connector.tapped_layers=[0,1]",
    "model.sizes.connector.queries_per_layer=4",
    "model.sizes.connector.n_layers=1",
    "model.sizes.connector.n_heads=2",
    "model.sizes.connector.ffn_dim=64",
    "model.sizes.llm.hidden_size=48",
    "model.sizes.llm.intermediate_size=96",
    "model.sizes.llm.num_hidden_layers=2",
]
QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
FEW_STEPS = [
    "task.trainer.max_steps=4",
    "task.batch_size=8",
    "task.checkpoint_every=2",
    "task.optimizer.lr=3e-3",
    "task.optimizer.warmup_steps=1",
]
NO_VALIDATION = ["task.validation=null"]
ENCODER_ON_CORPUS = ["task.pool=null"]  # the corpus's own clips, no larger pool to render
BACKBONE_THAT_ANSWERS = [
    # Description questions only, at a high rate: after 60 steps the backbone writes answers
    # (not yet right ones), which is all stage 1 needs here.
    "task.trainer.max_steps=60",
    "task.batch_size=8",
    "task.optimizer.lr=1e-2",
    "task.optimizer.warmup_steps=5",
    "task.mixture.knowledge=0",
    "task.mixture.facts=0",
    "task.mixture.text_bank=0",
    "task.mixture.chat=0",
    *NO_VALIDATION,
]
CONNECTOR_FAST = [
    "task.stage1.rounds=1",
    "task.stage1.max_new_tokens=4",
    "task.validation.clips_per_track=1",
    "task.validation.max_new_tokens=4",
]


def compose_train(out_dir: Path, overrides: list[str]) -> DictConfig:
    """train.yaml composed as the entry point would, with every path under `out_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"paths.output_dir={out_dir}",
                f"paths.cache_dir={out_dir / 'cache'}",
                f"paths.data_dir={out_dir / 'data'}",
                *QUIET,
                *TINY_SIZES,
                *overrides,
            ],
        )
    GlobalHydra.instance().clear()
    return cfg


def context_for(cfg: DictConfig, out_dir: Path) -> StageContext:
    return StageContext(cfg.trainer, None, int(cfg.seed), out_dir, cfg.task.name)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def tokenizer(workdir: Path) -> PreTrainedTokenizerFast:
    settings = OmegaConf.create({"vocab_size": 512, "imagined_clips": 150, "knowledge_rounds": 1})
    trained, _ = train_tokenizer_stage(settings, workdir / "tokenizer", seed=0)
    return trained


@pytest.fixture(scope="module")
def backbone_dir(workdir: Path, tokenizer: PreTrainedTokenizerFast) -> Path:
    """A tiny backbone that writes (short, mostly wrong) answers: enough for stage 1."""
    out = workdir / "backbone"
    cfg = compose_train(out, ["task=backbone", *BACKBONE_THAT_ANSWERS])
    train_backbone_stage(cfg.task, context_for(cfg, out), tokenizer, cfg.model.sizes)
    return out


@pytest.fixture(scope="module")
def fresh_backbone_dir(workdir: Path, tokenizer: PreTrainedTokenizerFast) -> Path:
    """A tiny backbone after one step: still sensitive to what the connector writes."""
    out = workdir / "fresh_backbone"
    cfg = compose_train(
        out, ["task=backbone", *FEW_STEPS, "task.trainer.max_steps=1", *NO_VALIDATION]
    )
    train_backbone_stage(cfg.task, context_for(cfg, out), tokenizer, cfg.model.sizes)
    return out


@pytest.fixture(scope="module")
def encoder_path(workdir: Path, tokenizer: PreTrainedTokenizerFast, tiny_corpus: Path) -> Path:
    out = workdir / "encoder"
    cfg = compose_train(out, ["task=encoder", *FEW_STEPS, *NO_VALIDATION, *ENCODER_ON_CORPUS])
    train_encoder_stage(
        cfg.task, context_for(cfg, out), tokenizer, cfg.model.sizes, tiny_corpus / "audio"
    )
    return out / "encoder.safetensors"


def safetensors_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def loss_on(module: TrainableSubsetModule, batch: dict) -> float:
    with torch.no_grad():
        return float(module.loss(batch))


def overfit(prepared: PreparedStage, cfg: DictConfig, out_dir: Path, steps: int) -> None:
    """Train on the first planned batch only, `steps` times."""
    settings = OmegaConf.merge(
        OmegaConf.to_container(cfg.task, resolve=True),
        {"trainer": {"max_steps": steps, "overfit_batches": 1, "max_epochs": -1}},
        {"checkpoint_every": steps},
    )
    fit(prepared.module, prepared.data, context_for(cfg, out_dir), settings)


def assert_few_steps_lower_the_loss(
    prepared: PreparedStage, cfg: DictConfig, out: Path, by: float = 0.05
) -> None:
    batch = prepared.data.train[0]
    prepared.data.val = None
    before = loss_on(prepared.module, batch)
    overfit(prepared, cfg, out, steps=6)
    after = loss_on(prepared.module, batch)
    assert after < before - by, f"loss on a fixed batch went from {before} to {after}"


# --------------------------------------------------------------------------- prompts


def test_training_prompts_are_the_prompts_desta_lalm_builds(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    lalm = build_random_desta_tiny(
        tokenizer,
        seed=0,
        encoder={"n_mels": 16, "d_model": 32, "n_layers": 2, "n_heads": 2, "ffn_dim": 64},
        connector={"tapped_layers": (0, 1), "queries_per_layer": 4, "n_heads": 2, "ffn_dim": 64},
        llm={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1},
    )
    clip = tmp_path / "clip.wav"
    sf.write(str(clip), np.zeros(8000, dtype=np.float32), 16000)
    question = questions.format_mcq("Which animal is this?", ["dog", "cat", "cow", "pig"])
    options = ("dog", "cat", "cow", "pig")
    with_audio = Probe(
        ProbeKind.RELIABILITY, question, "dog", options, file=clip.name, audio_path=clip
    )
    text_only = Probe(ProbeKind.LOCALITY_TEXT, question, "dog", options)
    expected_audio = chat_prompt(tokenizer, user_content(question, placeholder_span(4)))
    assert lalm.prompt_text(with_audio) == expected_audio
    assert lalm.prompt_text(text_only) == chat_prompt(tokenizer, user_content(question))
    described = chat_prompt(tokenizer, user_content(question, description_span("(sound: dog)")))
    assert described == expected_audio.replace(
        placeholder_span(4), f"{AUDIO_START}(sound: dog){AUDIO_END}"
    )


def test_chat_sequences_score_the_response_and_end_of_turn_only(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    prompt = chat_prompt(tokenizer, "Which animal barks?\n\nOptions:\ndog\ncat")
    (sequence,) = encode_chats(tokenizer, [prompt], ["dog"], clips=[3])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert sequence.input_ids[: len(prompt_ids)].tolist() == prompt_ids
    assert (sequence.labels[: len(prompt_ids)] == IGNORE_INDEX).all()
    scored = sequence.labels[sequence.labels != IGNORE_INDEX].tolist()
    assert tokenizer.decode(scored) == f"dog{IM_END}"
    assert sequence.clip == 3


def test_option_mentions_name_short_options_without_changing_them() -> None:
    question = questions.format_mcq("Which animal?", ["dog", "cat", "cow", "pig"])
    example = ChatExample(question, "cat")
    assert example_options(example) == ("dog", "cat", "cow", "pig")
    mentioned = with_option_mention(example, np.random.default_rng(0))
    assert example_options(mentioned) == example_options(example)
    stem = mentioned.question.split("\n")[0]
    assert stem.startswith("Which animal? ") and all(o in stem for o in ("dog", "cat", "pig"))
    long_options = ["Walking on four hooves", "Hopping on strong back legs"]
    long = ChatExample(questions.format_mcq("How does it move?", long_options), long_options[0])
    assert with_option_mention(long, np.random.default_rng(0)) == long


def test_batch_plans_are_seeded_exact_and_length_bucketed() -> None:
    lengths = np.random.default_rng(0).integers(5, 300, size=500)
    plan = plan_batches(lengths, 10, 120, np.random.default_rng(1))
    again = plan_batches(lengths, 10, 120, np.random.default_rng(1))
    assert len(plan) == 120
    assert all((a == b).all() for a, b in zip(plan, again, strict=True))
    first_pass = np.concatenate(plan[:50])
    assert sorted(first_pass.tolist()) == list(range(500))
    spread = np.mean([np.ptp(lengths[batch]) for batch in plan])
    assert spread < 0.25 * np.ptp(lengths)


# --------------------------------------------------------------------------- stages


def test_tokenizer_stage_writes_a_chat_tokenizer(
    tokenizer: PreTrainedTokenizerFast, workdir: Path
) -> None:
    loaded = load_tokenizer(workdir / "tokenizer")
    assert len(loaded) == len(tokenizer) == 512
    span = loaded(placeholder_span(3), add_special_tokens=False)["input_ids"]
    assert len(span) == 5
    prompt = chat_prompt(loaded, "hi")
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_backbone_steps_lower_the_loss_on_a_fixed_batch(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    cfg = compose_train(tmp_path, ["task=backbone", *FEW_STEPS, *NO_VALIDATION])
    prepared = prepare_backbone(cfg.task, context_for(cfg, tmp_path), tokenizer, cfg.model.sizes)
    assert_few_steps_lower_the_loss(prepared, cfg, tmp_path)


def test_encoder_steps_lower_the_loss_and_only_the_encoder_is_kept(
    tiny_corpus: Path, encoder_path: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        tmp_path,
        ["task=encoder", *FEW_STEPS, *NO_VALIDATION, *ENCODER_ON_CORPUS, "task.augment=null"],
    )
    prepared = prepare_encoder(
        cfg.task, context_for(cfg, tmp_path), cfg.model.sizes, tiny_corpus / "audio"
    )
    assert_few_steps_lower_the_loss(prepared, cfg, tmp_path)
    keys = safetensors_keys(encoder_path)
    assert keys and all(k.startswith(f"{AUDIO_ENCODER_PREFIX}.") for k in keys)


def test_cached_features_equal_computed_ones_and_are_read_back(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    config = DestaAudioEncoderConfig(n_mels=16, d_model=8, n_layers=1, n_heads=1, ffn_dim=8)
    clips = manifest_clips(tiny_corpus / "audio", "train")[:5]
    first = cached_features(clips, config, tmp_path)
    (stored,) = tmp_path.glob("features-*.pt")
    computed = compute_features([c.path for c in clips], config)
    torch.testing.assert_close(first.features, computed.features)
    torch.testing.assert_close(first.masks, computed.masks)
    torch.save({"features": first.features + 1, "masks": first.masks}, stored)
    torch.testing.assert_close(
        cached_features(clips, config, tmp_path).features, first.features + 1
    )
    assert len(cached_features(clips[:4], config, tmp_path)) == 4


def test_encoder_states_stop_on_values_float16_cannot_hold(tiny_corpus: Path) -> None:
    config = DestaAudioEncoderConfig(n_mels=16, d_model=8, n_layers=1, n_heads=1, ffn_dim=8)
    features = compute_features(
        [c.path for c in manifest_clips(tiny_corpus / "audio", "train")[:3]], config
    )
    encoder = WhisperAudioEncoder(config)
    states = compute_encoder_states(encoder, features, [0])
    assert states.states.dtype == torch.float16 and bool(torch.isfinite(states.states).all())
    with torch.no_grad():
        encoder.encoder.layers[0].fc2.bias.fill_(1e6)
    with pytest.raises(FloatingPointError, match="overflow float16"):
        compute_encoder_states(encoder, features, [0])


def test_attention_pooling_starts_as_the_masked_mean_and_ignores_padded_frames() -> None:
    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    pooled = attention_pool(hidden, torch.zeros(3, 8), mask)
    assert pooled.shape == (2, 3, 8)
    for query in range(3):
        torch.testing.assert_close(pooled[:, query], masked_mean(hidden, mask))
    padded = hidden.clone()
    padded[1, 3:] = 1e3
    queries = torch.randn(3, 8)
    torch.testing.assert_close(
        attention_pool(padded, queries, mask)[1], attention_pool(hidden, queries, mask)[1]
    )


def test_encoder_pool_renders_more_training_clips_once_and_oversamples_a_track(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    overrides = ["task=encoder", *FEW_STEPS, *NO_VALIDATION, "dataset.scale=tiny"]
    overrides += ["task.pool.clips_factor=2", "task.pool.task_clips_factor=1"]
    cfg = compose_train(tmp_path, overrides)
    prepared = prepare_encoder(
        cfg.task, context_for(cfg, tmp_path), cfg.model.sizes, tiny_corpus / "audio"
    )
    pool_root = Path(cfg.task.pool.root)
    corpus_clips = manifest_clips(tiny_corpus / "audio", "train")
    pool_clips = manifest_clips(pool_root, "train")
    per_label = Counter((c.info.track, c.info.labels[c.info.track]) for c in pool_clips)
    corpus_per_label = Counter((c.info.track, c.info.labels[c.info.track]) for c in corpus_clips)
    assert per_label["Language", "French"] == 2 * corpus_per_label["Language", "French"]
    assert per_label["Animal", "dog"] == 2 * corpus_per_label["Animal", "dog"]
    assert not manifest_clips(pool_root, "test")
    assert len(prepared.data.train.batches[0]) == 8

    stamps = {c.path: c.path.stat().st_mtime_ns for c in pool_clips}
    prepare_encoder(cfg.task, context_for(cfg, tmp_path), cfg.model.sizes, tiny_corpus / "audio")
    assert {c.path: c.path.stat().st_mtime_ns for c in pool_clips} == stamps

    repeats = track_repeats(pool_clips, {"Language": 3})
    language = {i for i, c in enumerate(pool_clips) if c.info.track == "Language"}
    features = ClipFeatures(torch.zeros(len(pool_clips), 1, 1), torch.ones(len(pool_clips), 1))
    targets = torch.zeros(len(pool_clips), 1, dtype=torch.long)
    one_pass = clip_batches(features, targets, 1, sum(repeats), 0, None, repeats=repeats)
    drawn = Counter(int(i) for b in one_pass.batches for i in b)
    assert all(drawn[i] == 3 for i in language)
    assert all(drawn[i] == 1 for i in range(len(pool_clips)) if i not in language)
    with pytest.raises(ValueError, match="unknown tracks"):
        track_repeats(pool_clips, {"Languages": 2})

    led = clip_batches(
        features, targets, 2, 12, 0, None, lead_clips=sorted(language), lead_batches=5
    )
    assert len(led.batches) == 12
    assert all(set(b.tolist()) <= language for b in led.batches[:5])
    assert any(set(b.tolist()) - language for b in led.batches[5:])


def test_clips_of_unaugmented_tracks_reach_the_encoder_untouched(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    overrides = ["task=encoder", "task.pool=null", *FEW_STEPS, *NO_VALIDATION]
    overrides += ["dataset.scale=tiny", "task.lead=null", "task.unaugmented_tracks=[Language]"]
    cfg = compose_train(tmp_path, overrides)
    prepared = prepare_encoder(
        cfg.task, context_for(cfg, tmp_path), cfg.model.sizes, tiny_corpus / "audio"
    )
    clips = manifest_clips(tiny_corpus / "audio", "train")
    language = set(track_clips(clips, ["Language"]))
    assert language and all(clips[i].info.track == "Language" for i in language)
    config = DestaAudioEncoderConfig(**dict(cfg.model.sizes.encoder))
    features = cached_features(clips, config, None)
    batches = prepared.data.train
    untouched: dict[bool, list[bool]] = {True: [], False: []}
    for position, batch in enumerate(batches.batches):
        drawn = batches.collate(position, batch)["features"]
        for row, index in zip(drawn, batch.tolist(), strict=True):
            untouched[index in language].append(torch.equal(row, features.features[index].float()))
    assert untouched[True] and all(untouched[True])
    assert untouched[False] and sum(untouched[False]) <= 0.1 * len(untouched[False])


@pytest.mark.parametrize("targets", [DISTILLED, GROUND_TRUTH])
def test_connector_steps_lower_the_loss_on_a_fixed_batch(
    targets: str, tiny_corpus: Path, fresh_backbone_dir: Path, encoder_path: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        tmp_path,
        ["task=distill", *FEW_STEPS, *CONNECTOR_FAST, *NO_VALIDATION, "task.optimizer.lr=1e-2"],
    )
    audio, cache = tiny_corpus / "audio", tmp_path / "cache"
    if targets == DISTILLED:
        # Stage-1 responses of this freshly initialised backbone would be empty: seed its
        # cache with answers, which also shows that a cached stage 1 is read back.
        settings = InstructionSettings(
            rounds=1,
            portability_share=0.5,
            max_new_tokens=4,
            seed=0,
            off_track_share=cfg.task.stage1.off_track_share,
        )
        clips = manifest_clips(audio, "train")
        instructions = sample_instructions(clips, settings)
        path = cache_path(cache, fresh_backbone_dir, clips, instructions, settings)
        write_records(path, ground_truth_records(instructions))
    prepared = prepare_connector(
        cfg.task,
        context_for(cfg, tmp_path),
        fresh_backbone_dir,
        encoder_path,
        cfg.model.sizes,
        audio,
        cache,
        targets,
    )
    assert prepared.metrics.get("stage1/cache_hit", 1.0) == 1.0
    assert_few_steps_lower_the_loss(prepared, cfg, tmp_path, by=0.02)


def test_stage1_asks_only_about_a_clips_own_track_unless_told_otherwise(
    tiny_corpus: Path,
) -> None:
    clips = manifest_clips(tiny_corpus / "audio", "train")
    speech = [c for c in clips if "Language" in c.info.labels]
    own_only = InstructionSettings(2, 0.5, 4, seed=0, off_track_share=0.0)
    every = InstructionSettings(2, 0.5, 4, seed=0, off_track_share=1.0)
    assert len(sample_instructions(clips, own_only)) == 2 * len(clips)
    extra = len(sample_instructions(clips, every)) - len(sample_instructions(clips, own_only))
    assert extra == 2 * sum(len(c.info.labels) - 1 for c in speech) > 0


def test_distillation_caches_stage1_and_trains_only_the_connector(
    tiny_corpus: Path, backbone_dir: Path, encoder_path: Path, tmp_path: Path
) -> None:
    cfg = compose_train(tmp_path, ["task=distill", *FEW_STEPS, *CONNECTOR_FAST])
    cache = tmp_path / "cache"
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        _, metrics = train_connector_stage(
            cfg.task,
            context_for(cfg, out),
            backbone_dir,
            encoder_path,
            cfg.model.sizes,
            tiny_corpus / "audio",
            cache,
            DISTILLED,
        )
        runs.append(metrics)
    assert runs[0]["stage1/cache_hit"] == 0.0 and runs[1]["stage1/cache_hit"] == 1.0
    (cached,) = list((cache / "distill").glob("*/*.jsonl"))
    records = read_records(cached)
    assert len(records) == runs[0]["stage1/records"] > 0
    assert any(r.response for r in records)
    assert runs[0]["train/loss"] == pytest.approx(runs[1]["train/loss"])

    checkpoint = torch.load(tmp_path / "first/checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["state_dict"]
    assert all(k.startswith(f"model.{CONNECTOR_PREFIX}.") for k in checkpoint["state_dict"])

    model = load_desta(tmp_path / "first").model
    backbone = dict(zip(*_tensors(backbone_dir / "backbone.safetensors"), strict=True))
    for key, tensor in backbone.items():
        assert torch.equal(model.state_dict()[key], tensor), f"{key} changed in distillation"


def _tensors(path: Path) -> tuple[list[str], list[torch.Tensor]]:
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        return keys, [handle.get_tensor(k) for k in keys]


# --------------------------------------------------------------------------- checkpoints


class NanAtStep(BackboneModule):
    """The backbone module with its loss poisoned at one step."""

    poisoned_step: int | None = None

    def loss(self, batch: dict) -> torch.Tensor:
        loss = super().loss(batch)
        if self.trainer is not None and self.global_step == self.poisoned_step:
            return loss * float("nan")
        return loss


@pytest.fixture
def backbone_stage(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> Iterator[tuple[DictConfig, callable]]:
    cfg = compose_train(
        tmp_path,
        [
            "task=backbone",
            "task.trainer.max_steps=6",
            "task.checkpoint_every=3",
            "task.batch_size=4",
            *NO_VALIDATION,
        ],
    )

    def make(poisoned_step: int | None = None) -> PreparedStage:
        prepared = prepare_backbone(
            cfg.task, context_for(cfg, tmp_path), tokenizer, cfg.model.sizes
        )
        module = NanAtStep(prepared.module.model, tokenizer, prepared.module.optimizer_settings, 4)
        module.poisoned_step = poisoned_step
        return PreparedStage(module, prepared.data, {})

    yield cfg, make


def test_nan_loss_stops_the_run_naming_the_step(backbone_stage, tmp_path: Path) -> None:
    cfg, make = backbone_stage
    prepared = make(poisoned_step=2)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 2"):
        fit(prepared.module, prepared.data, context_for(cfg, tmp_path / "run"), cfg.task)


def test_checkpoints_hold_trainable_tensors_and_resume_continues_exactly(
    backbone_stage, tmp_path: Path
) -> None:
    cfg, make = backbone_stage
    whole = make()
    metrics, _ = fit(whole.module, whole.data, context_for(cfg, tmp_path / "whole"), cfg.task)
    assert metrics["train/steps"] == 6

    killed = make(poisoned_step=4)
    run_dir = tmp_path / "killed"
    with pytest.raises(NonFiniteLossError):
        fit(killed.module, killed.data, context_for(cfg, run_dir), cfg.task)
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 3
    keys = list(checkpoint["state_dict"])
    assert keys == killed.module.trainable_keys()
    assert all(k.startswith(f"model.{LLM_PREFIX}.") for k in keys)

    resumed = make()
    settings = OmegaConf.merge(cfg.task, {"ckpt_path": str(last)})
    metrics, _ = fit(resumed.module, resumed.data, context_for(cfg, run_dir), settings)
    assert metrics["train/steps"] == 6
    expected = whole.module.model.llm_model.state_dict()
    for key, tensor in resumed.module.model.llm_model.state_dict().items():
        assert torch.equal(tensor, expected[key]), f"{key} differs after resuming"


def test_resuming_from_a_checkpoint_with_other_keys_names_them(
    backbone_stage, tmp_path: Path
) -> None:
    cfg, make = backbone_stage
    first = make()
    fit(first.module, first.data, context_for(cfg, tmp_path / "first"), cfg.task)
    checkpoint = torch.load(tmp_path / "first/checkpoints/last.ckpt", weights_only=False)
    dropped = next(iter(checkpoint["state_dict"]))
    del checkpoint["state_dict"][dropped]
    checkpoint["state_dict"]["model.perception.connector.extra"] = torch.zeros(1)
    broken = tmp_path / "broken.ckpt"
    torch.save(checkpoint, broken)
    again = make()
    settings = OmegaConf.merge(cfg.task, {"ckpt_path": str(broken)})
    with pytest.raises(CheckpointMismatchError, match="extra") as error:
        fit(again.module, again.data, context_for(cfg, tmp_path / "again"), settings)
    assert dropped in str(error.value)


# --------------------------------------------------------------------------- configs and tasks


def test_manifest_recipe_keeps_every_stage_and_no_machine_paths(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["experiment=desta_tiny"])
    written = recipe(cfg)
    assert set(written["task"]["stages"]) == {"tokenizer", "backbone", "encoder", "distill"}
    assert written["task"]["stages"]["encoder"]["pool"]["clips_factor"] == 4
    assert str(tmp_path) not in json.dumps(written)


def test_desta_tiny_experiment_composes(compose_cfg) -> None:
    cfg = compose_cfg("train", ["experiment=desta_tiny"])
    assert cfg.task.fn._target_ == "sake.tasks.train.desta_tiny_task"
    assert list(cfg.task.stages) == ["tokenizer", "backbone", "encoder", "distill"]
    assert cfg.task.stages.distill.fn._target_ == "sake.tasks.train.distill_task"
    assert cfg.task.out_dir == cfg.model.weights_dir
    assert Path(cfg.model.weights_dir).name == "desta_tiny"
    assert cfg.model.load._target_ == "sake.models.desta.load_desta"
    assert cfg.model.name == "desta_tiny"
    assert cfg.dataset.name == "sake_synth"
    connector = compose_cfg("train", ["task=connector"])
    assert connector.task.fn._target_ == "sake.tasks.train.connector_task"
    assert connector.task.stage1 == cfg.task.stages.distill.stage1


def test_lightning_logger_is_offline_wandb_or_nothing(compose_cfg, tmp_path: Path) -> None:
    wandb_cfg = compose_cfg("train", ["logger=wandb"]).logger
    logger = lightning_logger(wandb_cfg, tmp_path, "backbone-desta_tiny-0")
    assert type(logger).__name__ == "WandbLogger"
    assert logger._offline is True
    assert logger._wandb_init["dir"] == str(tmp_path)
    assert lightning_logger(compose_cfg("train", ["logger=none"]).logger, tmp_path, "x") is False


def test_backbone_task_runs_from_the_entry_point_config(
    compose_cfg, workdir: Path, tokenizer: PreTrainedTokenizerFast
) -> None:
    cfg = compose_cfg(
        "train",
        [
            "task=backbone",
            f"task.tokenizer_dir={workdir / 'tokenizer'}",
            *QUIET,
            *TINY_SIZES,
            "task.trainer.max_steps=2",
            "task.batch_size=4",
            "task.threads=null",  # the thread count is process-wide: leave it to the test run
            *NO_VALIDATION,
        ],
    )
    metrics = run_task(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert metrics["train/steps"] == 2
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    keys = safetensors_keys(run_dir / "backbone.safetensors")
    assert keys and all(k.startswith(f"{LLM_PREFIX}.") for k in keys)
    assert load_tokenizer(run_dir / "tokenizer").get_vocab() == tokenizer.get_vocab()


def stage_overrides(stage: str, overrides: list[str]) -> list[str]:
    return [o.replace("task.", f"task.stages.{stage}.", 1) for o in overrides]


@pytest.mark.slow
def test_pipeline_exports_float16_weights_that_load_and_resumes_finished_stages(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "weights"
    overrides = [
        "experiment=desta_tiny",
        "dataset.scale=tiny",
        f"dataset.root={tiny_corpus}",
        f"task.out_dir={out}",
        "task.threads=null",
        "task.measure.per_group=4",
        "task.measure.max_new_tokens=4",
        "task.stages.tokenizer.vocab_size=512",
        "task.stages.tokenizer.imagined_clips=150",
        "task.stages.tokenizer.knowledge_rounds=1",
        *stage_overrides("backbone", BACKBONE_THAT_ANSWERS),
        *stage_overrides("encoder", [*FEW_STEPS, *NO_VALIDATION, *ENCODER_ON_CORPUS]),
        *stage_overrides("distill", [*FEW_STEPS, *CONNECTOR_FAST]),
    ]
    cfg = compose_train(tmp_path / "run", overrides)
    metrics = run_task(cfg)
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["command"] == "python train.py experiment=desta_tiny"
    assert set(manifest["seconds"]) >= {"tokenizer", "backbone", "encoder", "distill"}
    assert "shipped/text/knowledge" in metrics
    for part in ("backbone", "encoder", "connector"):
        _, tensors = _tensors(out / f"{part}.safetensors")
        assert all(t.dtype == torch.float16 for t in tensors if t.is_floating_point())
    lalm = load_desta(out)
    assert next(lalm.model.parameters()).dtype == torch.float32

    again = compose_train(tmp_path / "again", [*overrides, f"task.resume_dir={tmp_path / 'run'}"])
    resumed = run_task(again)
    assert resumed["backbone/train/loss"] == metrics["backbone/train/loss"]
    assert resumed["shipped/text/knowledge"] == metrics["shipped/text/knowledge"]


def test_own_track_families_keep_english_speech_of_other_tracks_out_of_the_language_head() -> None:
    families = label_families()
    english_gender = ClipInfo("g.wav", "Gender", {"Language": "English", "Gender": "male"})
    french = ClipInfo("f.wav", "Language", {"Language": "French", "Gender": "female"})
    english = ClipInfo("e.wav", "Language", {"Language": "English", "Gender": "male"})
    clips = [Clip(info, Path(info.relative_path), "") for info in (english_gender, french, english)]
    language, gender = list(families).index("Language"), list(families).index("Gender")
    everything = label_targets(clips, families)
    own = label_targets(clips, families, own_track_families=["Language"])
    assert everything[0, language] >= 0 and own[0, language] == -1
    assert torch.equal(own[1:], everything[1:]) and own[0, gender] == everything[0, gender]
    weights = class_weights(own, families)[language]
    english_id = families["Language"].index("English")
    french_id = families["Language"].index("French")
    assert weights[english_id] == pytest.approx(weights[french_id])  # no longer swamped
    assert class_weights(everything, families)[language][english_id] < weights[english_id]
    with pytest.raises(ValueError, match="unknown families"):
        label_targets(clips, families, own_track_families=["Languages"])
