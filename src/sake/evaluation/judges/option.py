"""Deterministic option judge: which listed option, if any, a free-form answer chose.

LALMs rarely answer with the bare label. They explain, announce ("The correct answer is:
…"), repeat themselves, refuse, name two options, or answer with a letter. The judge reads
an output the way a careful grader would and stays conservative: when it cannot tell which
single option was chosen it says so, because a wrong "correct" is worse than a missed one.

Text is compared in normalised form (NFKC, case-folded, punctuation dropped, one space
between words). Options are found on word boundaries, longest first, and a found option
claims its words, so "female" is never also read as "male". Single-word options also match
a few morphological variants ("happiness" -> happy, "women" -> female, "dogs" -> dog). A
mention right after a negation ("not male", "rather than sad", "no fear, anger or
disgust") does not count, and an option both affirmed and denied counts as neither.
Options that are everyday function words ("no", "left", "on") count only when quoted or
announced, and numeric options ("7", "0.24 mJ") only in the first or last sentence or an
announced answer, because prose and worked solutions use them freely.

Decision rules, the first one that decides wins (the name is `Choice.reason`):

1. ``empty``: the output is empty or whitespace.
2. ``exact``: the whole output, minus an answer marker such as "Answer:", is one option.
3. ``letter``: the whole output is a letter ("b", "(C)", "Answer: D") within at most ten
   options, none of them a single character; it names the option at that position.
4. ``refusal``: the first sentence declines to answer ("it is not possible to determine",
   "I can't") and no later sentence announces an answer (rule 6): nothing is chosen even
   if options are named.
5. ``single``: every affirmative mention names the same option (see rule 7).
6. ``announced``: several options are mentioned, but every clearly announced answer ("The
   correct answer is X", "Answer: X", "I would identify it as X", "the speaker is X",
   "Therefore, X", "… is: X") names the same single option.
   An explanation that mentions the other options afterwards does not change it.
7. ``unanchored``: the only option mentioned is a function word or a number that stands
   where no answer is given ("There is no speech", "= 0.24 mJ" inside a derivation);
   nothing is chosen.
8. ``leading``: several options are mentioned, but the first sentence names exactly one,
   and it is neither a number nor a function word ("It is a rooster. The other options,
   hen and crow, …"), and no two announced answers name different options ("… would be
   to listen. However, … would be to stay calm" chooses neither).
9. Otherwise nothing is chosen: ``several`` or ``none``.

Inside an announced answer, a function-word option counts only where it stands apart
("(C) That means …", "The answer is no.", "… is C, because"), not as an article ("… for
quite a while" does not name option A).

Consistency (`is_consistent`) compares the chosen options. When neither output chooses one,
SAKE still asks whether the two say the same thing: they agree when both decline to answer,
when both name the same options without settling on one, or when both are explanations of
at least `LONG_OUTPUT_WORDS` words that mostly say the same words
(`SAME_TEXT_RATIO`) and name the same options. Shorter outputs must agree word for word,
since there the differing word is usually the answer ("The speaker is calm").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

PREPARED_OPTION_SETS = 4096
LONG_OUTPUT_WORDS = 30
SAME_TEXT_RATIO = 0.6
_COMBINING = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff"
_LETTER = rf"(?:[^\W\d_]|[{_COMBINING}])"
_TOKEN = re.compile(rf"(?:(?<![\w)])-)?\d+(?:[.,]\d+)*|{_LETTER}(?:[^\W_]|[{_COMBINING}#])*")
_INNER_APOSTROPHE = re.compile(r"(?<=\w)['’](?=\w)")
_SYMBOLS = str.maketrans({"♯": "#", "♭": "b"})
_HARD_BREAK = re.compile(r"[.!?\n]")
_SOFT_BREAK = re.compile(r"[,;:()\[\]\"'“”‘’«»/—–-]")
_QUOTES = "\"'“”‘’«»`"
_SENTENCE_END = re.compile(r"\n|[.!?](?=[\s\"'”’)]|$)")
_PARAGRAPH_END = re.compile(r"\n\s*\n")
_LIST_ITEM = re.compile(r"[ \t]*(?:[*•+-]|\(?[a-z0-9]{1,2}[).])\s")
_NOT_AN_ANSWER = re.compile(r"\b(?:other|others|not|incorrect|wrong)\b")
_SEGMENT_LEAD = re.compile(r"[\s\"'“”‘’*:>•]*")
_ENUMERATOR = re.compile(r"(?:\(?[a-z0-9]{1,2}[).])?\s*")

_MORPHOLOGY: dict[str, tuple[str, ...]] = {
    "happy": ("happiness", "happily"),
    "sad": ("sadness",),
    "angry": ("anger", "angrily"),
    "fear": ("fearful", "afraid", "scared"),
    "disgust": ("disgusted", "disgusting"),
    "male": ("man", "men", "masculine"),
    "female": ("woman", "women", "feminine"),
    "chinese": ("mandarin", "cantonese"),
    "german": ("deutsch",),
    "spanish": ("español", "espanol", "castilian"),
    "french": ("français", "francais"),
    "italian": ("italiano",),
}
# "crows" is what roosters do; reading it as the plural of "crow" would invent a mention.
_NO_GENERIC_VARIANTS = frozenset({"crow"})
_MIN_GENERIC_LENGTH = 3

_FUNCTION_WORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "and",
        "or",
        "nor",
        "neither",
        "both",
        "all",
        "none",
        "some",
        "any",
        "yes",
        "no",
        "not",
        "on",
        "off",
        "up",
        "down",
        "left",
        "right",
        "go",
        "stop",
        "in",
        "out",
        "true",
        "false",
        "i",
        "it",
        "is",
    }
)
_NUMBER_WORDS = frozenset(
    [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
    ]
)
_NEGATORS = frozenset(
    {
        "not",
        "no",
        "never",
        "neither",
        "nor",
        "without",
        "isnt",
        "arent",
        "wasnt",
        "werent",
        "doesnt",
        "dont",
        "didnt",
        "cannot",
        "cant",
        "than",
        "instead",
        "unlike",
        "except",
        "excluding",
    }
)
_LIST_LINKS = frozenset({"or", "and", "nor"})
_POSITION_WORDS = frozenset({"option", "options", "choice", "number"})
_NEGATION_WINDOW = 3

_ANSWER_WORD = r"(?:answer|option|choice|response)"
_LEADING_MARKER = re.compile(
    rf"^\s*(?:(?:the|my)\s+)?(?:(?:correct|right|best|final)\s+)?{_ANSWER_WORD}"
    r"(?:\s+(?:is|would\s+be))?\s*:?\s*",
    re.IGNORECASE,
)
_MAX_LETTERED_OPTIONS = 10
_LETTER_ONLY = re.compile(r"^\s*[(\[]?([a-z])[)\].:]?\s*$", re.IGNORECASE)
_ANNOUNCEMENTS = re.compile(
    rf"\b{_ANSWER_WORD}(?:\s+to\s+[^.:\n]{{1,120}}?)?\s+(?:is|would\s+be|will\s+be|should\s+be)"
    r"\s*:?\s*"
    rf"|\b{_ANSWER_WORD}\s*:\s*"
    r"|\bi\s+would\s+(?:select|choose|pick|say|go\s+with|guess|estimate|identify|classify"
    r"|categori[sz]e|interpret|describe|label|answer)\b\s*"
    r"|\bthe\s+speaker\s+is\s+"
    r"|\b(?:therefore|thus|hence),?\s+"
    r"|\b(?:is|are|be)(?:\s+(?:a|an|the))?\s*:\s*"
)
_REFUSALS = re.compile(
    r"\b(?:not possible|impossible|unable|cannot|can not|cant|could not|couldnt|not able"
    r"|unclear|not clear|no way to (?:tell|know|determine)"
    r"|(?:difficult|hard) to (?:determine|tell|say|identify)|im sorry|i am sorry)\b"
)


@dataclass(frozen=True)
class Choice:
    """What the judge read from one output.

    `index` points into the options when exactly one was chosen and is None otherwise;
    `mentioned` lists every option mentioned affirmatively, in order of first mention;
    `reason` names the rule that decided (see the module docstring).
    """

    index: int | None
    mentioned: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class _Token:
    text: str
    start: int
    end: int
    gap: int  # punctuation just before the token: 0 none, 1 within a sentence, 2 sentence end


@dataclass(frozen=True)
class _Text:
    folded: str
    tokens: tuple[_Token, ...]

    def words(self) -> tuple[str, ...]:
        return tuple(token.text for token in self.tokens)

    def set_apart(self, start: int, end: int) -> bool:
        """Whether tokens [start, end) stand in quotes or as a label: '"no"', "(b)", "b) …"."""
        before = self.folded[: self.tokens[start].start]
        after = self.folded[self.tokens[end - 1].end :]
        if before.rstrip().endswith(tuple(_QUOTES)) and after.lstrip().startswith(tuple(_QUOTES)):
            return True
        line_start = not before.strip(" \t") or before.rstrip(" \t").endswith("\n")
        return after.startswith(")") and (before.endswith("(") or line_start)


@dataclass(frozen=True)
class _Phrase:
    option: int
    gaps: tuple[int, ...]


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    option: int


@dataclass(frozen=True)
class _Options:
    """The options as the judge searches for them."""

    texts: tuple[str, ...]
    phrases: dict[tuple[str, ...], _Phrase]
    weak: frozenset[int]
    numeric: frozenset[int]


def normalise(text: str) -> str:
    """Case-folded NFKC words joined by single spaces, punctuation dropped."""
    return " ".join(_read(text).words())


def choose_option(output: str, options: Sequence[str]) -> Choice:
    """Decide which single option `output` chose, following the module's rules."""
    if not output.strip():
        return Choice(None, (), "empty")
    searched = _prepare(tuple(options))
    exact = _exact_option(output, searched)
    if exact is not None:
        return Choice(exact, (exact,), "exact")
    letter = _letter_option(output, searched)
    if letter is not None:
        return Choice(letter, (letter,), "letter")
    return _judge_prose(_read(output), searched)


