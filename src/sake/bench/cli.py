"""The command line of `python -m sake.bench`.

    python -m sake.bench [--methods ft_audio,ft_llm,i_ike] [--protocols single,sequential]
                         [--cases 4] [--sequences 1] [--model desta_tiny] [--dataset sake_synth]
                         [--split test] [--threads N] [--pre-edit shared|cold|warm]
                         [HYDRA_OVERRIDE ...]

The model, dataset, methods and evaluation settings are composed from the project's configs
exactly as `python edit.py` composes them (`configs/edit.yaml`), so any Hydra override of an
edit run applies here too (`eval.max_new_tokens=16`, `dataset.scale=small`, `method.lr=…`).
Single-editing cases are spread evenly over the split, so that every attribute is edited;
sequences are the dataset's first ones. Progress goes to stderr; stdout gets the report and,
as its last line, the JSON summary.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from sake.bench.measure import PRE_EDIT_MODES, Workload, run_benchmark
from sake.bench.report import report_lines, summary_line
from sake.data.schema import EditCase
from sake.methods.base import Editor, build_editor
from sake.runner import PROTOCOLS, eval_settings
from sake.utils.resolvers import config_options, project_root, register_resolvers

DEFAULT_METHODS = ("ft_audio", "ft_llm", "i_ike")
DEFAULT_CASES = 4
DEFAULT_SEQUENCES = 1
T = TypeVar("T")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sake.bench",
        description=(
            "Edit the same cases with the project's runner and with a re-enactment of the "
            "reference SAKE protocol; print cases per second, the speed-up and whether every "
            "probe was judged the same way."
        ),
    )
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated")
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help="single-editing cases")
    parser.add_argument("--sequences", type=int, default=DEFAULT_SEQUENCES)
    parser.add_argument("--model", default="desta_tiny", help="a config in configs/model")
    parser.add_argument("--dataset", default="sake_synth", help="a config in configs/dataset")
    parser.add_argument("--split", default="test", help="the split single editing draws from")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--pre-edit",
        choices=PRE_EDIT_MODES,
        default="shared",
        help="shared: each protocol's pre-edit outputs are generated once, timed, into the "
        "on-disk cache every method's run reads, and each run is charged an equal share; "
        "cold: every run generates its own; warm: the shared cache is filled untimed",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/edit.yaml")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("sake.bench").setLevel(logging.INFO)
    methods = _names(args.methods)
    protocols = _names(args.protocols)
    _check_choices(methods, config_options("method"), "method", "--methods")
    _check_choices(protocols, list(PROTOCOLS), "protocol", "--protocols")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = perf_counter()
    configs = compose_configs(args, methods)
    cfg = configs[methods[0]]
    settings = eval_settings(cfg.eval)
    dataset = instantiate(cfg.dataset)
    workload = build_workload(dataset, args, protocols)
    lalm = instantiate(cfg.model.load)
    editors = build_editors(configs, lalm, dataset.release.splits.get("train", []))
    print(
        f"model {cfg.model.name}, dataset {cfg.dataset.name} ({args.split} split), "
        f"{len(workload.cases)} single cases, {len(workload.sequences)} sequences "
        f"({workload.edits('sequential')} cases), max_new_tokens {settings.max_new_tokens}, "
        f"batch size {settings.batch_size}, torch threads {torch.get_num_threads()}, "
        f"{args.pre_edit} pre-edit cache"
    )
    with tempfile.TemporaryDirectory(prefix="sake-bench-") as work_dir:
        benchmark = run_benchmark(
            lalm,
            editors,
            workload,
            settings,
            protocols=protocols,
            model_name=str(cfg.model.name),
            work_dir=Path(work_dir),
            audio_root=getattr(dataset, "audio_root", None),
            pre_edit=args.pre_edit,
        )
    for line in report_lines(benchmark):
        print(line)
    print(f"benchmark wall time {perf_counter() - started:.1f} s")
    print(summary_line(benchmark))
    return 0


def compose_configs(args: argparse.Namespace, methods: Sequence[str]) -> dict[str, DictConfig]:
    """The `edit` config for each method, with the chosen model, dataset and overrides."""
    register_resolvers()
    config_dir = project_root() / "configs"
    if not (config_dir / "edit.yaml").is_file():
        raise SystemExit(
            f"no project configs at {config_dir}; run the benchmark from the sake checkout"
        )
    common = [f"model={args.model}", f"dataset={args.dataset}", "logger=none", *args.overrides]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        configs = {name: compose("edit", overrides=[*common, f"method={name}"]) for name in methods}
    for cfg in configs.values():
        without_reference_prompts(cfg)
    return configs


def without_reference_prompts(cfg: DictConfig) -> None:
    """Let in-context methods state their edits in the project's words when the reference's
    prompt file is absent: the wording does not change what the benchmark times."""
    method = cfg.method
    if method.get("prompt") == "reference" and not Path(str(method.prompts_file)).is_file():
        logging.getLogger("sake.bench").info(
            "%s: no reference prompt file, timed with the project's prompt", method.name
        )
        method.prompt = "project"


def build_workload(dataset: Any, args: argparse.Namespace, protocols: Sequence[str]) -> Workload:
    """The cases and sequences the chosen protocols edit."""
    cases, sequences = [], []
    if "single" in protocols:
        cases = spread(dataset.cases(args.split), args.cases, "cases", "--cases")
    if "sequential" in protocols:
        sequences = first(dataset.sequences(), args.sequences, "sequences", "--sequences")
    return Workload(cases=tuple(cases), sequences=tuple(sequences))


def build_editors(
    configs: Mapping[str, DictConfig], lalm: Any, train_cases: Sequence[EditCase]
) -> list[Editor]:
    """One prepared editor per method, in the order given."""
    available = config_options("method")
    editors = [build_editor(cfg.method, available=available) for cfg in configs.values()]
    for editor in editors:
        editor.prepare(lalm, train_cases)
    return editors


def spread(items: Sequence[T], count: int, what: str, option: str) -> list[T]:
    """`count` items evenly spaced over `items` (the first one included), in order."""
    _check_count(len(items), count, what, option)
    return [items[index * len(items) // count] for index in range(count)]


def first(items: Sequence[T], count: int, what: str, option: str) -> list[T]:
    _check_count(len(items), count, what, option)
    return list(items[:count])


def _check_count(available: int, count: int, what: str, option: str) -> None:
    if count < 1 or count > available:
        raise SystemExit(
            f"{option} {count}: the dataset has {available} {what}; choose 1 to {available}, "
            "or drop the protocol with --protocols"
        )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _check_choices(chosen: Sequence[str], available: Sequence[Any], what: str, option: str) -> None:
    unknown = [name for name in chosen if name not in available]
    if unknown or not chosen:
        raise SystemExit(
            f"{option}: unknown or missing {what} {unknown or chosen}; choose from "
            f"{', '.join(map(str, available))}"
        )
