"""Adding an editing method or an LALM is one Python file plus one config, nothing else.

Each test writes exactly that into a directory outside the project (the file on `sys.path`,
the config on Hydra's search path) and runs `edit.py`'s task with it end to end.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lalm_fixtures import release_on_disk, run_overrides
from sake.evaluation.records import RECORDS_FILE, read_records
from sake.utils.run import run_task

METHOD_FILE = '''
"""Scales the LLM's last MLP output projection: a method in one file."""

from dataclasses import dataclass
from time import perf_counter

import torch

from sake.methods.base import EditorState, EditOutcome, QueryContext, WeightSnapshot


@dataclass(frozen=True)
class ScaleConfig:
    name: str
    role: str = "llm.layer[-1].mlp.down_proj"
    factor: float = 0.5


class ScaleEditor:
    touches_audio_path = False

    def __init__(self, config: ScaleConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = EditorState()

    def prepare(self, lalm, train_cases) -> None:
        lalm.modules.resolve(self.config.role)

    def apply(self, lalm, case) -> EditOutcome:
        start = perf_counter()
        parameters = lalm.modules.parameters(self.config.role)
        snapshot = WeightSnapshot.take(parameters)
        with torch.no_grad():
            for parameter in parameters.values():
                parameter.mul_(self.config.factor)
        self.state.record(case)
        return EditOutcome(snapshot, 1, 0.0, perf_counter() - start)

    def context(self) -> QueryContext:
        return QueryContext()


def build(**fields) -> ScaleEditor:
    return ScaleEditor(ScaleConfig(**fields))
'''

METHOD_CONFIG = """
_target_: toy_scale.build
name: toy_scale
role: llm.layer[-1].mlp.down_proj
factor: 0.5
"""

MODEL_FILE = '''
"""The project's DeSTA-architecture model from a weights directory: an LALM in one file."""

from sake.models.desta import load_desta


def load(weights_dir: str, name: str):
    return load_desta(weights_dir, name=name)
'''

MODEL_CONFIG = """
name: toy_lalm
weights_dir: ???
load:
  _target_: toy_lalm.load
  weights_dir: ${..weights_dir}
  name: ${..name}
"""


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return release_on_disk(tmp_path_factory)


@pytest.fixture
def extension(tmp_path: Path) -> Iterator[Path]:
    """A directory for the new Python file (put on sys.path) and its config group."""
    root = tmp_path / "extension"
    (root / "configs").mkdir(parents=True)
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for module in ("toy_scale", "toy_lalm"):
            sys.modules.pop(module, None)


def add(root: Path, module: str, source: str, group: str, config: str) -> str:
    (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    (root / "configs" / group).mkdir(exist_ok=True)
    (root / "configs" / group / f"{module}.yaml").write_text(config.lstrip(), encoding="utf-8")
    return f"hydra.searchpath=[file://{root / 'configs'}]"


def test_a_new_method_is_one_file_and_one_config(compose_cfg, on_disk, extension) -> None:
    search = add(extension, "toy_scale", METHOD_FILE, "method", METHOD_CONFIG)
    cfg = compose_cfg(
        "edit", run_overrides(on_disk, "edit", search, "method=toy_scale", "dataset.limit=2")
    )
    metrics = run_task(cfg)
    records = read_records(Path(cfg.paths.output_dir) / RECORDS_FILE)
    assert [record["method"] for record in records] == ["toy_scale", "toy_scale"]
    assert "single/reliability" in metrics


def test_a_new_lalm_is_one_file_and_one_config(compose_cfg, on_disk, extension) -> None:
    search = add(extension, "toy_lalm", MODEL_FILE, "model", MODEL_CONFIG)
    overrides = run_overrides(on_disk, "edit", search, "model=toy_lalm", "method=ft_llm")
    overrides += ["method.max_steps=1", "dataset.limit=2"]
    cfg = compose_cfg("edit", overrides)
    run_task(cfg)
    records = read_records(Path(cfg.paths.output_dir) / RECORDS_FILE)
    assert len(records) == 2 and {record["model"] for record in records} == {"toy_lalm"}
