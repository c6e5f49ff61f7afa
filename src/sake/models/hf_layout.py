"""Where the parts of a transformers audio-LLM sit, whichever module layout it has.

Both Qwen2-Audio and Audio Flamingo 3 are an audio tower, a projector (the connector) and a
decoder-only LLM, in one of two layouts:

- before transformers 5.10: `audio_tower`, `multi_modal_projector` and `language_model` (a
  `*ForCausalLM` holding `model.layers` and `lm_head`) sit at the top level;
- 5.10 and later: they sit under `model.`, `language_model` is the bare decoder (`layers`) and
  `lm_head` is at the top level.

`detect_layout` reads which one a model has from its module tree (never from a version
string); `ModuleLayout` names the modules of the SAKE roles. `module_device` and
`module_dtype` say where and in what a (possibly dispatched) module computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sake.models.roles import ModuleMap

AUDIO_ENCODER_CHILD = "audio_tower"
CONNECTOR_CHILD = "multi_modal_projector"
LANGUAGE_MODEL_CHILD = "language_model"


def module_device(module: nn.Module) -> torch.device:
    """The device a module computes on: its dispatch hook's, else its first tensor's."""
    hook = getattr(module, "_hf_hook", None)
    execution_device = getattr(hook, "execution_device", None)
    if execution_device is not None:
        return torch.device(execution_device)
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (float32 when it has none)."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


@dataclass(frozen=True)
class ModuleLayout:
    """Qualified names of the parts of an audio-LLM, whichever layout transformers gave it.

    `decoder` is the bare transformer (`embed_tokens`, `layers`, `norm`) of the language model.
    """

    audio_encoder: str
    connector: str
    language_model: str
    decoder: str
    lm_head: str

    @property
    def nested(self) -> bool:
        """True for the 5.10+ layout (parts under `model.`), False for the flat one."""
        return "." in self.audio_encoder

    @property
    def layers(self) -> str:
        return f"{self.decoder}.layers"

    def role_names(self) -> dict[str, str]:
        return {
            "audio_encoder": self.audio_encoder,
            "connector": self.connector,
            "llm.embed": f"{self.decoder}.embed_tokens",
            "llm.norm": f"{self.decoder}.norm",
            "lm_head": self.lm_head,
        }

    def module_map(self, model: nn.Module) -> ModuleMap:
        return ModuleMap(model, self.role_names(), self.layers)


def _children(module: nn.Module) -> dict[str, nn.Module]:
    return dict(module.named_children())


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def detect_layout(model: nn.Module) -> ModuleLayout:
    """Find the parts from the module tree.

    The container is the one module with `audio_tower`, `multi_modal_projector` and
    `language_model` children (the root before 5.10, `model` after). The decoder is
    `language_model` when it holds `layers` and `embed_tokens` itself, else its `model` child;
    the head is the root's `lm_head`, else the language model's.
    """
    wanted = {AUDIO_ENCODER_CHILD, CONNECTOR_CHILD, LANGUAGE_MODEL_CHILD}
    containers = [
        name for name, module in model.named_modules() if wanted <= set(_children(module))
    ]
    if len(containers) != 1:
        raise ValueError(
            f"expected exactly one module with children {sorted(wanted)}, found "
            f"{containers or 'none'}; this is not a transformers audio-LLM layout the wrapper knows"
        )
    container = containers[0]
    language_model = _joined(container, LANGUAGE_MODEL_CHILD)
    return ModuleLayout(
        audio_encoder=_joined(container, AUDIO_ENCODER_CHILD),
        connector=_joined(container, CONNECTOR_CHILD),
        language_model=language_model,
        decoder=_decoder_name(model, language_model),
        lm_head=_lm_head_name(model, language_model),
    )


def _is_decoder(module: nn.Module) -> bool:
    return {"layers", "embed_tokens"} <= set(_children(module))


def _decoder_name(model: nn.Module, language_model: str) -> str:
    module = model.get_submodule(language_model)
    if _is_decoder(module):
        return language_model
    inner = _children(module).get("model")
    if inner is not None and _is_decoder(inner):
        return f"{language_model}.model"
    raise ValueError(
        f"{language_model} holds neither `layers` + `embed_tokens` nor a `model` child that does"
    )


def _lm_head_name(model: nn.Module, language_model: str) -> str:
    if "lm_head" in _children(model):
        return "lm_head"
    if "lm_head" in _children(model.get_submodule(language_model)):
        return f"{language_model}.lm_head"
    raise ValueError(f"found no lm_head at the top level or in {language_model}")
