"""Detecting degenerate outputs: the repetition loops and blank answers that edits can cause.

An edit that breaks a model rarely makes it answer wrongly but fluently; it makes it loop
("henhenhen…", "angry.angry.angry.", "Alf Ross's student, Alf Ross's student, …"), stall on
one character, or say nothing. SAKE reports the share of such outputs per method (its Table
18); this module decides, for one output, whether it is degenerate and why.

Rules, checked in this order; the first that fires is `Degeneration.reason`:

1. ``empty``: nothing but whitespace.
2. ``newline_run``: at least `min_newline_run` line breaks in a row (blank lines between
   them count; ordinary prose has at most one blank line between paragraphs).
3. ``character_run``: one non-whitespace character at least `min_character_run` times in a
   row ("!!!!…", "KKKK…"). Binary numbers and Markdown table rules stay far below it.
4. ``repeated_unit``: a unit of at most `max_unit_length` non-space characters, containing a
   letter, written back to back at least `min_unit_repeats` times over at least
   `min_unit_span` characters ("henhenhen…", "KwellKwell…", "cat.cat.cat.cat."). Units
   without a letter ("|---", "0 & ") are left alone: tables and formulas repeat them.
5. ``repeated_ngram``: the same run of 1 to `max_ngram` words written back to back, the
   repeats together spanning at least `min_ngram_words` words, with at least
   `min_ngram_repeats` repeats ("hen hen hen …", "is a cat, is a cat, is a cat").
   Only n-grams with a word of two or more letters count, and a repeat never reaches across
   a symbol other than plain punctuation, so truth tables ("T | T | T"), sums ("0 + 0 + 0")
   and algebra ("(m + n + mn) • p") are not loops.
6. ``dominant_ngram``: in an output of at least `min_dominance_words` words, one n-gram of
   `dominance_ngram` words (again with a real word in it) occurs so often, even apart, that
   its occurrences cover at least `min_dominance` of all words.

Words are maximal runs of letters and digits, case-folded; plain punctuation between them
(.,;:!?'"…-) is ignored, so "Woof! woof, WOOF" repeats one word three times, while any
other symbol (| + = * / ( ) …) separates them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_WORD_OR_SYMBOL = re.compile(r"(?P<word>[^\W_]+)|[^\w\s.,;:!?'’\"“”…-]")
_LETTERS = re.compile(r"[^\W\d_]")
_REAL_WORD = re.compile(r"[^\W\d_]{2}")


@dataclass(frozen=True)
class DegenerationRules:
    """Thresholds of the rules in the module docstring."""

    min_newline_run: int = 4
    min_character_run: int = 24
    max_unit_length: int = 12
    min_unit_repeats: int = 4
    min_unit_span: int = 16
    max_ngram: int = 4
    min_ngram_words: int = 8
    min_ngram_repeats: int = 3
    dominance_ngram: int = 3
    min_dominance: float = 0.5
    min_dominance_words: int = 24


@dataclass(frozen=True)
class Degeneration:
    """Whether one output is degenerate, which rule said so, and the text that triggered it."""

    reason: str | None
    evidence: str = ""

    @property
    def degenerate(self) -> bool:
        return self.reason is not None


def detect_degeneration(output: str, rules: DegenerationRules | None = None) -> Degeneration:
    """Apply the rules in order; the first that fires names the reason."""
    rules = rules or DegenerationRules()
    if not output.strip():
        return Degeneration("empty")
    words = _words(output)
    checks = (
        ("newline_run", lambda: _newline_run(output, rules)),
        ("character_run", lambda: _character_run(output, rules)),
        ("repeated_unit", lambda: _repeated_unit(output, rules)),
        ("repeated_ngram", lambda: _repeated_ngram(words, rules)),
        ("dominant_ngram", lambda: _dominant_ngram(words, rules)),
    )
    for reason, check in checks:
        evidence = check()
        if evidence is not None:
            return Degeneration(reason, evidence)
    return Degeneration(None)


def is_degenerate(output: str, rules: DegenerationRules | None = None) -> bool:
    return detect_degeneration(output, rules).degenerate


def degeneration_ratio(outputs: Iterable[str], rules: DegenerationRules | None = None) -> float:
    """Share of degenerate outputs (SAKE's Table 18); 0.0 for no outputs."""
    flags = [is_degenerate(output, rules) for output in outputs]
    return sum(flags) / len(flags) if flags else 0.0


def _words(output: str) -> tuple[str | None, ...]:
    """Case-folded words, with None wherever a symbol separates them."""
    return tuple(
        None if match.group("word") is None else match.group("word").casefold()
        for match in _WORD_OR_SYMBOL.finditer(output)
    )


def _newline_run(output: str, rules: DegenerationRules) -> str | None:
    pattern = rf"(?:\n[ \t\r]*){{{rules.min_newline_run},}}"
    match = re.search(pattern, output)
    return None if match is None else match.group()


def _character_run(output: str, rules: DegenerationRules) -> str | None:
    match = re.search(rf"(\S)\1{{{rules.min_character_run - 1},}}", output)
    return None if match is None else match.group()


def _repeated_unit(output: str, rules: DegenerationRules) -> str | None:
    """The first back-to-back repetition of a short unit that contains a letter."""
    pattern = re.compile(
        rf"(?=((\S{{1,{rules.max_unit_length}}}?)\2{{{rules.min_unit_repeats - 1},}}))"
    )
    for match in pattern.finditer(output):
        repeated, unit = match.group(1), match.group(2)
        if len(repeated) >= rules.min_unit_span and _LETTERS.search(unit):
            return repeated
    return None


def _repeated_ngram(words: Sequence[str | None], rules: DegenerationRules) -> str | None:
    """The first n-gram (shortest n first) repeated back to back beyond the thresholds."""
    for size in range(1, rules.max_ngram + 1):
        needed = max(rules.min_ngram_repeats, -(-rules.min_ngram_words // size))
        for start in range(len(words) - size * needed + 1):
            gram = words[start : start + size]
            if not _has_real_word(gram):
                continue
            repeats = _repeats_from(words, start, size)
            if repeats >= needed:
                return " ".join(words[start : start + size * repeats])
    return None


def _repeats_from(words: Sequence[str | None], start: int, size: int) -> int:
    gram = words[start : start + size]
    repeats = 1
    while words[start + size * repeats : start + size * (repeats + 1)] == gram:
        repeats += 1
    return repeats


def _dominant_ngram(words: Sequence[str | None], rules: DegenerationRules) -> str | None:
    """The most frequent real-word n-gram, if its occurrences cover enough of the words."""
    size = rules.dominance_ngram
    if len(words) < max(rules.min_dominance_words, size):
        return None
    grams = Counter(tuple(words[start : start + size]) for start in range(len(words) - size + 1))
    for gram, _ in grams.most_common():
        if _has_real_word(gram):
            covered = _covered_words(words, gram)
            return " ".join(gram) if covered / len(words) >= rules.min_dominance else None
    return None


def _covered_words(words: Sequence[str | None], gram: tuple[str | None, ...]) -> int:
    """Words inside non-overlapping occurrences of `gram`, scanned left to right."""
    covered = position = 0
    size = len(gram)
    while position <= len(words) - size:
        if tuple(words[position : position + size]) == gram:
            covered += size
            position += size
        else:
            position += 1
    return covered


def _has_real_word(gram: Sequence[str | None]) -> bool:
    """No symbol inside, and at least one word of two or more letters."""
    return None not in gram and any(_REAL_WORD.search(word) for word in gram)
