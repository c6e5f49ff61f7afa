"""DeSTA2.5-Audio-Llama-3.1-8B assembled into the project's `DestaForCausalLM` by parameter name.

The release is three checkpoints, as its own code loads them:

- `model.path` (`DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B`): the trained connector, stored under
  `perception.connector.*` (the Q-Former: 6 BERT layers at Whisper's width, 64 queries per
  tapped layer, softmax layer weights, LayerNorm + Linear into the LLM);
- `model.encoder_path` (`openai/whisper-large-v3`): a `WhisperForConditionalGeneration`
  checkpoint, whose `model.encoder.*` becomes `perception.whisper.model.encoder.*` (the
  release taps layers 7, 15, 23, 31 and never runs Whisper's decoder, which is dropped);
- `model.llm_path` (`DeSTA-ntu/Llama-3.1-8B-Instruct`): the backbone and its tokenizer, whose
  `model.*` and `lm_head.*` become `llm_model.*`.

Every tensor of the model must come from exactly one checkpoint and every checkpoint tensor
must land somewhere (Whisper's decoder excepted), so nothing is silently left random. The
model is built on the meta device and filled tensor by tensor on its target device, so no
full-size copy is ever held twice; the LLM is kept in bf16, the audio path (encoder and
connector, about 0.8B parameters) in float32 by default, as the release runs it.

Prompts follow the release: the Llama-3.1 chat template, each clip written as "<start_audio>",
64 x "<|reserved_special_token_87|>", the clip's transcript, "<end_audio>". A clip's transcript
is the corpus manifest's where it records one; otherwise the release's Whisper transcribes the
clip as DeSTA2.5's own `generate` does (`sake.models.transcripts`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from sake.models.configuration_desta import (
    DestaConfig,
    desta25_connector_config,
    desta25_encoder_config,
)
from sake.models.desta import DestaLALM
from sake.models.hub import (
    HUB_ANSWER_TIMEOUT_S,
    HubAccess,
    resolve_model_dir,
    torch_dtype,
)
from sake.models.mel import LogMelSpectrogram
from sake.models.modeling_desta import CheckpointMismatchError, DestaForCausalLM
from sake.models.transcripts import (
    ManifestThenWhisper,
    ManifestTranscriber,
    Transcriber,
    WhisperTranscriber,
    check_transcript_source,
    manifest_or_none,
    silero_speech_detector,
)

RELEASE_HUB_ID = "DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B"
LLM_HUB_ID = "DeSTA-ntu/Llama-3.1-8B-Instruct"
ENCODER_HUB_ID = "openai/whisper-large-v3"
AUDIO_PLACEHOLDER = "<|reserved_special_token_87|>"
AUDIO_START, AUDIO_END = "<start_audio>", "<end_audio>"
END_OF_TURN = "<|eot_id|>"

# Where each checkpoint's tensor names go inside DestaForCausalLM, and the option naming it.
SOURCE_PREFIXES = {"release": "", "encoder": "perception.whisper.", "llm": "llm_model."}
SOURCE_OPTIONS = {"release": "model.path", "encoder": "model.encoder_path", "llm": "model.llm_path"}
UNUSED_PREFIXES = ("perception.whisper.model.decoder.", "perception.whisper.proj_out.")
LLM_CONFIG_DROPPED = ("architectures", "transformers_version", "dtype", "torch_dtype")
RELEASE_FILES = ("*.json", "*.safetensors", "*.bin")
DEFAULT_TRANSCRIPT_CACHE = ".cache/sake/transcripts"


# --------------------------------------------------------------------------- configuration


def desta25_config(
    tokenizer: Any,
    llm: Mapping[str, Any],
    *,
    encoder: Mapping[str, Any] | None = None,
    connector: Mapping[str, Any] | None = None,
) -> DestaConfig:
    """DeSTA2.5's sizes (fields of `encoder` / `connector` override them) and audio token ids."""
    placeholder = tokenizer(AUDIO_PLACEHOLDER, add_special_tokens=False)["input_ids"]
    if len(placeholder) != 1:
        raise ValueError(
            f"the tokenizer must hold {AUDIO_PLACEHOLDER} as one token, got ids {placeholder}"
        )
    connector_fields = dict(connector or {})
    if "tapped_layers" in connector_fields:
        connector_fields["tapped_layers"] = tuple(connector_fields["tapped_layers"])
    return DestaConfig(
        encoder=replace(desta25_encoder_config(), **dict(encoder or {})),
        connector=replace(desta25_connector_config(), **connector_fields),
        llm=dict(llm),
        audio_token_id=placeholder[0],
        audio_start_ids=tuple(tokenizer(AUDIO_START, add_special_tokens=False)["input_ids"]),
        audio_end_ids=tuple(tokenizer(AUDIO_END, add_special_tokens=False)["input_ids"]),
    )


