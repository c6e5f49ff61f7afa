"""Editors: one small file per method, one protocol for all (see `sake.methods.base`)."""

from sake.methods.base import (
    Editor,
    EditorState,
    EditOutcome,
    QueryContext,
    WeightSnapshot,
    build_editor,
)

__all__ = [
    "EditOutcome",
    "Editor",
    "EditorState",
    "QueryContext",
    "WeightSnapshot",
    "build_editor",
]
