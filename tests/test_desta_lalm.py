"""DestaLALM: prompts, batching, teacher forcing, audio caches, identity and loading."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import PreTrainedTokenizerFast

from sake.data.schema import Probe, ProbeKind
from sake.methods.hooks import ModuleRecorder
from sake.models.audio_lalm import answer_text
from sake.models.base import LALM, Turn
from sake.models.desta import (
    BUILD_COMMAND,
    DestaLALM,
    build_random_desta_tiny,
    load_desta,
)
from sake.models.desta_checkpoints import save_checkpoint
from sake.models.modeling_desta import (
    AUDIO_ENCODER_PREFIX,
    CONNECTOR_PREFIX,
    LLM_PREFIX,
    MIN_SHARED_PREFIX,
    CheckpointMismatchError,
    prefix_first_order,
    shared_prefix_length,
)
from sake.models.tokenizer import IM_END, train_tokenizer

SAMPLE_RATE = 16000
SMALL_SIZES = {
    "encoder": {
        "n_mels": 16,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "ffn_dim": 64,
        "max_seconds": 2.0,
    },
    "connector": {
        "tapped_layers": (0, 1),
        "queries_per_layer": 4,
        "n_layers": 1,
        "n_heads": 2,
        "ffn_dim": 64,
    },
    "llm": {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    },
}
ANSWERS = ["male", "female", "Male", "Female", "dog", "cat", "happy", "sad", "English", "Chinese"]
QUESTIONS = [
    "What is the gender of the speaker?\n\nOptions:\nmale\nfemale",
    "Which animal makes this sound?\n\nOptions:\ndog\ncat\ncow\npig",
    "What emotion does the speaker express?\n\nOptions:\nhappy\nsad\nangry",
    "Which language is spoken?\n\nOptions:\nEnglish\nChinese\nJapanese",
    "What is the capital of France?",
]


def tokenizer_corpus() -> list[str]:
    """About 200 short strings: questions, answers, CJK, and newline-space runs."""
    texts = [*QUESTIONS, *ANSWERS, "中文", "日本語", "한국어", "The answer is cat."]
    texts += [f"Answer: {answer}\n  {answer}" for answer in ANSWERS]
    texts += [
        f"{question}\n  The answer is {answer}." for question in QUESTIONS for answer in ANSWERS
    ]
    texts += [f"Be brief. {answer} {answer.upper()} 中文 {answer}" for answer in ANSWERS * 12]
    return texts


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(tokenizer_corpus(), vocab_size=400)


def build_small(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **options: object) -> DestaLALM:
    return build_random_desta_tiny(tokenizer, seed=seed, **SMALL_SIZES, **options)


@pytest.fixture(scope="module")
def lalm(tokenizer: PreTrainedTokenizerFast) -> DestaLALM:
    return build_small(tokenizer)


def write_tone(path: Path, seconds: float, frequency: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(t.shape)
    sf.write(str(path), tone.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("clips")
    specs = [(1.0, 220.0), (1.6, 440.0), (1.2, 330.0), (1.9, 550.0)]
    return [
        write_tone(root / f"clip_{i}.wav", seconds, frequency, seed=i)
        for i, (seconds, frequency) in enumerate(specs)
    ]


def audio_probe(question: str, answer: str, clip: Path) -> Probe:
    return Probe(
        kind=ProbeKind.RELIABILITY,
        question=question,
        answer=answer,
        options=(answer,),
        file=clip.name,
        audio_path=clip,
    )


def text_probe(question: str, answer: str) -> Probe:
    return Probe(kind=ProbeKind.LOCALITY_TEXT, question=question, answer=answer, options=())


@pytest.fixture(scope="module")
def mixed_probes(clips: list[Path]) -> list[Probe]:
    """Different lengths, audio and text-only probes in one batch."""
    return [
        audio_probe(QUESTIONS[0], "male", clips[1]),
        text_probe(QUESTIONS[4], "Paris"),
        audio_probe("Which animal?", "dog", clips[2]),
    ]


@pytest.fixture(scope="module")
def history(clips: list[Path]) -> list[Turn]:
    return [Turn("user", QUESTIONS[1], (clips[0],)), Turn("assistant", "dog")]


# --------------------------------------------------------------------------- prompts and batching


def test_lalm_satisfies_the_protocol(lalm: DestaLALM) -> None:
    assert isinstance(lalm, LALM)


def test_prompt_puts_clips_before_the_question(
    lalm: DestaLALM, clips: list[Path], history: list[Turn]
) -> None:
    probe = audio_probe("Which animal?", "dog", clips[2])
    span = "<|audio_start|>" + "<|audio|>" * 4 + "<|audio_end|>"
    assert lalm.prompt_text(probe, system="Be brief.", history=history) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\n{span}\n{QUESTIONS[1]}<|im_end|>\n"
        "<|im_start|>assistant\ndog<|im_end|>\n"
        f"<|im_start|>user\n{span}\nWhich animal?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert lalm.prompt_text(text_probe("Hi?", "x")) == (
        "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )


class StemTranscriber:
    """Names each clip by its file stem; records which clips it was asked to prepare."""

    def __init__(self) -> None:
        self.prefetched: list[Path] = []

    def __call__(self, clip: Path) -> str:
        return f"[{clip.stem}]"

    def prefetch(self, clips: Sequence[Path]) -> None:
        self.prefetched.extend(clips)


def test_transcripts_go_inside_the_span(
    tokenizer: PreTrainedTokenizerFast, lalm: DestaLALM, clips: list[Path]
) -> None:
    transcriber = StemTranscriber()
    with_transcripts = DestaLALM(lalm.model, tokenizer, transcriber=transcriber)
    prompt = with_transcripts.prompt_text(audio_probe("Which animal?", "dog", clips[2]))
    assert "<|audio|><|audio_end|>" not in prompt
    assert "<|audio|>[clip_2]<|audio_end|>\nWhich animal?" in prompt
    probes = [audio_probe("Which animal?", "dog", clip) for clip in (clips[2], clips[1], clips[2])]
    batch = with_transcripts.prepare(probes)
    assert transcriber.prefetched == [clips[2], clips[1]]
    assert with_transcripts.next_token_logits(batch).shape == (3, len(tokenizer))


def test_batch_is_left_padded_with_clips_in_reading_order(
    lalm: DestaLALM, mixed_probes: list[Probe], history: list[Turn], clips: list[Path]
) -> None:
    batch = lalm.prepare(mixed_probes, system="Be brief.", history=history)
    assert bool(batch.attention_mask[:, -1].all())
    assert not bool(batch.attention_mask[:, 0].all())
    assert batch.inputs["audio_paths"] == (clips[0], clips[1], clips[0], clips[0], clips[2])
    assert batch.prompts == [
        lalm.prompt_text(p, system="Be brief.", history=history) for p in mixed_probes
    ]
    assert lalm.prepare([text_probe("Hi?", "x")]).inputs == {}


def test_batched_logits_and_generations_equal_each_probe_alone(
    lalm: DestaLALM, mixed_probes: list[Probe], history: list[Turn]
) -> None:
    batch = lalm.prepare(mixed_probes, system="Be brief.", history=history)
    singles = [lalm.prepare([p], system="Be brief.", history=history) for p in mixed_probes]
    expected_logits = torch.cat([lalm.next_token_logits(single) for single in singles])
    torch.testing.assert_close(lalm.next_token_logits(batch), expected_logits)
    answers = lalm.generate(batch, max_new_tokens=8)
    assert answers == [lalm.generate(single, max_new_tokens=8)[0] for single in singles]
    assert any(answers)
    scored = lalm.generate_scored(batch, max_new_tokens=8)
    assert scored.texts == answers
    torch.testing.assert_close(scored.first_logits, expected_logits)  # shared prefix included


def test_a_long_shared_prefix_is_computed_once_with_the_same_results(
    lalm: DestaLALM, mixed_probes: list[Probe]
) -> None:
    system = LONG_SYSTEM
    batch = lalm.prepare(mixed_probes, system=system)
    shared = shared_prefix_length(batch.input_ids, batch.attention_mask, lalm.config.audio_token_id)
    assert shared >= MIN_SHARED_PREFIX
    singles = [lalm.prepare([p], system=system) for p in mixed_probes]
    expected = torch.cat([lalm.next_token_logits(single) for single in singles])
    torch.testing.assert_close(lalm.next_token_logits(batch), expected)
    assert lalm.generate(batch, 8) == [lalm.generate(single, 8)[0] for single in singles]


LONG_SYSTEM = " ".join(["Answer briefly, with one of the options and nothing else."] * 4)


def test_the_shared_prefix_shortcut_is_taken_when_nothing_watches_the_decoder(
    lalm: DestaLALM, mixed_probes: list[Probe], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix_passes = []
    cache_prefix = lalm.model._prefix_cached

    def counted(*args, **kwargs):
        prefix_passes.append(args[2])
        return cache_prefix(*args, **kwargs)

    monkeypatch.setattr(lalm.model, "_prefix_cached", counted)
    batch = lalm.prepare(mixed_probes, system=LONG_SYSTEM)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the prepared cache, by its current name
        lalm.next_token_logits(batch)
        lalm.generate(batch, 4)
    assert len(prefix_passes) == 2 and min(prefix_passes) >= MIN_SHARED_PREFIX


def test_a_hooked_decoder_module_sees_one_call_over_the_whole_batch(
    lalm: DestaLALM, mixed_probes: list[Probe]
) -> None:
    batch = lalm.prepare(mixed_probes, system=LONG_SYSTEM)
    expected_logits = lalm.next_token_logits(batch)
    expected_answers = lalm.generate(batch, 8)
    recorder = ModuleRecorder(lalm.modules.resolve("llm.layer[-1].mlp").module)
    with recorder.installed():
        logits = lalm.next_token_logits(batch)
    assert [tuple(call.hidden_states.shape[:2]) for call in recorder.calls] == [
        tuple(batch.input_ids.shape)
    ]
    torch.testing.assert_close(logits, expected_logits)
    recorder.calls.clear()
    with recorder.installed():
        answers = lalm.generate(batch, 8)
    assert recorder.calls[0].hidden_states.shape[:2] == batch.input_ids.shape
    assert all(call.hidden_states.shape[1] == 1 for call in recorder.calls[1:])
    assert answers == expected_answers


def test_shared_prefix_stops_at_audio_and_moves_before_the_padding() -> None:
    audio = 9
    input_ids = torch.tensor([[0, 0, 5, 6, 8, 7], [5, 6, 7, audio, 1, 2], [0, 5, 6, 7, audio, 4]])
    mask = (input_ids != 0).long()
    assert shared_prefix_length(input_ids, mask, audio) == 2  # 5, 6
    assert shared_prefix_length(input_ids[1:], mask[1:], audio) == 3  # stops before audio
    order = prefix_first_order(mask, shared=2)
    assert order.tolist() == [[2, 3, 0, 1, 4, 5], [0, 1, 2, 3, 4, 5], [1, 2, 0, 3, 4, 5]]


def test_generate_rejects_unbounded_lengths(lalm: DestaLALM, mixed_probes: list[Probe]) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        lalm.generate(lalm.prepare(mixed_probes), max_new_tokens=0)


def test_generation_is_cut_at_the_end_of_turn(lalm: DestaLALM) -> None:
    end, eos = lalm.tokenizer.convert_tokens_to_ids([IM_END, "<|eos|>"])
    word = lalm.tokenizer("dog", add_special_tokens=False).input_ids
    assert answer_text(lalm.tokenizer, [*word, end, *word], [end, eos]) == "dog"
    assert answer_text(lalm.tokenizer, [*word, eos, *word], [end, eos]) == "dog"
    assert answer_text(lalm.tokenizer, [*word, *word], [end, eos]) == "dogdog"


def test_audio_problems_are_named(lalm: DestaLALM, tmp_path: Path, clips: list[Path]) -> None:
    unrooted = Probe(ProbeKind.RELIABILITY, "Which animal?", "dog", ("dog",), file="x.wav")
    with pytest.raises(ValueError, match="audio root"):
        lalm.prepare([unrooted])
    absent = tmp_path / "absent.wav"
    with pytest.raises(FileNotFoundError, match=str(absent)):
        lalm.prepare([audio_probe("Which animal?", "dog", absent)])
    with pytest.raises(ValueError, match="only user turns"):
        lalm.prepare([text_probe("Hi?", "x")], history=[Turn("assistant", "dog", (clips[0],))])
    with pytest.raises(ValueError, match="special tokens"):
        lalm.prepare([text_probe("Hi <|audio|>?", "x")])


# --------------------------------------------------------------------------- teacher forcing


@pytest.mark.parametrize(
    "target", ["male", "Female", "The answer is cat.", "中文", "日本語 and English", "dog "]
)
def test_target_tokens_in_context_equal_the_answer_tokens(
    lalm: DestaLALM, mixed_probes: list[Probe], target: str
) -> None:
    batch = lalm.prepare(mixed_probes[:2])
    alone = lalm.tokenizer(target, add_special_tokens=False).input_ids
    end = lalm.tokenizer.convert_tokens_to_ids(IM_END)
    assert lalm.target_token_ids(batch, [target, target]) == [alone, alone]
    assert lalm.target_token_ids(batch, [target, "x"], include_end=True)[0] == [*alone, end]


def test_target_straddling_the_prompt_boundary_raises(
    lalm: DestaLALM, mixed_probes: list[Probe]
) -> None:
    batch = lalm.prepare(mixed_probes[:1])
    with pytest.raises(ValueError, match=r"in context \[.*\], alone \[.*\]"):
        lalm.target_nll(batch, ["  male"])
    with pytest.raises(ValueError, match="special tokens"):
        lalm.target_nll(batch, [f"male{IM_END}"])
    with pytest.raises(ValueError, match="one target"):
        lalm.target_nll(batch, ["male", "female"])


def manual_nll(
    lalm: DestaLALM, prompts: list[str], targets: list[str], audio: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy from the model's own forward over prompt + answer + end, concatenated."""
    tokenize = lalm.tokenizer
    end = tokenize.convert_tokens_to_ids(IM_END)
    rows = [
        tokenize(p, add_special_tokens=False).input_ids
        + tokenize(t, add_special_tokens=False).input_ids
        + [end]
        for p, t in zip(prompts, targets, strict=True)
    ]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    log_probs = torch.log_softmax(lalm.model(ids, mask, audio_embeds=audio).logits.float(), -1)
    values = []
    for row, target in enumerate(targets):
        n = len(tokenize(target, add_special_tokens=False).input_ids)
        positions = torch.arange(width - 1 - n, width - 1)
        picked = log_probs[row, positions - 1, ids[row, positions]]
        values.append(-picked.mean())
    return torch.stack(values)


