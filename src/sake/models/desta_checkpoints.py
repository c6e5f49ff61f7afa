"""DeSTA checkpoints: safetensors files holding only the chosen (trainable) tensors.

The config and the trainable prefixes travel in the file's metadata as JSON; loading checks
keys and shapes strictly, so no weight is silently left at its initialisation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from sake.models.configuration_desta import DestaConfig
from sake.models.modeling_desta import (
    CONNECTOR_PREFIX,
    CheckpointMismatchError,
    DestaForCausalLM,
    check_state_dict_keys,
)

CONFIG_METADATA_KEY = "sake_desta_config"
TRAINABLE_METADATA_KEY = "sake_trainable_prefixes"


def save_checkpoint(
    model: DestaForCausalLM, path: str | Path, prefixes: Iterable[str] = (CONNECTOR_PREFIX,)
) -> None:
    """Write the tensors under `prefixes` plus config and prefixes to a safetensors file."""
    prefixes = list(prefixes)
    tensors = {k: v.contiguous().cpu() for k, v in model.trainable_state_dict(prefixes).items()}
    metadata = {
        CONFIG_METADATA_KEY: json.dumps(model.config.to_dict()),
        TRAINABLE_METADATA_KEY: json.dumps(prefixes),
    }
    save_file(tensors, str(path), metadata=metadata)


def read_checkpoint(path: str | Path) -> tuple[DestaConfig, dict[str, Tensor], list[str]]:
    """Config, tensors and trainable prefixes stored by `save_checkpoint`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if CONFIG_METADATA_KEY not in metadata:
            raise CheckpointMismatchError(f"{path} is not a DeSTA checkpoint (no config metadata)")
        names = handle.keys()
        tensors = {name: handle.get_tensor(name) for name in names}
    config = DestaConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    return config, tensors, json.loads(metadata[TRAINABLE_METADATA_KEY])


def load_checkpoint(
    path: str | Path, base_model: DestaForCausalLM | None = None
) -> DestaForCausalLM:
    """Load a checkpoint into `base_model` (whose frozen weights it completes), strictly.

    Without a base model the checkpoint must hold every tensor of the model it describes.
    """
    config, tensors, prefixes = read_checkpoint(path)
    if base_model is None:
        model = DestaForCausalLM.from_config(config, seed=0)
        check_state_dict_keys(model.state_dict().keys(), tensors.keys())
    else:
        model = base_model
        if model.config != config:
            raise CheckpointMismatchError(
                f"checkpoint config differs from the base model's:\n"
                f"  checkpoint {config.to_dict()}\n  model      {model.config.to_dict()}"
            )
    model.load_trainable_state_dict(tensors, prefixes)
    return model
