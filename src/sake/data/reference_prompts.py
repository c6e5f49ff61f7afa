"""The SAKE reference's prompt texts, read from a file the user provides (never shipped).

The reference judge's prompts, IKE's system prompt and the reference's prompt layouts are the
SAKE authors' wording. The project reads them from a JSON file named in the config
(`paths.reference_prompts`): ``{"source": ..., "prompts": {key: {"text", "path", "commit",
"note"}}, "settings": {...}}``. Users write that file from their own checkout of the
reference with

    python -m sake.data.reference_prompts --checkout <EasyEdit checkout> --out <file>

which reads each prompt out of the reference's Python source (its string and f-string
literals, placeholders kept as ``{name}``), without running any of it.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sake.utils.errors import UserError

REFERENCE_REPOSITORY = "ckyang1124/EasyEdit"
WRITE_COMMAND = "python -m sake.data.reference_prompts --checkout <EasyEdit checkout> --out {path}"


class ReferencePromptsError(UserError, FileNotFoundError):
    """The reference prompt file is missing, unreadable, or lacks a prompt."""


@dataclass(frozen=True)
class ReferencePrompts:
    """Prompt texts by key, with where each came from."""

    path: Path
    prompts: Mapping[str, Mapping[str, Any]]
    settings: Mapping[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> ReferencePrompts:
        path = Path(path)
        if not path.is_file():
            raise ReferencePromptsError(
                f"the SAKE reference's prompt file {path} does not exist. The project does not "
                f"ship the reference's wording: write the file from your checkout of "
                f"{REFERENCE_REPOSITORY} with `{WRITE_COMMAND.format(path=path)}`, or point "
                "paths.reference_prompts at an existing one"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            prompts = data["prompts"]
        except (ValueError, KeyError, TypeError) as error:
            raise ReferencePromptsError(
                f"{path} is not a reference prompt file ({error}); write it again with "
                f"`{WRITE_COMMAND.format(path=path)}`"
            ) from None
        return cls(path, prompts, data.get("settings", {}))

    def text(self, key: str) -> str:
        """The prompt text of `key`, placeholders as `{name}`."""
        entry = self.prompts.get(key)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("text"), str):
            raise ReferencePromptsError(
                f"{self.path} holds no prompt {key!r}; write the file again with "
                f"`{WRITE_COMMAND.format(path=self.path)}`"
            )
        return entry["text"]


def fill(template: str, **values: str) -> str:
    """Substitute `{name}` placeholders (each value inserted once, never re-read), leaving
    every other brace of the template alone."""
    for name in values:
        template = template.replace("{" + name + "}", "\0" + name + "\0")
    for name, value in values.items():
        template = template.replace("\0" + name + "\0", value)
    return template


# --------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class PromptSource:
    """Where one prompt lives in the reference: a file, a function and the name it is bound to
    there (the n-th such binding when a function binds it several times)."""

    path: str
    function: str | None  # None: a module-level binding
    variable: str
    occurrence: int = 0
    entry: str | None = None  # the binding is a dict literal: this key's value


PROMPT_SOURCES: dict[str, PromptSource] = {
    "judge_correctness_single": PromptSource(
        "model_outputs/llm_evaluator_single.py", "llm_judge_correctness", "prompt"
    ),
    "judge_consistency_single": PromptSource(
        "model_outputs/llm_evaluator_single.py", "llm_judge_consistency", "prompt"
    ),
    "judge_consistency_context_part_single": PromptSource(
        "model_outputs/llm_evaluator_single.py", "llm_judge_consistency", "context_part"
    ),
    "judge_correctness_sequential": PromptSource(
        "model_outputs/llm_evaluator_sequential.py", "llm_judge_correctness", "prompt"
    ),
    "judge_consistency_sequential": PromptSource(
        "model_outputs/llm_evaluator_sequential.py", "llm_judge_consistency", "prompt"
    ),
    "ike_system": PromptSource(
        "easyeditor/dataset/LALM_edit_dataset.py", None, "IKE_SYSTEM_PROMPT"
    ),
    "ike_rule_format": PromptSource(
        "easyeditor/dataset/LALM_edit_dataset.py", "generate_ike_response", "edit_strs"
    ),
    "judge_text_portability": PromptSource(
        "model_outputs/llm_evaluator_text_based_portability.py", "llm_judge_correctness", "prompt"
    ),
    "ike_rule_format_unquoted_text_portability": PromptSource(
        "text_based_portability.py", "generate", "edits"
    ),
    "text_portability_query_template": PromptSource(
        "text_based_portability.py", None, "query_template"
    ),
    **{
        f"text_portability_caption_{attribute.lower()}": PromptSource(
            "text_based_portability.py", None, "caption_templates", entry=attribute
        )
        for attribute in ("Gender", "Language", "Emotion", "Animal")
    },
}


def template_text(node: ast.expr) -> str | None:
    """The text of a string or f-string literal with each placeholder written `{name}`;
    for `a if cond else b`, the text of `a`; for `[x for ...]`, the text of `x`. None for
    anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.IfExp):
        return template_text(node.body)
    if isinstance(node, ast.ListComp):
        return template_text(node.elt)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append("{" + ast.unparse(value.value) + "}")
        return "".join(parts)
    return None


def bound_text(node: ast.expr, entry: str | None) -> str | None:
    """The text of a bound value, or of its `entry` when it is a dict literal."""
    if entry is None:
        return template_text(node)
    if isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == entry:
                return template_text(value)
    return None


def extract_prompt(source: str, where: PromptSource) -> str:
    """The text bound to `where.variable` inside `where.function` (or at module level) of a
    module's source; the first such function that binds it wins."""
    tree = ast.parse(source)
    scopes: list[ast.AST] = (
        [tree]
        if where.function is None
        else [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == where.function
        ]
    )
    for scope in scopes:
        nodes = ast.iter_child_nodes(scope) if where.function is None else ast.walk(scope)
        found = [
            text
            for node in nodes
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == where.variable for t in node.targets)
            and (text := bound_text(node.value, where.entry)) is not None
        ]
        if len(found) > where.occurrence:
            return found[where.occurrence]
    place = "module level" if where.function is None else f"{where.function}()"
    raise ValueError(
        f"{where.path}: no string bound to {where.variable!r} at {place}; "
        "is this a checkout of the SAKE reference?"
    )


def commit_of(checkout: Path) -> str | None:
    """The checkout's HEAD commit, when it is a git work tree."""
    try:
        result = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip() or None


def write_prompt_file(checkout: Path, out: Path) -> dict[str, Any]:
    """Extract every prompt of `PROMPT_SOURCES` from a checkout into `out`; return the data."""
    commit = commit_of(checkout)
    prompts: dict[str, Any] = {}
    for key, where in PROMPT_SOURCES.items():
        file = checkout / where.path
        if not file.is_file():
            raise FileNotFoundError(
                f"{file} is missing; is {checkout} a checkout of the reference?"
            )
        text = extract_prompt(file.read_text(encoding="utf-8"), where)
        prompts[key] = {"text": text, "path": where.path, "commit": commit}
    data = {"source": REFERENCE_REPOSITORY, "prompts": prompts, "settings": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sake.data.reference_prompts",
        description="Write the SAKE reference's prompt file from a checkout of the reference.",
    )
    parser.add_argument("--checkout", type=Path, required=True, help="EasyEdit checkout")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args(argv)
    try:
        data = write_prompt_file(args.checkout, args.out)
    except (OSError, ValueError, SyntaxError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(data['prompts'])} prompts to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