def test_target_nll_matches_manual_cross_entropy_and_backpropagates(
    tokenizer: PreTrainedTokenizerFast, mixed_probes: list[Probe], history: list[Turn]
) -> None:
    lalm = build_small(tokenizer, seed=1)
    batch = lalm.prepare(mixed_probes, history=history)
    targets = ["male", "The answer is cat.", "中文"]
    nll = lalm.target_nll(batch, targets)
    with torch.no_grad():
        audio = lalm.encode_audio(batch.inputs["audio_paths"])
        expected = manual_nll(lalm, batch.prompts, targets, audio)
    torch.testing.assert_close(nll.detach(), expected)
    assert not torch.allclose(lalm.target_nll(batch, targets, include_end=True), nll)
    nll.sum().backward()
    for role in ("connector", "llm.layer[-1].mlp"):
        grads = [p.grad for p in lalm.modules.parameters(role).values()]
        assert all(g is not None for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)


def test_answer_logits_predict_each_target_token(
    lalm: DestaLALM, mixed_probes: list[Probe]
) -> None:
    batch = lalm.prepare(mixed_probes[:2])
    targets = ["The answer is cat.", "dog"]
    logits = lalm.answer_logits(batch, targets)
    token_ids = lalm.target_token_ids(batch, targets)
    assert [tuple(x.shape) for x in logits] == [(len(t), len(lalm.tokenizer)) for t in token_ids]
    nll = torch.stack(
        [
            torch.nn.functional.cross_entropy(row, torch.tensor(ids))
            for row, ids in zip(logits, token_ids, strict=True)
        ]
    )
    torch.testing.assert_close(nll, lalm.target_nll(batch, targets))
    first = lalm.next_token_logits(batch)
    torch.testing.assert_close(torch.stack([row[0] for row in logits]), first)


