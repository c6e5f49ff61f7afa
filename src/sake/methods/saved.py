"""Edits that can be kept: what one edit (or one sequence of edits) changed, in one file.

A saved edit is a safetensors file holding the edited values of exactly the tensors the edit
changed (the touched tensors of FT, KE, MEND, UnKE, MEMIT; none for in-context editors), and
in its metadata the model's fingerprint, the model and method configs, the edited case ids
and the editor's state (the applied edits, an in-context editor's demonstrations). Values
rather than differences are kept so that applying an edit to the weights it was made on
gives back the edited model bit for bit; the fingerprint check refuses any other weights.

`apply_saved_edit` writes the values into a freshly loaded model and gives an editor holding
the saved state, whose `context()` every query must carry (in-context methods keep their edit
there); an editor whose edits act through hooks at inference (GRACE's codebook, WISE's routed
side memories, both kept in the editor state) is attached to the model first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from sake.methods.base import AttachableEditor, Editor, WeightSnapshot, build_editor
from sake.models.base import LALM
from sake.utils.tensors import decode_tensor, encode_tensor, is_encoded_tensor

METADATA_KEY = "sake_edit"
STATE_PREFIX = "state/"  # file tensors of the editor state (a memory, a codebook)
STATE_REFERENCE = "tensor"
FORMAT_VERSION = 1


class SavedEditMismatchError(ValueError):
    """A saved edit made on other weights than the model it is applied to."""


@dataclass(frozen=True)
class SavedEdit:
    """The tensors an edit changed (qualified parameter name -> edited value) and its origin."""

    tensors: dict[str, Tensor]
    fingerprint: str
    model: str
    method: dict[str, Any]
    case_ids: tuple[str, ...]
    editor_state: dict[str, Any]
    sequence: int | None = None

    @property
    def method_name(self) -> str:
        return str(self.method.get("name", "?"))


def edited_values(snapshot: WeightSnapshot | None) -> dict[str, Tensor]:
    """The current values of the parameters the edit changed, as contiguous CPU copies."""
    if snapshot is None:
        return {}
    current = snapshot.current()
    return {name: current[name].detach().contiguous().cpu().clone() for name in snapshot.changed()}


def save_edit(path: Path, edit: SavedEdit) -> Path:
    """Write `edit` to `path` (safetensors; the origin in the metadata as JSON, the tensors of
    the editor state among the file's tensors under `state/<k>`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state_tensors: dict[str, Tensor] = {}
    origin = {
        "format": FORMAT_VERSION,
        "fingerprint": edit.fingerprint,
        "model": edit.model,
        "method": edit.method,
        "case_ids": list(edit.case_ids),
        "editor_state": tensors_out(edit.editor_state, state_tensors),
        "sequence": edit.sequence,
    }
    tensors = {**edit.tensors, **state_tensors}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(origin)})
    return path


def tensors_out(tree: Any, store: dict[str, Tensor]) -> Any:
    """`tree` with every encoded tensor moved into `store` (as `state/<k>`), a reference left."""
    if is_encoded_tensor(tree):
        name = f"{STATE_PREFIX}{len(store)}"
        store[name] = decode_tensor(tree).contiguous()
        return {STATE_REFERENCE: name}
    if isinstance(tree, dict):
        return {key: tensors_out(value, store) for key, value in tree.items()}
    if isinstance(tree, list):
        return [tensors_out(item, store) for item in tree]
    return tree


def tensors_in(tree: Any, store: Mapping[str, Tensor]) -> Any:
    """The inverse of `tensors_out`: references replaced by the encoded tensors again."""
    if isinstance(tree, dict) and set(tree) == {STATE_REFERENCE}:
        return encode_tensor(store[tree[STATE_REFERENCE]])
    if isinstance(tree, dict):
        return {key: tensors_in(value, store) for key, value in tree.items()}
    if isinstance(tree, list):
        return [tensors_in(item, store) for item in tree]
    return tree


def read_saved_edit(path: Path) -> SavedEdit:
    """A saved edit from `path`; a file that is not one gets a message saying what it is."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"no saved edit at {path}; `python edit.py ... save_edits=true` writes them under "
            "<run>/edits/"
        )
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if METADATA_KEY not in metadata:
            raise ValueError(f"{path} is a safetensors file but not a saved edit")
        stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    origin = json.loads(metadata[METADATA_KEY])
    tensors = {name: value for name, value in stored.items() if not name.startswith(STATE_PREFIX)}
    return SavedEdit(
        tensors=tensors,
        fingerprint=str(origin["fingerprint"]),
        model=str(origin["model"]),
        method=dict(origin["method"]),
        case_ids=tuple(origin["case_ids"]),
        editor_state=tensors_in(dict(origin["editor_state"]), stored),
        sequence=origin.get("sequence"),
    )


def apply_saved_edit(lalm: LALM, edit: SavedEdit) -> tuple[Editor, WeightSnapshot]:
    """Write `edit` into `lalm`; the editor holding its state, and the snapshot undoing it.

    Raises SavedEditMismatchError when the model's fingerprint is not the one the edit was
    made on.
    """
    found = lalm.fingerprint()
    if found != edit.fingerprint:
        raise SavedEditMismatchError(
            f"this edit was made on weights with fingerprint {edit.fingerprint} "
            f"({edit.model}), the loaded model's is {found}; load the model it was made on"
        )
    parameters = dict(lalm.model.named_parameters())
    unknown = sorted(set(edit.tensors) - set(parameters))
    if unknown:
        raise SavedEditMismatchError(f"the model has no parameters {unknown[:5]}")
    touched = {name: parameters[name] for name in edit.tensors}
    snapshot = WeightSnapshot.take(touched)
    with torch.no_grad():
        for name, value in edit.tensors.items():
            touched[name].copy_(value.to(touched[name].device))
    editor = build_editor(edit.method)
    if isinstance(editor, AttachableEditor):
        editor.attach(lalm)
    editor.state.load_state_dict(edit.editor_state)
    return editor, snapshot


@dataclass(frozen=True)
class EditSaver:
    """Writes every edit of a run under `directory` (`save_edits=true`)."""

    directory: Path
    fingerprint: str
    model: str
    method: dict[str, Any]

    def save(
        self,
        snapshot: WeightSnapshot | None,
        editor: Editor,
        case_ids: Sequence[str],
        sequence: int | None = None,
    ) -> Path:
        """The edit that `snapshot` undoes (one case's, or a sequence's so far), with the
        editor's state, as `<directory>/<case id or sequence_k>.safetensors`."""
        edit = SavedEdit(
            tensors=edited_values(snapshot),
            fingerprint=self.fingerprint,
            model=self.model,
            method=self.method,
            case_ids=tuple(case_ids),
            editor_state=editor.state.state_dict(),
            sequence=sequence,
        )
        return save_edit(self.directory / edit_file_name(case_ids, sequence), edit)


def edit_file_name(case_ids: Sequence[str], sequence: int | None = None) -> str:
    """Where under `<run>/edits/` an edit goes: its case id, or its sequence's number."""
    stem = f"sequence_{sequence}" if sequence is not None else case_ids[0]
    return stem.replace("/", "__") + ".safetensors"
