"""λ-sweep analysis: Kendall's tau, coverage, the sweep table, the evaluate task."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.stats import kendalltau

from lalm_fixtures import edit_release, make_lalm, make_tokenizer, save_model_dir
from sake.data.writers import write_release
from sake.evaluation.lambda_sweep import (
    TRACKED,
    analyse_sweep,
    coverage,
    kendall_tau,
    mean_regularizer,
    swept_parameter,
    table,
)
from sake.evaluation.records import RECORDS_FILE
from sake.utils.run import run_task

torch.set_num_threads(1)

LAMBDAS = (1.5e2, 1.5e3, 1.5e4, 1.5e5)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]),
        ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]),
        ([1, 1, 2, 3, 3, 4], [0.1, 0.3, 0.2, 0.2, 0.9, 0.5]),
        ([0.5, 0.5, 0.5, 1.0], [3, 1, 2, 2]),
        (list(np.random.default_rng(0).normal(size=12)), list(np.arange(12) % 4)),
    ],
)
def test_kendall_tau_matches_scipy(x: list[float], y: list[float]) -> None:
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)


def test_kendall_tau_is_undefined_for_a_constant() -> None:
    assert math.isnan(kendall_tau([1, 2, 3], [4, 4, 4]))
    with pytest.raises(ValueError, match="differ in length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_coverage_uses_the_metric_span_or_the_largest_value() -> None:
    assert coverage([0.2, 0.5, 0.7], 1.0) == pytest.approx(0.5)
    assert coverage([40.0, 90.0], 100.0) == pytest.approx(0.5)
    assert coverage([0.5, 2.0], None) == pytest.approx(0.75)
    assert coverage([0.0, 0.0], None) == 0.0


# --------------------------------------------------------------------------- a fake sweep


def probe(kind: str, type_: int | None, score: bool, **specificity: float | None) -> dict:
    return {
        "kind": kind,
        "type": type_,
        "score": score,
        "pre_correct": True,
        "post_correct": score,
        "specificity": specificity or None,
    }


def job_records(strength: float) -> list[dict[str, Any]]:
    """Records whose locality improves with the preservation strength (0 = weak, 1 = strong)."""
    records = []
    for i, attribute in enumerate(("Animal", "Gender")):
        regularizer = (1.0 - strength) * (1 + i)
        records.append(
            {
                "protocol": "single",
                "case_id": f"case{i}",
                "attribute": attribute,
                "edit": {
                    "steps": 3,
                    "extras": {
                        "regularizer/layer1": regularizer,
                        "regularizer/layer2": 2 * regularizer,
                        "regularizer/mean": 1.5 * regularizer,
                    },
                },
                "probes": [
                    probe("reliability", None, strength < 0.9),
                    probe(
                        "locality_audio",
                        2,
                        strength > 0.3,
                        kl=1.0 - strength,
                        top1=100.0 * strength,
                        top5=50.0 + 50 * strength,
                        top10=100.0,
                        s_acc=float(strength > 0.5),
                        t_acc=strength,
                        c_acc=1.0,
                    ),
                ],
            }
        )
    return records


def write_job(root: Path, number: int, method: dict[str, Any], records: list[dict]) -> Path:
    directory = root / f"{number}_{method['name']}_tiny_sake"
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(OmegaConf.to_yaml({"method": method, "seed": 0}))
    with open(directory / RECORDS_FILE, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return directory


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    for number, lam in enumerate(LAMBDAS):
        method = {"name": "memit", "lam": lam, "layers": [1, 2], "seed": 0}
        write_job(root, number, method, job_records(strength=number / (len(LAMBDAS) - 1)))
    return root


def test_analysis_relates_every_metric_to_the_measured_regularizer(sweep: Path) -> None:
    analysis = analyse_sweep(sweep)
    assert analysis.parameter == "lam" and analysis.regularizer_source == "measured"
    assert [job.value for job in analysis.jobs] == list(LAMBDAS)
    assert analysis.jobs[0].regularizer == pytest.approx(
        {"layer1": 1.5, "layer2": 3.0, "mean": 2.25}
    )
    by_id = {s.metric.id: s for s in analysis.sensitivities}
    assert by_id["kl"].tau == pytest.approx(1.0)  # KL falls with the regularizer
    assert by_id["top1"].tau == pytest.approx(-1.0)
    assert by_id["t_acc"].tau == pytest.approx(-1.0)
    assert math.isnan(by_id["top10"].tau) and by_id["top10"].coverage == 0.0
    assert by_id["top1"].coverage == pytest.approx(1.0)
    assert by_id["top5"].coverage == pytest.approx(0.5)
    assert by_id["kl"].coverage == pytest.approx(1.0)  # unbounded: relative to the largest
    assert by_id["t_acc"].std == pytest.approx(float(np.std([0, 1 / 3, 2 / 3, 1])))
    assert by_id["efficacy"].n == len(LAMBDAS)
    columns, rows = table(analysis)
    assert columns[:4] == ["lam", "reg/layer1", "reg/layer2", "reg/mean"]
    assert [row[0] for row in rows] == list(LAMBDAS)
    assert columns[4:] == [metric.label for metric in TRACKED]


def test_without_a_reported_regularizer_the_swept_value_stands_in(tmp_path: Path) -> None:
    for number, alpha in enumerate((1.0, 2.0, 4.0)):
        records = job_records(strength=number / 2)
        for record in records:
            record["edit"].pop("extras")
        write_job(tmp_path, number, {"name": "ft", "alpha": alpha}, records)
    analysis = analyse_sweep(tmp_path)
    assert analysis.regularizer_source == "value" and analysis.parameter == "alpha"
    by_id = {s.metric.id: s for s in analysis.sensitivities}
    assert by_id["kl"].tau == pytest.approx(-1.0)


def test_the_swept_parameter_must_be_unambiguous(tmp_path: Path) -> None:
    assert swept_parameter([{"lam": 1.0, "name": "m"}, {"lam": 2.0, "name": "m"}]) == "lam"
    with pytest.raises(ValueError, match="task.param"):
        swept_parameter([{"lam": 1.0, "v_lr": 0.1}, {"lam": 2.0, "v_lr": 0.2}])
    with pytest.raises(ValueError, match="task.param"):
        swept_parameter([{"lam": 1.0}, {"lam": 1.0}])
    with pytest.raises(FileNotFoundError, match="at least two"):
        analyse_sweep(tmp_path)


def test_mean_regularizer_skips_records_without_one() -> None:
    records = [
        {"edit": {"extras": {"regularizer/mean": 1.0, "shift/nll": 0.1}}},
        {"edit": {"extras": {"regularizer/mean": 3.0}}},
        {"edit": {}},
    ]
    assert mean_regularizer(records) == {"mean": 2.0}


def test_task_writes_markdown_json_plot_and_logs_them(
    compose_cfg, sweep: Path, tmp_path: Path
) -> None:
    logged_to = tmp_path / "tracker.json"
    cfg = compose_cfg(
        "evaluate",
        [
            "task=lambda_sweep",
            f"sweep={sweep}",
            "logger=none",
            "logger._target_=lalm_fixtures.FileTracker",
            f"+logger.path={logged_to}",
        ],
    )
    metrics = run_task(cfg)
    run_dir = Path(cfg.paths.output_dir)
    report = (run_dir / "lambda_sweep.md").read_text()
    assert "| lam | reg/layer1 | reg/layer2 | reg/mean |" in report
    assert "| KL | 1 | 1 | " in report
    saved = json.loads((run_dir / "lambda_sweep.json").read_text())
    assert saved["sensitivity"]["top10"]["kendall_tau"] is None
    assert saved["sensitivity"]["kl"]["kendall_tau"] == pytest.approx(1.0)
    assert (run_dir / "lambda_sweep.png").stat().st_size > 1000
    assert metrics["sweep/kl/tau"] == pytest.approx(1.0)
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    logged = json.loads(logged_to.read_text())
    assert logged["summary"] == metrics
    assert len(logged["tables"]["lambda_sweep/table"]["rows"]) == len(LAMBDAS)


def test_task_asks_for_the_sweep_directory(compose_cfg) -> None:
    with pytest.raises(ValueError, match="sweep=outputs/edit/multirun"):
        run_task(compose_cfg("evaluate", ["task=lambda_sweep", "logger=none"]))


# --------------------------------------------------------------------------- a real sweep


def test_memit_jobs_of_the_edit_task_form_a_sweep(
    compose_cfg, tmp_path_factory: pytest.TempPathFactory
) -> None:
    release = edit_release(tmp_path_factory.mktemp("release"))
    root = tmp_path_factory.mktemp("sake")
    write_release(release.splits, release.sequences, root)
    shutil.copytree(release.audio_root, root / "audio")
    weights = save_model_dir(make_lalm(make_tokenizer(release)), root.parent / "weights")
    sweep = tmp_path_factory.mktemp("multirun")
    for number, lam in enumerate((1e-2, 1e2)):
        cfg = compose_cfg(
            "edit",
            [
                "task=edit",
                "logger=none",
                "dataset=sake",
                f"dataset.root={root}",
                "dataset.limit=2",
                f"model.weights_dir={weights}",
                "eval.max_new_tokens=3",
                "method=memit",
                "method.layers=[0]",
                "method.v_steps=3",
                f"method.lam={lam}",
            ],
        )
        cfg.paths.output_dir = str(sweep / f"{number}_memit")
        run_task(cfg)
    analysis = analyse_sweep(sweep)
    assert analysis.parameter == "lam" and [job.value for job in analysis.jobs] == [1e-2, 1e2]
    assert all("single/reliability" in job.metrics for job in analysis.jobs)
    assert (sweep / "0_memit" / "config.yaml").is_file()
