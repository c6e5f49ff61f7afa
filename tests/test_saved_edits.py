"""Saved edits: written per case (or sequence), applied to a fresh model, refused elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from safetensors import safe_open

from lalm_fixtures import release_on_disk, run_overrides, save_model_dir
from sake.methods.saved import (
    SavedEditMismatchError,
    apply_saved_edit,
    read_saved_edit,
)
from sake.utils.run import run_task

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return release_on_disk(tmp_path_factory)


def edit_run(compose_cfg, on_disk, directory: Path, *extra: str) -> Path:
    overrides = run_overrides(on_disk, "edit", "save_edits=true", *extra)
    cfg = compose_cfg("edit", overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(directory)
    run_task(cfg)
    return directory


def apply_task(compose_cfg, on_disk, edit: Path, directory: Path) -> dict[str, float]:
    cfg = compose_cfg("evaluate", run_overrides(on_disk, "apply_edit", f"edit={edit}"))
    with open_dict(cfg):
        cfg.paths.output_dir = str(directory)
    return run_task(cfg)


@pytest.mark.parametrize(
    ("method", "protocol"),
    [
        ("ft_audio", "single"),
        ("i_ike", "single"),
        ("grace", "single"),
        ("wise", "single"),
        ("ft_llm", "sequential"),
    ],
)
def test_a_saved_edit_applied_to_a_fresh_model_gives_the_recorded_outputs(
    compose_cfg, on_disk, tmp_path: Path, method: str, protocol: str
) -> None:
    extra = [f"method={method}", f"eval.protocol={protocol}"]
    if method.startswith("ft_"):
        extra.append("method.max_steps=3")
    if method == "grace":
        extra.append("method.n_iter=3")
    if method == "wise":
        extra += ["method.steps=3", "dataset.limit=2"]
    if protocol == "sequential":
        extra += ["dataset.limit=1", "eval.sequential.max_edit=2", "eval.sequential.max_gap=1"]
    run = edit_run(compose_cfg, on_disk, tmp_path / "run", *extra)
    files = sorted((run / "edits").glob("*.safetensors"))
    assert files
    for index, path in enumerate(files):
        saved = read_saved_edit(path)
        assert saved.method_name == method and saved.case_ids
        if method in ("i_ike", "grace", "wise"):
            assert not saved.tensors and saved.editor_state["edits"]
        else:
            assert saved.tensors
        if method in ("grace", "wise"):  # a codebook / memory: file tensors, not metadata text
            with safe_open(str(path), framework="pt") as handle:
                assert any(name.startswith("state/") for name in handle.keys())  # noqa: SIM118
                assert len(handle.metadata()["sake_edit"]) < 20_000
        metrics = apply_task(compose_cfg, on_disk, path, tmp_path / f"applied{index}")
        assert metrics["apply_edit/same_as_recorded"] == 1.0
    if protocol == "sequential":
        assert [path.name for path in files] == ["sequence_0.safetensors"]
        assert len(read_saved_edit(files[0]).case_ids) == 2


def test_a_saved_ft_edit_holds_only_the_edited_tensors_and_restores_bit_exactly(
    compose_cfg, on_disk, tmp_path: Path
) -> None:
    run = edit_run(compose_cfg, on_disk, tmp_path / "run", "method=ft_llm", "dataset.limit=1")
    path = next((run / "edits").glob("*.safetensors"))
    lalm = instantiate(compose_cfg("edit", run_overrides(on_disk, "edit")).model.load)
    model_bytes = sum(p.numel() * p.element_size() for p in lalm.model.parameters())
    role = lalm.modules.parameters("llm.layer[-1].mlp")
    assert set(read_saved_edit(path).tensors) <= set(role)
    assert path.stat().st_size < model_bytes / 4
    before = {name: p.detach().clone() for name, p in lalm.model.named_parameters()}
    _, snapshot = apply_saved_edit(lalm, read_saved_edit(path))
    assert any(not torch.equal(p, before[n]) for n, p in lalm.model.named_parameters())
    snapshot.restore()
    assert all(torch.equal(p, before[n]) for n, p in lalm.model.named_parameters())


def test_a_saved_edit_is_refused_by_other_weights(compose_cfg, on_disk, tmp_path: Path) -> None:
    run = edit_run(compose_cfg, on_disk, tmp_path / "run", "method=ft_llm", "dataset.limit=1")
    path = next((run / "edits").glob("*.safetensors"))
    lalm = instantiate(compose_cfg("edit", run_overrides(on_disk, "edit")).model.load)
    with torch.no_grad():
        next(lalm.model.parameters()).add_(1.0)
    other = save_model_dir(lalm, tmp_path / "other")
    cfg = compose_cfg(
        "evaluate",
        [*run_overrides(on_disk, "apply_edit", f"edit={path}"), f"model.weights_dir={other}"],
    )
    with pytest.raises(SavedEditMismatchError, match="fingerprint"):
        run_task(cfg)
    with pytest.raises(FileNotFoundError, match="save_edits=true"):
        read_saved_edit(tmp_path / "missing.safetensors")
