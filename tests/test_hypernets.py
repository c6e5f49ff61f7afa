"""KE and MEND: update structure, training steps, the NaN guard, manifests, restore, the runner."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lalm_fixtures import edit_release, make_lalm, make_tokenizer, save_model_dir
from sake.data.readers import SakeRelease
from sake.data.schema import EditCase
from sake.data.writers import write_release
from sake.evaluation.degeneration_by_gap import degeneration_by_gap
from sake.evaluation.metrics import sequential_metrics, single_metrics
from sake.evaluation.pre_edit import PreEditCache
from sake.evaluation.probing import generate_answers
from sake.evaluation.records import RECORDS_FILE, RecordWriter, read_records
from sake.hypernets.manifest import (
    HypernetUnavailableError,
    read_hypernet,
    save_hypernet,
)
from sake.hypernets.signals import (
    EditSignal,
    add_to_weights,
    capture_signals,
    edited_matrices,
    input_moments,
    scored_pass,
)
from sake.methods.base import NOT_EDITOR_SETTINGS, build_editor
from sake.methods.hypernet import HypernetEditor, expected_manifest, new_network
from sake.methods.ke import KnowledgeEditorConfig
from sake.methods.mend import MendConfig
from sake.models.desta import DestaLALM
from sake.runner import EditRunner, EvalSettings
from sake.training.callbacks import NonFiniteLossError
from sake.training.hypernet import (
    EditCaseDataModule,
    EditLossSettings,
    HypernetModule,
    HypernetOptimizerSettings,
    LocalityAnswers,
    build_module,
    fit_hypernet,
    locality_probes,
    mean_kl,
    split_for_training,
    with_unfamiliar_text,
)
from sake.training.trainer import StageContext
from sake.utils.run import run_task

torch.set_num_threads(1)

ROLES = ("llm.layer[-2].mlp", "llm.layer[-1].mlp")
ROLE_OVERRIDE = "method.roles=['llm.layer[-2].mlp','llm.layer[-1].mlp']"
TASK_SETTINGS = Path(__file__).resolve().parents[1] / "configs" / "task" / "hypernet.yaml"
KL_REFERENCE = Path(__file__).parent / "data" / "kl_loc_reference.json"
MAX_NEW_TOKENS = 3


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> SakeRelease:
    return edit_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def lalm(release: SakeRelease) -> DestaLALM:
    return make_lalm(make_tokenizer(release))


@pytest.fixture(scope="module")
def fingerprint(lalm: DestaLALM) -> str:
    return lalm.fingerprint()


def mend_config(directory: Path, **changes: Any) -> MendConfig:
    base = MendConfig(
        name="mend", model="tiny", dataset="tiny", hypernet_dir=str(directory), roles=ROLES
    )
    return replace(base, hidden=32, rank=16, **changes)


def ke_config(directory: Path, **changes: Any) -> KnowledgeEditorConfig:
    base = KnowledgeEditorConfig(
        name="ke", model="tiny", dataset="tiny", hypernet_dir=str(directory), roles=ROLES
    )
    return replace(base, lstm_hidden=16, head_hidden=32, **changes)


CONFIGS = {"mend": mend_config, "ke": ke_config}


def signal_for(lalm: DestaLALM, case: EditCase, config: Any) -> EditSignal:
    matrices = edited_matrices(lalm, config.roles)
    batch = lalm.prepare([case.reliability])
    signals, _ = capture_signals(
        lalm, batch, [case.reliability.answer], matrices, [0], include_end=True
    )
    return signals[0]


def perturbed(network: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, so that masks, offsets and MLPs are far from their init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name.endswith("edit_lrs"):
                parameter.fill_(1e-2)
            else:
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(0.1 * noise)
    return network


def trained_state(lalm: DestaLALM, release: SakeRelease, config: Any) -> torch.nn.Module:
    """A network whose running statistics have seen training edits, with random weights."""
    matrices = edited_matrices(lalm, config.roles)
    network = perturbed(new_network(config, lalm, matrices)).train()
    for case in release.splits["train"]:
        network(signal_for(lalm, case, config))
    return network.eval()


def saved_editor(lalm: DestaLALM, release: SakeRelease, config: Any) -> HypernetEditor:
    """An editor loaded, through its manifest, from a file saved for this very model."""
    network = trained_state(lalm, release, config)
    matrices = edited_matrices(lalm, config.roles)
    manifest = expected_manifest(config, matrices, lalm.fingerprint())
    editor = HypernetEditor(config)
    save_hypernet(editor.path, manifest, network.state_dict())
    editor.prepare(lalm, release.splits["train"])
    return editor


def parameters(lalm: DestaLALM) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in lalm.model.named_parameters()}


def assert_unchanged(lalm: DestaLALM, before: dict[str, torch.Tensor]) -> None:
    changed = [n for n, p in lalm.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == []


# --------------------------------------------------------------------------- update structure


def test_edit_signal_factors_give_the_gradient_autograd_gives(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    config = mend_config(tmp_path)
    case = release.splits["test"][0]
    signal = signal_for(lalm, case, config)
    matrices = edited_matrices(lalm, config.roles)
    weights = [m.module.weight for m in matrices]
    flags = [w.requires_grad for w in weights]
    batch = lalm.prepare([case.reliability])
    with torch.enable_grad():
        loss = scored_pass(lalm, batch, [case.reliability.answer], True).nll(0)
        gradients = torch.autograd.grad(loss, weights)
    assert signal.loss == pytest.approx(float(loss.detach()))
    for matrix, gradient in zip(matrices, gradients, strict=True):
        assert torch.allclose(signal.gradient(matrix.weight_name), gradient, atol=1e-6)
    assert [w.requires_grad for w in weights] == flags


def test_mend_update_is_one_outer_product_per_token(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    config = mend_config(tmp_path)
    network = trained_state(lalm, release, config)
    signal = signal_for(lalm, release.splits["test"][0], config)
    updates = network(signal)
    for matrix in edited_matrices(lalm, config.roles):
        name = matrix.weight_name
        update = updates[name]
        assert update.shape == matrix.shape and update.dtype == torch.float32
        assert 1 <= int(torch.linalg.matrix_rank(update)) <= signal.n_tokens(name)
        x, delta = network.transformed_factors(signal, name)
        lr = network.edit_lrs[network.names.index(name)]
        assert torch.allclose(update, -lr * delta.T @ x, atol=1e-6)
    last_layer = [m.weight_name for m in edited_matrices(lalm, ("llm.layer[-1].mlp",))]
    answer_tokens = len(
        lalm.target_token_ids(
            lalm.prepare([release.splits["test"][0].reliability]),
            [release.splits["test"][0].y_e],
            include_end=True,
        )[0]
    )
    assert all(signal.n_tokens(name) == answer_tokens for name in last_layer)
    assert all(int(torch.linalg.matrix_rank(updates[n])) <= answer_tokens for n in last_layer)


def test_untrained_mend_is_an_identity_mlp_and_refuses_without_statistics(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    config = mend_config(tmp_path)
    network = new_network(config, lalm, edited_matrices(lalm, config.roles))
    signal = signal_for(lalm, release.splits["test"][0], config)
    with pytest.raises(RuntimeError, match="untrained"):
        network.eval()(signal)
    network.train()(signal)
    name = next(iter(signal.inputs))
    x, delta = network.eval().transformed_factors(signal, name)
    pairs = torch.cat([signal.inputs[name], signal.output_grads[name]], dim=-1)
    moments = network.moments[0]
    assert torch.allclose(torch.cat([x, delta], dim=-1), moments.normalise(pairs))
    assert torch.allclose(moments.mean.float(), pairs.mean(dim=0), atol=1e-6)


def test_ke_update_is_a_rank_one_mask_of_the_gradient_plus_a_rank_one_offset(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    config = ke_config(tmp_path, network="project")
    matrices = edited_matrices(lalm, config.roles)
    signal = signal_for(lalm, release.splits["test"][0], config)
    fresh = new_network(config, lalm, matrices)
    for name, update in fresh(signal).items():  # untrained: a plain gradient step
        assert torch.allclose(update, -config.step_size * signal.gradient(name) / 4, atol=1e-7)
    network = perturbed(new_network(config, lalm, matrices))
    parts = network.components(signal)
    updates = network(signal)
    for matrix in matrices:
        name = matrix.weight_name
        part, update, gradient = parts[name], updates[name], signal.gradient(name)
        assert update.shape == matrix.shape
        assert int(torch.linalg.matrix_rank(part.mask)) == 1
        assert int(torch.linalg.matrix_rank(part.offset)) == 1
        assert torch.equal(part.gradient, gradient)
        expected = part.scale * config.step_size * (part.mask * gradient + part.offset)
        assert torch.allclose(update, expected)
        assert 0 < float(part.scale.detach()) < 1
        rank = int(torch.linalg.matrix_rank(update))
        assert rank <= int(torch.linalg.matrix_rank(gradient)) + 1


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_updates_leave_the_most_used_text_input_directions_alone(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path, method: str
) -> None:
    config = CONFIGS[method](tmp_path, preserve_rank=4)
    matrices = edited_matrices(lalm, config.roles)
    network = perturbed(new_network(config, lalm, matrices)).train()
    probes = [probe for case in release.splits["train"] for probe in case.locality_text]
    moments = input_moments(lalm, probes, [probe.answer for probe in probes], matrices, True)
    network.preserved.fit(moments)
    signal = signal_for(lalm, release.splits["test"][0], config)
    for matrix in matrices:
        name = matrix.weight_name
        basis, moment = network.preserved.basis(name), moments[name]
        assert basis.shape == (matrix.shape[1], 4)
        assert torch.allclose(basis.T @ basis, torch.eye(4), atol=1e-5)
        top = torch.linalg.eigvalsh(moment.double())[-4:].sum()
        assert float(torch.trace(basis.T @ moment @ basis)) == pytest.approx(float(top), rel=1e-4)
    for name, update in network(signal).items():
        basis = network.preserved.basis(name)
        assert float(update.abs().max()) > 0
        assert float((update @ basis).abs().max()) < 1e-5 * float(update.abs().max())
    with pytest.raises(ValueError, match="preserve_rank"):
        new_network(replace(config, preserve_rank=10_000), lalm, matrices)


# --------------------------------------------------------------------------- training


def task_settings(**changes: Any) -> Any:
    """The task config as shipped, with the generation bound the edit runs would resolve."""
    settings = OmegaConf.load(TASK_SETTINGS)
    settings.pre_edit.max_new_tokens = MAX_NEW_TOKENS
    return OmegaConf.merge(settings, changes)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path, method: str
) -> None:
    config = CONFIGS[method](tmp_path)
    module = build_module(config, lalm, task_settings(optimizer={"lr": 1e-3}), seed=0)
    cases = release.splits["train"][:2]
    before = parameters(lalm)
    module.train()
    module.edit_losses(cases)  # MEND's running statistics see the batch once
    module.network.eval()
    optimizer = module.make_optimizer()
    first = module.edit_losses(cases)
    optimizer.zero_grad()
    first.total.backward()
    optimizer.step()
    second = module.edit_losses(cases)
    assert float(second.total.detach()) < float(first.total.detach())
    assert float(first.locality.detach()) >= 0
    assert {"edit_success/generality_type2", "locality/text"} <= first.outcomes.keys()
    assert all(p.grad is None for p in lalm.model.parameters())
    assert_unchanged(lalm, before)


def test_locality_kl_follows_the_unedited_models_own_answers(
    lalm: DestaLALM, release: SakeRelease
) -> None:
    probes = locality_probes(release.splits["val"][0])
    answers = LocalityAnswers(PreEditCache(None, lalm.fingerprint(), MAX_NEW_TOKENS))
    greedy = generate_answers(lalm, probes, batch_size=32, max_new_tokens=MAX_NEW_TOKENS)
    chosen = answers.answers(lalm, probes)
    for probe, output, answer in zip(probes, greedy, chosen, strict=True):
        assert answer == (output or probe.answer)
    assert LocalityAnswers(None).answers(lalm, probes) == [probe.answer for probe in probes]


def with_own_question(case: EditCase, question: str) -> EditCase:
    """`case` whose text-locality probe asks `question` (with the same options)."""
    return replace(case, locality_text=(replace(case.locality_text[0], question=question),))


def with_own_text_probe(case: EditCase, answer: str) -> EditCase:
    """`case` with a text-locality probe that differs from every other case's."""
    return replace(case, locality_text=(replace(case.locality_text[0], answer=answer),))