def is_correct(output: str, options: Sequence[str], answer: str) -> bool:
    """True when `output` chose exactly the option that is `answer` (see `correct_choice`)."""
    return correct_choice(output, options, answer)[0]


def correct_choice(
    output: str, options: Sequence[str], answer: str
) -> tuple[bool, Choice, tuple[str, ...]]:
    """Whether `output` chose exactly the option that is `answer`, the choice it made, and the
    options it was read against.

    An output equal to the answer after normalisation is correct without further reading.
    An answer that is not among the options (free-form type-4 probes) is judged as one more
    option, so that naming it and nothing else still counts.
    """
    candidates = tuple(options)
    target = _answer_index(answer, candidates)
    if target is None:
        candidates = (*candidates, answer)
        target = len(candidates) - 1
    if not output.strip():
        return False, Choice(None, (), "empty"), candidates
    if normalise(output) == normalise(answer):
        return True, Choice(target, (target,), "exact"), candidates
    choice = choose_option(output, candidates)
    return choice.index == target, choice, candidates


def is_consistent(output_a: str, output_b: str, options: Sequence[str]) -> bool:
    """True when both outputs chose the same option, or neither chose one and they agree.

    Locality asks this of the pre- and post-edit outputs: the edit should not change what
    the model answers to an unrelated question.
    """
    choice_a = choose_option(output_a, options)
    choice_b = choose_option(output_b, options)
    return consistent_choices(output_a, output_b, choice_a, choice_b)


