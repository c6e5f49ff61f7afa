"""Editors: FT (LLM), FT (Audio), I-IKE, IE-IKE; snapshots, state, configs."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from torch import nn

from lalm_fixtures import (
    STAND_IN_PROMPTS,
    edit_release,
    make_lalm,
    make_tokenizer,
    write_stand_in_prompts,
)
from sake.data.readers import SakeRelease
from sake.data.schema import EditCase
from sake.methods.alphaedit import AlphaEditConfig, AlphaEditEditor
from sake.methods.base import (
    NOT_EDITOR_SETTINGS,
    AppliedEdit,
    Editor,
    EditorState,
    MasterWeights,
    WeightSnapshot,
    build_editor,
)
from sake.methods.ft import FineTuneConfig, FineTuneEditor
from sake.methods.grace import GraceConfig, GraceEditor
from sake.methods.ike import (
    DemonstrationConfig,
    DemonstrationEditor,
    EditStatement,
    InContextState,
    InstructionConfig,
    InstructionEditor,
)
from sake.models.desta import DestaLALM

torch.set_num_threads(1)

METHOD_CONFIGS = {
    "ft_llm": (FineTuneEditor, FineTuneConfig),
    "ft_audio": (FineTuneEditor, FineTuneConfig),
    "i_ike": (InstructionEditor, InstructionConfig),
    "ie_ike": (DemonstrationEditor, DemonstrationConfig),
    "alphaedit": (AlphaEditEditor, AlphaEditConfig),
    "grace": (GraceEditor, GraceConfig),
}

SHARED_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "sake" / "reference_prompts.json"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> SakeRelease:
    return edit_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def lalm(release: SakeRelease) -> DestaLALM:
    return make_lalm(make_tokenizer(release))


@pytest.fixture
def case(release: SakeRelease) -> EditCase:
    return release.splits["test"][0]


def all_parameters(lalm: DestaLALM) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in lalm.model.named_parameters()}


def assert_bit_identical(lalm: DestaLALM, before: dict[str, torch.Tensor]) -> None:
    after = dict(lalm.model.named_parameters())
    assert after.keys() == before.keys()
    differing = [name for name in before if not torch.equal(after[name], before[name])]
    assert differing == []


def ft(role: str, lr: float = 1e-2, max_steps: int = 5) -> FineTuneEditor:
    return FineTuneEditor(FineTuneConfig(name="ft", role=role, lr=lr, max_steps=max_steps))


# --------------------------------------------------------------------------- FT


@pytest.mark.parametrize("role", ["llm.layer[-1].mlp", "connector"])
def test_ft_edit_then_restore_is_bit_exact(lalm: DestaLALM, case: EditCase, role: str) -> None:
    before = all_parameters(lalm)
    role_names = set(lalm.modules.parameters(role))
    outcome = ft(role).apply(lalm, case)
    assert outcome.steps == 5 and outcome.final_loss is not None
    changed = outcome.snapshot.changed()
    assert changed and set(changed) <= role_names
    assert set(outcome.snapshot.names) == role_names
    outcome.snapshot.restore()
    assert_bit_identical(lalm, before)
    assert all(p.grad is None for p in lalm.model.parameters())
    assert outcome.snapshot.changed() == ()


def test_ft_lowers_the_target_loss_and_stops_below_the_threshold(
    lalm: DestaLALM, case: EditCase
) -> None:
    batch = lalm.prepare([case.reliability])
    answer = [case.reliability.answer]
    start = float(lalm.target_nll(batch, answer, include_end=True).detach())
    stop = start - 0.3  # a random model's small lm_head bounds how low the loss can go
    config = FineTuneConfig(name="ft", role="llm.layer[-1].mlp", lr=5e-2, stop_loss=stop)
    editor = FineTuneEditor(config)
    outcome = editor.apply(lalm, case)
    try:
        after = float(lalm.target_nll(batch, answer, include_end=True).detach())
        assert outcome.final_loss == pytest.approx(after, rel=1e-5)
        assert after < stop and 1 <= outcome.steps < config.max_steps
        assert [edit.case_id for edit in editor.state.edits] == [case.case_id]
    finally:
        outcome.snapshot.restore()


@pytest.mark.parametrize("supervise_end", [True, False])
def test_ft_supervises_the_answer_and_by_default_its_end_token(
    lalm: DestaLALM, case: EditCase, monkeypatch: pytest.MonkeyPatch, supervise_end: bool
) -> None:
    """The reference's FT target is the answer followed by the end token (LALM_edit_dataset.py:
    `answer + eos_token`); every one of those positions, and no other, carries the loss."""
    seen: list[bool] = []
    original = type(lalm).target_nll

    def recording(self, batch, targets, *, include_end=False):
        seen.append(include_end)
        return original(self, batch, targets, include_end=include_end)

    monkeypatch.setattr(type(lalm), "target_nll", recording)
    config = FineTuneConfig("ft", "connector", lr=1e-2, max_steps=1, supervise_end=supervise_end)
    FineTuneEditor(config).apply(lalm, case).snapshot.restore()
    assert seen and set(seen) == {supervise_end}
    batch = lalm.prepare([case.reliability])
    answer = lalm.target_token_ids(batch, [case.reliability.answer])[0]
    with_end = lalm.target_token_ids(batch, [case.reliability.answer], include_end=True)[0]
    assert with_end[:-1] == answer and len(with_end) == len(answer) + 1
    assert lalm.tokenizer.decode(with_end[-1:]) == lalm.tokenizer.decode(lalm._stop_token_ids()[:1])


@pytest.mark.parametrize(("master_weights", "fp32_copies"), [("none", False), ("fp32", True)])
def test_ft_runs_adam_on_the_weights_themselves_unless_asked_for_fp32_copies(
    lalm: DestaLALM,
    case: EditCase,
    monkeypatch: pytest.MonkeyPatch,
    master_weights: str,
    fp32_copies: bool,
) -> None:
    """On bf16 weights (Qwen2-Audio and AF3 as the reference loads them) the reference's Adam
    updates the bf16 parameters; `master_weights=fp32` hands it fp32 copies instead."""
    optimised: list[torch.Tensor] = []

    class Recorded(Exception):
        pass

    def recording(params, **options):
        optimised.extend(params)
        raise Recorded  # the optimiser is all this test looks at

    monkeypatch.setattr(torch.optim, "Adam", recording)
    role = "llm.layer[-1].mlp"
    parameters = lalm.modules.parameters(role)
    original = {name: p.data for name, p in parameters.items()}
    with torch.no_grad():
        for parameter in parameters.values():
            parameter.data = parameter.data.to(torch.bfloat16)
    try:
        config = FineTuneConfig("ft", role, lr=1e-2, max_steps=1, master_weights=master_weights)
        with pytest.raises(Recorded):
            FineTuneEditor(config).apply(lalm, case)
        by_identity = {id(p) for p in parameters.values()}
        assert optimised and all((id(t) not in by_identity) is fp32_copies for t in optimised)
        assert {t.dtype for t in optimised} == {torch.float32 if fp32_copies else torch.bfloat16}
    finally:
        for name, parameter in parameters.items():
            parameter.data = original[name]


def test_ft_keeps_the_requires_grad_flags(lalm: DestaLALM, case: EditCase) -> None:
    flags = {name: p.requires_grad for name, p in lalm.model.named_parameters()}
    outcome = ft("connector", max_steps=1).apply(lalm, case)
    outcome.snapshot.restore()
    assert {name: p.requires_grad for name, p in lalm.model.named_parameters()} == flags


def test_ft_audio_cannot_change_text_only_outputs(lalm: DestaLALM, case: EditCase) -> None:
    text_probe = case.locality_text[0]
    audio_probe = case.locality_audio[0]
    batch = lalm.prepare([text_probe, audio_probe])
    before = lalm.next_token_logits(batch)
    outcome = ft("connector", lr=5e-2).apply(lalm, case)
    try:
        after = lalm.next_token_logits(batch)
        assert torch.equal(after[0], before[0])
        assert not torch.equal(after[1], before[1])
    finally:
        outcome.snapshot.restore()


def test_ft_restores_the_weights_when_an_edit_fails(
    lalm: DestaLALM, case: EditCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = all_parameters(lalm)
    calls = {"n": 0}
    original = lalm.target_nll

    def failing(batch, targets, **options):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory")
        return original(batch, targets, **options)

    monkeypatch.setattr(lalm, "target_nll", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        ft("llm.layer[-1].mlp").apply(lalm, case)
    assert_bit_identical(lalm, before)


def test_only_ft_audio_touches_the_audio_path() -> None:
    assert ft("connector").touches_audio_path
    assert ft("audio_encoder").touches_audio_path
    assert not ft("llm.layer[-1].mlp").touches_audio_path
    assert not InstructionEditor(InstructionConfig("i_ike", prompt="project")).touches_audio_path


def test_ft_rejects_a_role_the_model_lacks(lalm: DestaLALM) -> None:
    with pytest.raises(KeyError, match="known roles"):
        ft("projector").prepare(lalm, [])
    with pytest.raises(ValueError, match="lr must be positive"):
        FineTuneConfig(name="ft", role="connector", lr=0.0)


def test_snapshot_merge_keeps_the_earliest_values(lalm: DestaLALM) -> None:
    before = all_parameters(lalm)
    mlp = lalm.modules.parameters("llm.layer[-1].mlp")
    first = WeightSnapshot.take(mlp)
    with torch.no_grad():
        for parameter in mlp.values():
            parameter.add_(1.0)
    connector = lalm.modules.parameters("connector")
    later = WeightSnapshot.take({**mlp, **connector})
    with torch.no_grad():
        for parameter in [*mlp.values(), *connector.values()]:
            parameter.mul_(2.0)
    merged = first.merged_with(later)
    assert set(merged.names) == set(mlp) | set(connector)
    merged.restore()
    assert_bit_identical(lalm, before)


# --------------------------------------------------------------------------- IKE


def test_ike_methods_change_no_parameter(
    lalm: DestaLALM, release: SakeRelease, case: EditCase
) -> None:
    before = all_parameters(lalm)
    for editor in (
        InstructionEditor(InstructionConfig("i_ike", prompt="project")),
        DemonstrationEditor(DemonstrationConfig("ie_ike", prompt="project")),
    ):
        editor.prepare(lalm, release.splits["train"])
        outcome = editor.apply(lalm, case)
        assert outcome.snapshot is None and outcome.steps == 0
        lalm.generate(_contextual_batch(lalm, editor, case), max_new_tokens=2)
    assert_bit_identical(lalm, before)


def _contextual_batch(lalm: DestaLALM, editor: Editor, case: EditCase):
    context = editor.context()
    return lalm.prepare([case.reliability], system=context.system, history=context.history)


def test_i_ike_prompt_maps_each_edit_and_accumulates(release: SakeRelease) -> None:
    editor = InstructionEditor(InstructionConfig("i_ike", prompt="project"))
    assert editor.context().system is None
    first, second = release.splits["test"][0], release.splits["test"][2]
    editor.apply(None, first)
    assert f"{first.y_o} -> {first.y_e}" in editor.context().system
    editor.apply(None, second)
    system = editor.context().system
    assert f"{first.y_o} -> {first.y_e}" in system and f"{second.y_o} -> {second.y_e}" in system
    assert "only" in system and editor.context().history == ()
    editor.state.reset()
    assert editor.context().system is None


def test_ie_ike_demonstrates_the_same_pair_with_audio_turns(
    lalm: DestaLALM, release: SakeRelease
) -> None:
    editor = DemonstrationEditor(DemonstrationConfig("ie_ike", prompt="project"))
    editor.prepare(lalm, release.splits["train"])
    test_case = _case_with_pair(release, "Animal", "dog", "cat")
    retrieved = editor.retrieve(test_case)
    assert (retrieved.y_o, retrieved.y_e) == ("dog", "cat")
    editor.apply(lalm, test_case)
    history = editor.context().history
    users, answers = history[0::2], history[1::2]
    assert [t.role for t in users] == ["user"] * 9 and [t.role for t in answers] == [
        "assistant"
    ] * 9
    assert [t.text for t in answers[:4]] == ["cat"] * 4
    assert all(len(turn.audio) == 1 for turn in users[:8]) and users[8].audio == ()
    assert users[-1].text == retrieved.locality_text[0].question
    gender = DemonstrationEditor(DemonstrationConfig("ie_ike", prompt="project"))
    gender.prepare(lalm, release.splits["train"])
    gender.apply(lalm, _case_with_pair(release, "Gender", "male", "female"))
    assert len(gender.context().history) == 2 * (1 + 3 + 3 + 1)


def _case_with_pair(release: SakeRelease, attribute: str, y_o: str, y_e: str) -> EditCase:
    template = next(c for c in release.all_cases() if c.attribute == attribute)
    return replace(template, case_id=f"probe/{y_o}-{y_e}", y_o=y_o, y_e=y_e)


def test_ie_ike_falls_back_to_the_same_target_then_the_attribute(
    lalm: DestaLALM, release: SakeRelease
) -> None:
    editor = DemonstrationEditor(DemonstrationConfig("ie_ike", prompt="project"))
    editor.prepare(lalm, release.splits["train"])
    same_target = editor.retrieve(_case_with_pair(release, "Animal", "pig", "cat"))
    assert same_target.y_e == "cat"
    any_animal = editor.retrieve(_case_with_pair(release, "Animal", "pig", "cow"))
    assert any_animal.attribute == "Animal"
    hashed = DemonstrationConfig("ie_ike", selection="hash", prompt="project")
    first, again = DemonstrationEditor(hashed), DemonstrationEditor(hashed)
    first.prepare(lalm, release.splits["train"])
    again.prepare(lalm, list(reversed(release.splits["train"])))
    unseen = _case_with_pair(release, "Animal", "pig", "cow")
    assert again.retrieve(unseen) == first.retrieve(unseen)  # whatever the order
    with pytest.raises(ValueError, match="no Emotion case"):
        editor.retrieve(_case_with_pair(release, "Emotion", "happy", "sad"))
    with pytest.raises(ValueError, match="training split"):
        DemonstrationEditor(DemonstrationConfig("ie_ike", prompt="project")).prepare(lalm, [])


@pytest.mark.parametrize(("accumulate", "turns"), [(True, 2 * (9 + 8)), (False, 2 * 8)])
def test_ie_ike_demonstrations_in_sequence_accumulate_as_the_reference_unless_told(
    lalm: DestaLALM, release: SakeRelease, accumulate: bool, turns: int
) -> None:
    config = DemonstrationConfig("ie_ike", accumulate_demonstrations=accumulate, prompt="project")
    editor = DemonstrationEditor(config)
    editor.prepare(lalm, release.splits["train"])
    animal = _case_with_pair(release, "Animal", "dog", "cat")
    gender = _case_with_pair(release, "Gender", "female", "male")
    editor.apply(lalm, animal)
    editor.apply(lalm, gender)
    context = editor.context()
    assert "dog -> cat" in context.system and "female -> male" in context.system
    assert len(context.history) == turns
    assert context.history[-15].text == "male"  # the gender demonstrations come last


def test_ie_ike_draws_like_the_reference_random_choice(
    lalm: DestaLALM, release: SakeRelease
) -> None:
    """One `random.Random(42).choice` per edit over the same-pair training cases in file order,
    as the reference's `random.choice` after `random.seed(42)`."""
    import random

    train = release.splits["train"]
    editor = DemonstrationEditor(DemonstrationConfig("ie_ike", prompt="project"))
    editor.prepare(lalm, train)
    edits = [_case_with_pair(release, "Animal", "dog", "cat")] * 3
    drawn = [editor.retrieve(case) for case in edits]
    expected = random.Random(42)
    same_pair = [c for c in train if (c.y_o, c.y_e) == ("dog", "cat")]
    assert drawn == [expected.choice(same_pair) for _ in edits]


