"""Minimal ctypes binding to the libespeak-ng shipped in the `espeakng-loader` wheel.

The wheel carries both the shared library and its data directory, so synthesis works without
any system package. espeak runs in synchronous mode: `espeak_Synth` returns only after the
synth callback has received every int16 sample and word event of the utterance.

espeak keeps hidden per-process state between utterances (the phase of its pitch-flutter
table, a glottal-cycle counter, automatic-gain memory) in function-local statics that no API
call resets, so the same request gives slightly different samples depending on what was
spoken before. To make output a pure function of its inputs, every call loads a fresh
instance of the library, initialises it, synthesises, and unloads it again (about 1 ms of
overhead); nothing survives from one call to the next. The library must therefore not be
held open elsewhere in the same process.
"""

from __future__ import annotations

import _ctypes
import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

NATIVE_SAMPLE_RATE = 22050

RATE_LIMITS = (80, 450)
PITCH_LIMITS = (0, 100)
RANGE_LIMITS = (0, 100)
VOLUME_LIMITS = (0, 200)
WORD_GAP_LIMITS = (0, 100)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
_EE_OK = 0

_LOAD_LOCK = threading.Lock()


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class EspeakError(RuntimeError):
    """espeak-ng refused a request (unknown voice, failed initialisation, synthesis error)."""


@dataclass(frozen=True)
class VoiceSettings:
    """Everything espeak needs for one utterance.

    `language` and `variant` name files of espeak-ng-data (`voices/!v/<variant>`); the numeric
    fields are espeak's own units (words per minute, 0-100 pitch and range, 0-200 volume,
    word gap in 10 ms units) and are clamped to espeak's limits. `seed` drives espeak's
    internal noise source (breathy variants).
    """

    language: str
    variant: str
    rate: int
    pitch: int
    pitch_range: int
    volume: int = 100
    word_gap: int = 0
    seed: int = 0


@dataclass(frozen=True)
class WordEvent:
    """A word boundary reported by espeak: where the word starts in the text and in the audio."""

    char_start: int
    start_s: float


@dataclass(frozen=True)
class Synthesis:
    """Raw espeak output: float32 samples in [-1, 1] at `sample_rate`, plus word events."""

    audio: np.ndarray
    sample_rate: int
    words: tuple[WordEvent, ...]


def synthesize(text: str, settings: VoiceSettings) -> Synthesis:
    """Synthesize `text` with espeak-ng at its native rate (22050 Hz)."""
    chunks: list[np.ndarray] = []
    events: list[tuple[int, int]] = []

    def collect(wav, num_samples, event_list) -> int:
        if num_samples > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        index = 0
        while event_list[index].type != _EVENT_LIST_TERMINATED:
            event = event_list[index]
            if event.type == _EVENT_WORD:
                events.append((event.text_position, event.audio_position))
            index += 1
        return 0

    callback = _SynthCallback(collect)
    encoded = text.encode("utf-8")
    with _fresh_library() as (lib, sample_rate):
        lib.espeak_SetSynthCallback(callback)
        _apply_settings(lib, settings)
        status = lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
    if status != _EE_OK:
        raise EspeakError(f"espeak_Synth failed with code {status}")
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    audio = samples.astype(np.float32) / 32768.0
    return Synthesis(audio, sample_rate, _word_events(events))


@contextmanager
def _fresh_library() -> Iterator[tuple[ctypes.CDLL, int]]:
    """Load, initialise and finally unload a private instance of libespeak-ng."""
    import espeakng_loader

    with _LOAD_LOCK:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        try:
            _declare_signatures(lib)
            data_path = espeakng_loader.get_data_path().encode()
            sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
            if sample_rate <= 0:
                raise EspeakError(f"espeak_Initialize failed with code {sample_rate}")
            try:
                yield lib, int(sample_rate)
            finally:
                lib.espeak_Terminate()
        finally:
            _unload(lib)


def _unload(lib: ctypes.CDLL) -> None:
    close = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary
    close(lib._handle)


def _declare_signatures(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int


def _apply_settings(lib: ctypes.CDLL, settings: VoiceSettings) -> None:
    voice = f"{settings.language}+{settings.variant}" if settings.variant else settings.language
    if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
        raise EspeakError(f"espeak has no voice {voice!r}")
    lib.espeak_ng_SetRandSeed(settings.seed)
    for parameter, value, limits in (
        (_PARAM_RATE, settings.rate, RATE_LIMITS),
        (_PARAM_PITCH, settings.pitch, PITCH_LIMITS),
        (_PARAM_RANGE, settings.pitch_range, RANGE_LIMITS),
        (_PARAM_VOLUME, settings.volume, VOLUME_LIMITS),
        (_PARAM_WORDGAP, settings.word_gap, WORD_GAP_LIMITS),
    ):
        clamped = int(min(max(value, limits[0]), limits[1]))
        if lib.espeak_SetParameter(parameter, clamped, 0) != _EE_OK:
            raise EspeakError(f"espeak rejected parameter {parameter}={clamped}")


def _word_events(events: list[tuple[int, int]]) -> tuple[WordEvent, ...]:
    """Convert espeak's (1-based character position, milliseconds) pairs to word events."""
    return tuple(
        WordEvent(max(position - 1, 0), audio_ms / 1000.0) for position, audio_ms in events
    )
