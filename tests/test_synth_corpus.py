"""The synthetic SAKE corpus: construction rules hold by construction, output is deterministic."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sake.data.check import main as check_main
from sake.data.readers import load_release
from sake.data.schema import ATTRIBUTES, LABELS
from sake.data.synth import pools
from sake.data.synth.build import build_synthetic_release, is_built
from sake.data.synth.corpus import balanced_pairs, sequence_composition
from sake.data.synth.scales import SCALES, resolve_scale


@pytest.mark.parametrize("attribute", ATTRIBUTES)
@pytest.mark.parametrize("n", [7, 40, 300])
def test_balanced_pairs_are_exact_and_never_identity(attribute: str, n: int) -> None:
    if attribute == "Gender" and n % 2:
        with pytest.raises(ValueError, match="cannot pair every label off"):
            balanced_pairs(LABELS[attribute], n, np.random.default_rng(n))
        return
    pairs = balanced_pairs(LABELS[attribute], n, np.random.default_rng(n))
    assert len(pairs) == n
    assert all(y_o != y_e for y_o, y_e in pairs)
    assert Counter(y_o for y_o, _ in pairs) == Counter(y_e for _, y_e in pairs)
    counts = Counter(y_o for y_o, _ in pairs).values()
    assert max(counts) - min(counts) <= 1


def test_sequence_composition_fits_distinct_labels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        composition = sequence_composition(10, rng)
        assert sum(composition.values()) == 10
        assert all(count <= len(LABELS[a]) // 2 for a, count in composition.items())
    with pytest.raises(ValueError, match="cannot keep all labels distinct"):
        sequence_composition(13, rng)


def test_tiny_corpus_passes_every_rule(tiny_corpus: Path, capsys) -> None:
    assert check_main([str(tiny_corpus)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scale = SCALES["tiny"]
    assert summary["splits"]["test"]["cases"] == 4 * scale.test_cases_per_attribute
    assert summary["splits"]["train"]["cases"] == 4 * scale.train_cases_per_attribute
    assert summary["splits"]["val"]["cases"] == scale.val_cases
    assert summary["sequences"] == {"count": scale.sequences, "lengths": [10] * scale.sequences}
    assert summary["audio"]["missing"] == 0
    assert set(summary["rules"].values()) == {"ok"}


def test_corpus_records_what_probing_and_portability_need(tiny_corpus: Path) -> None:
    release = load_release(tiny_corpus)
    for case in release.splits["test"]:
        assert case.reliability.original_answer == case.y_o
        (portability,) = case.portability
        assert portability.category
        assert portability.original_answer not in (None, portability.answer)
        assert portability.original_answer in portability.options
        assert {p.type for p in case.locality_audio} == (
            {1, 3, 4} if case.attribute == "Gender" else {1, 2, 3, 4}
        )
    manifest = pools.read_manifest(tiny_corpus / "audio")
    speech = [entry for entry in manifest.values() if entry["language"]]
    assert speech and all(entry["transcript"] and entry["gender"] for entry in speech)


def test_same_seed_gives_byte_identical_json_and_cached_audio(tmp_path: Path, monkeypatch) -> None:
    scale = resolve_scale("tiny", train_cases_per_attribute=4, val_cases=4, sequences=1)
    first, second = tmp_path / "a", tmp_path / "b"
    build_synthetic_release(first, scale, seed=3, workers=1, progress=False)
    build_synthetic_release(second, scale, seed=3, workers=1, progress=False)
    files = sorted(p.relative_to(first) for p in (first / "data").rglob("*.json"))
    assert files
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert is_built(first, scale, 3) and not is_built(first, scale, 4)

    rendered: list[str] = []
    original = pools._render_to_disk

    def counting(job):
        rendered.append(job[0].relative_path)
        return original(job)

    monkeypatch.setattr(pools, "_render_to_disk", counting)
    build_synthetic_release(first, scale, seed=3, workers=1, progress=False)
    assert rendered == [], "an unchanged corpus must reuse every cached clip"
    build_synthetic_release(first, scale, seed=4, workers=1, progress=False)
    assert rendered, "a new seed must re-render its clips"


def test_train_and_test_pools_share_no_audio() -> None:
    planned = pools.plan_pools(SCALES["tiny"], seed=0)
    train = {clip.relative_path for clip in pools.all_specs({"train": planned["train"]})}
    test = {clip.relative_path for clip in pools.all_specs({"test": planned["test"]})}
    assert train and test and not train & test


def test_unknown_scale_and_fields_are_rejected() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        resolve_scale("huge")
    with pytest.raises(ValueError, match="unknown scale fields"):
        resolve_scale("tiny", cases=3)