@pytest.mark.parametrize("shared", [True, False])
def test_every_edit_is_also_checked_against_the_batchs_other_text_probes(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path, shared: bool
) -> None:
    first, second = release.splits["train"][:2]
    cases = [first, with_own_text_probe(second, "6")]
    settings = task_settings(loss={"shared_text_locality": shared})
    module = build_module(mend_config(tmp_path), lalm, settings, seed=0)
    probes, _, placed = module.pre_edit_rows(cases)
    for case, rows, other in zip(cases, placed, cases[::-1], strict=True):
        own = locality_probes(case)
        checked = [probes[row] for row in rows.locality_rows]
        assert checked == own + (list(other.locality_text) if shared else [])
    losses = module.train().edit_losses(cases)
    assert len(losses.outcomes["locality/text"]) == (4 if shared else 2)


def test_the_loss_weighs_audio_and_text_locality_apart(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    settings = task_settings(loss={"c_edit": 2.0, "c_loc": 3.0, "c_loc_text": 5.0})
    config = mend_config(tmp_path, edit_lr=1e-2)
    module = build_module(config, lalm, settings, seed=0)
    cases = release.splits["train"][:2]
    with torch.no_grad():
        losses = module.train().edit_losses(cases)
    assert float(losses.locality_audio) > 0 and float(losses.locality_text) > 0
    expected = 2.0 * losses.edit + 3.0 * losses.locality_audio + 5.0 * losses.locality_text
    assert float(losses.total) == pytest.approx(float(expected), rel=1e-5)


def test_sequence_kl_is_the_references_kl_loc_loss() -> None:
    """Values of the reference's `kl_loc_loss`, run outside the project (see the fixture)."""
    fixture = json.loads(KL_REFERENCE.read_text(encoding="utf-8"))
    for case in fixture["cases"]:
        kept = torch.tensor(case["mask"]) > 0
        pre, post = torch.tensor(case["pre"])[kept], torch.tensor(case["post"])[kept]
        assert float(mean_kl(pre, post)) == pytest.approx(case["kl"], rel=1e-5)


def test_reference_recipe_sums_generality_nlls_and_whole_sequence_kls(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    """The hook-added update, scored by the module, equals the update added to the weights
    and scored probe by probe: 0.1 x the sum of the generality NLLs plus the sum of the
    locality KLs over every position of prompt + dataset answer."""
    module = build_module(mend_config(tmp_path, edit_lr=1e-2), lalm, task_settings(), seed=0)
    case = release.splits["train"][0]
    with torch.no_grad():
        module.train().edit_losses(release.splits["train"][:2])  # MEND's running statistics
    module.network.eval()
    assert module.loss_settings == EditLossSettings(
        c_edit=0.1,
        shared_text_locality=False,
        reliability=False,
        locality_answers="dataset",
        kl_positions="sequence",
        aggregate="sum",
    )
    with torch.no_grad():
        losses = module.edit_losses([case])
    edit_batch = lalm.prepare([case.reliability])
    signals, _ = capture_signals(
        lalm, edit_batch, [case.reliability.answer], module.matrices, [0], include_end=True
    )
    with torch.no_grad():
        update = module.network(signals[0])

    def sequence(probe: Any) -> torch.Tensor:
        with torch.no_grad():
            batch = lalm.prepare([probe])
            return lalm.sequence_logits(batch, [probe.answer], include_end=True)[0]

    before = parameters(lalm)
    pre = {probe: sequence(probe) for probe in locality_probes(case)}
    add_to_weights(module.matrices, update)
    try:
        kls = {probe: float(mean_kl(pre[probe], sequence(probe))) for probe in pre}
        with torch.no_grad():
            nlls = [
                float(lalm.target_nll(lalm.prepare([p]), [p.answer], include_end=True)[0])
                for p in case.generality
            ]
    finally:
        with torch.no_grad():
            for name, parameter in lalm.model.named_parameters():
                parameter.copy_(before[name])
    audio = sum(kl for probe, kl in kls.items() if probe in case.locality_audio)
    text = sum(kl for probe, kl in kls.items() if probe in case.locality_text)
    assert audio > 0 and text > 0
    assert float(losses.edit) == pytest.approx(sum(nlls), rel=1e-4)
    assert float(losses.locality_audio) == pytest.approx(audio, rel=1e-3)
    assert float(losses.locality_text) == pytest.approx(text, rel=1e-3)
    assert float(losses.total) == pytest.approx(0.1 * sum(nlls) + audio + text, rel=1e-3)


def test_edit_rates_stepped_by_both_optimizers_are_one_step_at_the_summed_rate() -> None:
    """The reference steps MEND's edit learning rates with its outer Adam (lr) and its own
    (lr_lr); `edit_lrs_in_outer` gives the same trajectory with one optimizer."""
    settings = HypernetOptimizerSettings(name="Adam", lr=1e-3, lr_lr=1e-2, edit_lrs_in_outer=True)
    gradients = [torch.randn(3, generator=torch.Generator().manual_seed(k)) for k in range(5)]
    twice = torch.nn.Parameter(torch.ones(3))
    once = torch.nn.Parameter(torch.ones(3))
    outer, own = torch.optim.Adam([twice], lr=settings.lr), torch.optim.Adam([twice], lr=1e-2)
    single = torch.optim.Adam([once], lr=settings.edit_lr_rate)
    for gradient in gradients:
        twice.grad, once.grad = gradient.clone(), gradient.clone()
        outer.step()
        own.step()
        single.step()
    torch.testing.assert_close(once, twice)
    with pytest.raises(ValueError, match="torch.optim"):
        HypernetOptimizerSettings(name="Adamm")


def test_training_never_asks_the_validation_slices_text_questions(release: SakeRelease) -> None:
    train_cases = release.splits["train"]
    unasked = replace(train_cases[0].locality_text[0], question="Which number is larger?\n\n4\n9")
    distinct = replace(train_cases[0], locality_text=(unasked,))
    splits = {"train": [*train_cases, distinct], "val": release.splits["val"]}
    train, val = split_for_training(splits, validation_cases=1)
    asked = {probe.question for case in val for probe in case.locality_text}
    assert asked and val == release.splits["val"][:1]
    assert [case.locality_text for case in train] == [()] * len(train_cases) + [(unasked,)]
    assert [replace(case, locality_text=()) for case in train] == [
        replace(case, locality_text=()) for case in splits["train"]
    ]


def test_unfamiliar_text_asks_a_known_question_with_another_questions_options(
    release: SakeRelease,
) -> None:
    first, second = release.splits["train"][:2]
    known = first.locality_text[0]
    donor = replace(
        known,
        question="What is 1 + 1?\n\nOptions:\n1\n2\n3",
        answer="2",
        options=("1", "2", "3"),
    )
    inline = replace(known, question="What is 2 + 3: 4, 5 or 6?")
    cases = [
        first,
        replace(second, locality_text=(donor,)),
        replace(first, locality_text=(inline,)),
    ]
    extended = with_unfamiliar_text(cases, np.random.default_rng(0))
    assert extended[0].locality_text == (
        known,
        replace(
            known,
            question="What is 2 + 3?\n\nOptions:\n1\n2\n3",
            answer="2",
            options=("1", "2", "3"),
        ),
    )
    assert extended[1].locality_text[1].question == "What is 1 + 1?\n\nOptions:\n4\n5\n6"
    assert extended[2].locality_text == (inline,)
    assert [replace(case, locality_text=()) for case in extended] == [
        replace(case, locality_text=()) for case in cases
    ]


def test_a_zero_update_keeps_every_locality_answer(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    module = build_module(mend_config(tmp_path, edit_lr=0.0), lalm, task_settings(), seed=0)
    with torch.no_grad():
        losses = module.train().edit_losses(release.splits["train"][:2])
    locality = {k: v for k, v in losses.outcomes.items() if k.startswith("locality/")}
    assert locality and all(value == [1.0] * len(value) for value in locality.values())
    assert float(losses.locality) == pytest.approx(0.0, abs=1e-6)


class PoisonedAtStep(HypernetModule):
    """Writes NaN into the hypernetwork's first parameter when `poisoned_step` is reached."""

    poisoned_step = 2

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.global_step == self.poisoned_step:
            with torch.no_grad():
                next(self.network.parameters()).fill_(float("nan"))


def poisoned(built: HypernetModule, step: int) -> PoisonedAtStep:
    """`built`, everything shared, but poisoned at `step`."""
    module = PoisonedAtStep(
        built.network,
        built.lalm,
        built.matrices,
        built.loss_settings,
        built.optimizer_settings,
        built.locality_answers,
    )
    module.poisoned_step = step
    return module


def context_for(tmp_path: Path) -> StageContext:
    trainer = OmegaConf.create(
        {
            "_target_": "lightning.pytorch.Trainer",
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
        }
    )
    return StageContext(trainer=trainer, logger=None, seed=0, out_dir=tmp_path, name="test")


def small_run(trainer: dict[str, Any] | None = None, **changes: Any) -> Any:
    """Four steps of two cases, validated on one case every two steps."""
    return task_settings(
        cases_per_step=2,
        validation={"cases": 1, "batch_size": 1},
        trainer={"max_steps": 4, "val_check_interval": 2, **(trainer or {})},
        **changes,
    )


def test_nan_in_the_hypernetwork_stops_training_naming_the_step_and_the_loss(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    settings = small_run()
    module = poisoned(build_module(mend_config(tmp_path), lalm, settings, seed=0), step=2)
    data = EditCaseDataModule(
        release.splits["train"],
        release.splits["val"],
        cases_per_step=2,
        steps=4,
        val_batch_size=1,
        rng=np.random.default_rng(0),
    )
    with pytest.raises(NonFiniteLossError, match=r"the edit loss is nan at step 2"):
        fit_hypernet(module, data, context_for(tmp_path), settings)


def case_data(release: SakeRelease) -> EditCaseDataModule:
    return EditCaseDataModule(
        release.splits["train"],
        release.splits["val"],
        cases_per_step=2,
        steps=4,
        val_batch_size=1,
        rng=np.random.default_rng(0),
    )


def test_a_killed_run_resumes_from_its_last_checkpoint(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    settings = small_run(optimizer={"lr": 1e-2})
    config = mend_config(tmp_path)
    whole = build_module(config, lalm, settings, seed=0)
    _, whole_state = fit_hypernet(whole, case_data(release), context_for(tmp_path / "a"), settings)
    killed = poisoned(build_module(config, lalm, settings, seed=0), step=3)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        fit_hypernet(killed, case_data(release), context_for(tmp_path / "b"), settings)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    resumed = build_module(config, lalm, settings, seed=1)
    metrics, _ = fit_hypernet(
        resumed,
        case_data(release),
        context_for(tmp_path / "b"),
        OmegaConf.merge(settings, {"ckpt_path": str(last)}),
    )
    assert metrics["train/steps"] == 4 and set(resumed.validation_history) == {2, 4}
    for key, tensor in whole.network.state_dict().items():
        assert torch.allclose(resumed.network.state_dict()[key], tensor, atol=1e-6), key
    assert set(whole_state) == set(whole.network.state_dict())


def test_the_last_step_must_be_validated(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    settings = small_run({"val_check_interval": 3})
    module = build_module(mend_config(tmp_path), lalm, settings, seed=0)
    data = EditCaseDataModule(
        release.splits["train"],
        release.splits["val"],
        cases_per_step=2,
        steps=4,
        val_batch_size=1,
        rng=np.random.default_rng(0),
    )
    with pytest.raises(ValueError, match="dividing"):
        fit_hypernet(module, data, context_for(tmp_path), settings)


# --------------------------------------------------------------------------- manifests


def test_missing_hypernetwork_names_the_train_command(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    editor = HypernetEditor(mend_config(tmp_path / "none"))
    with pytest.raises(HypernetUnavailableError) as error:
        editor.prepare(lalm, release.splits["train"])
    message = str(error.value)
    assert "train it with: python train.py method=mend model=tiny dataset=tiny" in message
    assert str(editor.path) in message
    project = HypernetEditor(mend_config(tmp_path / "none", network="project"))
    assert project.path.name == editor.path.name.replace(".pt", "-project.pt")
    with pytest.raises(HypernetUnavailableError, match="dataset=tiny method.network=project"):
        project.prepare(lalm, release.splits["train"])


def test_manifest_rejects_a_hypernetwork_trained_for_other_weights(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    config = mend_config(tmp_path)
    saved_editor(lalm, release, config)
    other = make_lalm(lalm.tokenizer, seed=1)
    with pytest.raises(HypernetUnavailableError, match="other weights") as error:
        HypernetEditor(config).prepare(other, release.splits["train"])
    message = str(error.value)
    assert "fingerprint" in message and lalm.fingerprint() in message
    assert "train it with: python train.py method=mend model=tiny" in message
    with pytest.raises(HypernetUnavailableError, match="roles"):
        HypernetEditor(replace(config, roles=ROLES[1:])).prepare(lalm, release.splits["train"])
    with pytest.raises(HypernetUnavailableError, match="hidden"):
        HypernetEditor(replace(config, hidden=16)).prepare(lalm, release.splits["train"])


# --------------------------------------------------------------------------- editing


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_restore_after_an_edit_is_bit_exact(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path, method: str
) -> None:
    config = CONFIGS[method](tmp_path)
    editor = saved_editor(lalm, release, config)
    before = parameters(lalm)
    outcome = editor.apply(lalm, release.splits["test"][0])
    edited = {m.weight_name for m in edited_matrices(lalm, config.roles)}
    assert set(outcome.snapshot.names) == edited
    assert set(outcome.snapshot.changed()) == edited
    assert outcome.steps == 1 and outcome.final_loss is not None
    outcome.snapshot.restore()
    assert_unchanged(lalm, before)
    assert all(p.grad is None for p in lalm.model.parameters())


def make_runner(
    editor: HypernetEditor, lalm: DestaLALM, run_dir: Path, protocol: str, fingerprint: str
) -> EditRunner:
    return EditRunner(
        lalm,
        editor,
        settings=EvalSettings(protocol, max_new_tokens=MAX_NEW_TOKENS, batch_size=32),
        pre_edit=PreEditCache(None, fingerprint, MAX_NEW_TOKENS),
        writer=RecordWriter(run_dir / RECORDS_FILE),
        model_name="tiny",
    )


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_single_and_sequential_editing_run_through_the_runner(
    lalm: DestaLALM, release: SakeRelease, fingerprint: str, tmp_path: Path, method: str
) -> None:
    editor = saved_editor(lalm, release, CONFIGS[method](tmp_path))
    before = parameters(lalm)
    case = release.splits["test"][0]
    single = make_runner(editor, lalm, tmp_path / "single", "single", fingerprint)
    records = single.run_single([case])
    assert len(records) == 1 and records[0]["method"] == method
    assert single_metrics(records)["single/reliability"] in (0.0, 1.0)
    assert_unchanged(lalm, before)
    sequence = replace(release.sequences[1], cases=release.sequences[1].cases[:3])
    sequential = make_runner(editor, lalm, tmp_path / "sequential", "sequential", fingerprint)
    records = sequential.run_sequential([sequence])
    assert {(r["step"], r["edit_index"]) for r in records} == {
        (i, j) for i in range(3) for j in range(i + 1)
    }
    assert {f"sequential/reliability/gap{g}" for g in range(3)} <= (
        sequential_metrics(records).keys()
    )
    assert_unchanged(lalm, before)
    assert editor.state.edits == []


def test_sequential_edits_apply_each_update_to_the_current_weights(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    editor = saved_editor(lalm, release, mend_config(tmp_path))
    first, second = release.sequences[1].cases[:2]
    original = parameters(lalm)
    alone = editor.apply(lalm, second)
    update_alone = {n: p.detach() - original[n] for n, p in lalm.model.named_parameters()}
    alone.snapshot.restore()
    earlier = editor.apply(lalm, first)
    after_first = parameters(lalm)
    later = editor.apply(lalm, second)
    weight = next(iter(later.snapshot.names))
    assert torch.equal(later.snapshot._saved[weight], after_first[weight])
    update_after = lalm.model.get_parameter(weight).detach() - after_first[weight]
    assert not torch.allclose(update_after, update_alone[weight])
    earlier.snapshot.merged_with(later.snapshot).restore()
    assert_unchanged(lalm, original)


def test_degeneration_is_reported_by_gap() -> None:
    loop = "hen hen hen hen hen hen hen hen hen hen"

    def record(gap: int, outputs: list[str]) -> dict[str, Any]:
        probes = [{"post_output": output, "pre_output": "cat"} for output in outputs]
        return {"protocol": "sequential", "gap": gap, "probes": probes}

    records = [
        record(0, ["dog", "cat"]),
        record(0, ["dog", "cow"]),
        record(1, ["dog", loop]),
        record(2, ["", loop]),
        record(7, [loop, loop]),
    ]
    assert degeneration_by_gap(records) == {
        "sequential/degeneration/gap0": 0.0,
        "sequential/degeneration/gap1": 0.5,
        "sequential/degeneration/gap2": 1.0,
        "sequential/degeneration/pre_edit": 0.0,
    }
    assert degeneration_by_gap([]) == {}


# --------------------------------------------------------------------------- configs and tasks


@pytest.mark.parametrize(
    ("method", "config_class"), [("mend", MendConfig), ("ke", KnowledgeEditorConfig)]
)
def test_method_configs_are_exactly_the_dataclasses(
    compose_cfg, method: str, config_class: type
) -> None:
    cfg = compose_cfg("edit", [f"method={method}"])
    editor = build_editor(cfg.method)
    assert isinstance(editor, HypernetEditor) and editor.name == method
    declared = {key for key in cfg.method if key not in NOT_EDITOR_SETTINGS}
    assert declared == {field.name for field in fields(config_class)}
    assert editor.config.roles == ("llm.layer[-2].mlp", "llm.layer[-1].mlp")  # desta_tiny's
    default_roles = next(field.default for field in fields(config_class) if field.name == "roles")
    assert default_roles == ("llm.layer[-3].mlp", "llm.layer[-2].mlp", "llm.layer[-1].mlp")
    assert editor.path == Path(cfg.paths.hypernet_dir) / f"{method}-desta_tiny-sake_synth.pt"
    assert not editor.touches_audio_path


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_train_py_with_a_hypernetwork_method_trains_it(compose_cfg, method: str) -> None:
    task = compose_cfg("train", [f"method={method}"]).task
    assert task.name == "hypernet"
    reference = {"ke": ("RMSprop", 3e-4), "mend": ("Adam", 1e-6)}[method]
    assert (task.optimizer.name, task.optimizer.lr) == reference
    assert (task.cases_per_step, task.trainer.max_steps, task.trainer.gradient_clip_val) == (
        2,
        1800,
        100.0,
    )
    assert (task.loss.c_edit, task.loss.kl_positions, task.loss.aggregate) == (
        0.1,
        "sequence",
        "sum",
    )
    project = compose_cfg("train", [f"method={method}", "recipe=project"]).task
    assert (project.optimizer.name, project.loss.kl_positions, project.cases_per_step) == (
        "AdamW",
        "answer",
        4,
    )
    assert project.loss.c_loc_text == {"ke": 200.0, "mend": 100.0}[method]
    assert compose_cfg("train", []).task.name == "corpus"
    assert compose_cfg("edit", [f"method={method}"]).task.name == "edit"


def test_training_task_refuses_a_method_without_a_hypernetwork(compose_cfg) -> None:
    cfg = compose_cfg("train", ["task=hypernet", "method=ft_llm", "logger=none"])
    with pytest.raises(ValueError, match="method=ke, method=mend"):
        run_task(cfg)


@pytest.fixture(scope="module")
def on_disk(
    release: SakeRelease, lalm: DestaLALM, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sake")
    val = [
        with_own_question(case, "What is 3 + 2?\n\nOptions:\n4\n5\n6")
        for case in release.splits["val"]
    ]
    write_release({**release.splits, "val": val}, release.sequences, root)
    shutil.copytree(release.audio_root, root / "audio")
    return root, save_model_dir(lalm, tmp_path_factory.mktemp("weights") / "desta_tiny")


def test_train_task_writes_the_best_hypernetwork_and_edit_task_uses_it(
    compose_cfg, on_disk: tuple[Path, Path], tmp_path: Path
) -> None:
    root, weights = on_disk
    shared = [
        "logger=none",
        "method=mend",
        "dataset=sake",
        f"dataset.root={root}",
        f"model.weights_dir={weights}",
        f"paths.hypernet_dir={tmp_path / 'hypernets'}",
        ROLE_OVERRIDE,
        "method.hidden=32",
        "method.preserve_rank=8",  # the opt-in projection, through training and editing
    ]
    train = compose_cfg(
        "train",
        [
            *shared,
            "task=hypernet",
            "task.cases_per_step=2",
            "task.validation.cases=1",
            "task.validation.batch_size=1",
            "task.threads=1",
            "task.trainer.max_steps=4",
            "task.trainer.val_check_interval=2",
            "task.optimizer.lr=3e-2",
            "trainer.enable_progress_bar=false",
        ],
    )
    metrics = run_task(train)
    path = tmp_path / "hypernets" / "mend-desta_tiny-sake.pt"
    manifest, state = read_hypernet(path)
    best_step = int(metrics["best/step"])
    checkpoints = Path(train.paths.output_dir) / "checkpoints"
    stored = torch.load(checkpoints / f"best-step={best_step:06d}.ckpt", weights_only=False)
    for key, tensor in state.items():
        assert torch.equal(tensor, stored["state_dict"][f"network.{key}"])
    assert (checkpoints / "last.ckpt").is_file() and metrics["train/steps"] == 4
    assert manifest.roles == list(ROLES) and manifest.training["metrics"] == metrics
    bases = [tensor for key, tensor in state.items() if key.startswith("preserved.basis_")]
    assert bases and all(torch.allclose(b.T @ b, torch.eye(8), atol=1e-5) for b in bases)
    assert metrics["best/val/loss"] <= metrics["last/val/loss"]
    edit = compose_cfg("edit", [*shared, "task=edit", "dataset.limit=2", "eval.max_new_tokens=3"])
    edited = run_task(edit)
    assert 0.0 <= edited["single/reliability"] <= 1.0
    assert len(read_records(Path(edit.paths.output_dir) / RECORDS_FILE)) == 2


def test_edit_py_refuses_a_missing_hypernetwork_naming_the_train_command(
    compose_cfg, on_disk: tuple[Path, Path], tmp_path: Path
) -> None:
    root, weights = on_disk
    edit = compose_cfg(
        "edit",
        [
            "logger=none",
            "method=mend",
            "dataset=sake",
            f"dataset.root={root}",
            f"model.weights_dir={weights}",
            f"paths.hypernet_dir={tmp_path / 'empty'}",
            ROLE_OVERRIDE,
        ],
    )
    command = "train it with: python train.py method=mend model=desta_tiny"
    with pytest.raises(HypernetUnavailableError, match=command):
        run_task(edit)


MEND_REFERENCE = Path(__file__).parent / "data" / "mend_reference.json"


def test_reference_mend_mlp_matches_the_reference_idmlp() -> None:
    """The reference's IDMLP, its parameters loaded into the project's low-rank transform:
    the same parameter count and the same output for every matrix slot."""
    from sake.hypernets.mend import LowRankTransform

    fixture = json.loads(MEND_REFERENCE.read_text(encoding="utf-8"))

    def tensor(entry: dict) -> torch.Tensor:
        return torch.tensor(entry["values"]).reshape(entry["shape"])

    transform = LowRankTransform(fixture["dim"], fixture["n_modes"], fixture["rank"], n_hidden=1)
    assert sum(p.numel() for p in transform.parameters()) == fixture["n_parameters"]
    names = {"u": "up", "v": "down", "bias": "bias"}
    names |= {"mode_scale.weight": "scale", "mode_shift.weight": "shift"}
    state = {
        f"layers.{key.split('.')[1]}.{names[key.split('.', 2)[2]]}": tensor(entry)
        for key, entry in fixture["state"].items()
    }
    transform.load_state_dict(state)
    x = tensor(fixture["input"])
    for mode, expected in fixture["outputs"].items():
        with torch.no_grad():
            got = transform(x, int(mode))
        torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-4, atol=1e-5)


KE_REFERENCE = Path(__file__).parent / "data" / "ke_reference.json"


def test_reference_ke_head_matches_the_reference_conditioned_parameter() -> None:
    """EFK's per-matrix head, its parameters loaded into the project's: the same parameter
    count and the same update for a fixed condition and gradient."""
    from sake.hypernets.ke import ConditionedHead

    fixture = json.loads(KE_REFERENCE.read_text(encoding="utf-8"))

    def tensor(entry: dict) -> torch.Tensor:
        return torch.tensor(entry["values"]).reshape(entry["shape"])

    head = ConditionedHead(
        fixture["condition_dim"], fixture["hidden"], fixture["out_features"], fixture["in_features"]
    )
    assert sum(p.numel() for p in head.parameters()) == fixture["n_parameters"]
    parts = {"weight_g": "parametrizations.weight.original0", "bias": "bias"}
    parts["weight_v"] = "parametrizations.weight.original1"
    state = {
        f"layers.{key.split('.')[1]}.{parts[key.split('.')[2]]}": tensor(entry)
        for key, entry in fixture["state"].items()
    }
    head.load_state_dict(state)
    with torch.no_grad():
        update = head(torch.tensor(fixture["condition"]), tensor(fixture["gradient"]), 1.0)
    torch.testing.assert_close(update, tensor(fixture["update"]), rtol=1e-4, atol=1e-5)


def test_reference_ke_reads_the_edits_tokens_through_its_own_embedding(
    lalm: DestaLALM, release: SakeRelease, tmp_path: Path
) -> None:
    config = ke_config(tmp_path, network="reference")
    matrices = edited_matrices(lalm, config.roles)
    network = new_network(config, lalm, matrices)
    signal = signal_for(lalm, release.splits["test"][0], config)
    model_embedding = lalm.modules.resolve("llm.embed").module.weight
    assert torch.equal(network.embedding.weight, model_embedding.float())
    assert torch.equal(network.embedding(signal.token_ids), signal.embeddings.float())
    updates = network(signal)
    assert {name: u.shape for name, u in updates.items()} == {
        m.weight_name: m.shape for m in matrices
    }
    sum(u.sum() for u in updates.values()).backward()
    assert network.embedding.weight.grad is not None  # the embedding trains with the network
