"""WISE: side-memory training, per-sample routing, shards and TIES merging, state, runner."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace
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
from sake.methods.stats import PreservationPools
from sake.methods.wise import (
    Router,
    SideMemory,
    WiseConfig,
    WiseEditor,
    activation_distance,
    early_stopped,
    last_pass_distance,
    reference_penalty,
    ties_merge,
)
from sake.models.desta import DestaLALM
from sake.runner import EditRunner, EvalSettings
from sake.utils.tensors import decode_tensor, encode_tensor

torch.set_num_threads(1)

ROLE = "llm.layer[0].mlp.down_proj"


def wise(**fields: object) -> WiseEditor:
    settings = {
        "variant": "project",
        "weight_decay": 0.0,
        "role": ROLE,
        "steps": 30,
        "norm_constraint": 0.5,
        "mask_ratio": 0.5,
        "alpha": 0.5,
        "beta": 3.0,
        "gamma": 2.0,
        "act_ratio": 0.88,
        **fields,
    }
    return WiseEditor(WiseConfig(name="wise", **settings))


def prepared(lalm: DestaLALM, release: SakeRelease, **fields: object) -> WiseEditor:
    editor = wise(**fields)
    editor.prepare(lalm, release.splits["train"])
    return editor


def no_hooks(lalm: DestaLALM) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in lalm.model.modules())


# --------------------------------------------------------------------------- routing


def test_router_sends_the_edit_to_the_side_memory_and_unrelated_input_to_the_original(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    editor = prepared(lalm, release)
    unrelated = case.locality_text[0]
    batch = lalm.prepare([case.reliability, unrelated])
    original = lalm.next_token_logits(batch)
    before = parameters(lalm)
    try:
        outcome = editor.apply(lalm, case)
        assert outcome.snapshot is None and outcome.steps >= 1
        edited = lalm.next_token_logits(batch)
        assert editor.state.router.last_routes.tolist() == [0, -1]
        assert torch.equal(edited[1], original[1])
        assert not torch.equal(edited[0], original[0])
        assert lalm.generate(lalm.prepare([case.reliability]), 3)[0].startswith(case.y_e)
    finally:
        editor.state.reset()
    assert_unchanged(lalm, before)
    assert no_hooks(lalm)
    assert torch.equal(lalm.next_token_logits(batch), original)


def test_routing_ignores_padding(lalm: DestaLALM, release: SakeRelease, case: EditCase) -> None:
    editor = prepared(lalm, release)
    try:
        editor.apply(lalm, case)
        alone = lalm.next_token_logits(lalm.prepare([case.reliability]))
        text = case.locality_text[0]
        longest = replace(text, question=" ".join([text.question] * 6))
        padded_batch = lalm.prepare([case.reliability, longest])
        assert int(padded_batch.attention_mask[0].sum()) < padded_batch.attention_mask.shape[1]
        padded = lalm.next_token_logits(padded_batch)
        assert editor.state.router.last_routes[0] == 0
        torch.testing.assert_close(padded[0], alone[0], rtol=1e-4, atol=1e-4)
    finally:
        editor.state.reset()


def test_training_respects_the_mask_and_the_norm_constraint(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    editor = prepared(lalm, release, norm_constraint=1e-3, lr=10.0)
    original = lalm.modules.resolve(ROLE).module.weight.detach().clone()
    try:
        editor.apply(lalm, case)
        memory = editor.state.active
        change = memory.weight - original
        assert float(change.abs().max()) <= 1e-3 + 1e-7
        assert float(change[~memory.mask].abs().max()) == 0
        assert float(change[memory.mask].abs().max()) > 0
        assert memory.edits == 1
        assert memory.min_distance == pytest.approx(editor.extras["distance/in_scope"])
    finally:
        editor.state.reset()


def test_activation_distance_averages_real_tokens_only() -> None:
    inputs = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]]])
    change = torch.eye(2)
    assert float(activation_distance(inputs, change, None)) == pytest.approx((1 + 2 + 162**0.5) / 3)
    real = torch.tensor([[False, True, True]])
    assert float(activation_distance(inputs, change, real)) == pytest.approx((2 + 162**0.5) / 2)


# --------------------------------------------------------------------------- memories


def test_ties_merge_trims_elects_signs_and_averages_agreeing_values() -> None:
    base = torch.zeros(3)
    first, second = torch.tensor([1.0, -2.0, 0.1]), torch.tensor([3.0, 1.0, -0.1])
    assert ties_merge(base, [first, second], density=1.0).tolist() == [2.0, -2.0, 0.0]
    # keeping the largest entry of each change leaves -2 and 3, which do not collide
    assert ties_merge(base, [first, second], density=0.3).tolist() == [3.0, -2.0, 0.0]
    moved = ties_merge(torch.ones(3), [first + 1, second + 1], density=1.0)
    assert moved.tolist() == [3.0, -1.0, 1.0]


def test_full_shards_are_closed(lalm: DestaLALM, release: SakeRelease) -> None:
    editor = prepared(lalm, release, shard_size=2)
    cases = release.sequences[1].cases[:3]
    try:
        for case in cases[:2]:
            editor.apply(lalm, case)
        assert editor.state.active is None and [m.edits for m in editor.state.shards] == [2]
        editor.apply(lalm, cases[2])
        assert [m.edits for m in editor.state.memories()] == [2, 1]
        first, second = editor.state.memories()
        assert not torch.equal(first.mask, second.mask)  # every shard writes its own subspace
        assert [edit.case_id for edit in editor.state.edits] == [c.case_id for c in cases]
    finally:
        editor.state.reset()
    assert no_hooks(lalm) and editor.state.memories() == []


def test_shards_are_merged_with_ties(lalm: DestaLALM, release: SakeRelease) -> None:
    editor = prepared(lalm, release, shard_size=1, merge="ties")
    try:
        thresholds = []
        for case in release.sequences[1].cases[:3]:
            editor.apply(lalm, case)
            thresholds.append(editor.extras["distance/in_scope"])
        assert editor.state.active is None and len(editor.state.shards) == 1
        merged = editor.state.shards[0]
        assert merged.edits == 3
        change = merged.weight - lalm.modules.resolve(ROLE).module.weight.detach()
        measured = [float(a.distance(change).mean()) for a in merged.edit_inputs]
        assert merged.min_distance == pytest.approx(min(measured))
        assert merged.min_distance != pytest.approx(min(thresholds))  # re-measured on the merge
    finally:
        editor.state.reset()


def test_sequential_edits_accumulate_and_keep_earlier_edits_routed(
    lalm: DestaLALM, release: SakeRelease
) -> None:
    editor = prepared(lalm, release)
    cases = release.sequences[1].cases[:3]
    try:
        for case in cases:
            editor.apply(lalm, case)
        assert editor.state.shards == [] and editor.state.active.edits == 3
        lalm.next_token_logits(lalm.prepare([case.reliability for case in cases]))
        assert editor.state.router.last_routes.tolist() == [0, 0, 0]
    finally:
        editor.state.reset()


def test_state_dict_is_json_and_restores_the_routing(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    editor = prepared(lalm, release)
    batch = lalm.prepare([case.reliability, case.locality_text[0]])
    try:
        editor.apply(lalm, case)
        edited = lalm.next_token_logits(batch)
        saved = json.loads(json.dumps(editor.state.state_dict()))
    finally:
        editor.state.reset()
    again = prepared(lalm, release)
    try:
        again.state.load_state_dict(saved)
        assert torch.equal(lalm.next_token_logits(batch), edited)
        assert [e.case_id for e in again.state.edits] == [case.case_id]
    finally:
        again.state.reset()


def test_tensors_survive_encoding_in_any_dtype() -> None:
    for tensor in (torch.randn(3, 4), torch.randn(2, 5).bfloat16(), torch.rand(4, 4) < 0.5):
        decoded = decode_tensor(json.loads(json.dumps(encode_tensor(tensor))))
        assert decoded.dtype == tensor.dtype and torch.equal(decoded, tensor)


def test_configuration_errors_name_the_problem(lalm: DestaLALM, release: SakeRelease) -> None:
    with pytest.raises(TypeError, match="linear projection"):
        wise(role="llm.layer[0].mlp").prepare(lalm, release.splits["train"])
    with pytest.raises(ValueError, match="unknown merge"):
        wise(merge="average")
    with pytest.raises(RuntimeError, match="prepare"):
        wise().apply(lalm, release.splits["test"][0])


# --------------------------------------------------------------------------- runner


def test_single_and_sequential_editing_through_the_runner(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    before = parameters(lalm)
    editor = prepared(lalm, release, steps=10)
    assert isinstance(editor, Editor) and not editor.touches_audio_path
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
            assert len(records) == 6
        assert_unchanged(lalm, before)
        assert no_hooks(lalm) and editor.state.memories() == []


def test_config_is_exactly_the_dataclass(compose_cfg) -> None:
    cfg = compose_cfg("edit", ["method=wise"])
    editor = build_editor(cfg.method)
    assert isinstance(editor, WiseEditor) and editor.name == "wise"
    declared = {key for key in cfg.method if key not in NOT_EDITOR_SETTINGS}
    assert declared == {field.name for field in fields(WiseConfig)}


# --------------------------------------------------------------------------- reference variant

WISE_REFERENCE = json.loads(
    (Path(__file__).parent / "data" / "wise_reference.json").read_text(encoding="utf-8")
)


def _tensor(values: list[float], shape: list[int]) -> torch.Tensor:
    return torch.tensor(values).reshape(shape)


def _reference_router(memory: SideMemory) -> Router:
    layer = torch.nn.Linear(4, 6, bias=False)
    layer.weight.data = _tensor(WISE_REFERENCE["original"], [6, 4])
    return Router(layer, torch.nn.Identity(), lambda: [memory], WISE_REFERENCE["act_ratio"])


def test_reference_threshold_is_measured_on_the_last_pass_without_its_last_row() -> None:
    fixture = WISE_REFERENCE
    original = _tensor(fixture["original"], [6, 4])
    side = _tensor(fixture["side"], [6, 4])
    batch = _tensor(fixture["threshold_batch"], fixture["threshold_batch_shape"])
    assert last_pass_distance(batch, side, original) == pytest.approx(fixture["min_distance"], 1e-4)
    assert math.isnan(last_pass_distance(batch[:1], side, original))


@pytest.mark.parametrize("name", sorted(WISE_REFERENCE["routes"]))
def test_reference_routing_matches_the_reference_code(name: str) -> None:
    """Short prompts by their mean token distance, longer than 100 tokens by the largest, and a
    generated token by its own: the side memory answers from the threshold on."""
    fixture = WISE_REFERENCE
    side = _tensor(fixture["side"], [6, 4])
    memory = SideMemory(
        side, torch.ones(6, 4, dtype=torch.bool), min_distance=fixture["min_distance"]
    )
    router = _reference_router(memory)
    route = fixture["routes"][name]
    inputs = _tensor(route["input"], route["shape"])
    distance = router.distance(inputs, side, router.projection.weight.detach(), None)
    assert float(distance) == pytest.approx(route["distance"], rel=1e-4, abs=1e-5)
    assert router.choose(inputs, [memory]).tolist() == [0 if route["side"] else -1]


def test_reference_penalty_and_stop_rule_match_the_reference_code() -> None:
    fixture = WISE_REFERENCE
    config = WiseConfig(
        name="wise", alpha=fixture["alpha"], beta=fixture["beta"], gamma=fixture["gamma"]
    )
    penalty = fixture["penalty"]
    value = reference_penalty(
        torch.tensor(penalty["edit"]).mean(),
        [torch.tensor(penalty["text"]).mean(), torch.tensor(penalty["audio"]).mean()],
        config,
    )
    assert float(value) == pytest.approx(penalty["value"], 1e-5)
    previous, latest, decisions = 0.0, math.inf, []
    for loss in fixture["stop"]["losses"]:
        decisions.append(early_stopped(previous, latest, config))
        previous, latest = latest, loss
    assert decisions == fixture["stop"]["stop_before_step"]


def test_reference_variant_edits_and_routes_every_generated_token(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    editor = prepared(lalm, release, variant="reference", weight_decay=1e-5, lr=1.0)
    before = parameters(lalm)
    try:
        outcome = editor.apply(lalm, case)
        memory = editor.state.active
        assert outcome.steps >= 1 and math.isfinite(memory.min_distance)
        assert editor.extras["routing/threshold"] == pytest.approx(memory.min_distance * 0.88)
        routes = []
        router = editor.state.router
        handle = router.projection.register_forward_hook(
            lambda module, args, output: routes.append(router.last_routes.tolist())
        )
        try:
            lalm.generate(lalm.prepare([case.reliability]), 3)
        finally:
            handle.remove()
        assert len(routes) >= 2  # the prompt, then each generated token decides again
    finally:
        editor.state.reset()
    assert_unchanged(lalm, before)
    assert no_hooks(lalm)


def test_preservation_prompts_leave_out_the_edited_attribute(
    release: SakeRelease, case: EditCase
) -> None:
    pools = PreservationPools.of(release.splits["train"])
    text, audio = pools.text, pools.audio
    assert text and all(probe.audio_path is None for probe in text)
    assert case.attribute in audio
    chosen_text, chosen_audio = pools.draw(case, 3, 50, seed=0)
    own = set(map(id, audio[case.attribute]))
    assert len(chosen_text) == min(3, len(text))
    assert chosen_audio and not own & set(map(id, chosen_audio))
