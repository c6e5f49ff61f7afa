"""Finding a model's files: a local directory or the Hugging Face Hub, with a bounded wait.

Also how a model is placed (`device_map`) and in which dtype its weights load: what every
loader of a hub model (DeSTA2.5-Audio, Qwen2-Audio, Audio Flamingo 3) asks before it builds.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

PATH_OPTION = "model.path"
HUB_FILE_PATTERNS = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.safetensors")
IGNORED_HUB_FILES = ("original/*", "*.fp32*")
HUB_ETAG_TIMEOUT_S = 10.0
HUB_ANSWER_TIMEOUT_S = 5.0
ACCELERATE_FREE_DEVICE_MAPS = ("cpu", "cuda", "mps")


class ModelUnavailableError(FileNotFoundError):
    """Neither a local directory nor the Hugging Face Hub can provide a model's files."""


def hub_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` asks for cached files only (read now, not at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    """The hub's address (`HF_ENDPOINT`, https://huggingface.co by default)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def endpoint_problem(endpoint: str, timeout_s: float) -> str | None:
    """Why `endpoint` gives no HTTP answer to a HEAD request, or None when it answers at all.

    `timeout_s` bounds each network step; proxies from the environment apply, as they do for
    the hub client.
    """
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, TimeoutError):
            return f"did not answer within {timeout_s:g} s"
        return f"could not be reached ({reason})"
    except TimeoutError:
        return f"did not answer within {timeout_s:g} s"
    except (OSError, ValueError) as error:
        return f"could not be reached ({first_line(error)})"


class HubAccess:
    """Whether a load may ask the Hugging Face Hub or must read its local cache only.

    Decided once, at the first hub id a load resolves: `HF_HUB_OFFLINE=1`, or a hub that
    cannot be reached or does not answer within `timeout_s`, means cache only. The probe
    exists because the hub client waits without a time limit on a network that silently drops
    connections.
    """

    def __init__(self, timeout_s: float = HUB_ANSWER_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ValueError(f"the hub timeout must be positive, got {timeout_s}")
        self.timeout_s = timeout_s

    @cached_property
    def cache_only_reason(self) -> str | None:
        """Why only the local cache may be read; None when the hub answers."""
        if hub_offline():
            return "HF_HUB_OFFLINE is set"
        endpoint = hub_endpoint()
        problem = endpoint_problem(endpoint, self.timeout_s)
        return None if problem is None else f"the hub at {endpoint} {problem}"


def looks_like_local_path(path: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else that names a place is a local path."""
    return path.startswith(("/", ".", "~")) or "\\" in path or path.count("/") > 1


def resolve_model_dir(
    path: str | Path,
    *,
    what: str,
    option: str = PATH_OPTION,
    allow_patterns: Sequence[str] = HUB_FILE_PATTERNS,
    ignore_patterns: Sequence[str] = IGNORED_HUB_FILES,
    revision: str | None = None,
    hub: HubAccess | None = None,
    expected_file: str | None = None,
) -> Path:
    """A local directory with the model's files: `path` itself, or its hub snapshot.

    Fails at once, naming `option`, when `path` is empty, a missing local path, a local
    directory without `expected_file`, or a hub id the hub can neither serve nor has cached
    (when `hub` says cache only, only the cache is consulted).
    """
    text = str(path).strip()
    if not text:
        raise ModelUnavailableError(
            f"cannot load {what}: {option} is empty; set {option}=<hub id or local directory>"
        )
    local = Path(text).expanduser()
    if local.is_dir():
        if expected_file is not None and not (local / expected_file).is_file():
            raise ModelUnavailableError(
                f"cannot load {what}: the directory {local} holds no {expected_file}; "
                f"point {option}=<directory with the model files> at a downloaded copy"
            )
        return local
    if looks_like_local_path(text) or local.exists():
        raise ModelUnavailableError(
            f"cannot load {what}: the local path {text} is not a directory; "
            f"point {option}=<directory with the model files> at a downloaded copy"
        )
    from huggingface_hub import snapshot_download

    cache_only = (hub or HubAccess()).cache_only_reason
    try:
        snapshot = snapshot_download(
            repo_id=text,
            revision=revision,
            allow_patterns=list(allow_patterns),
            ignore_patterns=list(ignore_patterns),
            local_files_only=cache_only is not None,
            etag_timeout=HUB_ETAG_TIMEOUT_S,
        )
    except (OSError, ValueError) as error:
        reason = f"{cache_only} and it is not in the hub cache" if cache_only else first_line(error)
        raise ModelUnavailableError(
            f"cannot load {what}: {text!r} is not a local directory and the Hugging Face Hub "
            f"cannot provide it ({reason}). "
            f"Download it where the hub is reachable and set {option}=<local directory>"
        ) from error
    return Path(snapshot)


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """`bfloat16`, `float16`, `float32` (or a dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unknown floating-point dtype {name!r}; use bfloat16, float16 or float32")
    return dtype


def pretrained_placement(device_map: str | Mapping[str, Any] | None) -> tuple[dict, str | None]:
    """`from_pretrained` keyword arguments for a device map, and a device to move to afterwards.

    A single device (`cpu`, `cuda`, `cuda:1`) needs no `accelerate`: the model loads on the CPU
    and is moved. Maps that split the model (`auto`, `balanced`, a dict) need `accelerate`.
    """
    if device_map is None:
        return {}, None
    if isinstance(device_map, str) and device_map.split(":")[0] in ACCELERATE_FREE_DEVICE_MAPS:
        return {}, device_map
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ImportError(
            f"device_map={device_map!r} needs the accelerate package (pip install accelerate); "
            "without it set model.load.device_map to one device such as cuda or cpu"
        ) from None
    return {"device_map": dict(device_map) if isinstance(device_map, Mapping) else device_map}, None
