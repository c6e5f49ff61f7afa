"""Answer options of SAKE questions.

SAKE's own questions end with an `Options:` block, one option per line. Type-4 audio-locality
questions come verbatim from Dynamic-SUPERB tasks and name their options inline, in many
phrasings ("The answer could be spoofed or authentic.", "Choose from: 'Chorus', 'Delay'.",
"(A) ... (B) ..."), so those are recovered from the sentence that enumerates them.
"""

from __future__ import annotations

import re

OPTIONS_HEADER = "Options:\n"

_LETTERED = re.compile(r"\(([A-H])\)\s")
_QUOTED = re.compile(r"(?<![\w'])'([^'\n]+?)'(?![\w'])")
_BRACKETED = re.compile(r"<[a-z]+>")
_PARENTHETICAL = re.compile(r"\s*\([^()]*\)")
_SENTENCE_END = re.compile(r"(?<=[.?!;])\s+|\n+")
_LIST_SEPARATOR = re.compile(r"\s*,\s*")
_CONJUNCTION = re.compile(r"^(?:or|and)\s+", re.IGNORECASE)
_INNER_CONJUNCTION = re.compile(r"\s+(?:or|and)\s+", re.IGNORECASE)
_TWO_WAY = re.compile(
    r"\b(?:could be|with|between|either|is it)\s+([\w'-]+)\s+or\s+([\w'-]+)\b",
    re.IGNORECASE,
)
# Words after which an inline enumeration starts ("The answer could be x, y, or z"); an
# article right after the cue is skipped unless it is the option itself (the phone "a").
_LIST_CUE = re.compile(
    r"^.*(?:[:\u2014]|\b(?:be|include|includes|including|are|is it|is this sound|is|between|"
    r"either|as|from|in|to|by|within|feature|using|like|such as|with|list|options|genres|"
    r"choices|following)\b)"
    r"(?:\s+(?:an?|the)(?=\s+\S))?\s*",
    re.IGNORECASE,
)
# First words of a clause that follows the last option ("..., or rock. Multiple answers may
# apply" is split into sentences first; "..., pop, select one or more" is caught here).
_CLAUSE_STARTS = frozenset(
    {
        "select",
        "pick",
        "identify",
        "categorize",
        "classify",
        "choose",
        "there",
        "note",
        "you",
        "multiple",
    }
)
# Words that end the last option: "..., or synthetic instrument", "folk that apply".
_TRAILING_WORDS = frozenset({"in", "instrument", "source", "that", "which", "this", "to", "for"})
# Words that mark a comma-separated run of prose, not of options.
_PROSE_WORDS = frozenset({"which", "the", "this", "that", "please", "you", "your"})
_MAX_OPTION_WORDS = 4
_SPACING = re.compile(r"[_\-\s]+")
_STRIP_CHARS = " \t\n.?!;:\"'"


def parse_options(question: str) -> tuple[str, ...]:
    """Options offered by a question, in the order the question lists them."""
    if OPTIONS_HEADER in question:
        return _options_block(question)
    lettered = _lettered_options(question)
    if lettered:
        return lettered
    return _inline_options(question)


def question_stem(question: str) -> str:
    """The question without its `Options:` block."""
    return question.split(OPTIONS_HEADER, 1)[0].rstrip()


def normalise_option(text: str) -> str:
    """Comparison key for answers and options: case, underscores and spacing do not count."""
    return " ".join(_SPACING.sub(" ", text).strip(_STRIP_CHARS).casefold().split())


def answer_in_options(answer: str, options: tuple[str, ...]) -> bool:
    wanted = normalise_option(answer)
    return any(normalise_option(option) == wanted for option in options)


def _options_block(question: str) -> tuple[str, ...]:
    block = question.rsplit(OPTIONS_HEADER, 1)[1]
    return tuple(line.strip() for line in block.splitlines() if line.strip())


def _lettered_options(question: str) -> tuple[str, ...]:
    letters = tuple(dict.fromkeys(_LETTERED.findall(question)))
    expected = tuple("ABCDEFGH"[: len(letters)])
    return letters if len(letters) >= 2 and letters == expected else ()


def _inline_options(question: str) -> tuple[str, ...]:
    quoted = _QUOTED.findall(question)
    options = quoted if len(quoted) >= 2 else _enumerated_options(question)
    options += _BRACKETED.findall(question)
    return tuple(dict.fromkeys(option for option in options if option))


def _enumerated_options(question: str) -> list[str]:
    text = _PARENTHETICAL.sub("", question)
    lists = [_sentence_options(sentence.strip()) for sentence in _SENTENCE_END.split(text)]
    return next((options for options in reversed(lists) if options), [])


def _sentence_options(sentence: str) -> list[str]:
    """Options of an enumeration "cue first, second, ..., and/or last" in one sentence."""
    chunks = _LIST_SEPARATOR.split(sentence.strip(_STRIP_CHARS))
    start = _list_start(chunks)
    middle = [chunk.strip(_STRIP_CHARS) for chunk in chunks[start + 1 : -1]]
    if len(chunks) < 2 or not _LIST_CUE.match(chunks[start]) or any(map(_is_prose, middle)):
        return _two_way_options(sentence)
    width = max((_content_words(item) for item in middle), default=2)
    items = [_first_item(chunks[start], width), *middle, *_last_items(chunks[-1], width)]
    return items if len(items) >= 3 else _two_way_options(sentence)


def _list_start(chunks: list[str]) -> int:
    """Index of the chunk that holds the cue and the first option."""
    starts = [
        index
        for index, chunk in enumerate(chunks[:-1])
        if _LIST_CUE.match(chunk) or _content_words(chunk) > _MAX_OPTION_WORDS
    ]
    return starts[-1] if starts else 0


def _is_prose(item: str) -> bool:
    words = item.casefold().split()
    return len(words) > _MAX_OPTION_WORDS or any(word in _PROSE_WORDS for word in words)


def _content_words(item: str) -> int:
    return len(_INNER_CONJUNCTION.sub(" ", item).split())


def _two_way_options(sentence: str) -> list[str]:
    match = _TWO_WAY.search(sentence)
    return list(match.groups()) if match else []


def _first_item(chunk: str, width: int) -> str:
    words = _LIST_CUE.sub("", chunk).strip(_STRIP_CHARS).split()
    if _content_words(" ".join(words)) > width + 1:
        words = words[-width:]
    return " ".join(words)


def _last_items(chunk: str, width: int) -> list[str]:
    chunk = chunk.split("\u2014", 1)[0].strip(_STRIP_CHARS)
    if _starts_clause(chunk):
        return []
    if _CONJUNCTION.match(chunk):
        items = [_CONJUNCTION.sub("", chunk)]
    else:
        items = _INNER_CONJUNCTION.split(chunk, maxsplit=1)
    return [last for last in (_trimmed_last(item, width) for item in items) if last]


def _starts_clause(text: str) -> bool:
    words = _CONJUNCTION.sub("", text.strip(_STRIP_CHARS)).split()
    return not words or words[0].casefold() in _CLAUSE_STARTS


def _trimmed_last(item: str, width: int) -> str:
    words = item.strip(_STRIP_CHARS).split()
    if _starts_clause(item):
        return ""
    kept = []
    for word in words:
        if word.casefold() in _TRAILING_WORDS:
            break
        kept.append(word)
    if _content_words(" ".join(kept)) > width + 1:
        kept = kept[:width]
    return " ".join(kept)
