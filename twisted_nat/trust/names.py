"""
The one rule for peer names, used alike by the rendezvous server, its
clients and the known peers (L{twisted_nat.trust.known}).

A name is what people type and read to mean a peer, and what the known
peers pin a key to, so two names that look the same must be the same name
and a name must never pass for another.  L{normalise_name} therefore folds
width and case (Unicode NFKC and case folding, as UTS #31 advises for
identifiers), allows only letters, ASCII digits and C{-_.}, and refuses
names whose letters come from more than one script, the usual way of
building a look-alike ("bob" with a Cyrillic "o").  A name never starts
with L{KEY_PREFIX}, so it cannot be mistaken for a printed key.
"""

from __future__ import annotations

import unicodedata

from twisted_nat.trust.keys import KEY_PREFIX

MAX_NAME_LENGTH = 64

_LONGEST_INPUT = MAX_NAME_LENGTH * 4
"""
Longer input is refused before it is normalised: normalisation composes
at most four characters into one, so it could not become a short enough
name, and refusing it first bounds the work a hostile name can cause.
"""

_PUNCTUATION = frozenset("-_.")
_DIGITS = frozenset("0123456789")

_JAPANESE = "Han/Kana"
_SCRIPT_ALIASES = {
    "CJK": _JAPANESE,
    "IDEOGRAPHIC": _JAPANESE,
    "HIRAGANA": _JAPANESE,
    "KATAKANA": _JAPANESE,
    "KATAKANA-HIRAGANA": _JAPANESE,
}
"""
Scripts written together as one: Japanese mixes Han ideographs with both
kana (Unicode names Han ideographs "CJK ..." and a few "IDEOGRAPHIC ...").
"""


def _shown(value: str) -> str:
    """C{value} quoted for an error message, cut if it is very long."""
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _describe(ch: str) -> str:
    """
    A character as an error message names it: C{' ' (U+0020 SPACE)}.  A
    combining mark is named without the mark itself, which would sit on
    the quote before it.
    """
    code = " ".join(filter(None, [f"U+{ord(ch):04X}", unicodedata.name(ch, "")]))
    if unicodedata.category(ch).startswith("M"):
        return code
    return f"{ch!r} ({code})"


def _script(ch: str) -> str | None:
    """
    The script of the letter C{ch}: the first word of its Unicode name, or
    its group from L{_SCRIPT_ALIASES}; C{None} if it has no name.
    """
    name = unicodedata.name(ch, "")
    if not name:
        return None
    word = name.split(" ", 1)[0]
    return _SCRIPT_ALIASES.get(word, word.title())


def _fold(name: str) -> str:
    """NFKC, then case folding, then NFKC again if folding changed anything."""
    normal = unicodedata.normalize("NFKC", name)
    folded = normal.casefold()
    if folded != normal:
        folded = unicodedata.normalize("NFKC", folded)
    return folded


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def normalise_name(name: object) -> str:
    """
    The normal form of the peer name C{name}, or C{ValueError} with a
    one-line message saying what is wrong with it.

    Two names that read the same have the same normal form ("Alice",
    "alice" and "ALICE" in fullwidth letters are all "alice"), and the
    normal form of a normal form is itself, so it is safe to normalise a
    name twice.

    @param name: a name as given by a person, a peer or a file; anything
        that is not a C{str} is refused.
    """
    if not isinstance(name, str):
        raise ValueError(f"a peer name must be a string, not {type(name).__name__}")
    if len(name) > _LONGEST_INPUT:
        raise ValueError(
            f"{_shown(name)} is too long for a peer name "
            f"({len(name)} characters; at most {MAX_NAME_LENGTH})"
        )
    normal = _fold(name)
    if not normal:
        raise ValueError("a peer name must not be empty")
    if len(normal) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{_shown(name)} is too long for a peer name "
            f"({len(normal)} characters; at most {MAX_NAME_LENGTH})"
        )
    for ch in normal:
        if not (ch in _DIGITS or ch in _PUNCTUATION or unicodedata.category(ch).startswith("L")):
            raise ValueError(
                f"{_shown(name)} contains {_describe(ch)}: a peer name may hold only "
                "letters, digits 0-9, '-', '_' and '.'"
            )
    if normal[0] in _PUNCTUATION:
        raise ValueError(f"{_shown(name)} must start with a letter or a digit")
    if normal.startswith(KEY_PREFIX):
        raise ValueError(f"{_shown(name)} starts with {KEY_PREFIX!r}, which is kept for peer keys")
    scripts: list[str] = []
    for ch in normal:
        if ch in _DIGITS or ch in _PUNCTUATION:
            continue
        script = _script(ch)
        if script is None:
            raise ValueError(
                f"{_shown(name)} contains {_describe(ch)}, a letter without a Unicode "
                "name, so its script cannot be told"
            )
        if script not in scripts:
            scripts.append(script)
    if len(scripts) > 1:
        raise ValueError(
            f"{_shown(name)} mixes {_join(scripts)} letters (look-alike names are refused)"
        )
    return normal