def consistent_choices(output_a: str, output_b: str, choice_a: Choice, choice_b: Choice) -> bool:
    """`is_consistent` for outputs whose choices are already read."""
    if choice_a.index is not None or choice_b.index is not None:
        return choice_a.index == choice_b.index
    return _say_the_same(output_a, output_b, choice_a, choice_b)


def _say_the_same(output_a: str, output_b: str, choice_a: Choice, choice_b: Choice) -> bool:
    """Whether two outputs that choose no option still give the same answer (module docstring)."""
    words_a, words_b = normalise(output_a).split(), normalise(output_b).split()
    if words_a == words_b or choice_a.reason == choice_b.reason == "refusal":
        return True
    same_mentions = set(choice_a.mentioned) == set(choice_b.mentioned)
    if choice_a.mentioned and same_mentions:
        return True
    if min(len(words_a), len(words_b)) < LONG_OUTPUT_WORDS or not same_mentions:
        return False
    return SequenceMatcher(None, words_a, words_b, autojunk=False).ratio() >= SAME_TEXT_RATIO


def _read(text: str) -> _Text:
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_SYMBOLS)
    folded = _INNER_APOSTROPHE.sub("", folded)
    tokens: list[_Token] = []
    previous_end = 0
    for match in _TOKEN.finditer(folded):
        tokens.append(
            _Token(
                match.group(),
                match.start(),
                match.end(),
                _gap(folded[previous_end : match.start()]),
            )
        )
        previous_end = match.end()
    return _Text(folded, tuple(tokens))


