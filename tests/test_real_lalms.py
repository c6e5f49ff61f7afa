"""The real LALMs without the hub: tiny random DeSTA2.5, Qwen2-Audio and Audio Flamingo 3.

Each tiny instance comes from its model config, has the real classes, chat template and special
tokens, and must behave like the real one behind the LALM interface: batched equals alone,
targets tokenise inside the chat sequence as alone, the SAKE roles resolve on both module
layouts, and the transformers wrappers agree with the classes' own forward and generate.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import nn
from transformers import LlamaConfig

from sake.data.audio import read_audio, write_audio
from sake.data.schema import Probe, ProbeKind
from sake.models.audio_flamingo3 import AudioFlamingo3LALM, load_audio_flamingo3
from sake.models.audio_lalm import probe_audio
from sake.models.base import LALM, Turn
from sake.models.desta import DestaLALM
from sake.models.desta25 import (
    END_OF_TURN,
    empty_desta,
    load_desta25,
    load_release_weights,
    release_parameter_name,
)
from sake.models.hf_common import HFAudioLALM
from sake.models.hf_layout import detect_layout
from sake.models.hub import ModelUnavailableError, endpoint_problem, pretrained_placement
from sake.models.modeling_desta import CheckpointMismatchError, DestaForCausalLM
from sake.models.qwen2_audio import Qwen2AudioLALM, load_qwen2_audio
from sake.models.roles import LAYER_ROLE
from sake.utils.run import run_task

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
MODEL_CONFIGS = CONFIG_ROOT / "model"
METHOD_CONFIGS = CONFIG_ROOT / "method"
METHOD_MODEL_CONFIGS = CONFIG_ROOT / "method_model"
FULL_SIZE_LLM_LAYERS = {"desta": 32, "qwen2_audio": 32, "af3": 28}
EDITING_METHODS = ("ft_llm", "ft_audio", "i_ike", "ie_ike", "unke", "wise", "memit")
TINY = ("desta_tiny_random", "qwen2_audio_tiny", "af3_tiny")
HF_TINY = ("qwen2_audio_tiny", "af3_tiny")
TRANSCRIPT = "the quick brown fox"
TARGETS = ["male", "Female", "The answer is cat.", "中文"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Toy models run fastest on one thread: starting threads costs more than their matmuls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_config(name: str) -> DictConfig:
    return OmegaConf.load(MODEL_CONFIGS / f"{name}.yaml")


@pytest.fixture(scope="module")
def lalms() -> dict[str, LALM]:
    return {name: instantiate(model_config(name).load) for name in TINY}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Noisy tones of several lengths; one at 22.05 kHz; a manifest with one transcript."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)

    def tone(seconds: float, frequency: float, rate: int = 16000) -> np.ndarray:
        t = np.arange(round(seconds * rate)) / rate
        return 0.3 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(t.shape)

    paths = {
        "short": write_audio(root / "short.wav", tone(1.0, 220.0)),
        "medium": write_audio(root / "medium.wav", tone(1.5, 440.0)),
        "long": write_audio(root / "long.wav", tone(3.1, 330.0)),
        "window": write_audio(root / "window.wav", tone(2.0, 550.0)),
        "resampled": write_audio(
            root / "resampled.wav", tone(1.0, 220.0, 22050), sample_rate=22050
        ),
    }
    manifest = {"short.wav": {"transcript": TRANSCRIPT}}
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return paths


def audio_probe(question: str, answer: str, clip: Path) -> Probe:
    return Probe(
        ProbeKind.RELIABILITY, question, answer, (answer,), file=clip.name, audio_path=clip
    )


@pytest.fixture(scope="module")
def probes(clips: dict[str, Path]) -> list[Probe]:
    return [
        audio_probe(
            "What is the gender of the speaker?\n\nOptions:\nmale\nfemale", "male", clips["medium"]
        ),
        Probe(ProbeKind.LOCALITY_TEXT, "What is the capital of France?", "Paris", ()),
        audio_probe("Which animal makes this sound?", "dog", clips["long"]),
    ]


# --------------------------------------------------------------------------- configs and batches


def test_tiny_configs_build_the_three_architectures(lalms: dict[str, LALM]) -> None:
    assert isinstance(lalms["desta_tiny_random"], DestaLALM)
    assert isinstance(lalms["qwen2_audio_tiny"], Qwen2AudioLALM)
    assert isinstance(lalms["af3_tiny"], AudioFlamingo3LALM)
    assert {name: lalm.name for name, lalm in lalms.items()} == {name: name for name in TINY}
    assert all(isinstance(lalm, LALM) for lalm in lalms.values())


@pytest.mark.parametrize("name", TINY)
def test_prepare_and_generate_on_audio_probes(
    lalms: dict[str, LALM], probes: list[Probe], name: str
) -> None:
    lalm = lalms[name]
    batch = lalm.prepare(probes, system="Answer briefly.")
    assert bool(batch.attention_mask[:, -1].all())
    assert not bool(batch.attention_mask[:, 0].all())
    assert batch.inputs["audio_paths"] == (probes[0].audio_path, probes[2].audio_path)
    answers = lalm.generate(batch, max_new_tokens=6)
    assert len(answers) == 3 and all(isinstance(answer, str) for answer in answers)
    assert lalm.next_token_logits(batch).shape == (3, len(lalm.tokenizer))
    scored = lalm.generate_scored(batch, max_new_tokens=6)
    assert scored.texts == answers  # the first step's logits come from the very same pass
    torch.testing.assert_close(scored.first_logits, lalm.next_token_logits(batch))


@pytest.mark.parametrize("name", TINY)
def test_left_padded_batch_equals_each_probe_alone(
    lalms: dict[str, LALM], probes: list[Probe], clips: dict[str, Path], name: str
) -> None:
    lalm = lalms[name]
    history = [Turn("user", "Which animal?", (clips["short"],)), Turn("assistant", "dog")]
    batch = lalm.prepare(probes, history=history)
    singles = [lalm.prepare([probe], history=history) for probe in probes]
    expected = torch.cat([lalm.next_token_logits(single) for single in singles])
    torch.testing.assert_close(lalm.next_token_logits(batch), expected, rtol=1e-4, atol=1e-5)
    answers = lalm.generate(batch, max_new_tokens=6)
    assert answers == [lalm.generate(single, max_new_tokens=6)[0] for single in singles]
    nll = lalm.target_nll(batch, ["male", "Paris", "dog"])
    alone = torch.cat(
        [lalm.target_nll(single, [p.answer]) for single, p in zip(singles, probes, strict=True)]
    )
    torch.testing.assert_close(nll.detach(), alone.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("include_end", [False, True])
def test_sequence_logits_cover_prompt_and_answer_and_end_in_the_answer_logits(
    lalms: dict[str, LALM], probes: list[Probe], name: str, include_end: bool
) -> None:
    lalm = lalms[name]
    batch = lalm.prepare(probes)
    targets = ["male", "Paris", "dog"]
    rows = lalm.sequence_logits(batch, targets, include_end=include_end)
    answers = lalm.answer_logits(batch, targets, include_end=include_end)
    token_ids = lalm.target_token_ids(batch, targets, include_end=include_end)
    for index, (row, answer, ids) in enumerate(zip(rows, answers, token_ids, strict=True)):
        prompt_length = int(batch.attention_mask[index].sum())
        assert row.shape[0] == prompt_length + len(ids)
        torch.testing.assert_close(row[-len(ids) - 1 : -1], answer, rtol=1e-4, atol=1e-4)
        single = lalm.prepare([probes[index]])
        alone = lalm.sequence_logits(single, [targets[index]], include_end=include_end)[0]
        torch.testing.assert_close(row, alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("target", TARGETS)
def test_target_tokens_inside_the_chat_sequence_are_the_answer_tokens(
    lalms: dict[str, LALM], probes: list[Probe], name: str, target: str
) -> None:
    lalm = lalms[name]
    batch = lalm.prepare(probes[:2])
    alone = lalm.tokenizer(target, add_special_tokens=False).input_ids
    end = lalm.tokenizer.convert_tokens_to_ids(
        END_OF_TURN if name == "desta_tiny_random" else "<|im_end|>"
    )
    assert lalm.target_token_ids(batch, [target, target]) == [alone, alone]
    assert lalm.target_token_ids(batch, [target, "x"], include_end=True)[0] == [*alone, end]
    with pytest.raises(ValueError, match="tokenises differently"):
        lalm.target_nll(batch, ["\n" + target, "x"])


@pytest.mark.parametrize("name", TINY)
def test_target_nll_backpropagates_into_the_sake_roles(
    lalms: dict[str, LALM], probes: list[Probe], name: str
) -> None:
    lalm = lalms[name]
    lalm.model.zero_grad(set_to_none=True)
    lalm.target_nll(lalm.prepare(probes), ["male", "Paris", "dog"]).sum().backward()
    for role in ("connector", "llm.layer[-1].mlp"):
        grads = [p.grad for p in lalm.modules.parameters(role).values()]
        assert all(g is not None and float(g.abs().sum()) > 0 for g in grads), role
    encoder_grads = [p.grad for p in lalm.modules.parameters("audio_encoder").values()]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in encoder_grads)
    lalm.model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- roles and layouts


EXPECTED_ROLES = {
    "desta_tiny_random": {
        "audio_encoder": "perception.whisper",
        "connector": "perception.connector",
        "llm.layer[-1].mlp": "llm_model.model.layers.1.mlp",
        "llm.layer[-1].mlp.down_proj": "llm_model.model.layers.1.mlp.down_proj",
    },
    **{
        name: {
            "audio_encoder": "model.audio_tower",
            "connector": "model.multi_modal_projector",
            "llm.layer[-1].mlp": "model.language_model.layers.1.mlp",
            "llm.layer[-1].mlp.down_proj": "model.language_model.layers.1.mlp.down_proj",
        }
        for name in HF_TINY
    },
}


@pytest.mark.parametrize("name", TINY)
def test_roles_resolve_to_the_sake_target_modules(lalms: dict[str, LALM], name: str) -> None:
    lalm = lalms[name]
    modules = dict(lalm.model.named_modules())
    for role, qualified in EXPECTED_ROLES[name].items():
        resolved = lalm.modules.resolve(role)
        assert resolved.name == qualified
        assert resolved.module is modules[qualified]
        assert lalm.modules.parameters(role)
    for role in ("llm.embed", "llm.norm", "lm_head"):
        assert lalm.modules.parameters(role)
    assert isinstance(lalm.modules.resolve("llm.layer[-1].mlp.down_proj").module, nn.Linear)


class LegacyCausalLM(nn.Module):
    """A pre-5.10 `language_model`: the decoder under `model`, its own `lm_head`."""

    def __init__(self, decoder: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.model = decoder
        self.lm_head = lm_head


class LegacyAudioLLM(nn.Module):
    """The pre-5.10 layout, re-parented from a 5.10+ model: every part at the top level."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.audio_tower = model.model.audio_tower
        self.multi_modal_projector = model.model.multi_modal_projector
        self.language_model = LegacyCausalLM(model.model.language_model, model.lm_head)
        self.generation_config = model.generation_config


