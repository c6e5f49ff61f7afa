"""Role resolution: methods name parts of a model by role, never by model name."""

from __future__ import annotations

import pytest
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from sake.models.roles import ModuleMap


class TinyLalm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.connector = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 16))
        config = LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
        self.llm = LlamaForCausalLM(config)


@pytest.fixture
def module_map() -> ModuleMap:
    model = TinyLalm()
    return ModuleMap(
        model,
        named={
            "audio_encoder": "encoder",
            "connector": "connector",
            "llm.embed": "llm.model.embed_tokens",
            "llm.norm": "llm.model.norm",
            "lm_head": "llm.lm_head",
        },
        layers="llm.model.layers",
    )


def test_fixed_roles_resolve_to_their_modules(module_map: ModuleMap) -> None:
    assert module_map.resolve("connector").module is module_map.model.connector
    assert set(module_map.parameters("connector")) == {
        "connector.0.weight",
        "connector.0.bias",
        "connector.1.weight",
        "connector.1.bias",
    }


def test_layer_roles_accept_negative_indices(module_map: ModuleMap) -> None:
    last = module_map.resolve("llm.layer[-1].mlp.down_proj")
    assert last.name == "llm.model.layers.2.mlp.down_proj"
    assert last.module is module_map.model.llm.model.layers[2].mlp.down_proj
    assert module_map.resolve("llm.layer[0]").name == "llm.model.layers.0"
    assert list(module_map.parameters("llm.layer[1].mlp")) == [
        "llm.model.layers.1.mlp.gate_proj.weight",
        "llm.model.layers.1.mlp.up_proj.weight",
        "llm.model.layers.1.mlp.down_proj.weight",
    ]


def test_bad_roles_fail_with_a_useful_message(module_map: ModuleMap) -> None:
    with pytest.raises(IndexError, match="out of range for a 3-layer"):
        module_map.resolve("llm.layer[3]")
    with pytest.raises(KeyError, match="known roles"):
        module_map.resolve("decoder")
    with pytest.raises(KeyError, match="does not have"):
        module_map.resolve("llm.layer[0].mlp.nonexistent")


def test_map_rejects_roles_pointing_nowhere() -> None:
    with pytest.raises(KeyError, match="does not have"):
        ModuleMap(TinyLalm(), named={"connector": "projector"}, layers="llm.model.layers")
