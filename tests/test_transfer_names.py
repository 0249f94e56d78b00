"""The names a sender gives its files: hostile ones are refused before the disk sees them."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_nat.errors import UnsafeName
from twisted_nat.transfer.names import (
    MAX_DEPTH,
    MAX_FILES,
    MAX_NAME_BYTES,
    MAX_PART_BYTES,
    check_names,
    split_name,
)


def test_plain_names_split_into_their_parts():
    assert split_name("a.txt") == ("a.txt",)
    assert split_name("photos/2024/x y.jpg") == ("photos", "2024", "x y.jpg")
    assert split_name("ünïcode/名前") == ("ünïcode", "名前")
    assert split_name(".hidden") == (".hidden",)


@pytest.mark.parametrize(
    "name, why",
    [
        ("/etc/passwd", "absolute"),
        ("//server/share", "absolute"),
        ("..", "'..'"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/..", "'..'"),
        ("./x", "'.'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("", "empty"),
        ("C:/Windows/x", "colon"),
        ("C:x", "colon"),
        ("a\\..\\b", "backslash"),
        ("\\\\server\\x", "backslash"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("a\x7fb", "control"),
        ("a\x9b31mb", "control"),
        ("a\x85b", "control"),
        ("a\u2028b", "control"),
        ("a\u2029b", "control"),
        ("invoice\u202egpj.exe", "bidirectional"),
        ("d\u2066x\u2069/f", "bidirectional"),
        ("x.tn-part", "receiver's own"),
        ("d/.x.tn-part", "receiver's own"),
        (".x.TN-Part", "receiver's own"),
        (".f.tn-part/g", "receiver's own"),
        ("\udc80", "UTF-8"),
        ("a" * (MAX_PART_BYTES + 1), "part longer"),
        ("/".join(["a" * 200] * 21), "longer than"),
        ("/".join(["a"] * (MAX_DEPTH + 1)), "levels deep"),
        ("\u01d5" * (MAX_PART_BYTES // 2), "part longer"),
        ("a<b", "Windows refuses"),
        ("a>b", "Windows refuses"),
        ('say "hi"', "Windows refuses"),
        ("a|b", "Windows refuses"),
        ("why?", "Windows refuses"),
        ("d/*.txt", "Windows refuses"),
        ("a\x1fb", "control"),
        ("x\x00/../../etc/passwd", "control"),
        ("trailing.", "dot or space"),
        ("trailing ", "dot or space"),
        ("dir./f", "dot or space"),
        ("dir /f", "dot or space"),
        ("...", "dot or space"),
        ("CON", "device"),
        ("con", "device"),
        ("d/Nul.txt", "device"),
        ("nul.tar.gz", "device"),
        ("aux .txt", "device"),
        ("PRN/f", "device"),
        ("com1", "device"),
        ("LPT9.log", "device"),
        ("COM\u00b9", "device"),
        ("conout$", "device"),
    ],
)
def test_hostile_names_are_refused_saying_why(name, why):
    with pytest.raises(UnsafeName, match=why):
        split_name(name)


@pytest.mark.parametrize("value", [None, 3, b"a", ["a"]])
def test_a_name_must_be_text(value):
    with pytest.raises(UnsafeName, match="text"):
        split_name(value)


def test_names_that_only_resemble_windows_devices_pass():
    for name in ("CONSOLE", "con-fig.txt", "nullable", "COM10", "LPT", "my.con", "a.nul", "COMA"):
        assert split_name(name) == (name,)


def test_joiners_and_marks_that_scripts_need_pass():
    for name in (
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
        "\u05e9\u05dc\u05d5\u05dd\u200f.txt",
        "\U0001f469\u200d\U0001f4bb",
    ):
        assert split_name(name) == (name,)


def test_names_are_written_in_nfc():
    decomposed = "cafe\u0301/e\u0301te\u0301.txt"
    assert split_name(decomposed) == ("caf\u00e9", "\u00e9t\u00e9.txt")
    assert split_name("caf\u00e9") == ("caf\u00e9",)
    # A canonical singleton: U+212B ANGSTROM SIGN is written as U+00C5.
    assert split_name("\u212b") == ("\u00c5",)


def test_the_limits_hold_exactly():
    assert split_name("é" * (MAX_PART_BYTES // 2)) == ("é" * (MAX_PART_BYTES // 2),)
    assert len(split_name("/".join(["a"] * MAX_DEPTH))) == MAX_DEPTH
    longest = "/".join(["a" * 200] * (MAX_NAME_BYTES // 201))
    assert len(longest.encode()) <= MAX_NAME_BYTES
    split_name(longest)


def test_a_set_of_names_is_refused_with_duplicates_clashes_or_too_many():
    assert check_names(["a", "d/b", "d/e/f"]) == [("a",), ("d", "b"), ("d", "e", "f")]
    with pytest.raises(UnsafeName, match="twice"):
        check_names(["a", "a"])
    with pytest.raises(UnsafeName, match="both a file and a directory"):
        check_names(["d", "d/x"])
    with pytest.raises(UnsafeName, match="both a file and a directory"):
        check_names(["d/e/x", "d/e"])
    with pytest.raises(UnsafeName, match="more than"):
        check_names([f"f{i}" for i in range(MAX_FILES + 1)])
    assert len(check_names([f"f{i}" for i in range(MAX_FILES)])) == MAX_FILES


@pytest.mark.parametrize(
    "names",
    [
        ["README", "readme"],
        ["d/A.txt", "d/a.TXT"],
        ["Dir/x", "dir/y", "DIR/x"],
        ["stra\u00dfe", "STRASSE"],
        ["\u00c5", "\u00e5"],
    ],
)
def test_names_one_only_where_case_counts_are_refused(names):
    with pytest.raises(UnsafeName, match="differ only in case"):
        check_names(names)


def test_names_one_in_another_unicode_form_are_one_name():
    with pytest.raises(UnsafeName, match="named twice"):
        check_names(["caf\u00e9", "cafe\u0301"])


def test_a_file_and_a_directory_differing_in_case_are_refused():
    with pytest.raises(UnsafeName, match="both a file and a directory"):
        check_names(["D", "d/x"])
    with pytest.raises(UnsafeName, match="both a file and a directory"):
        check_names(["a/B/c", "A/b"])


def test_names_differing_by_more_than_case_pass():
    assert check_names(["Dir/x", "Dir/y", "dir2/x", "a", "\u00e5a"]) == [
        ("Dir", "x"),
        ("Dir", "y"),
        ("dir2", "x"),
        ("a",),
        ("\u00e5a",),
    ]


@given(st.text(max_size=300))
def test_any_name_that_passes_stays_below_the_directory(name):
    import posixpath

    try:
        parts = split_name(name)
    except UnsafeName:
        return
    joined = posixpath.normpath(posixpath.join("/out", *parts))
    assert joined.startswith("/out/")
    assert "\x00" not in joined and "\\" not in joined and ":" not in joined
    assert not any(c in joined for c in '<>"|?*')
    assert all(unicodedata.is_normalized("NFC", part) for part in parts)
    assert not any(part.endswith((".", " ")) for part in parts)
    assert not any(unicodedata.category(c) == "Cc" for c in joined)
    assert list(parts) == joined[len("/out/") :].split("/")