# --------------------------------------------------------------------------- audio caches


@pytest.fixture
def connector_calls(lalm: DestaLALM) -> Iterator[list[int]]:
    calls: list[int] = []
    connector = lalm.modules.resolve("connector").module
    handle = connector.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    yield calls
    handle.remove()


def test_embeddings_are_reused_only_inside_the_cache_context(
    lalm: DestaLALM, clips: list[Path], connector_calls: list[int]
) -> None:
    paths = [clips[0], clips[1], clips[0]]
    first = lalm.encode_audio(paths)
    lalm.encode_audio(paths)
    assert connector_calls == [2, 2]
    torch.testing.assert_close(first[0], first[2])
    with lalm.cached_audio_embeddings():
        inside = lalm.encode_audio(paths)
        again = lalm.encode_audio(clips[:2])
        lalm.next_token_logits(lalm.prepare([audio_probe("Which animal?", "dog", clips[1])]))
    assert connector_calls == [2, 2, 2]
    torch.testing.assert_close(inside, first)
    torch.testing.assert_close(again, first[:2])
    lalm.encode_audio(paths)
    assert connector_calls == [2, 2, 2, 2]


def test_clear_caches_sees_changed_connector_weights(
    tokenizer: PreTrainedTokenizerFast, clips: list[Path]
) -> None:
    lalm = build_small(tokenizer, seed=2)
    projection = lalm.model.perception.connector.proj[1]
    with lalm.cached_audio_embeddings():
        before = lalm.encode_audio(clips[:2])
        with torch.no_grad():
            projection.bias.add_(1.0)
        assert torch.equal(lalm.encode_audio(clips[:2]), before)
        lalm.clear_caches()
        after = lalm.encode_audio(clips[:2])
    torch.testing.assert_close(after, before + 1.0)


