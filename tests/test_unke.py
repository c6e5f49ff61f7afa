"""UnKE and the hooks it stands on: recorded layer calls, replay, question tokens, output shifts."""

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
from sake.methods.base import NOT_EDITOR_SETTINGS, Editor, build_editor
from sake.methods.hooks import (
    ModuleRecorder,
    ShiftSettings,
    edit_token_offset,
    fit_output_shift,
    question_offsets,
    run_recording,
    shifted_output,
)
from sake.methods.unke import UnkeConfig, UnkeEditor, adamw_groups, layer_inputs, plain_mse
from sake.models.desta import DestaLALM
from sake.runner import EditRunner, EvalSettings

torch.set_num_threads(1)

LAYER = "llm.layer[0]"


def unke(**fields: object) -> UnkeEditor:
    settings = {"role": LAYER, "delta_steps": 5, "layer_steps": 20, "layer_lr": 1e-2, **fields}
    return UnkeEditor(UnkeConfig(name="unke", **settings))


# --------------------------------------------------------------------------- hooks


def test_replaying_a_recorded_call_reproduces_the_layer_exactly(
    lalm: DestaLALM, case: EditCase
) -> None:
    layer = lalm.modules.resolve("llm.layer[1]").module
    batch = lalm.prepare([case.reliability, case.locality_text[0], case.locality_audio[1]])
    recorder = ModuleRecorder(layer)
    run_recording(lambda: lalm.next_token_logits(batch), recorder)
    call = recorder.last
    assert {"attention_mask", "position_embeddings"} <= call.kwargs.keys()
    with torch.no_grad():
        assert torch.equal(call.replay(layer), call.output)


def test_a_stopping_recorder_ends_the_forward_after_its_module(
    lalm: DestaLALM, case: EditCase
) -> None:
    first, last = (lalm.modules.resolve(f"llm.layer[{i}]").module for i in (0, 1))
    stopping, after = ModuleRecorder(first, stop=True), ModuleRecorder(last)
    run_recording(lambda: lalm.next_token_logits(lalm.prepare([case.reliability])), stopping, after)
    assert len(stopping.calls) == 1 and after.calls == []
    assert not first._forward_hooks and not first._forward_pre_hooks


def test_question_offsets_point_at_the_questions_last_token(
    lalm: DestaLALM, case: EditCase
) -> None:
    probes = [case.reliability, case.locality_text[0]]
    batch = lalm.prepare(probes)
    offsets = question_offsets(lalm, batch, [p.question for p in probes])
    for row, (probe, offset) in enumerate(zip(probes, offsets, strict=True)):
        token = lalm.tokenizer.decode(batch.input_ids[row, -(1 + offset)])
        assert token.strip() and probe.question.strip().endswith(token.strip())
        rest = lalm.tokenizer.decode(batch.input_ids[row, len(batch.input_ids[row]) - offset :])
        assert probe.question.strip()[-len(token.strip()) :] not in rest.split("assistant")[0]


def test_edits_are_written_at_the_question_stem_or_the_prompt_end(
    lalm: DestaLALM, case: EditCase
) -> None:
    batch = lalm.prepare([case.reliability])
    offset = edit_token_offset(lalm, batch, case.reliability, "question")
    stem = case.reliability.question.split("\n\nOptions:")[0]
    assert lalm.tokenizer.decode(batch.input_ids[0, -(1 + offset)]).strip() == stem[-1]
    assert offset > question_offsets(lalm, batch, [case.reliability.question])[0]
    assert edit_token_offset(lalm, batch, case.reliability, "prompt_end") == 0
    with pytest.raises(ValueError, match="prompt_end"):
        edit_token_offset(lalm, batch, case.reliability, "subject")
    with pytest.raises(ValueError, match="token must be one of"):
        UnkeConfig(name="unke", token="last")


def test_shifted_output_changes_only_the_chosen_position(lalm: DestaLALM, case: EditCase) -> None:
    layer = lalm.modules.resolve(LAYER).module
    batch = lalm.prepare([case.reliability])
    plain, shifted = (
        ModuleRecorder(layer),
        ModuleRecorder(lalm.modules.resolve("llm.layer[1]").module),
    )
    run_recording(lambda: lalm.next_token_logits(batch), plain)
    with shifted_output(layer, torch.ones(48), index=-3) as originals:
        run_recording(lambda: lalm.next_token_logits(batch), shifted)
    assert torch.equal(originals[0], plain.last.output[:, -3])
    moved = (shifted.last.hidden_states - plain.last.output).abs().amax(dim=-1)[0]
    assert torch.allclose(moved[-3], torch.tensor(1.0)) and float(moved[:-3].abs().max()) == 0


def test_output_shift_lowers_the_target_loss_within_its_norm_bound(
    lalm: DestaLALM, case: EditCase
) -> None:
    batch = lalm.prepare([case.reliability])
    layer = lalm.modules.resolve(LAYER).module
    with torch.no_grad():
        start = float(lalm.target_nll(batch, [case.y_e]))
    settings = ShiftSettings(steps=10, lr=0.5, clamp=0.5, weight_decay=0.0, stop_loss=0.0)
    shift = fit_output_shift(lalm, batch, case.y_e, layer, 0, settings)
    assert shift.steps == 10 and shift.nll < start
    assert float(shift.shift.norm()) <= 0.5 * float(shift.original.norm()) + 1e-4
    assert all(p.grad is None for p in lalm.model.parameters())


# --------------------------------------------------------------------------- UnKE


