"""L{twisted_nat.trust.names.normalise_name}: the one rule for peer names."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_nat.trust import KEY_PREFIX, Identity, normalise_name
from twisted_nat.trust.names import MAX_NAME_LENGTH


@pytest.mark.parametrize(
    ("given_name", "normal"),
    [
        ("alice", "alice"),
        ("Bob", "bob"),
        ("\uff21\uff2c\uff29\uff23\uff25", "alice"),  # fullwidth ALICE
        ("stra\u00dfe", "strasse"),
        ("STRASSE", "strasse"),
        ("node-1.example_x", "node-1.example_x"),
        ("\u0434\u0438\u043c\u0430", "\u0434\u0438\u043c\u0430"),  # дима, all Cyrillic
        ("\u0414\u0418\u041c\u0410", "\u0434\u0438\u043c\u0430"),  # ДИМА
        ("\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3", "οδυσσευσ"),  # Greek, final sigma
        ("\u6771\u4eac\u305f\u30ef\u30fc", "\u6771\u4eac\u305f\u30ef\u30fc"),  # Han + kana
        ("\uff8a\uff9d", "\u30cf\u30f3"),  # halfwidth katakana become fullwidth
        ("caf\u0065\u0301", "caf\u00e9"),  # e + combining acute composes to one letter
        ("\uff11\uff12\uff13", "123"),  # fullwidth digits
        ("7", "7"),
        ("a" * MAX_NAME_LENGTH, "a" * MAX_NAME_LENGTH),
        ("tn", "tn"),
        ("tn_x", "tn_x"),
        ("x.", "x."),
        # Case folding decomposes these; NFKC after it composes them again.
        ("\u01f0", "\u01f0"),  # LATIN SMALL LETTER J WITH CARON
        ("\u0390", "\u0390"),  # GREEK SMALL LETTER IOTA WITH DIALYTIKA AND TONOS
    ],
)
def test_accepted(given_name: str, normal: str) -> None:
    assert normalise_name(given_name) == normal


def refusal(name: object) -> str:
    with pytest.raises(ValueError) as caught:
        normalise_name(name)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        ("", "must not be empty"),
        ("a" * (MAX_NAME_LENGTH + 1), "65 characters; at most 64"),
        ("a b", "' ' (U+0020 SPACE)"),
        ("a/b", "'/' (U+002F SOLIDUS)"),
        ("a:b", "COLON"),
        ("a@b", "COMMERCIAL AT"),
        ("-x", "must start with a letter or a digit"),
        ("_x", "must start with a letter or a digit"),
        (".x", "must start with a letter or a digit"),
        ("tn-abc", "starts with 'tn-', which is kept for peer keys"),
        ("TN-abc", "kept for peer keys"),
        ("a\u200bb", "U+200B ZERO WIDTH SPACE"),
        ("a\u00adb", "U+00AD SOFT HYPHEN"),
        ("a\x00b", "U+0000"),
        ("a\nb", "U+000A"),
        ("a\x7fb", "U+007F"),
        ("hi\U0001f600", "U+1F600 GRINNING FACE"),
        ("\u0661\u0662", "ARABIC-INDIC DIGIT ONE"),
        ("e\u0301\u0301", "U+0301 COMBINING ACUTE ACCENT"),
        ("\U00017000\U00017001", "without a Unicode name"),
    ],
)
def test_refused(name: str, complaint: str) -> None:
    assert complaint in refusal(name)


def test_mixed_scripts_are_refused() -> None:
    # "bob" with a Cyrillic "o" (U+043E).
    assert refusal("b\u043eb") == (
        "'b\u043eb' mixes Latin and Cyrillic letters (look-alike names are refused)"
    )
    # "paypal" with a Greek alpha, and one with three scripts.
    assert "mixes Latin and Greek letters" in refusal("p\u03b1ypal")
    assert "mixes Latin, Cyrillic and Greek letters" in refusal("a\u0430\u03b1")
    assert "mixes Latin and Han/Kana letters" in refusal("tokyo\u6771\u4eac")


def test_digits_and_punctuation_belong_to_every_script() -> None:
    assert normalise_name("\u0434\u0438\u043c\u0430-2") == "\u0434\u0438\u043c\u0430-2"
    assert normalise_name("\u6771\u4eac.1") == "\u6771\u4eac.1"


def test_a_printed_key_is_never_a_name() -> None:
    text = Identity.generate().public.text
    assert "peer keys" in refusal(text)
    assert "peer keys" in refusal(text.upper())


def test_not_a_string() -> None:
    assert refusal(None) == "a peer name must be a string, not NoneType"
    assert refusal(b"alice") == "a peer name must be a string, not bytes"
    assert refusal(5) == "a peer name must be a string, not int"


def test_long_input_is_cut_in_the_message() -> None:
    message = refusal("x" * 100_000)
    assert len(message) < 200
    assert "..." in message
    assert "100000 characters" in message


def test_the_length_is_the_normal_forms() -> None:
    # 64 letters, each written as a letter and a combining accent.
    assert normalise_name("e\u0301" * MAX_NAME_LENGTH) == "\u00e9" * MAX_NAME_LENGTH
    # One ligature that folds into several letters can push a name over.
    assert "at most 64" in refusal("a" * 62 + "\ufb03")  # U+FB03 LATIN SMALL LIGATURE FFI


_NAME_CHARACTERS = st.characters(
    categories=["Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Mn", "Pd", "Pc", "Po"]
)

_ALPHABETS = [
    (0x0041, 0x024F),  # Basic Latin to Latin Extended-B
    (0x0370, 0x03FF),  # Greek
    (0x0400, 0x04FF),  # Cyrillic
    (0x1E00, 0x1FFF),  # Latin Extended Additional, Greek Extended
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x4E00, 0x4FFF),  # some Han
    (0xAC00, 0xACFF),  # some Hangul
    (0xFB00, 0xFB4F),  # ligatures, Hebrew presentation forms
    (0xFF10, 0xFF9F),  # fullwidth and halfwidth forms
]

_EXTRAS = "0123456789-_.\u0301\u0308\u0345\u00df\u0130\u03c2"


@st.composite
def one_script_text(draw: st.DrawFn) -> str:
    """Text mostly from one block, so that many draws are valid names."""
    low, high = draw(st.sampled_from(_ALPHABETS))
    letters = st.characters(min_codepoint=low, max_codepoint=high)
    return draw(st.text(st.one_of(letters, st.sampled_from(_EXTRAS)), min_size=1, max_size=20))


@given(st.text())
def test_only_value_error(text: str) -> None:
    try:
        result = normalise_name(text)
    except ValueError:
        return
    assert 1 <= len(result) <= MAX_NAME_LENGTH


@given(st.one_of(one_script_text(), st.text(_NAME_CHARACTERS, min_size=1, max_size=20)))
def test_idempotent(text: str) -> None:
    try:
        once = normalise_name(text)
    except ValueError:
        return
    assert normalise_name(once) == once


@given(st.one_of(one_script_text(), st.text(_NAME_CHARACTERS, min_size=1, max_size=20)))
def test_accepted_names_follow_the_rule(text: str) -> None:
    try:
        name = normalise_name(text)
    except ValueError:
        return
    assert name == unicodedata.normalize("NFKC", name)
    assert name == unicodedata.normalize("NFKC", name.casefold())
    assert not name.startswith(KEY_PREFIX)
    assert name[0] not in "-_."
    for ch in name:
        assert ch in "0123456789-_." or unicodedata.category(ch).startswith("L")


@given(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True))
def test_plain_ascii_names_are_their_own_normal_form(name: str) -> None:
    if name.startswith(KEY_PREFIX):
        return
    assert normalise_name(name) == name
    assert normalise_name(name.upper()) == name