def test_editor_state_round_trips(lalm: DestaLALM, release: SakeRelease, case: EditCase) -> None:
    editor = DemonstrationEditor(DemonstrationConfig("ie_ike", prompt="project"))
    editor.prepare(lalm, release.splits["train"])
    editor.apply(lalm, case)
    saved = editor.state.state_dict()
    restored = InContextState()
    restored.load_state_dict(OmegaConf.to_container(OmegaConf.create(saved)))
    assert restored == editor.state
    plain = EditorState()
    plain.load_state_dict({"edits": saved["edits"]})
    assert plain.state_dict() == {"edits": saved["edits"]}


def test_the_project_prompt_lists_each_rule_once() -> None:
    edit = AppliedEdit("c1", "Gender", "male", "female")
    statement = EditStatement.of("project", None)
    prompt = statement.render([edit, replace(edit, case_id="c2")])
    assert prompt.count("male -> female") == 1
    assert "gender of the speaker: male -> female" in prompt
    assert statement.render([]) is None


def test_the_reference_prompt_states_one_quoted_rule_per_edit(tmp_path: Path) -> None:
    prompts = write_stand_in_prompts(tmp_path / "prompts.json")
    editor = InstructionEditor(InstructionConfig("i_ike", prompts_file=str(prompts)))
    first = AppliedEdit("c1", "Animal", "dog", "cat")
    second = AppliedEdit("c2", "Gender", "male", "female")
    editor.state.edits = [first, second]
    assert editor.context().system == STAND_IN_PROMPTS["ike_system"].replace(
        "{edits}", "'dog' => 'cat'\n'male' => 'female'"
    )
    with pytest.raises(ValueError, match="prompts_file"):
        InstructionEditor(InstructionConfig("i_ike"))
    with pytest.raises(FileNotFoundError, match="python -m sake.data.reference_prompts"):
        InstructionEditor(InstructionConfig("i_ike", prompts_file=str(tmp_path / "none.json")))


