"""Shared fixtures: composed Hydra configs, the shared SAKE release, small generated corpora."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lalm_fixtures import edit_release, make_lalm, make_tokenizer, write_stand_in_prompts
from sake.data.readers import SakeRelease
from sake.data.schema import EditCase
from sake.models.desta import DestaLALM
from sake.utils.resolvers import register_resolvers

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
SHARED_SAKE = REPO_ROOT.parent / "shared" / "sake"

register_resolvers()


@pytest.fixture
def shared_sake() -> Path:
    """The real SAKE release (text only); tests that need it skip when it is absent."""
    if not (SHARED_SAKE / "data").is_dir():
        pytest.skip("the shared SAKE release is not available")
    return SHARED_SAKE


ComposeFn = Callable[..., DictConfig]


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[ComposeFn]:
    """Compose a real entry-point config as Hydra would, with outputs under tmp_path."""

    def _compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(
                config_name=config_name,
                overrides=list(overrides or []),
                return_hydra_config=True,
            )
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.data_dir = str(tmp_path / "data")
            cfg.paths.cache_dir = str(tmp_path / "cache")
            if not any(o.startswith("paths.reference_prompts=") for o in overrides or []):
                stand_in = write_stand_in_prompts(tmp_path / "reference_prompts.json")
                cfg.paths.reference_prompts = str(stand_in)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic SAKE-format corpus, generated once per test session."""
    from sake.data.synth.build import build_synthetic_release
    from sake.data.synth.scales import resolve_scale

    out = tmp_path_factory.mktemp("sake_synth_tiny")
    build_synthetic_release(out, resolve_scale("tiny"), seed=0, workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> SakeRelease:
    """A small edit release with audio on disk, one per test module."""
    return edit_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def lalm(release: SakeRelease) -> DestaLALM:
    """A tiny random DeSTA-architecture model with a tokenizer trained on `release`."""
    return make_lalm(make_tokenizer(release))


@pytest.fixture
def case(release: SakeRelease) -> EditCase:
    return release.splits["test"][0]
