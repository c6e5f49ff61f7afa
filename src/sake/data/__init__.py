"""The data layer: SAKE schema, readers and writers, construction rules, audio I/O."""

from sake.data.audio import SAMPLE_RATE, read_audio, write_audio
from sake.data.errors import DataError, MissingAudioError
from sake.data.options import answer_in_options, parse_options
from sake.data.readers import (
    SakeRelease,
    load_release,
    read_cases,
    read_flat_cases,
    read_nested_cases,
    read_sequences,
)
from sake.data.rules import RuleConfig, check_rules
from sake.data.schema import ATTRIBUTES, LABELS, EditCase, Probe, ProbeKind, Sequence
from sake.data.writers import write_flat_cases, write_nested_cases, write_release, write_sequences

__all__ = [
    "ATTRIBUTES",
    "LABELS",
    "SAMPLE_RATE",
    "DataError",
    "EditCase",
    "MissingAudioError",
    "Probe",
    "ProbeKind",
    "RuleConfig",
    "SakeRelease",
    "Sequence",
    "answer_in_options",
    "check_rules",
    "load_release",
    "parse_options",
    "read_audio",
    "read_cases",
    "read_flat_cases",
    "read_nested_cases",
    "read_sequences",
    "write_audio",
    "write_flat_cases",
    "write_nested_cases",
    "write_release",
    "write_sequences",
]
