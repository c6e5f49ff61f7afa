"""Tensors inside JSON: what editor states (saved with runs and edits) carry.

`encode_tensor` keeps any dtype (bf16 included) exactly, as base64 of its raw bytes;
`is_encoded_tensor` recognises the encoding, so that a writer may move such tensors out of the
JSON into a binary file (`sake.methods.saved`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

ENCODED_KEYS = frozenset({"dtype", "shape", "data"})


def encode_tensor(tensor: Tensor) -> dict[str, Any]:
    """A JSON-serialisable copy of a tensor of any dtype: raw bytes in base64."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy().tobytes()
    return {
        "dtype": str(flat.dtype).removeprefix("torch."),
        "shape": list(tensor.shape),
        "data": base64.b64encode(raw).decode("ascii"),
    }


def decode_tensor(data: Mapping[str, Any]) -> Tensor:
    raw = bytearray(base64.b64decode(data["data"]))
    dtype = getattr(torch, data["dtype"])
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(data["shape"]).clone()


def is_encoded_tensor(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == ENCODED_KEYS
