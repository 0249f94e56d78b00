"""The names a sender gives its files: hostile ones are refused before the disk sees them."""

from __future__ import annotations

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
        ("x.tn-part", "receiver's own"),
        ("d/.x.tn-part", "receiver's own"),
        ("\udc80", "UTF-8"),
        ("a" * (MAX_PART_BYTES + 1), "part longer"),
        ("/".join(["a" * 200] * 21), "longer than"),
        ("/".join(["a"] * (MAX_DEPTH + 1)), "levels deep"),
    ],
)
def test_hostile_names_are_refused_saying_why(name, why):
    with pytest.raises(UnsafeName, match=why):
        split_name(name)


@pytest.mark.parametrize("value", [None, 3, b"a", ["a"]])
def test_a_name_must_be_text(value):
    with pytest.raises(UnsafeName, match="text"):
        split_name(value)


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
    assert list(parts) == joined[len("/out/") :].split("/")
