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
from hydra.utils import instantiate

from lalm_fixtures import release_on_disk, run_overrides
from sake.data.schema import Probe, ProbeKind
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
        self.edited_roles = (config.role,)
        self.extras = {"factor": config.factor}

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
"""A new LALM in one file: desta_tiny's network behind the shared wrapper base, with its own
prompt (each question before its clips, no chat-template audio handling of its own)."""

import torch

from sake.data.audio import read_audio
from sake.models.audio_lalm import AudioLALM, probe_audio
from sake.models.desta import load_desta
from sake.models.modeling_desta import LLM_LAYERS_NAME, ROLE_MODULE_NAMES
from sake.models.roles import ModuleMap
from sake.models.tokenizer import IM_END


class QuestionFirstLALM(AudioLALM):
    def __init__(self, model, tokenizer, name):
        modules = ModuleMap(model, ROLE_MODULE_NAMES, LLM_LAYERS_NAME)
        super().__init__(model, tokenizer, modules, name=name, end_of_turn=IM_END)
        self.span = tokenizer.decode(model.config.audio_span())

    @property
    def audio_window_seconds(self):
        return float(self.model.config.encoder.max_seconds)

    @property
    def _input_device(self):
        return torch.device("cpu")

    def prompt_text(self, probe, *, system=None, history=None):
        def content(text, clips):
            return self._checked_text(text, "text") + "\\n" + self.span * len(clips)

        messages = [{"role": "system", "content": system}] if system is not None else []
        messages += [{"role": t.role, "content": content(t.text, t.audio)} for t in history or ()]
        messages.append({"role": "user", "content": content(probe.question, probe_audio(probe))})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _encode_clips(self, paths):
        sample_rate = self.model.config.encoder.sample_rate
        waveforms = [read_audio(path, sample_rate=sample_rate) for path in paths]
        features, mask = self.model.audio_features(waveforms)
        return self.model.connect_audio(self.model.encode_audio_states(features, mask), mask)

    def _audio(self, batch, grad):
        paths = batch.inputs.get("audio_paths", ())
        return torch.stack(self._clip_embeddings(list(paths), grad=grad)) if paths else None

    def _logits(self, input_ids, attention_mask, batch, *, keep):
        audio = self._audio(batch, torch.is_grad_enabled())
        return self.model.trailing_logits(input_ids, attention_mask, audio, keep)

    def _decode(self, batch, max_new_tokens):
        return self.model.generate_scored(
            batch.input_ids,
            batch.attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=self._stop_ids,
            pad_token_id=self._pad_id,
            audio_embeds=self._audio(batch, False),
        )


def load(weights_dir: str, name: str):
    trained = load_desta(weights_dir)
    return QuestionFirstLALM(trained.model, trained.tokenizer, name)
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
    assert [record["edit"]["extras"] for record in records] == [{"factor": 0.5}] * 2
    assert "single/reliability" in metrics


def test_a_new_lalm_is_one_file_and_one_config(compose_cfg, on_disk, extension) -> None:
    search = add(extension, "toy_lalm", MODEL_FILE, "model", MODEL_CONFIG)
    overrides = run_overrides(on_disk, "edit", search, "model=toy_lalm", "method=ft_llm")
    overrides += ["method.max_steps=1", "dataset.limit=2"]
    cfg = compose_cfg("edit", overrides)
    run_task(cfg)
    records = read_records(Path(cfg.paths.output_dir) / RECORDS_FILE)
    assert len(records) == 2 and {record["model"] for record in records} == {"toy_lalm"}
    reliability = next(p for p in records[0]["probes"] if p["kind"] == "reliability")
    assert isinstance(reliability["post_output"], str) and reliability["audio"]
    lalm = instantiate(cfg.model.load)
    probe = Probe(
        ProbeKind.RELIABILITY, "Which animal?", "dog", (), audio_path=Path(reliability["audio"])
    )
    prompt = lalm.prepare([probe]).prompts[0]
    assert prompt.index("Which animal?") < prompt.index(lalm.span)
