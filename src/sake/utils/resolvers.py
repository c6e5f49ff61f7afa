"""OmegaConf resolvers used by the configs; registered once on import of the entry points."""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf


def project_root(start: Path | None = None) -> Path:
    """The nearest ancestor of `start` (default: cwd) holding sake's pyproject, else cwd.

    Relative defaults (data, outputs, weights) then work from any subdirectory of a checkout
    and from a plain working directory when the package is installed elsewhere.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and 'name = "sake"' in pyproject.read_text(encoding="utf-8"):
            return candidate
    return here


@functools.lru_cache(maxsize=1)
def process_run_id() -> str:
    """A short id fixed for the life of the process: separates runs started in one second."""
    return f"{os.getpid():x}{secrets.token_hex(2)}"


def register_resolvers() -> None:
    """Register `${sake.root:}` and `${sake.run_id:}` (idempotent)."""
    if not OmegaConf.has_resolver("sake.root"):
        OmegaConf.register_new_resolver("sake.root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("sake.run_id"):
        OmegaConf.register_new_resolver("sake.run_id", process_run_id)


def config_options(group: str) -> list[str]:
    """The options of a config group, as Hydra sees them (or as the checkout lists them)."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    if hydra.is_initialized():
        return sorted(hydra.config_loader().get_group_options(group))
    return sorted(path.stem for path in (project_root() / "configs" / group).glob("*.yaml"))
