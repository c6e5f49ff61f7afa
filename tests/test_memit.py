"""MEMIT: the closed-form update, its preservation statistics and their cache, runner edits."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch

from lalm_fixtures import assert_unchanged, parameters
from sake.data.readers import SakeRelease
from sake.data.schema import EditCase
from sake.data.schema import Sequence as EditSequence
from sake.evaluation.pre_edit import PreEditCache
from sake.evaluation.records import RECORDS_FILE, RecordWriter
from sake.methods.base import NOT_EDITOR_SETTINGS, Editor, EditOutcome, build_editor
from sake.methods.memit import MemitConfig, MemitEditor, memit_update, regularizer_norm
from sake.methods.stats import SecondMomentCache, preservation_probes
from sake.models.desta import DestaLALM
from sake.runner import EditRunner, EvalSettings

torch.set_num_threads(1)


def memit(stats_dir: Path | None = None, lam: float = 1.0, **fields: object) -> MemitEditor:
    settings = {"layers": (0,), "lam": lam, "v_steps": 5, "stats_dir": stats_dir, **fields}
    return MemitEditor(MemitConfig(name="memit", **settings))


# --------------------------------------------------------------------------- closed form


def toy_problem(seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(6, 3, generator=generator)
    residuals = torch.randn(4, 3, generator=generator)
    preserved = torch.randn(6, 50, generator=generator)
    return keys, residuals, preserved, preserved @ preserved.T / preserved.shape[1]


def test_update_equals_a_direct_least_squares_solve() -> None:
    keys, residuals, preserved, moment = toy_problem()
    lam = 0.7
    # min |delta K - R|^2 + lam * mean_j |delta p_j|^2, as one stacked least-squares problem
    design = torch.cat([keys, (lam / preserved.shape[1]) ** 0.5 * preserved], dim=1)
    wanted = torch.cat([residuals, torch.zeros(4, preserved.shape[1])], dim=1)
    direct = torch.linalg.lstsq(design.T.double(), wanted.T.double()).solution.T
    torch.testing.assert_close(
        memit_update(keys, residuals, moment, lam).double(), direct, rtol=1e-4, atol=1e-5
    )


def test_update_vanishes_as_lambda_grows_and_solves_the_edit_without_it() -> None:
    keys, residuals, _, moment = toy_problem(1)
    norms = [float(memit_update(keys, residuals, moment, lam).norm()) for lam in (1, 1e3, 1e6)]
    assert norms[0] > norms[1] > norms[2]
    assert float(memit_update(keys, residuals, moment, 1e12).norm()) < 1e-9
    exact = memit_update(keys, residuals, moment, 1e-9)
    torch.testing.assert_close(exact @ keys, residuals, rtol=1e-3, atol=1e-3)


def test_regularizer_is_the_rms_change_on_preserved_keys() -> None:
    keys, residuals, preserved, moment = toy_problem(2)
    delta = memit_update(keys, residuals, moment, 2.0)
    rms = (delta @ preserved).norm(dim=0).pow(2).mean().sqrt()
    assert regularizer_norm(delta, moment) == pytest.approx(float(rms), rel=1e-4)


# --------------------------------------------------------------------------- statistics


def test_statistics_are_cached_per_fingerprint_layer_and_corpus(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    train = release.splits["train"]
    fingerprint = lalm.fingerprint()
    first = memit(tmp_path, layers=(0, 1))
    first.prepare(lalm, train)
    stored = sorted(tmp_path.rglob("*.pt"))
    assert len(stored) == 2 and stored[0].parent.name == fingerprint
    moment = first.moments["llm.layer[0].mlp.down_proj"]
    assert moment.matrix.shape == (96, 96) and moment.count > 0
    torch.testing.assert_close(moment.matrix, moment.matrix.T)
    assert float(torch.linalg.eigvalsh(moment.matrix.double()).min()) > -1e-6

    cache = SecondMomentCache(tmp_path)
    corpus = preservation_probes(train)
    again = cache.get(lalm, fingerprint, ["llm.layer[0].mlp.down_proj"], corpus, 8)
    assert cache.loaded == 1 and cache.computed == 0
    assert torch.equal(again["llm.layer[0].mlp.down_proj"].matrix, moment.matrix)
    fewer = cache.get(lalm, fingerprint, ["llm.layer[0].mlp.down_proj"], corpus[:3], 8)
    assert cache.computed == 1 and len(list(tmp_path.rglob("*.pt"))) == 3
    assert not torch.equal(fewer["llm.layer[0].mlp.down_proj"].matrix, moment.matrix)


def test_statistics_count_real_tokens_only(lalm: DestaLALM, release: SakeRelease) -> None:
    corpus = preservation_probes(release.splits["train"])
    cache = SecondMomentCache(None)
    role = "llm.layer[0].mlp.down_proj"
    together = cache.get(lalm, "fp", [role], corpus, batch_size=len(corpus))[role]
    one_by_one = cache.get(lalm, "fp", [role], corpus, batch_size=1)[role]
    tokens = sum(int(lalm.prepare([p]).attention_mask.sum()) for p in corpus)
    assert together.count == one_by_one.count == tokens
    torch.testing.assert_close(together.matrix, one_by_one.matrix, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- editing


def edited_once(
    editor: Editor, lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> tuple[EditOutcome, dict[str, torch.Tensor]]:
    """Prepare and apply a layer-0 edit; check it changed that projection only and lowered
    the target's loss. The outcome and the parameters from before."""
    assert isinstance(editor, Editor) and not editor.touches_audio_path
    editor.prepare(lalm, release.splits["train"])
    before = parameters(lalm)
    batch = lalm.prepare([case.reliability])
    with torch.no_grad():
        start = float(lalm.target_nll(batch, [case.y_e]).mean())
    outcome = editor.apply(lalm, case)
    assert outcome.snapshot is not None
    assert outcome.snapshot.changed() == ("llm_model.model.layers.0.mlp.down_proj.weight",)
    assert outcome.final_loss is not None and outcome.final_loss < start
    return outcome, before


