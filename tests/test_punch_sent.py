"""SentIds: what a settled punch session remembers of the PUNCHes it sent."""

from __future__ import annotations

import pytest

from twisted_nat.punch.sent import SentIds


def test_an_id_is_found_only_where_one_begins():
    ids = SentIds([b"aaaaaabbbbbb", b"ccccccdddddd"])
    assert len(ids) == 2
    assert b"aaaaaabbbbbb" in ids and b"ccccccdddddd" in ids
    # The end of one id and the start of the next look like an id, and are not one.
    assert b"bbbbbbcccccc" not in ids
    assert b"aaaaaabbbbb" not in ids and "aaaaaabbbbbb" not in ids


def test_an_id_repeated_inside_the_bytes_is_still_found_at_its_boundary():
    ids = SentIds([b"xaaaaaaaaaaa", b"aaaaaaaaaaaa"])
    assert b"aaaaaaaaaaaa" in ids


def test_nothing_sent_holds_nothing():
    assert len(SentIds()) == 0 and b"aaaaaabbbbbb" not in SentIds()


def test_ids_are_of_one_size():
    with pytest.raises(ValueError, match="different sizes"):
        SentIds([b"a" * 12, b"b" * 16])