@pytest.fixture
def encoder_calls(lalm: DestaLALM) -> Iterator[list[int]]:
    calls: list[int] = []
    encoder = lalm.modules.resolve("audio_encoder").module
    handle = encoder.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    yield calls
    handle.remove()


def test_encoder_states_are_reused_while_the_connector_trains(
    lalm: DestaLALM, clips: list[Path], encoder_calls: list[int], connector_calls: list[int]
) -> None:
    batch = lalm.prepare([audio_probe("Which animal?", "dog", clips[1])])
    with torch.no_grad():
        plain = lalm.target_nll(batch, ["dog"])
    with lalm.cached_encoder_states():
        lalm.encode_audio(clips[:2])
        cached = lalm.target_nll(batch, ["dog"])
        cached.sum().backward()
    encoder, connector = lalm.model.perception.whisper, lalm.model.perception.connector
    try:
        assert encoder_calls == [1, 2]  # inside the context, once per clip
        assert connector_calls == [1, 2, 1]  # the connector runs on every use
        torch.testing.assert_close(cached.detach(), plain)
        assert all(p.grad is None for p in encoder.parameters())
        assert any(p.grad is not None and bool(p.grad.any()) for p in connector.parameters())
    finally:
        lalm.model.zero_grad(set_to_none=True)