@pytest.mark.skipif(not SHARED_PROMPTS.is_file(), reason="the reference prompt file is absent")
def test_the_reference_ike_prompt_is_the_reference_text() -> None:
    editor = InstructionEditor(InstructionConfig("i_ike", prompts_file=str(SHARED_PROMPTS)))
    editor.state.edits = [AppliedEdit("c1", "Animal", "dog", "cat")]
    texts = json.loads(SHARED_PROMPTS.read_text(encoding="utf-8"))["prompts"]
    rule = texts["ike_rule_format"]["text"].replace("{pre}", "dog").replace("{post}", "cat")
    assert editor.context().system == texts["ike_system"]["text"].replace("{edits}", rule)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_method_configs_are_exactly_the_dataclasses(compose_cfg, method: str) -> None:
    cfg = compose_cfg("edit", [f"method={method}"])
    editor = build_editor(cfg.method)
    editor_class, config_class = METHOD_CONFIGS[method]
    assert isinstance(editor, editor_class) and isinstance(editor, Editor)
    declared = {key for key in cfg.method if key not in NOT_EDITOR_SETTINGS}
    assert declared == {field.name for field in fields(config_class)}
    assert editor.name == method


def test_ft_configs_point_at_their_roles(compose_cfg) -> None:
    assert build_editor(compose_cfg("edit", ["method=ft_llm"]).method).config.role == (
        "llm.layer[-1].mlp"
    )
    assert build_editor(compose_cfg("edit", ["method=ft_audio"]).method).touches_audio_path