@pytest.mark.parametrize("name", HF_TINY)
def test_layout_is_detected_from_the_module_tree_in_both_layouts(
    lalms: dict[str, HFAudioLALM], probes: list[Probe], name: str
) -> None:
    current = lalms[name]
    assert current.layout.nested
    legacy_model = LegacyAudioLLM(current.model)
    layout = detect_layout(legacy_model)
    assert not layout.nested
    assert layout.role_names() == {
        "audio_encoder": "audio_tower",
        "connector": "multi_modal_projector",
        "llm.embed": "language_model.model.embed_tokens",
        "llm.norm": "language_model.model.norm",
        "lm_head": "language_model.lm_head",
    }
    legacy = type(current)(legacy_model, current.processor, name="legacy")
    assert legacy.modules.resolve("llm.layer[-1].mlp.down_proj").name == (
        "language_model.model.layers.1.mlp.down_proj"
    )
    assert legacy.modules.resolve("connector").module is current.modules.resolve("connector").module
    batch = current.prepare(probes)
    torch.testing.assert_close(legacy.next_token_logits(batch), current.next_token_logits(batch))
    assert legacy.generate(batch, 5) == current.generate(batch, 5)


def test_layout_detection_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="audio_tower"):
        detect_layout(nn.Sequential(nn.Linear(2, 2)))