def test_clear_caches_sees_changed_encoder_weights(
    tokenizer: PreTrainedTokenizerFast, clips: list[Path]
) -> None:
    lalm = build_small(tokenizer, seed=3)
    layer = lalm.model.perception.whisper.encoder.layers[0].fc2
    with lalm.cached_encoder_states():
        before = lalm.encode_audio(clips[:1])
        with torch.no_grad():
            layer.bias.add_(1.0)
        assert torch.equal(lalm.encode_audio(clips[:1]), before)
        lalm.clear_caches()
        assert not torch.allclose(lalm.encode_audio(clips[:1]), before)


# --------------------------------------------------------------------------- roles and identity


def test_module_map_resolves_the_roles(lalm: DestaLALM) -> None:
    model = lalm.model
    assert lalm.modules.resolve("connector").module is model.perception.connector
    assert lalm.modules.resolve("audio_encoder").module is model.perception.whisper
    down = lalm.modules.resolve("llm.layer[-1].mlp.down_proj")
    assert down.module is model.llm_model.model.layers[-1].mlp.down_proj
    assert down.name == "llm_model.model.layers.1.mlp.down_proj"


def test_fingerprint_tracks_every_weight(tokenizer: PreTrainedTokenizerFast) -> None:
    lalm = build_small(tokenizer, seed=3)
    original = lalm.fingerprint()
    assert lalm.fingerprint() == original == build_small(tokenizer, seed=3).fingerprint()
    weight = lalm.modules.resolve("llm.layer[0].mlp.down_proj").module.weight
    with torch.no_grad():
        saved = weight[0, 0].clone()
        weight[0, 0] += 1e-3
        changed = lalm.fingerprint()
        weight[0, 0] = saved
    assert changed != original
    assert lalm.fingerprint() == original
    assert build_small(tokenizer, seed=4).fingerprint() != original