def _gap(between: str) -> int:
    if _HARD_BREAK.search(between):
        return 2
    return 1 if _SOFT_BREAK.search(between) else 0


@lru_cache(maxsize=PREPARED_OPTION_SETS)
def _prepare(options: tuple[str, ...]) -> _Options:
    """The option set read once: a benchmark asks the same few option lists thousands of times."""
    readings = [_read(option) for option in options]
    phrases: dict[tuple[str, ...], _Phrase] = {}
    for index, reading in enumerate(readings):
        words = reading.words()
        if words and words not in phrases:
            phrases[words] = _Phrase(index, tuple(token.gap for token in reading.tokens))
    owners: dict[str, set[int]] = {}
    for index, reading in enumerate(readings):
        for variant in _variants(reading.words()):
            if (variant,) not in phrases:
                owners.setdefault(variant, set()).add(index)
    for variant, indices in owners.items():
        if len(indices) == 1:
            phrases[(variant,)] = _Phrase(indices.pop(), (0,))
    return _Options(
        texts=tuple(options),
        phrases=phrases,
        weak=frozenset(i for i, r in enumerate(readings) if _is_function_word(r.words())),
        numeric=frozenset(i for i, r in enumerate(readings) if _is_quantity(r.words())),
    )


def _is_function_word(words: tuple[str, ...]) -> bool:
    """Everyday words and single characters ("no", "left", "b") that prose uses freely."""
    return len(words) == 1 and (words[0] in _FUNCTION_WORDS or len(words[0]) == 1)


def _is_quantity(words: tuple[str, ...]) -> bool:
    """A number, possibly with a unit: "7", "-13", "0.24 mJ", "two", "1:3"."""
    if not words or len(words) > 3:
        return False
    return words[0].lstrip("-")[:1].isdigit() or (len(words) == 1 and words[0] in _NUMBER_WORDS)


def _variants(words: tuple[str, ...]) -> tuple[str, ...]:
    if len(words) != 1:
        return ()
    word = words[0]
    listed = _MORPHOLOGY.get(word, ())
    if word in _NO_GENERIC_VARIANTS or len(word) < _MIN_GENERIC_LENGTH or not word.isalpha():
        return listed
    return listed + _generic_variants(word)


def _generic_variants(word: str) -> tuple[str, ...]:
    """Plural and -ness forms; -ly/-ful are left to the table ("closely" is not "close")."""
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        stem = word[:-1] + "i"
        return (stem + "es", stem + "ness")
    plural = word + "es" if word.endswith(("s", "x", "z", "ch", "sh")) else word + "s"
    return (plural, word + "ness")


def _mentions(text: _Text, searched: _Options) -> list[_Mention]:
    """Non-overlapping option mentions, longest phrases claiming their words first."""
    words = text.words()
    starts: dict[str, list[int]] = {}
    for position, word in enumerate(words):
        starts.setdefault(word, []).append(position)
    claimed = [False] * len(words)
    found: list[_Mention] = []
    for phrase in sorted(searched.phrases, key=lambda p: (-len(" ".join(p)), p)):
        size = len(phrase)
        for start in starts.get(phrase[0], ()):
            end = start + size
            if words[start:end] != phrase or any(claimed[start:end]):
                continue
            if _punctuated_like(text.tokens[start:end], searched.phrases[phrase].gaps):
                claimed[start:end] = [True] * size
                found.append(_Mention(start, end, searched.phrases[phrase].option))
    return sorted(found, key=lambda mention: mention.start)


def _punctuated_like(tokens: Sequence[_Token], gaps: Sequence[int]) -> bool:
    """A mention may not break where its option does not ("social accounting. Financial")."""
    return all(token.gap <= allowed for token, allowed in zip(tokens[1:], gaps[1:], strict=True))


def _without_positions(
    text: _Text, mentions: Sequence[_Mention], searched: _Options
) -> list[_Mention]:
    """Drop numbers that name a position, not a value: "option 5" among 5, 7, 9 and 12."""
    return [
        mention
        for mention in mentions
        if mention.option not in searched.numeric
        or mention.start == 0
        or text.tokens[mention.start - 1].text not in _POSITION_WORDS
    ]