def llm_config_fields(directory: Path) -> dict[str, Any]:
    """`LlamaConfig` keyword arguments (those that differ from the defaults) of a backbone."""
    from transformers import AutoConfig

    fields = AutoConfig.from_pretrained(str(directory)).to_diff_dict()
    return {
        key: value
        for key, value in fields.items()
        if not key.startswith("_") and key not in LLM_CONFIG_DROPPED
    }


# --------------------------------------------------------------------------- parameter names


def release_parameter_name(source: str, key: str) -> str | None:
    """Where a checkpoint tensor goes in `DestaForCausalLM`; None for Whisper's unused decoder."""
    if source not in SOURCE_PREFIXES:
        raise ValueError(f"unknown checkpoint source {source!r}; known: {sorted(SOURCE_PREFIXES)}")
    name = SOURCE_PREFIXES[source] + key
    return None if name.startswith(UNUSED_PREFIXES) else name


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """Parameter name -> the name it is tied to (e.g. lm_head.weight -> embed_tokens.weight)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(parameter), name)
        if owner != name:
            aliases[name] = owner
    return aliases


@dataclass
class WeightLoad:
    """What loading checkpoints by name found: where each tensor came from, and every problem."""

    loaded: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    misshapen: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def check_complete(self, expected: Iterable[str], aliases: Mapping[str, str]) -> None:
        """Raise unless every expected tensor (or a tied alias of it) was loaded, cleanly."""
        owners = {aliases.get(name, name) for name in self.loaded}
        missing = sorted(set(expected) - owners)
        if missing or self.unexpected or self.misshapen:
            raise CheckpointMismatchError(
                "the DeSTA2.5 checkpoints do not match the model: "
                f"missing keys {_shown(missing)}, unexpected keys {_shown(self.unexpected)}, "
                f"shape mismatches {_shown(self.misshapen)}"
            )


def load_release_weights(
    model: nn.Module, sources: Mapping[str, Iterable[tuple[str, Tensor]]]
) -> list[str]:
    """Copy checkpoint tensors into `model` by name, strictly; returns the dropped names.

    `sources` maps a source (`release`, `encoder`, `llm`) to its (name, tensor) pairs, read
    lazily. Tensors are converted to each parameter's dtype and device as they are copied; a
    tied parameter may come under either of its names. Raises `CheckpointMismatchError` naming
    missing, unexpected, duplicated or misshapen keys.
    """
    aliases = tied_aliases(model)
    targets = model.state_dict(keep_vars=True)
    load = WeightLoad()
    with torch.no_grad():
        for source, tensors in sources.items():
            for key, tensor in tensors:
                _load_tensor(load, targets, f"{source}:{key}", tensor)
    load.check_complete([name for name in targets if name not in aliases], aliases)
    return load.dropped


def _load_tensor(
    load: WeightLoad, targets: Mapping[str, Tensor], origin: str, tensor: Tensor
) -> None:
    source, _, key = origin.partition(":")
    name = release_parameter_name(source, key)
    if name is None:
        load.dropped.append(origin)
    elif name in load.loaded:
        raise CheckpointMismatchError(f"{name} comes from both {load.loaded[name]} and {origin}")
    elif name not in targets:
        load.unexpected.append(origin)
    elif tuple(tensor.shape) != tuple(targets[name].shape):
        load.misshapen.append(f"{origin} {tuple(tensor.shape)} vs {tuple(targets[name].shape)}")
    else:
        targets[name].copy_(tensor)
        load.loaded[name] = origin


def _shown(names: list[str], limit: int = 8) -> str:
    extra = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return str(names[:limit]) + extra


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint files of a model directory, one set only (sharded index first)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text("utf-8"))["weight_map"].values()
        return [directory / shard for shard in dict.fromkeys(shards)]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).is_file():
            return [directory / single]
    found = sorted(directory.glob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model.bin weights in {directory}")
    return found


def checkpoint_tensors(directory: Path) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) pairs of a model directory's weights, one tensor in memory at a time."""
    for path in weight_files(directory):
        if path.suffix == ".bin":
            yield from torch.load(path, map_location="cpu", weights_only=True).items()
            continue
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                yield key, handle.get_tensor(key)


# --------------------------------------------------------------------------- building


def empty_desta(
    config: DestaConfig, *, device: torch.device, llm_dtype: torch.dtype, audio_dtype: torch.dtype
) -> DestaForCausalLM:
    """The model with uninitialised weights on `device`, buffers that no checkpoint holds rebuilt.

    Tied parameters stay tied.
    """
    with torch.device("meta"):
        model = DestaForCausalLM(config)
    model.llm_model.to(llm_dtype)
    model.perception.to(audio_dtype)
    aliases = tied_aliases(model)
    _check_rebuildable_buffers(model)
    model.to_empty(device=device)
    for alias, owner in aliases.items():
        _set_parameter(model, alias, model.get_parameter(owner))
    decoder = model.llm_model.model
    with torch.device(device):
        decoder.rotary_emb = type(decoder.rotary_emb)(config=model.llm_model.config)
        model.mel_front_end = LogMelSpectrogram(config.encoder.mel_config())
    return model