def test_unknown_method_or_model_names_the_choices(compose_cfg) -> None:
    with pytest.raises(MissingConfigException) as error:
        compose_cfg("edit", ["method=rome"])
    assert "ft_audio" in str(error.value) and "ie_ike" in str(error.value)
    with pytest.raises(MissingConfigException) as error:
        compose_cfg("edit", ["model=gpt5"])
    assert "desta_tiny" in str(error.value)


def test_method_without_an_editor_names_the_editing_methods(compose_cfg) -> None:
    cfg = compose_cfg("edit", ["method=none"])
    with pytest.raises(ValueError, match="does not edit anything") as error:
        build_editor(cfg.method, available=["none", "ft_llm", "i_ike"])
    assert "ft_llm, i_ike" in str(error.value)


def _changed_share_after_adam(layer: nn.Linear, masters: bool) -> float:
    """Share of weights 100 Adam steps of lr 1e-5 change, with or without fp32 copies."""
    before = layer.weight.detach().clone()
    weights = MasterWeights(list(layer.parameters())) if masters else None
    optimizer = torch.optim.Adam(weights.tensors if weights else layer.parameters(), lr=1e-5)
    inputs = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)).to(layer.weight.dtype)
    for _ in range(100):
        layer(inputs).float().pow(2).mean().backward()
        if weights:
            weights.pull_gradients()
        optimizer.step()
        optimizer.zero_grad()
        if weights:
            weights.push_weights()
            assert torch.equal(layer.weight, weights.tensors[0].to(layer.weight.dtype))
    return float((layer.weight != before).float().mean())


def test_master_weights_keep_adam_steps_that_bf16_would_round_away() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 16).to(torch.bfloat16)
    naive = nn.Linear(16, 16).to(torch.bfloat16)
    naive.load_state_dict(layer.state_dict())
    assert _changed_share_after_adam(layer, masters=True) > 0.9
    assert _changed_share_after_adam(naive, masters=False) < 0.5
    assert all(p.grad is None for p in layer.parameters())


def test_master_weights_optimise_fp32_parameters_in_place() -> None:
    layer = nn.Linear(4, 4)
    weights = MasterWeights(list(layer.parameters()))
    assert all(m is p for m, p in zip(weights.tensors, layer.parameters(), strict=True))
