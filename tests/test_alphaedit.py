"""AlphaEdit: updates confined to the null space of preserved keys; MEMIT's edit otherwise."""

from __future__ import annotations

from pathlib import Path

import torch

from lalm_fixtures import assert_unchanged
from sake.data.readers import SakeRelease
from sake.data.schema import EditCase
from sake.methods.alphaedit import (
    AlphaEditConfig,
    AlphaEditEditor,
    alphaedit_update,
    null_space_projector,
)
from sake.methods.base import build_editor
from sake.models.desta import DestaLALM
from test_memit import edited_once, run_protocols

torch.set_num_threads(1)


def alphaedit(**fields: object) -> AlphaEditEditor:
    settings = {"layers": (0,), "v_steps": 10, "l2": 1e-2, **fields}
    return AlphaEditEditor(AlphaEditConfig(name="alphaedit", **settings))


def preserved_moment(seed: int = 0) -> torch.Tensor:
    """A second moment of 8-dimensional keys that occupy 5 directions."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(8, 8, generator=generator))[0]
    scales = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.0, 0.0, 0.0])
    return basis @ torch.diag(scales) @ basis.T


def test_update_leaves_every_preserved_key_direction_alone() -> None:
    moment = preserved_moment()
    projector = null_space_projector(moment, threshold=1e-3)
    assert round(float(torch.trace(projector))) == 3
    generator = torch.Generator().manual_seed(1)
    keys, residuals = torch.randn(8, 2, generator=generator), torch.randn(4, 2, generator=generator)
    delta = alphaedit_update(keys, residuals, projector, torch.zeros(8, 8), l2=1e-3)
    values, vectors = torch.linalg.eigh(moment)
    preserved = vectors[:, values > 1e-3]
    assert float((delta @ preserved).abs().max()) < 1e-3 * float(delta.abs().max())
    # two keys, three free directions: the edit is still (nearly) solved
    assert float((delta @ keys - residuals).norm()) < 0.2 * float(residuals.norm())


def test_earlier_edits_keys_pull_the_next_update_away_from_them() -> None:
    projector = torch.eye(8)
    generator = torch.Generator().manual_seed(2)
    earlier_key = torch.randn(8, 1, generator=generator)
    keys, residuals = torch.randn(8, 1, generator=generator), torch.randn(4, 1, generator=generator)
    fresh = alphaedit_update(keys, residuals, projector, torch.zeros(8, 8), l2=1e-2)
    kept = alphaedit_update(keys, residuals, projector, 100 * earlier_key @ earlier_key.T, 1e-2)
    assert float((kept @ earlier_key).norm()) < 0.1 * float((fresh @ earlier_key).norm())


def test_edit_lowers_the_target_loss_and_restores_bit_exactly(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    editor = alphaedit(nullspace_threshold=1e6)  # every direction is null space: MEMIT at λ=0
    outcome, before = edited_once(editor, lalm, release, case)
    assert editor.state.key_moments
    outcome.snapshot.restore()
    editor.state.reset()
    assert_unchanged(lalm, before)
    assert not editor.state.key_moments


def test_single_and_sequential_editing_through_the_runner(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    run_protocols(alphaedit(), lalm, release, tmp_path)


def test_the_config_edits_the_down_projections_of_its_layers(compose_cfg) -> None:
    editor = build_editor(compose_cfg("edit", ["method=alphaedit"]).method)
    assert editor.edited_roles == ("llm.layer[1].mlp.down_proj", "llm.layer[2].mlp.down_proj")