REBUILT_BUFFER_OWNERS = ("llm_model.model.rotary_emb", "mel_front_end")


def _check_rebuildable_buffers(model: nn.Module) -> None:
    """Buffers outside the state dict come from no checkpoint: `empty_desta` must rebuild each."""
    owners = [name for name, module in model.named_modules() if module._non_persistent_buffers_set]
    unknown = [name for name in owners if name not in REBUILT_BUFFER_OWNERS]
    if unknown:
        raise RuntimeError(f"modules {unknown} hold non-persistent buffers that would stay empty")


def _set_parameter(model: nn.Module, name: str, parameter: nn.Parameter) -> None:
    owner, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(owner), attribute, parameter)


def single_device(device_map: str | Mapping[str, Any] | None) -> torch.device:
    """DeSTA2.5 runs on one device: `auto` is the first GPU when there is one, else the CPU."""
    if isinstance(device_map, Mapping):
        raise ValueError(
            "DeSTA2.5 loads onto one device; set model.load.device_map to auto, cuda, cuda:N or cpu"
        )
    if device_map in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_map)


def load_desta25(
    path: str | Path = RELEASE_HUB_ID,
    *,
    llm_path: str | Path = LLM_HUB_ID,
    encoder_path: str | Path = ENCODER_HUB_ID,
    device_map: str | Mapping[str, Any] | None = "auto",
    dtype: str = "bfloat16",
    audio_dtype: str = "float32",
    transcripts: str = "whisper",
    transcript_cache: str | Path = DEFAULT_TRANSCRIPT_CACHE,
    encoder: Mapping[str, Any] | None = None,
    connector: Mapping[str, Any] | None = None,
    name: str = "desta",
    hub_timeout_s: float = HUB_ANSWER_TIMEOUT_S,
) -> DestaLALM:
    """DeSTA2.5-Audio from local directories or the hub, checked key by key.

    `encoder` / `connector` override fields of the full-size sizes (for other releases);
    the LLM's sizes come from its config.json. A hub that does not answer within
    `hub_timeout_s` is not waited for: only its local cache is read. `transcripts`: `whisper`
    (the manifest's transcript where it records one, else the release's own Whisper, as
    DeSTA2.5 does; cached under `transcript_cache`), `manifest` (the manifest only, "" where
    it records none) or `none`.
    """
    from transformers import AutoTokenizer

    hub = HubAccess(hub_timeout_s)
    directories = {
        "release": resolve_model_dir(
            path, what="the DeSTA2.5 connector", allow_patterns=RELEASE_FILES, hub=hub
        ),
        "encoder": resolve_model_dir(
            encoder_path, what="the Whisper encoder", option=SOURCE_OPTIONS["encoder"], hub=hub
        ),
        "llm": resolve_model_dir(
            llm_path, what="the Llama backbone", option=SOURCE_OPTIONS["llm"], hub=hub
        ),
    }
    tokenizer = AutoTokenizer.from_pretrained(str(directories["llm"]))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    llm = llm_config_fields(directories["llm"])
    config = desta25_config(tokenizer, llm, encoder=encoder, connector=connector)
    device = single_device(device_map)
    model = empty_desta(
        config, device=device, llm_dtype=torch_dtype(dtype), audio_dtype=torch_dtype(audio_dtype)
    )
    load_release_weights(
        model, {source: checkpoint_tensors(d) for source, d in directories.items()}
    )
    return DestaLALM(
        model,
        tokenizer,
        device=device,
        name=name,
        transcriber=desta25_transcriber(
            transcripts, directories["encoder"], str(encoder_path), transcript_cache, device
        ),
        end_of_turn=END_OF_TURN,
    )


def desta25_transcriber(
    source: str,
    encoder_dir: Path,
    encoder_name: str,
    cache_dir: str | Path,
    device: torch.device,
) -> Transcriber | None:
    """What fills each clip's transcript slot (see `load_desta25`).

    The release's Whisper runs in float32, as DeSTA2.5 loads it; it is a second copy of the
    encoder beside the one inside the model (about 6 GB in float32 for whisper-large-v3),
    used only for clips not transcribed before.
    """
    if check_transcript_source(source) != "whisper":
        return manifest_or_none(source, "DeSTA2.5")
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    whisper = WhisperForConditionalGeneration.from_pretrained(str(encoder_dir)).to(device)
    transcriber = WhisperTranscriber(
        whisper,
        AutoProcessor.from_pretrained(str(encoder_dir)),
        detector=silero_speech_detector(),
        cache_dir=cache_dir,
        identity=encoder_name,
    )
    return ManifestThenWhisper(ManifestTranscriber(), transcriber)