def test_edit_lowers_the_target_loss_and_restores_bit_exactly(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    editor = memit(layers=(0,), lam=1e-2, v_steps=10)
    outcome, before = edited_once(editor, lalm, release, case)
    assert set(editor.extras) >= {"regularizer/layer0", "regularizer/mean"}
    assert editor.extras["regularizer/mean"] == editor.extras["regularizer/layer0"] > 0
    outcome.snapshot.restore()
    assert_unchanged(lalm, before)


def test_stronger_lambda_pays_a_smaller_regularizer(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    paid = []
    for lam in (1e-2, 1e2):
        editor = memit(lam=lam)
        editor.prepare(lalm, release.splits["train"])
        outcome = editor.apply(lalm, case)
        outcome.snapshot.restore()
        paid.append(editor.extras["regularizer/mean"])
    assert paid[0] > paid[1] > 0


def test_edit_names_layers_from_the_end_and_checks_the_module(
    lalm: DestaLALM, release: SakeRelease
) -> None:
    assert memit(layers=(-1, 0)).roles(lalm) == [
        "llm.layer[0].mlp.down_proj",
        "llm.layer[1].mlp.down_proj",
    ]
    with pytest.raises(TypeError, match="linear projection"):
        memit(module="mlp").prepare(lalm, release.splits["train"])
    with pytest.raises(ValueError, match="train split"):
        memit().prepare(lalm, [])


def run_protocols(editor: Editor, lalm: DestaLALM, release: SakeRelease, tmp_path: Path) -> None:
    """One single edit and a three-edit sequence through the runner; the model comes back."""
    before = parameters(lalm)
    editor.prepare(lalm, release.splits["train"])
    for protocol in ("single", "sequential"):
        runner = EditRunner(
            lalm,
            editor,
            settings=EvalSettings(protocol, max_new_tokens=3),
            pre_edit=PreEditCache(None, "fingerprint", 3),
            writer=RecordWriter(tmp_path / protocol / RECORDS_FILE),
            model_name="tiny",
            audio_root=release.audio_root,
        )
        if protocol == "single":
            records = runner.run_single(release.splits["test"][:1])
            assert len(records) == 1 and records[0]["edit"]["steps"] >= 1
        else:
            sequence = EditSequence(index=7, cases=release.sequences[1].cases[:3])
            records = runner.run_sequential([sequence])
            assert {(r["step"], r["edit_index"]) for r in records} == {
                (i, j) for i in range(3) for j in range(i + 1)
            }
        assert_unchanged(lalm, before)
        assert editor.state.edits == []


def test_single_and_sequential_editing_through_the_runner(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    run_protocols(memit(layers=(0,)), lalm, release, tmp_path)


def test_config_is_exactly_the_dataclass(compose_cfg) -> None:
    cfg = compose_cfg("edit", ["method=memit"])
    editor = build_editor(cfg.method)
    assert isinstance(editor, MemitEditor) and editor.name == "memit"
    declared = {key for key in cfg.method if key not in NOT_EDITOR_SETTINGS}
    assert declared == {field.name for field in fields(MemitConfig)}
