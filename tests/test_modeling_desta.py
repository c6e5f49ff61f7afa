"""The DeSTA-architecture model: mel front end, encoder, connector, placeholders, checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers.audio_utils import mel_filter_bank

from sake.models.configuration_desta import (
    DestaAudioEncoderConfig,
    DestaConfig,
    DestaConnectorConfig,
    desta25_connector_config,
    desta25_encoder_config,
)
from sake.models.desta_checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from sake.models.mel import LogMelSpectrogram, MelConfig, mel_filterbank, stack_waveforms
from sake.models.modeling_desta import (
    CONNECTOR_PREFIX,
    CheckpointMismatchError,
    DestaForCausalLM,
    QFormerConnector,
    WhisperAudioEncoder,
)

PAD, BOS, EOS, AUDIO, AUDIO_START, AUDIO_END = 0, 1, 2, 3, 4, 5
VOCAB = 64
SAMPLE_RATE = 16000


def small_config(mask_padded_frames: bool = True) -> DestaConfig:
    encoder = DestaAudioEncoderConfig(
        n_mels=16,
        d_model=32,
        n_layers=3,
        n_heads=2,
        ffn_dim=64,
        max_seconds=1.0,
        mask_padded_frames=mask_padded_frames,
    )
    connector = DestaConnectorConfig(
        tapped_layers=(0, 2), queries_per_layer=4, n_layers=2, n_heads=4, ffn_dim=64
    )
    llm = {
        "vocab_size": VOCAB,
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
    }
    return DestaConfig(
        encoder=encoder,
        connector=connector,
        llm=llm,
        audio_token_id=AUDIO,
        audio_start_ids=(AUDIO_START,),
        audio_end_ids=(AUDIO_END,),
    )


def build(seed: int = 0, **config_kwargs: bool) -> DestaForCausalLM:
    return DestaForCausalLM.from_config(small_config(**config_kwargs), seed=seed).eval()


def clips(rng: np.random.Generator, seconds: list[float]) -> list[np.ndarray]:
    """Noisy tones of the given durations, distinct per clip."""
    out = []
    for index, duration in enumerate(seconds):
        t = np.arange(round(duration * SAMPLE_RATE)) / SAMPLE_RATE
        tone = 0.3 * np.sin(2 * np.pi * (220.0 + 110.0 * index) * t)
        out.append((tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32))
    return out


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.fixture(scope="module")
def model() -> DestaForCausalLM:
    return build()


@pytest.fixture(scope="module")
def two_sequences(model: DestaForCausalLM) -> tuple[list[int], list[int]]:
    """Row A: two clips (the first with a transcript); row B: one clip, shorter."""
    config = model.config
    row_a = [BOS, 10, 11, *config.audio_span([20, 21]), 12, *config.audio_span(), 13, 14]
    row_b = [BOS, 15, *config.audio_span(), 16]
    return row_a, row_b


@pytest.fixture(scope="module")
def audio_embeds(model: DestaForCausalLM) -> torch.Tensor:
    features, mask = model.audio_features(clips(np.random.default_rng(0), [0.6, 0.8, 0.45]))
    with torch.no_grad():
        return model.embed_audio(features, mask)


# --------------------------------------------------------------------------- mel front end


def numpy_log_mel(audio: np.ndarray, n_samples: int, n_mels: int) -> np.ndarray:
    """Whisper's recipe written out with numpy framing and rfft."""
    n_fft, hop = 400, 160
    audio = np.pad(audio[:n_samples], (0, max(0, n_samples - len(audio)))).astype(np.float64)
    padded = np.pad(audio, n_fft // 2, mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // hop
    frames = np.stack([padded[i * hop : i * hop + n_fft] for i in range(n_frames)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    filters = mel_filter_bank(201, n_mels, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    log_mel = np.log10(np.maximum((power @ filters).T[:, :-1], 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return (log_mel + 4.0) / 4.0


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filterbank_matches_slaney_reference(n_mels: int) -> None:
    reference = mel_filter_bank(201, n_mels, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(mel_filterbank(16000, 400, n_mels), reference.T, atol=1e-8)


def test_log_mel_matches_numpy_stft_reference() -> None:
    config = MelConfig(n_mels=80, max_seconds=3.0)
    audio = clips(np.random.default_rng(1), [2.0, 3.4])
    batch, lengths = stack_waveforms(audio, config.n_samples)
    features, _ = LogMelSpectrogram(config)(batch, lengths)
    assert features.shape == (2, 80, 300)
    for index, clip in enumerate(audio):
        expected = numpy_log_mel(clip, config.n_samples, 80)
        np.testing.assert_allclose(features[index].numpy(), expected, atol=2e-4)


def test_frame_mask_counts_frames_that_cover_audio() -> None:
    config = MelConfig(n_mels=80, max_seconds=3.0)
    batch, lengths = stack_waveforms([np.ones(32000), np.ones(1601), np.ones(56000)], 48000)
    features, mask = LogMelSpectrogram(config)(batch, lengths)
    assert batch.shape == (3, 48000)
    assert lengths.tolist() == [32000, 1601, 48000]
    assert mask.sum(dim=1).tolist() == [200, 11, 300]
    assert features.shape[-1] == mask.shape[-1] == 300


# --------------------------------------------------------------------------- encoder


def test_encoder_returns_every_layer_with_right_shapes(model: DestaForCausalLM) -> None:
    features, mask = model.audio_features(clips(np.random.default_rng(2), [0.5, 0.9]))
    with torch.no_grad():
        states = model.perception.whisper(features, mask)
    assert features.shape == (2, 16, 100)
    assert len(states) == model.config.encoder.n_layers + 1
    assert all(s.shape == (2, 50, 32) for s in states)


@pytest.mark.parametrize("masked", [True, False])
def test_encoder_mask_hides_padded_frames(masked: bool) -> None:
    encoder_model = build(mask_padded_frames=masked)
    features, mask = encoder_model.audio_features(clips(np.random.default_rng(3), [0.5]))
    altered = features.clone()
    altered[..., 56:] += 3.0
    with torch.no_grad():
        before = encoder_model.perception.whisper(features, mask)
        after = encoder_model.perception.whisper(altered, mask)
    real = mask[:, ::2]
    unchanged = all(
        torch.allclose(b[real], a[real], atol=1e-5) for b, a in zip(before, after, strict=True)
    )
    assert unchanged == masked


def test_encoder_rejects_unpadded_features(model: DestaForCausalLM) -> None:
    with pytest.raises(ValueError, match=r"\(clips, 16, 100\)"):
        model.perception.whisper(torch.zeros(1, 16, 80))


# --------------------------------------------------------------------------- connector


def test_connector_output_shape_and_layer_mixture(audio_embeds: torch.Tensor) -> None:
    assert audio_embeds.shape == (3, 4, 48)
    connector = build(seed=5).perception.connector
    with torch.no_grad():
        connector.layer_weights.normal_(generator=torch.Generator().manual_seed(0))
    mixture = connector.layer_mixture()
    assert mixture.shape == (4, 2)
    torch.testing.assert_close(mixture.sum(dim=-1), torch.ones(4))
    assert not torch.allclose(mixture, torch.full_like(mixture, 0.5))


def test_connector_ignores_masked_frames(model: DestaForCausalLM) -> None:
    features, mask = model.audio_features(clips(np.random.default_rng(6), [0.4]))
    frame_mask = model.perception.whisper.frame_mask(mask)
    connector = model.perception.connector
    with torch.no_grad():
        states = model.perception.whisper(features, mask)
        noisy = tuple(s.masked_fill(~frame_mask[..., None], 5.0) for s in states)
        clean_read = connector(states, frame_mask)
        torch.testing.assert_close(connector(noisy, frame_mask), clean_read)
        assert not torch.allclose(connector(noisy, None), connector(states, None))


def test_normed_final_layer_reads_the_last_layer_through_the_encoders_layer_norm() -> None:
    features, mask = build().audio_features(clips(np.random.default_rng(8), [0.5, 0.9]))
    raw = build()
    config = small_config()
    config = replace(config, connector=replace(config.connector, normed_final_layer=True))
    normed = DestaForCausalLM.from_config(config, seed=0).eval()
    perception = normed.perception
    with torch.no_grad():
        perception.whisper.encoder.layer_norm.weight.uniform_(0.5, 2.0)
        states = perception.whisper(features, mask)
        frame_mask = perception.whisper.frame_mask(mask)
        by_hand = perception.connector(
            [*states[:-1], perception.whisper.encoder.layer_norm(states[-1])], frame_mask
        )
        torch.testing.assert_close(normed.embed_audio(features, mask), by_hand.to(torch.float32))
        torch.testing.assert_close(perception(features, mask), by_hand)
        assert not torch.allclose(raw.embed_audio(features, mask), by_hand)


def test_batched_clips_equal_clips_embedded_alone(
    model: DestaForCausalLM, audio_embeds: torch.Tensor
) -> None:
    audio = clips(np.random.default_rng(0), [0.6, 0.8, 0.45])
    with torch.no_grad():
        for index, clip in enumerate(audio):
            features, mask = model.audio_features([clip])
            alone = model.embed_audio(features, mask)
            torch.testing.assert_close(alone[0], audio_embeds[index], atol=1e-5, rtol=1e-5)


def test_connector_queries_attend_to_each_other() -> None:
    features, mask = build().audio_features(clips(np.random.default_rng(4), [0.7]))
    reference, perturbed = build(), build()
    with torch.no_grad():
        perturbed.perception.connector.layer_prompts[0][0, -1] += 1.0
        first_query = [m.embed_audio(features, mask)[0, 0] for m in (reference, perturbed)]
    assert not torch.allclose(*first_query)


def test_connector_names_follow_desta25_release(model: DestaForCausalLM) -> None:
    names = set(model.state_dict())
    for name in (
        "perception.connector.layer_prompts.0",
        "perception.connector.layer_prompts.1",
        "perception.connector.layer_weights",
        "perception.connector.qformer.layer.0.attention.self.query.weight",
        "perception.connector.qformer.layer.1.crossattention.self.key.weight",
        "perception.connector.qformer.layer.1.crossattention.output.LayerNorm.bias",
        "perception.connector.qformer.layer.0.intermediate.dense.weight",
        "perception.connector.qformer.layer.0.output.dense.weight",
        "perception.connector.proj.0.weight",
        "perception.connector.proj.1.weight",
        "perception.whisper.model.encoder.conv1.weight",
        "perception.whisper.model.encoder.layers.2.self_attn.k_proj.weight",
        "perception.whisper.model.encoder.layers.2.final_layer_norm.weight",
        "llm_model.model.layers.1.mlp.down_proj.weight",
    ):
        assert name in names, name


def test_full_size_shapes_match_desta25_llama31_8b() -> None:
    with torch.device("meta"):
        encoder = WhisperAudioEncoder(desta25_encoder_config())
        connector = QFormerConnector(desta25_connector_config(), 1280, 4096)
    encoder_shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in connector.state_dict().items()}
    assert len(encoder_shapes) == 487
    assert encoder_shapes["model.encoder.conv1.weight"] == (1280, 128, 3)
    assert encoder_shapes["model.encoder.embed_positions.weight"] == (1500, 1280)
    assert shapes["layer_weights"] == (64, 4)
    assert [shapes[f"layer_prompts.{i}"] for i in range(4)] == [(1, 64, 1280)] * 4
    assert shapes["qformer.layer.5.crossattention.self.value.weight"] == (1280, 1280)
    assert shapes["qformer.layer.5.intermediate.dense.weight"] == (3072, 1280)
    assert shapes["proj.1.weight"] == (4096, 1280)
    assert "qformer.layer.6.output.dense.weight" not in shapes


# --------------------------------------------------------------------------- placeholders


def test_left_padded_batch_matches_unpadded_rows(
    model: DestaForCausalLM, two_sequences: tuple[list[int], list[int]], audio_embeds: torch.Tensor
) -> None:
    ids, mask = left_pad(list(two_sequences))
    with torch.no_grad():
        batched = model(ids, mask, audio_embeds=audio_embeds).logits
        for row, (tokens, row_embeds) in enumerate(
            zip(two_sequences, (audio_embeds[:2], audio_embeds[2:]), strict=True)
        ):
            single = torch.tensor([tokens])
            alone = model(single, torch.ones_like(single), audio_embeds=row_embeds).logits
            real = batched[row, mask[row].bool()]
            torch.testing.assert_close(real, alone[0], atol=1e-5, rtol=1e-5)


def test_each_clip_lands_in_its_own_run(
    model: DestaForCausalLM, two_sequences: tuple[list[int], list[int]], audio_embeds: torch.Tensor
) -> None:
    ids, _ = left_pad(list(two_sequences))
    with torch.no_grad():
        embeds = model.build_inputs_embeds(ids, audio_embeds)
        token_embeds = model.llm_model.get_input_embeddings()(ids)
    placeholder = model.placeholder_mask(ids)
    runs = [(row, int(col)) for row in range(2) for col in torch.nonzero(placeholder[row])[:, 0]]
    run_starts = [runs[k * 4] for k in range(3)]
    assert [r for r, _ in run_starts] == [0, 0, 1]
    for clip, (row, start) in enumerate(run_starts):
        torch.testing.assert_close(embeds[row, start : start + 4], audio_embeds[clip])
    torch.testing.assert_close(embeds[~placeholder], token_embeds[~placeholder])
    first_row, first_start = run_starts[0]
    after_first_clip = ids[first_row, first_start + 4 : first_start + 7].tolist()
    assert after_first_clip == [20, 21, AUDIO_END]


def test_placeholder_count_mismatch_names_counts(
    model: DestaForCausalLM, two_sequences: tuple[list[int], list[int]], audio_embeds: torch.Tensor
) -> None:
    ids, _ = left_pad(list(two_sequences))
    with pytest.raises(ValueError, match=r"found 12 audio placeholder tokens .* 2 clips"):
        model.build_inputs_embeds(ids, audio_embeds[:2])
    cut = torch.tensor([[BOS, AUDIO_START, AUDIO, AUDIO, AUDIO, AUDIO_END, 7, AUDIO, 8]])
    with pytest.raises(ValueError, match=r"runs of length \[3, 1\]"):
        model.build_inputs_embeds(cut, audio_embeds[:1])


def test_features_and_cached_embeddings_give_same_logits(
    model: DestaForCausalLM, two_sequences: tuple[list[int], list[int]], audio_embeds: torch.Tensor
) -> None:
    ids, mask = left_pad(list(two_sequences))
    features, feature_mask = model.audio_features(clips(np.random.default_rng(0), [0.6, 0.8, 0.45]))
    with torch.no_grad():
        from_features = model(ids, mask, input_features=features, feature_mask=feature_mask)
        from_cache = model(ids, mask, audio_embeds=audio_embeds)
    torch.testing.assert_close(from_features.logits, from_cache.logits)


# --------------------------------------------------------------------------- generation


def test_generate_left_padded_equals_per_row(
    model: DestaForCausalLM, two_sequences: tuple[list[int], list[int]], audio_embeds: torch.Tensor
) -> None:
    row_embeds = (audio_embeds[:2], audio_embeds[2:])

    def alone(row: int, eos: int) -> list[int]:
        single = torch.tensor([two_sequences[row]])
        out = model.generate(
            single,
            torch.ones_like(single),
            audio_embeds=row_embeds[row],
            max_new_tokens=6,
            eos_token_id=eos,
            pad_token_id=PAD,
        )
        return out[0].tolist()

    stop = alone(1, eos=VOCAB - 1)[0]
    assert alone(0, eos=VOCAB - 1)[0] != stop
    ids, mask = left_pad(list(two_sequences))
    batched = model.generate(
        ids, mask, audio_embeds=audio_embeds, max_new_tokens=6, eos_token_id=stop, pad_token_id=PAD
    )
    expected = [alone(row, eos=stop) for row in range(2)]
    width = batched.shape[1]
    assert expected[1] == [stop]
    assert batched.tolist() == [r + [PAD] * (width - len(r)) for r in expected]


# --------------------------------------------------------------------------- checkpoints


def perturb_connector(target: DestaForCausalLM) -> None:
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in target.perception.connector.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def test_checkpoint_round_trip_is_exact(
    tmp_path: Path, two_sequences: tuple[list[int], list[int]]
) -> None:
    trained, fresh = build(), build()
    perturb_connector(trained)
    path = tmp_path / "connector.safetensors"
    save_checkpoint(trained, path)
    config, tensors, prefixes = read_checkpoint(path)
    assert config == trained.config and prefixes == [CONNECTOR_PREFIX]
    assert all(key.startswith(CONNECTOR_PREFIX + ".") for key in tensors)
    ids, mask = left_pad(list(two_sequences))
    features, feature_mask = trained.audio_features(clips(np.random.default_rng(5), [0.5] * 3))
    inputs = {"input_features": features, "feature_mask": feature_mask}
    with torch.no_grad():
        expected = trained(ids, mask, **inputs).logits
        assert not torch.equal(fresh(ids, mask, **inputs).logits, expected)
        load_checkpoint(path, fresh)
        assert torch.equal(fresh(ids, mask, **inputs).logits, expected)


def test_renamed_or_missing_key_is_named(tmp_path: Path) -> None:
    source = build()
    state = source.trainable_state_dict()
    state["perception.connector.layer_weight"] = state.pop("perception.connector.layer_weights")
    del state["perception.connector.proj.1.bias"]
    with pytest.raises(CheckpointMismatchError) as error:
        build(seed=1).load_trainable_state_dict(state)
    message = str(error.value)
    assert "perception.connector.layer_weights" in message
    assert "perception.connector.proj.1.bias" in message
    assert "unexpected keys ['perception.connector.layer_weight']" in message

    path = tmp_path / "renamed.safetensors"
    save_checkpoint(source, path)
    config, tensors, prefixes = read_checkpoint(path)
    tensors["perception.connector.layer_weight"] = tensors.pop("perception.connector.layer_weights")
    metadata = {
        "sake_desta_config": json.dumps(config.to_dict()),
        "sake_trainable_prefixes": json.dumps(prefixes),
    }
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointMismatchError, match="missing keys.*layer_weights"):
        load_checkpoint(path, build())


def test_load_without_base_needs_every_weight(
    tmp_path: Path, two_sequences: tuple[list[int], list[int]]
) -> None:
    source = build(seed=3)
    partial, full = tmp_path / "partial.safetensors", tmp_path / "full.safetensors"
    save_checkpoint(source, partial)
    save_checkpoint(source, full, prefixes=("perception", "llm_model"))
    with pytest.raises(CheckpointMismatchError, match="llm_model.model.embed_tokens.weight"):
        load_checkpoint(partial)
    restored = load_checkpoint(full).eval()
    ids, mask = left_pad([two_sequences[1]])
    embeds = torch.zeros(1, 4, 48)
    with torch.no_grad():
        assert torch.equal(
            restored(ids, mask, audio_embeds=embeds).logits,
            source(ids, mask, audio_embeds=embeds).logits,
        )


def test_freeze_except_keeps_whisper_positions_fixed() -> None:
    target = build()
    trainable = target.freeze_except()
    assert trainable and all(n.startswith(CONNECTOR_PREFIX + ".") for n in trainable)
    audio_side = target.freeze_except(("perception",))
    assert "perception.whisper.model.encoder.embed_positions.weight" not in audio_side
    assert "perception.whisper.model.encoder.conv1.weight" in audio_side
    with pytest.raises(ValueError, match="perception.conector"):
        target.freeze_except(("perception.conector",))


# --------------------------------------------------------------------------- config


def test_config_survives_json() -> None:
    config = small_config()
    assert DestaConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.audio_span([9]) == [AUDIO_START, AUDIO, AUDIO, AUDIO, AUDIO, 9, AUDIO_END]


def test_config_rejects_untappable_layers() -> None:
    data = small_config().to_dict()
    data["connector"]["tapped_layers"] = [0, 3]
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        DestaConfig.from_dict(data)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first, second = build(seed=11), build(seed=11)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