def preservation_drift(lalm: DestaLALM, case: EditCase, editor: UnkeEditor) -> float:
    """Relative change of the layer's outputs on the edit's preservation prompts, averaged over
    the text and the audio batch (the project's preservation term)."""
    layer = lalm.modules.resolve(LAYER).module
    text, audio = editor._preservation(case)
    assert text and audio and all(p.audio_path is None for p in text)
    batches = [lalm.prepare(probes) for probes in (text, audio)]
    before = [layer_inputs(lalm, batch, layer) for batch in batches]
    outcome = editor.apply(lalm, case)
    after = [layer_inputs(lalm, batch, layer) for batch in batches]
    outcome.snapshot.restore()
    changes = [
        (a.output - b.output)[b.real].pow(2).mean() / b.output[b.real].pow(2).mean()
        for a, b in zip(after, before, strict=True)
    ]
    return float(sum(changes) / len(changes))


def test_stage_two_keeps_preservation_outputs(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    kept = unke(preservation_weight=100.0, layer_lr=3e-3, layer_loss="project")
    free = unke(preservation_weight=0.0, layer_lr=3e-3, layer_loss="project")
    for editor in (kept, free):
        editor.prepare(lalm, release.splits["train"])
    kept_drift = preservation_drift(lalm, case, kept)
    free_drift = preservation_drift(lalm, case, free)
    assert kept_drift < 1e-2  # relative mean squared change of the outputs
    assert kept_drift < free_drift / 10
    assert kept.extras["regularizer/mean"] == pytest.approx(kept_drift, rel=1e-3)


def test_edit_trains_only_the_layer_and_restores_bit_exactly(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    editor = unke()
    assert isinstance(editor, Editor) and not editor.touches_audio_path
    editor.prepare(lalm, release.splits["train"])
    before = parameters(lalm)
    flags = {name: p.requires_grad for name, p in lalm.model.named_parameters()}
    outcome = editor.apply(lalm, case)
    layer_names = set(lalm.modules.parameters(LAYER))
    assert set(outcome.snapshot.names) == layer_names
    assert outcome.snapshot.changed() and set(outcome.snapshot.changed()) <= layer_names
    assert outcome.steps == editor.config.delta_steps + editor.config.layer_steps
    assert {"shift/nll", "stage2/edit_loss", "regularizer/mean"} <= editor.extras.keys()
    outcome.snapshot.restore()
    assert_unchanged(lalm, before)
    assert {name: p.requires_grad for name, p in lalm.model.named_parameters()} == flags


def test_preservation_needs_a_training_split(lalm: DestaLALM) -> None:
    with pytest.raises(ValueError, match="train split"):
        unke().prepare(lalm, [])
    unke(text_preservation=0, audio_preservation=0).prepare(lalm, [])


@pytest.mark.parametrize("role", ["connector", "audio_encoder"])
def test_roles_in_the_audio_path_are_refused(lalm: DestaLALM, role: str) -> None:
    with pytest.raises(ValueError, match="audio path"):
        unke(role=role, text_preservation=0, audio_preservation=0).prepare(lalm, [])


def test_single_and_sequential_editing_through_the_runner(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    before = parameters(lalm)
    editor = unke()
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
            assert len(records) == 1
        else:
            sequence = EditSequence(index=7, cases=release.sequences[1].cases[:3])
            records = runner.run_sequential([sequence])
            assert len(records) == 6 and max(r["gap"] for r in records) == 2
        assert_unchanged(lalm, before)


def test_config_is_exactly_the_dataclass(compose_cfg) -> None:
    cfg = compose_cfg("edit", ["method=unke"])
    editor = build_editor(cfg.method)
    assert isinstance(editor, UnkeEditor) and editor.name == "unke"
    declared = {key for key in cfg.method if key not in NOT_EDITOR_SETTINGS}
    assert declared == {field.name for field in fields(UnkeConfig)}


def test_reference_layer_loss_is_a_plain_mean_squared_error(
    lalm: DestaLALM, case: EditCase
) -> None:
    layer = lalm.modules.resolve(LAYER).module
    recorded = layer_inputs(lalm, lalm.prepare([case.reliability, case.locality_text[0]]), layer)
    with torch.no_grad():
        assert float(plain_mse(layer, recorded)) == 0.0
        wanted = recorded.output.clone()
        wanted[0, -1] += 2.0
        expected = 4.0 * wanted.shape[-1] / wanted.numel()
        assert float(plain_mse(layer, recorded, wanted)) == pytest.approx(expected, rel=1e-4)


def test_norm_weights_get_no_weight_decay(lalm: DestaLALM) -> None:
    parameters = lalm.modules.parameters(LAYER)
    decayed, undecayed = adamw_groups(parameters, 0.01)
    assert decayed["weight_decay"] == 0.01 and undecayed["weight_decay"] == 0.0
    names = {id(p): n for n, p in parameters.items()}
    assert all("norm" in names[id(p)] for p in undecayed["params"]) and undecayed["params"]
    assert len(decayed["params"]) + len(undecayed["params"]) == len(parameters)


def test_reference_stage_one_takes_all_its_updates(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    editor = unke(delta_steps=24, layer_steps=2, text_preservation=2, audio_preservation=1)
    editor.prepare(lalm, release.splits["train"])
    outcome = editor.apply(lalm, case)
    try:
        assert outcome.steps == 24 + 2  # no early stop in stage 1 (delta_stop_loss 0)
        assert editor.extras["regularizer/mean"] >= 0
    finally:
        outcome.snapshot.restore()