def test_fingerprint_ignores_the_padding_state_of_the_last_batch(
    tokenizer: PreTrainedTokenizerFast, mixed_probes: list[Probe]
) -> None:
    lalm = build_small(tokenizer, seed=3)
    fresh = lalm.fingerprint()
    lalm.prepare(mixed_probes)  # a padded batch leaves padding state in the tokenizer
    assert lalm.fingerprint() == fresh


# --------------------------------------------------------------------------- loading


def save_model_dir(lalm: DestaLALM, directory: Path, prefixes: dict[str, str]) -> Path:
    lalm.tokenizer.save_pretrained(str(directory / "tokenizer"))
    (directory / "config.json").write_text(json.dumps(lalm.model.config.to_dict()))
    for part, prefix in prefixes.items():
        save_checkpoint(lalm.model, directory / f"{part}.safetensors", [prefix])
    return directory


def test_load_desta_round_trip_gives_identical_logits(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, mixed_probes: list[Probe]
) -> None:
    trained = build_small(tokenizer, seed=5)
    parts = {"backbone": LLM_PREFIX, "encoder": AUDIO_ENCODER_PREFIX, "connector": CONNECTOR_PREFIX}
    loaded = load_desta(save_model_dir(trained, tmp_path, parts))
    batch = trained.prepare(mixed_probes)
    assert torch.equal(
        loaded.next_token_logits(loaded.prepare(mixed_probes)), trained.next_token_logits(batch)
    )
    assert loaded.fingerprint() == trained.fingerprint()


def test_load_desta_names_what_is_missing(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load_desta(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
    assert BUILD_COMMAND in str(error.value)
    partial = save_model_dir(build_small(tokenizer), tmp_path / "partial", {"c": CONNECTOR_PREFIX})
    with pytest.raises(CheckpointMismatchError, match="leave model tensors unset"):
        load_desta(partial)
