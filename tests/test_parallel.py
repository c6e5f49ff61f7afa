"""Many edits as one batched computation: each equals its one-at-a-time edit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from lalm_fixtures import release_on_disk, run_overrides
from sake.data.readers import SakeRelease
from sake.data.schema import EditCase
from sake.evaluation.records import RECORDS_FILE, read_records
from sake.methods.base import ParallelEditor
from sake.methods.ft import FineTuneConfig, FineTuneEditor
from sake.methods.parallel import EditCopies
from sake.models.desta import DestaLALM
from sake.utils.run import run_task

torch.set_num_threads(1)


def distinct_clip_cases(release: SakeRelease, count: int) -> list[EditCase]:
    cases, clips = [], set()
    for case in [*release.splits["test"], *release.sequences[-1].cases]:
        if case.reliability.audio_path not in clips:
            clips.add(case.reliability.audio_path)
            cases.append(case)
    assert len(cases) >= count
    return cases[:count]


def role_weights(lalm: DestaLALM, role: str) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in lalm.modules.parameters(role).items()}


@pytest.mark.parametrize(
    ("role", "lr", "stop_loss"),
    # stop losses between the cases' losses, so that some edits stop before others
    [("llm.layer[-1].mlp", 5e-2, 5.4), ("connector", 1e-2, 6.3)],
)
def test_parallel_edits_equal_one_at_a_time_edits(
    lalm: DestaLALM, release: SakeRelease, role: str, lr: float, stop_loss: float
) -> None:
    editor = FineTuneEditor(FineTuneConfig("ft", role, lr=lr, max_steps=6, stop_loss=stop_loss))
    assert isinstance(editor, ParallelEditor)
    cases = distinct_clip_cases(release, 4)
    original = role_weights(lalm, role)
    alone = []
    for case in cases:
        outcome = editor.apply(lalm, case)
        probe_batch = lalm.prepare([*case.probes()][:6])
        alone.append((outcome, role_weights(lalm, role), lalm.next_token_logits(probe_batch)))
        outcome.snapshot.restore()
    together = editor.apply_many(lalm, cases)
    assert (together.routing is None) == (role == "connector")
    steps = set()
    for case, install, (outcome, weights, logits) in zip(
        cases, together.installs, alone, strict=True
    ):
        parallel = install()
        assert parallel.steps == outcome.steps
        assert parallel.final_loss == pytest.approx(outcome.final_loss, rel=1e-3, abs=1e-4)
        # Adam divides by the gradient's size: float rounding of a batch's gradients moves a
        # near-zero element by a small share of one step (lr)
        for name, value in role_weights(lalm, role).items():
            torch.testing.assert_close(value, weights[name], rtol=1e-3, atol=5e-2 * lr)
        probe_batch = lalm.prepare([*case.probes()][:6])
        torch.testing.assert_close(
            lalm.next_token_logits(probe_batch), logits, rtol=1e-3, atol=1e-4
        )
        parallel.snapshot.restore()
        steps.add(parallel.steps)
    for name, value in role_weights(lalm, role).items():
        assert torch.equal(value, original[name])
    assert len(steps) > 1  # edits stopped at different steps


def test_routed_module_computes_each_row_with_its_own_copy() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    copies = EditCopies(layer, 3)
    with torch.no_grad():
        copies.stacked["weight"][1] += 1.0
        copies.stacked["bias"][2] -= 1.0
    x = torch.randn(5, 3)
    rows = [2, 0, 1, 1, 2]
    with copies.routed():
        copies.route(rows)
        routed = layer(x)
    expected = []
    for row, edit in enumerate(rows):
        weight, bias = copies.stacked["weight"][edit], copies.stacked["bias"][edit]
        expected.append(x[row] @ weight.T + bias)
    torch.testing.assert_close(routed, torch.stack(expected).detach())
    plain = layer(x)
    torch.testing.assert_close(plain, x @ layer.weight.T + layer.bias)
    with copies.routed(), pytest.raises(ValueError, match="rows"):
        copies.route([0, 1])
        layer(x)


def split_floats(record: dict) -> tuple[dict, list[float]]:
    """A record without its timings, and apart from it the values float rounding moves: the
    edit's final loss and the locality probes' KL."""
    floats = [record["edit"]["final_loss"]]
    edit = {k: v for k, v in record["edit"].items() if k not in ("seconds", "final_loss")}
    probes = []
    for probe in record["probes"]:
        if "specificity" in probe:
            floats.append(probe["specificity"]["kl"])
            specificity = {k: v for k, v in probe["specificity"].items() if k != "kl"}
            probe = {**probe, "specificity": specificity}
        probes.append(probe)
    return {**record, "edit": edit, "probes": probes}, floats


@pytest.mark.parametrize("method", ["ft_llm", "ft_audio"])
def test_a_parallel_run_writes_the_records_of_a_one_at_a_time_run_and_resumes_it(
    compose_cfg, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, method: str
) -> None:
    on_disk = release_on_disk(tmp_path_factory)

    def run(name: str, *extra: str) -> list[tuple[dict, list[float]]]:
        overrides = run_overrides(on_disk, "edit", f"method={method}", "method.max_steps=3")
        cfg = compose_cfg("edit", [*overrides, *extra])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
        run_task(cfg)
        records = read_records(tmp_path / name / RECORDS_FILE)
        return [split_floats(r) for r in sorted(records, key=lambda r: r["case_id"])]

    alone = run("alone", "eval.parallel_edits=1")
    run("resumed", "eval.parallel_edits=1", "dataset.limit=2")
    resumed = run("resumed", "eval.parallel_edits=4", "resume=true")
    four = run("four", "eval.parallel_edits=4")
    auto = run("auto", "eval.parallel_edits=auto")
    for parallel in (four, auto, resumed):
        assert [record for record, _ in parallel] == [record for record, _ in alone]
        for (_, mine), (_, theirs) in zip(parallel, alone, strict=True):
            assert mine == pytest.approx(theirs, rel=1e-3, abs=1e-6)
