"""Small random DeSTA models and a hand-made SAKE release with audio, for editing tests.

The model is tiny (two LLM layers of width 48), so a whole edit-and-evaluate cycle takes
milliseconds; its tokenizer is trained on the release's own text, so every answer tokenises
cleanly inside the chat sequence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from fixtures_data import make_case, tiny_release, write_tiny_audio
from sake.data.readers import SakeRelease
from sake.data.schema import EditCase
from sake.data.schema import Sequence as EditSequence
from sake.methods.ike import PROJECT_INSTRUCTIONS, SUBJECTS
from sake.models.desta import DestaLALM, build_random_desta_tiny
from sake.models.desta_checkpoints import save_checkpoint
from sake.models.modeling_desta import AUDIO_ENCODER_PREFIX, CONNECTOR_PREFIX, LLM_PREFIX
from sake.models.tokenizer import train_tokenizer
from sake.utils.tracking import NullTracker

SMALL_SIZES = {
    "encoder": {
        "n_mels": 16,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "ffn_dim": 64,
        "max_seconds": 2.0,
    },
    "connector": {
        "tapped_layers": (0, 1),
        "queries_per_layer": 2,
        "n_layers": 1,
        "n_heads": 2,
        "ffn_dim": 64,
    },
    "llm": {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": False,
    },
}
SEQUENCE_LABELS = (
    ("Animal", "sheep", "frog"),
    ("Gender", "female", "male"),
    ("Emotion", "happy", "sad"),
    ("Language", "German", "French"),
    ("Animal", "dog", "pig"),
    ("Emotion", "angry", "fear"),
    ("Language", "Korean", "Italian"),
    ("Animal", "hen", "crow"),
)


def edit_release(root: Path, sequence_length: int = 8) -> SakeRelease:
    """The tiny release of `fixtures_data` plus one longer sequence, audio written under root."""
    base = tiny_release(root)
    cases = tuple(
        replace(make_case(attribute, y_o, y_e, f"lq{i}"), case_id=f"seq1/{i}")
        for i, (attribute, y_o, y_e) in enumerate(SEQUENCE_LABELS[:sequence_length])
    )
    release = replace(base, sequences=[*base.sequences, EditSequence(index=1, cases=cases)])
    audio_root = root / "audio"
    write_tiny_audio(release, audio_root)
    return rooted(release, audio_root)


def rooted(release: SakeRelease, audio_root: Path) -> SakeRelease:
    """The release with every probe's audio path resolved under `audio_root`."""

    def cases(items: list[EditCase]) -> list[EditCase]:
        return [case.with_audio_root(audio_root) for case in items]

    return replace(
        release,
        audio_root=audio_root,
        splits={split: cases(items) for split, items in release.splits.items()},
        sequences=[replace(s, cases=tuple(cases(list(s.cases)))) for s in release.sequences],
    )


# A prompt file in the reference's format with the project's own test wording: the tests of
# everything but the reference texts themselves read it instead of the reference's file.
STAND_IN_PROMPTS = {
    "ike_system": "Audio edits in force:\n{edits}\nAnswer audio questions accordingly.",
    "ike_rule_format": "'{pre}' => '{post}'",
    "ike_rule_format_unquoted_text_portability": "{pre_edit} => {post_edit}",
    "text_portability_query_template": "Clip: [caption]\nQuestion: [Instruction]",
    "text_portability_caption_animal": "An animal: [answer].",
    "text_portability_caption_emotion": "A feeling: [answer].",
    "text_portability_caption_gender": "A voice: [answer].",
    "text_portability_caption_language": "A language: [answer].",
}


def write_stand_in_prompts(path: Path) -> Path:
    prompts = {key: {"text": text} for key, text in STAND_IN_PROMPTS.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"source": "tests", "prompts": prompts}), encoding="utf-8")
    return path


def tokenizer_texts(release: SakeRelease) -> list[str]:
    texts = [PROJECT_INSTRUCTIONS, *SUBJECTS.values()]
    for case in release.all_cases():
        for probe in case.probes():
            texts += [probe.question, probe.answer, *probe.options]
            texts.append(f"{probe.question}\n{probe.answer}")
    return texts * 3


def make_tokenizer(release: SakeRelease) -> PreTrainedTokenizerFast:
    return train_tokenizer(tokenizer_texts(release), vocab_size=600)


def make_lalm(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> DestaLALM:
    return build_random_desta_tiny(tokenizer, seed=seed, **SMALL_SIZES)


def save_model_dir(lalm: DestaLALM, directory: Path) -> Path:
    """Write `lalm` in the layout `load_desta` reads (tokenizer, config, three parts)."""
    directory.mkdir(parents=True, exist_ok=True)
    lalm.tokenizer.save_pretrained(str(directory / "tokenizer"))
    (directory / "config.json").write_text(json.dumps(lalm.model.config.to_dict()))
    parts = {"backbone": LLM_PREFIX, "encoder": AUDIO_ENCODER_PREFIX, "connector": CONNECTOR_PREFIX}
    for part, prefix in parts.items():
        save_checkpoint(lalm.model, directory / f"{part}.safetensors", [prefix])
    return directory


class FileTracker(NullTracker):
    """A tracker that writes what it was given to a JSON file when the run finishes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.logged: dict[str, Any] = {"summary": {}, "tables": {}, "started": False}

    def start(self, config: Mapping[str, Any] | None = None) -> None:
        self.logged["started"] = config is not None and "method" in config

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        self.logged["summary"].update(metrics)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.logged["tables"][key] = {"columns": list(columns), "rows": [list(r) for r in rows]}

    def finish(self) -> None:
        self.path.write_text(json.dumps(self.logged))


def parameters(lalm: DestaLALM) -> dict[str, torch.Tensor]:
    """A copy of every parameter, to compare with after an edit and its restore."""
    return {name: p.detach().clone() for name, p in lalm.model.named_parameters()}


def assert_unchanged(lalm: DestaLALM, before: dict[str, torch.Tensor]) -> None:
    differing = [n for n, p in lalm.model.named_parameters() if not torch.equal(p, before[n])]
    assert differing == []


def release_on_disk(factory: Any) -> tuple[Path, Path]:
    """A small release in SAKE layout (with audio) and a tiny model in `load_desta` layout,
    under a pytest `tmp_path_factory`."""
    release = edit_release(factory.mktemp("release"))
    return write_on_disk(release, make_lalm(make_tokenizer(release)), factory)


def write_on_disk(release: SakeRelease, lalm: DestaLALM, factory: Any) -> tuple[Path, Path]:
    """`release` in SAKE layout (with its audio) and `lalm` in `load_desta` layout."""
    import shutil

    from sake.data.writers import write_release

    root = factory.mktemp("sake")
    write_release(release.splits, release.sequences, root)
    shutil.copytree(release.audio_root, root / "audio")
    return root, save_model_dir(lalm, factory.mktemp("weights") / "desta_tiny")


def run_overrides(on_disk: tuple[Path, Path], task: str, *extra: str) -> list[str]:
    """Overrides running `task` on a release and model written by `write_on_disk`."""
    root, weights = on_disk
    return [
        f"task={task}",
        "logger=none",
        "dataset=sake",
        f"dataset.root={root}",
        f"model.weights_dir={weights}",
        "eval.max_new_tokens=3",
        *extra,
    ]