# ------------------------------------------------------------------------ fidelity to transformers


@pytest.mark.parametrize("name", HF_TINY)
@pytest.mark.parametrize("clip", ["short", "long"])
def test_wrapper_agrees_with_the_transformers_processor_forward_and_generate(
    lalms: dict[str, HFAudioLALM], clips: dict[str, Path], name: str, clip: str
) -> None:
    lalm = lalms[name]
    probe = audio_probe("What is the gender of the speaker?", "male", clips[clip])
    batch = lalm.prepare([probe])
    reference = lalm.processor(
        text=[lalm.chat_text(probe)],
        audio=[read_audio(clips[clip])],
        sampling_rate=16000,
        return_tensors="pt",
    )
    assert torch.equal(reference["input_ids"], batch.input_ids)
    with torch.no_grad():
        logits = lalm.model(**reference).logits[:, -1]
        generated = lalm.model.generate(**reference, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(lalm.next_token_logits(batch), logits, rtol=1e-4, atol=1e-5)
    new_tokens = generated[0, reference["input_ids"].shape[1] :].tolist()
    stops = [i for i, token in enumerate(new_tokens) if token in lalm.stop_token_ids]
    expected = lalm.tokenizer.decode(new_tokens[: stops[0]] if stops else new_tokens)
    assert lalm.generate(batch, 6) == [expected.strip()]


def test_chat_templates_place_the_audio_as_the_real_models_do(
    lalms: dict[str, LALM], clips: dict[str, Path]
) -> None:
    qwen, af3, desta = lalms["qwen2_audio_tiny"], lalms["af3_tiny"], lalms["desta_tiny_random"]
    history = [Turn("user", "Which animal?", (clips["medium"],)), Turn("assistant", "dog")]
    probe = audio_probe("And this one?", "cat", clips["short"])
    n_history, n_probe = (
        qwen.audio_token_count(clips["medium"]),
        qwen.audio_token_count(clips["short"]),
    )
    assert qwen.prompt_text(probe, history=history) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\nAudio 1: <|audio_bos|>{'<|AUDIO|>' * n_history}<|audio_eos|>\n"
        "Which animal?<|im_end|>\n<|im_start|>assistant\ndog<|im_end|>\n"
        f"<|im_start|>user\nAudio 2: <|audio_bos|>{'<|AUDIO|>' * n_probe}<|audio_eos|>\n"
        "And this one?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert af3.prompt_text(probe, system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        f"{'<sound>' * af3.audio_token_count(clips['short'])}And this one?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="at most one clip per user turn"):
        af3.prepare([probe], history=[Turn("user", "Two?", (clips["short"], clips["medium"]))])
    span = "<|reserved_special_token_87|>" * desta.config.prompt_size
    assert desta.prompt_text(probe).endswith(
        f"<|start_header_id|>user<|end_header_id|>\n\n<start_audio>{span}{TRANSCRIPT}<end_audio>\n"
        "And this one?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert f"{span}<end_audio>" in desta.prompt_text(audio_probe("Q?", "a", clips["medium"]))


def test_audio_is_read_at_16k_mono_in_windows(
    lalms: dict[str, HFAudioLALM], clips: dict[str, Path]
) -> None:
    qwen, af3 = lalms["qwen2_audio_tiny"], lalms["af3_tiny"]
    for lalm in (qwen, af3):
        assert lalm.audio_token_count(clips["resampled"]) == lalm.audio_token_count(clips["short"])
    full_window = qwen.audio_token_count(clips["window"])
    assert qwen.audio_token_count(clips["long"]) == full_window
    windows = af3.clip_features(clips["long"])
    assert windows.features.shape[0] == 2
    assert windows.frames.tolist() == [200, 110]
    reference = af3.processor(
        text=["<sound>"], audio=[read_audio(clips["long"])], sampling_rate=16000
    )
    assert af3.audio_token_count(clips["long"]) == int(
        (reference["input_ids"] == af3.audio_token_id).sum()
    )
    assert af3.audio_token_count(clips["long"]) > full_window


# --------------------------------------------------------------------------- caches


@pytest.fixture
def projector_calls(lalms: dict[str, HFAudioLALM]) -> Iterator[list[int]]:
    calls: list[int] = []
    projector = lalms["af3_tiny"].modules.resolve("connector").module
    handle = projector.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    yield calls
    handle.remove()


def test_projector_outputs_are_cached_only_inside_the_context(
    lalms: dict[str, HFAudioLALM], clips: dict[str, Path], projector_calls: list[int]
) -> None:
    af3 = lalms["af3_tiny"]
    paths = [clips["short"], clips["long"], clips["short"]]
    first = af3.encode_audio(paths)
    assert projector_calls == [3]
    torch.testing.assert_close(first[0], first[2])
    with af3.cached_audio_embeddings():
        inside = af3.encode_audio(paths)
        af3.next_token_logits(af3.prepare([audio_probe("Q?", "a", clips["long"])]))
        assert projector_calls == [3, 3]
        projector = af3.modules.resolve("connector").module
        with torch.no_grad():
            projector.linear_2.bias.add_(1.0)
            assert torch.equal(af3.encode_audio(paths[:1])[0], inside[0])
            af3.clear_caches()
            changed = af3.encode_audio(paths[:1])[0]
            projector.linear_2.bias.sub_(1.0)
    torch.testing.assert_close(changed, first[0] + 1.0)
    for before, after in zip(first, inside, strict=True):
        torch.testing.assert_close(before, after)


# --------------------------------------------------------------------------- DeSTA2.5 checkpoints


def release_state_dict(model: DestaForCausalLM) -> dict[str, torch.Tensor]:
    """The model's tensors under the release's own names, Whisper's decoder and head included."""
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    state["perception.whisper.model.decoder.embed_tokens.weight"] = torch.zeros(8, 4)
    state["perception.whisper.model.decoder.layers.0.fc1.weight"] = torch.zeros(4, 4)
    state["perception.whisper.proj_out.weight"] = torch.zeros(8, 4)
    return state


def split_checkpoints(model: DestaForCausalLM) -> dict[str, dict[str, torch.Tensor]]:
    """The three checkpoints as published: connector, whisper-large-v3 names, Llama names."""
    state = model.state_dict()
    encoder = {
        "model." + name.removeprefix("perception.whisper.model."): tensor.clone()
        for name, tensor in state.items()
        if name.startswith("perception.whisper.")
    }
    encoder["model.decoder.layers.0.self_attn.k_proj.weight"] = torch.zeros(4, 4)
    encoder["proj_out.weight"] = torch.zeros(8, 4)
    return {
        "release": {
            k: v.clone() for k, v in state.items() if k.startswith("perception.connector.")
        },
        "encoder": encoder,
        "llm": {
            name.removeprefix("llm_model."): tensor.clone()
            for name, tensor in state.items()
            if name.startswith("llm_model.")
        },
    }


def fresh_model(lalm: DestaLALM) -> DestaForCausalLM:
    return empty_desta(
        lalm.config,
        device=torch.device("cpu"),
        llm_dtype=torch.float32,
        audio_dtype=torch.float32,
    )


def test_release_names_map_onto_the_project_model() -> None:
    assert release_parameter_name("encoder", "model.encoder.layers.7.fc1.weight") == (
        "perception.whisper.model.encoder.layers.7.fc1.weight"
    )
    assert release_parameter_name("encoder", "model.decoder.layers.0.fc1.weight") is None
    assert release_parameter_name("encoder", "proj_out.weight") is None
    assert release_parameter_name("llm", "lm_head.weight") == "llm_model.lm_head.weight"
    assert release_parameter_name("release", "perception.connector.layer_weights") == (
        "perception.connector.layer_weights"
    )


@pytest.mark.parametrize("layout", ["one_state_dict", "three_checkpoints"])
def test_release_state_dict_loads_with_no_missing_or_unexpected_keys(
    lalms: dict[str, LALM], layout: str
) -> None:
    trained = lalms["desta_tiny_random"]
    sources = (
        {"release": release_state_dict(trained.model)}
        if layout == "one_state_dict"
        else split_checkpoints(trained.model)
    )
    model = fresh_model(trained)
    dropped = load_release_weights(model, {s: tensors.items() for s, tensors in sources.items()})
    assert len(dropped) == (3 if layout == "one_state_dict" else 2)
    assert all(".decoder." in name or "proj_out" in name for name in dropped)
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    reloaded = DestaLALM(model, trained.tokenizer, end_of_turn=END_OF_TURN)
    original = DestaLALM(trained.model, trained.tokenizer, end_of_turn=END_OF_TURN)
    batch = original.prepare([Probe(ProbeKind.LOCALITY_TEXT, "Hello?", "Hi", ())])
    assert torch.equal(reloaded.next_token_logits(batch), original.next_token_logits(batch))


def test_release_mismatches_are_named(lalms: dict[str, LALM]) -> None:
    trained = lalms["desta_tiny_random"]
    state = release_state_dict(trained.model)
    state.pop("perception.connector.layer_weights")
    state["perception.connector.extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointMismatchError) as error:
        load_release_weights(fresh_model(trained), {"release": state.items()})
    assert "perception.connector.layer_weights" in str(error.value)
    assert "release:perception.connector.extra.weight" in str(error.value)
    checkpoints = split_checkpoints(trained.model)
    checkpoints["release"]["llm_model.model.norm.weight"] = checkpoints["llm"]["model.norm.weight"]
    with pytest.raises(CheckpointMismatchError, match="comes from both"):
        load_release_weights(fresh_model(trained), {s: t.items() for s, t in checkpoints.items()})


def test_tied_embeddings_load_under_either_name() -> None:
    cfg = model_config("desta_tiny_random")
    cfg.load.llm.tie_word_embeddings = True
    tied = instantiate(cfg.load)
    checkpoints = split_checkpoints(tied.model)
    for stored in ("lm_head.weight", "model.embed_tokens.weight"):
        sources = {
            **checkpoints,
            "llm": {k: v for k, v in checkpoints["llm"].items() if k != stored},
        }
        model = fresh_model(tied)
        load_release_weights(
            model, {source: tensors.items() for source, tensors in sources.items()}
        )
        assert model.llm_model.lm_head.weight is model.llm_model.model.embed_tokens.weight
        assert torch.equal(model.llm_model.lm_head.weight, tied.model.llm_model.lm_head.weight)


def write_release_directories(lalm: DestaLALM, root: Path) -> dict[str, Path]:
    directories = {source: root / source for source in ("release", "encoder", "llm")}
    for source, tensors in split_checkpoints(lalm.model).items():
        directories[source].mkdir(parents=True)
        contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
        save_file(contiguous, str(directories[source] / "model.safetensors"))
    lalm.tokenizer.save_pretrained(str(directories["llm"]))
    LlamaConfig(**lalm.config.llm).save_pretrained(str(directories["llm"]))
    return directories


def test_load_desta25_from_local_directories(
    lalms: dict[str, LALM], tmp_path: Path, clips: dict[str, Path]
) -> None:
    trained = lalms["desta_tiny_random"]
    directories = write_release_directories(trained, tmp_path)
    sizes = model_config("desta_tiny_random").load
    options = {
        "path": directories["release"],
        "llm_path": directories["llm"],
        "encoder_path": directories["encoder"],
        "encoder": OmegaConf.to_container(sizes.encoder),
        "connector": OmegaConf.to_container(sizes.connector),
        "device_map": "cpu",
    }
    loaded = load_desta25(**options, dtype="float32", transcripts="manifest")
    assert replace(loaded.config, llm={}) == replace(trained.config, llm={})
    assert LlamaConfig(**loaded.config.llm).to_diff_dict() == (
        LlamaConfig(**trained.config.llm).to_diff_dict()
    )
    probe = audio_probe("Which animal?", "dog", clips["short"])
    torch.testing.assert_close(
        loaded.next_token_logits(loaded.prepare([probe])),
        trained.next_token_logits(trained.prepare([probe])),
    )
    half = load_desta25(**options, transcripts="none")
    assert half.modules.resolve("lm_head").module.weight.dtype == torch.bfloat16
    assert half.modules.resolve("connector").module.layer_weights.dtype == torch.float32
    assert TRANSCRIPT not in half.prompt_text(probe)
    assert half.next_token_logits(half.prepare([probe])).dtype == torch.float32


# ------------------------------------------------------------------------- loading the real models


def save_tiny(lalm: HFAudioLALM, directory: Path) -> Path:
    lalm.model.save_pretrained(str(directory))
    lalm.processor.save_pretrained(str(directory))
    return directory


@pytest.mark.parametrize(
    ("name", "loader"), [("qwen2_audio_tiny", load_qwen2_audio), ("af3_tiny", load_audio_flamingo3)]
)
def test_hf_wrappers_load_local_directories(
    lalms: dict[str, HFAudioLALM], tmp_path: Path, probes: list[Probe], name: str, loader
) -> None:
    saved = lalms[name]
    loaded = loader(save_tiny(saved, tmp_path / name), device_map="cpu", dtype="float32")
    assert type(loaded) is type(saved)
    assert loaded.fingerprint() == saved.fingerprint()
    batch = saved.prepare(probes)
    torch.testing.assert_close(loaded.next_token_logits(batch), saved.next_token_logits(batch))
    half = loader(tmp_path / name, device_map=None, dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert half.next_token_logits(batch).dtype == torch.float32


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.mark.parametrize("config", ["desta", "qwen2_audio", "af3"])
@pytest.mark.parametrize("path", ["hub id", "local path"])
def test_unreachable_models_fail_fast_naming_model_path(
    offline_hub: None, tmp_path: Path, config: str, path: str
) -> None:
    cfg = model_config(config)
    if path == "local path":
        cfg.path = str(tmp_path / "absent")
    start = time.perf_counter()
    with pytest.raises(InstantiationException, match=r"model\.path=") as error:
        instantiate(cfg.load)
    assert time.perf_counter() - start < 2.0
    assert isinstance(error.value.__cause__, ModelUnavailableError)


def test_desta25_names_the_checkpoint_that_is_missing(offline_hub: None, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=r"model\.llm_path="):
        load_desta25(tmp_path, llm_path=tmp_path / "absent", encoder_path=tmp_path)
    with pytest.raises(ModelUnavailableError, match=r"model\.encoder_path="):
        load_desta25(tmp_path, llm_path=tmp_path, encoder_path="sake-tests/absent-whisper")


def test_placement_without_accelerate_takes_one_device() -> None:
    assert pretrained_placement(None) == ({}, None)
    assert pretrained_placement("cuda:1") == ({}, "cuda:1")
    try:
        import accelerate  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="accelerate"):
            pretrained_placement("auto")
    else:
        assert pretrained_placement("auto") == ({"device_map": "auto"}, None)


def test_a_silent_hub_is_not_waited_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A hub that accepts connections but never answers: only the (empty) cache is read."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with socket.create_server(("127.0.0.1", 0)) as silent:
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        for name in FULL_SIZE_LLM_LAYERS:
            cfg = model_config(name)
            cfg.load.hub_timeout_s = 0.2
            start = time.perf_counter()
            with pytest.raises(InstantiationException, match=r"model\.path=") as error:
                instantiate(cfg.load)
            assert time.perf_counter() - start < 2.0
            assert f"the hub at {endpoint} did not answer within 0.2 s" in str(error.value)


def test_hub_probe_tells_answering_silent_and_unreachable_endpoints() -> None:
    with HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as server:
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        assert endpoint_problem(f"http://127.0.0.1:{server.server_port}", 2.0) is None
        thread.join()
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert endpoint_problem(address, 0.2) == "did not answer within 0.2 s"
    closed = endpoint_problem(address, 0.2)
    assert closed is not None and closed.startswith("could not be reached (")


# ------------------------------------------------------------------ per-model method defaults


def layer_index(role: str) -> int:
    match = LAYER_ROLE.match(role)
    assert match is not None, role
    return int(match.group(1))


@pytest.mark.parametrize("model", FULL_SIZE_LLM_LAYERS)
def test_full_size_models_get_sakes_layer_choices(compose_cfg, model: str) -> None:
    """FT (LLM) on the last layer, KE/MEND on the last three, UnKE / WISE middle to late."""
    n_layers = FULL_SIZE_LLM_LAYERS[model]

    def method(name: str) -> DictConfig:
        return compose_cfg("edit", [f"model={model}", f"method={name}"]).method

    assert method("ft_llm").role == f"llm.layer[{n_layers - 1}].mlp"
    for name in ("ke", "mend"):
        last_three = [f"llm.layer[{i}].mlp" for i in range(n_layers - 3, n_layers)]
        assert list(method(name).roles) == last_three
    assert n_layers // 2 - 1 <= layer_index(method("unke").role) < n_layers
    wise = method("wise").role
    assert wise.endswith(".mlp.down_proj")
    assert 3 * n_layers // 4 <= layer_index(wise) < n_layers - 1


def test_specialisation_sets_sakes_values_and_the_command_line_wins(compose_cfg) -> None:
    wise = compose_cfg("edit", ["model=qwen2_audio", "method=wise"]).method
    assert (wise.role, wise.lr, wise.steps, wise.norm_constraint) == (
        "llm.layer[26].mlp.down_proj",
        1.0,
        70,
        1.0,
    )
    assert (wise.alpha, wise.beta, wise.gamma, wise.act_ratio) == (5.0, 20.0, 10.0, 0.88)
    ft = compose_cfg("edit", ["model=af3", "method=ft_llm"]).method
    assert (ft.role, ft.lr, ft.max_steps) == ("llm.layer[27].mlp", 2e-5, 15)
    assert compose_cfg("edit", ["model=desta", "method=ft_audio"]).method.lr == 1e-4
    overridden = compose_cfg(
        "edit",
        [
            "model=qwen2_audio",
            "method=wise",
            'method.role="llm.layer[20].mlp.down_proj"',
            "method.lr=0.5",
        ],
    ).method
    assert (overridden.role, overridden.lr, overridden.steps) == (
        "llm.layer[20].mlp.down_proj",
        0.5,
        70,
    )
    mend = compose_cfg("train", ["task=hypernet", "model=af3", "method=mend"]).method
    assert mend.roles[0] == "llm.layer[25].mlp"


def test_the_embedded_model_keeps_each_methods_own_defaults(compose_cfg) -> None:
    for name in ("ft_llm", "unke", "wise", "memit"):
        composed = compose_cfg("edit", ["model=desta_tiny", f"method={name}"]).method
        own = OmegaConf.load(METHOD_CONFIGS / f"{name}.yaml")
        assert OmegaConf.to_container(composed) == OmegaConf.to_container(own)


def test_every_specialisation_overrides_only_fields_of_its_method() -> None:
    """A file `<method>_<model>.yaml` for a real method and model, setting its method's keys."""
    methods = {path.stem for path in METHOD_CONFIGS.glob("*.yaml")}
    models = {path.stem for path in MODEL_CONFIGS.glob("*.yaml")}
    files = sorted(METHOD_MODEL_CONFIGS.glob("*.yaml"))
    assert len(files) >= 21
    for path in files:
        pairs = [
            name
            for name in methods
            if path.stem.startswith(f"{name}_") and path.stem[len(name) + 1 :] in models
        ]
        assert len(pairs) == 1, f"{path.name} names no single method and model"
        fields = set(OmegaConf.load(METHOD_CONFIGS / f"{pairs[0]}.yaml")) - {"_target_", "name"}
        loaded = OmegaConf.load(path)
        if path.read_text("utf-8").startswith("# @package _global_\n"):
            # a prompt layout the reference uses for this method on this model only
            assert set(loaded) == {"method", "model"}, path.name
            assert OmegaConf.to_container(loaded.model) == {"load": {"audio_after_text": True}}
            loaded = loaded.method
        else:
            assert path.read_text("utf-8").startswith("# @package method\n"), path.name
        assert set(loaded) <= fields, path.name


@pytest.mark.parametrize("model", TINY)
def test_tiny_models_get_layers_they_have(compose_cfg, model: str) -> None:
    """Every LLM layer a composed method names exists in the tiny model."""
    sizes = model_config(model).load
    n_layers = int((sizes.get("llm") or sizes.get("text")).num_hidden_layers)
    for name in ("ke", "mend", "unke", "wise", "memit"):
        method = compose_cfg("edit", [f"model={model}", f"method={name}"]).method
        roles = [*method.get("roles", []), method.get("role", "")]
        layers = [layer_index(role) for role in roles if LAYER_ROLE.match(role)]
        layers += list(method.get("layers", []))
        assert layers and all(-n_layers <= layer < n_layers for layer in layers), (name, layers)


@pytest.mark.parametrize("method", EDITING_METHODS)
@pytest.mark.parametrize("model", TINY)
def test_edit_entry_point_runs_every_method_on_every_tiny_model(
    compose_cfg, tiny_corpus: Path, model: str, method: str
) -> None:
    cfg = compose_cfg(
        "edit",
        [
            f"model={model}",
            f"method={method}",
            "logger=none",
            f"dataset.root={tiny_corpus}",
            "dataset.scale=tiny",
            "dataset.limit=1",
        ],
    )
    metrics = run_task(cfg)
    assert 0.0 <= metrics["single/reliability"] <= 1.0
    records = (Path(cfg.paths.output_dir) / "records.jsonl").read_text("utf-8").splitlines()
    assert len(records) == 1


def test_af3_takes_the_question_before_the_audio_as_the_reference_unke_wise_scripts(
    lalms: dict[str, HFAudioLALM], clips: dict[str, Path], compose_cfg
) -> None:
    """The reference's UnKE/WISE scripts list AF3's question before its audio; AF3's shipped
    chat template renders the sound first whatever the order, so the prompt is the same."""
    af3 = lalms["af3_tiny"]
    probe = audio_probe("Which animal is it?", "cat", clips["short"])
    audio_first = af3.chat_text(probe)
    af3.audio_after_text = True
    try:
        content = af3._message("user", probe.question, probe_audio(probe))["content"]
        assert [part["type"] for part in content] == ["text", "audio"]
        assert af3.chat_text(probe) == audio_first
    finally:
        af3.audio_after_text = False
    for method, expected in (("unke", True), ("wise", True), ("ft_llm", None)):
        cfg = compose_cfg("edit", [f"method={method}", "model=af3"])
        assert cfg.model.load.get("audio_after_text") is expected, method
