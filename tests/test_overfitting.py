"""Audio-locality overfitting against the reference's own counts
(tests/data/audio_locality_overfitting_reference.json)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from sake.evaluation.overfitting import KEY, overfitting_counts, overfitting_metrics

REFERENCE = json.loads(
    (Path(__file__).parent / "data" / "audio_locality_overfitting_reference.json").read_text()
)
GENDER_TYPES = (1, 3, 4)


def synthetic_items(seed: int = 7, n: int = 300, types: int = 4) -> list[tuple[str, list]]:
    """(reliability post output, [(consistent, post output) per audio-locality type]) items."""
    rng = random.Random(seed)
    outputs = ["cat", "dog", " cat ", "pig", "The animal is a cat."]
    return [
        (rng.choice(outputs), [(rng.random() < 0.5, rng.choice(outputs)) for _ in range(types)])
        for _ in range(n)
    ]


def records(items: list[tuple[str, list]], types: tuple[int, ...]) -> list[dict[str, Any]]:
    return [
        {
            "attribute": "x",
            "probes": [
                {"kind": "reliability", "type": None, "post_output": reliability},
                *(
                    {"kind": "locality_audio", "type": t, "consistent": c, "post_output": o}
                    for t, (c, o) in zip(types, locality, strict=True)
                ),
            ],
        }
        for reliability, locality in items
    ]


def test_counts_match_the_reference_for_every_type() -> None:
    animal = overfitting_counts(records(synthetic_items(7), (1, 2, 3, 4)))
    assert {str(t - 1): list(v) for t, v in animal.items()} == REFERENCE["Animal"]
    gender = overfitting_counts(records(synthetic_items(8, types=3), GENDER_TYPES))
    assert [list(gender[t]) for t in GENDER_TYPES] == list(REFERENCE["Gender"].values())


def test_metrics_pool_attributes_and_skip_gender_for_type_2() -> None:
    pooled = records(synthetic_items(7), (1, 2, 3, 4)) + records(
        synthetic_items(8, types=3), GENDER_TYPES
    )
    metrics = overfitting_metrics(pooled)
    assert metrics[f"{KEY}/type2"] == 40 / 147 and metrics[f"{KEY}/type2/failed"] == 147
    assert metrics[f"{KEY}/type3"] == (35 + 41) / (141 + 149)
    assert overfitting_metrics(records([("cat", [(True, "dog")] * 4)], (1, 2, 3, 4))) == {}