def _affirmative(text: _Text, mentions: Sequence[_Mention]) -> list[_Mention]:
    """Mentions of options the output never negates.

    A negation carries along a list ("no fear, anger or sadness"), and an option both
    affirmed and denied ("about 7-8 stars, not 5, 7, 9 or 12") counts as neither.
    """
    denied: set[int] = set()
    previous: _Mention | None = None
    previous_denied = False
    for mention in mentions:
        floor = previous.end if previous else 0
        previous_denied = _is_negated(text.tokens, mention.start, floor) or (
            previous_denied and previous is not None and _continues_list(text, previous, mention)
        )
        if previous_denied:
            denied.add(mention.option)
        previous = mention
    return [mention for mention in mentions if mention.option not in denied]


def _is_negated(tokens: Sequence[_Token], start: int, floor: int) -> bool:
    """A negator within a few words before `start`, in the same clause, after `floor`."""
    if tokens[start].gap:
        return False
    for position in range(start - 1, max(floor, start - _NEGATION_WINDOW) - 1, -1):
        if tokens[position].text in _NEGATORS:
            return True
        if tokens[position].gap:
            return False
    return False


def _continues_list(text: _Text, previous: _Mention, mention: _Mention) -> bool:
    between = text.tokens[previous.end : mention.start]
    return all(token.text in _LIST_LINKS for token in between) and all(
        token.gap < 2 for token in text.tokens[previous.end : mention.start + 1]
    )


def _judge_prose(text: _Text, searched: _Options) -> Choice:
    """Rules 4-9, for an output that is more than a bare option or letter."""
    announcements = _announcement_spans(text)
    found = _mentions(text, searched)
    mentions = _affirmative(text, _without_positions(text, found, searched))
    mentioned = _distinct(mention.option for mention in mentions)
    refused = _refuses(text, found)
    if refused:
        first_end = _first_sentence(text)[1]
        announcements = [span for span in announcements if span[0] >= first_end]
    announced = _announced_options(text, mentions, announcements, searched)
    if len(announced) == 1:
        return Choice(announced[0], mentioned, "single" if mentioned == announced else "announced")
    if refused:
        return Choice(None, mentioned, "refusal")
    if len(mentioned) == 1:
        if _anchored(text, mentions, searched, announcements):
            return Choice(mentioned[0], mentioned, "single")
        return Choice(None, mentioned, "unanchored")
    if not mentioned:
        return Choice(None, mentioned, "none")
    leading = None if announced else _leading_option(text, mentions, searched)
    if leading is not None:
        return Choice(leading, mentioned, "leading")
    return Choice(None, mentioned, "several")


def _anchored(
    text: _Text,
    mentions: Sequence[_Mention],
    searched: _Options,
    announcements: Sequence[tuple[int, int]],
) -> bool:
    """Whether some mention stands where an answer is given.

    Any mention of an ordinary option does. A function-word option ("no", "left") must be
    quoted or announced; a numeric one ("7", "0.24 mJ") may also stand in the first or last
    sentence, but not in the middle of a worked solution.
    """
    first, last = _first_sentence(text), _last_sentence(text)
    for mention in mentions:
        if mention.option not in searched.numeric | searched.weak:
            return True
        announced = any(
            _within(text, mention, span) and _counts_in_announcement(text, mention, span, searched)
            for span in announcements
        )
        in_place = mention.option in searched.numeric and any(
            _within(text, mention, span) for span in (first, last)
        )
        if announced or in_place or text.set_apart(mention.start, mention.end):
            return True
    return False


def _within(text: _Text, mention: _Mention, span: tuple[int, int]) -> bool:
    return span[0] <= text.tokens[mention.start].start < span[1]


def _distinct(indices: Iterable[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(indices))


def _exact_option(output: str, searched: _Options) -> int | None:
    phrase = searched.phrases.get(_read(_LEADING_MARKER.sub("", output, count=1)).words())
    return None if phrase is None else phrase.option


def _letter_option(output: str, searched: _Options) -> int | None:
    """Index named by a bare letter answer, unless some option is itself one character."""
    if len(searched.texts) > _MAX_LETTERED_OPTIONS or any(
        len(words) == 1 and len(words[0]) == 1 for words in searched.phrases
    ):
        return None
    match = _LETTER_ONLY.match(_LEADING_MARKER.sub("", output, count=1))
    if match is None:
        return None
    index = ord(match.group(1).lower()) - ord("a")
    return index if index < len(searched.texts) else None


def _announcement_spans(text: _Text) -> list[tuple[int, int]]:
    """Character spans of the folded text that hold an announced answer.

    An answer announced on a line of its own runs to the end of its paragraph, or of the
    list it opens, so that an announcement followed by two listed options names both.
    Lines such as "The other options are not correct because:" announce nothing.
    """
    spans = []
    for match in _ANNOUNCEMENTS.finditer(text.folded):
        if "\n" not in match.group():
            spans.append(_sentence_from(text.folded, match.end()))
        elif not _NOT_AN_ANSWER.search(_line_at(text.folded, match.start())):
            spans.append(_block_from(text.folded, match.end()))
    return spans


def _line_at(folded: str, position: int) -> str:
    start = folded.rfind("\n", 0, position) + 1
    end = folded.find("\n", position)
    return folded[start : len(folded) if end < 0 else end]


def _sentence_from(folded: str, start: int) -> tuple[int, int]:
    """From `start`, past quotes, to the end of the sentence (an enumerator "3." ends none)."""
    start = _SEGMENT_LEAD.match(folded, start).end()
    end = _SENTENCE_END.search(folded, _ENUMERATOR.match(folded, start).end())
    return start, len(folded) if end is None else end.start()


def _block_from(folded: str, start: int) -> tuple[int, int]:
    """From `start` to the end of its paragraph, or of the list that starts there."""
    if not _LIST_ITEM.match(folded, start):
        end = _PARAGRAPH_END.search(folded, start)
        return _SEGMENT_LEAD.match(folded, start).end(), len(folded) if end is None else end.start()
    end = position = start
    while position < len(folded):
        line_end = folded.find("\n", position)
        line_end = len(folded) if line_end < 0 else line_end
        line = folded[position:line_end]
        if line.strip() and not _LIST_ITEM.match(line):
            break
        end = line_end if line.strip() else end
        position = line_end + 1
    return _SEGMENT_LEAD.match(folded, start).end(), end


def _first_sentence(text: _Text) -> tuple[int, int]:
    return _sentence_from(text.folded, 0)


def _last_sentence(text: _Text) -> tuple[int, int]:
    stripped = text.folded.rstrip(" \t\n.!?\"'”’")
    ends = [match.end() for match in _SENTENCE_END.finditer(stripped)]
    return (ends[-1] if ends else 0), len(text.folded)


def _announced_options(
    text: _Text,
    mentions: Sequence[_Mention],
    announcements: Sequence[tuple[int, int]],
    searched: _Options,
) -> tuple[int, ...]:
    """The options the announced answers name, one per announcement that names exactly one."""
    named: list[int] = []
    for span in announcements:
        letter = _letter_option(text.folded[span[0] : span[1]], searched)
        inside = _distinct(
            m.option
            for m in mentions
            if _within(text, m, span) and _counts_in_announcement(text, m, span, searched)
        )
        if letter is not None and not inside:
            named.append(letter)
        elif len(inside) == 1:
            named.append(inside[0])
    return _distinct(named)


def _counts_in_announcement(
    text: _Text, mention: _Mention, span: tuple[int, int], searched: _Options
) -> bool:
    """A function-word option counts where it stands apart or alone opens the answer."""
    if mention.option not in searched.weak or text.set_apart(mention.start, mention.end):
        return True
    opens = text.tokens[mention.start].start == span[0]
    after = text.tokens[mention.end] if mention.end < len(text.tokens) else None
    return opens and (after is None or after.gap > 0 or after.start >= span[1])


def _leading_option(text: _Text, mentions: Sequence[_Mention], searched: _Options) -> int | None:
    """The one option the first sentence names, unless it is a number or a function word."""
    first = _first_sentence(text)
    named = _distinct(m.option for m in mentions if _within(text, m, first))
    if len(named) != 1 or named[0] in searched.numeric | searched.weak:
        return None
    return named[0]


def _refuses(text: _Text, mentions: Sequence[_Mention]) -> bool:
    """Whether the first sentence declines to answer, ignoring words inside option mentions."""
    first = _first_sentence(text)
    inside = {i for mention in mentions for i in range(mention.start, mention.end)}
    own_words = " ".join(
        token.text
        for i, token in enumerate(text.tokens)
        if first[0] <= token.start < first[1] and i not in inside
    )
    return _REFUSALS.search(own_words) is not None


def _answer_index(answer: str, options: Sequence[str]) -> int | None:
    wanted = normalise(answer)
    for index, option in enumerate(options):
        if normalise(option) == wanted:
            return index
    return choose_option(answer, options).index
