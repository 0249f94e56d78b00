"""The transfer protocol's messages: round trips, and anything else refused with one error type."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_nat.errors import TransferProtocolError
from twisted_nat.transfer.protocol import (
    MAX_MESSAGE,
    Abort,
    Accept,
    DataHeader,
    Failed,
    FileEntry,
    Framer,
    Have,
    Message,
    Offer,
    Received,
    Refuse,
    decode,
    encode,
)

SHA = "ab" * 32
MESSAGES: list[Message] = [
    Offer((FileEntry("a.txt", 10, SHA), FileEntry("d/b", 0, "00" * 32))),
    Accept((Have(0, 5, SHA),), (1,)),
    Accept(),
    Refuse("no thanks"),
    Received(3),
    Failed(2, "SHA-256 differs"),
    Abort("disk full"),
    DataHeader(1, 1 << 40),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_every_message_survives_the_wire(message):
    framer = Framer()
    framer.feed(encode(message))
    assert framer.next() == message
    assert framer.next() is None


def test_messages_arrive_whole_from_any_cut_and_the_rest_is_raw():
    wire = b"".join(encode(m) for m in MESSAGES) + b"file bytes"
    framer = Framer()
    seen: list[Message] = []
    for i in range(len(wire)):
        framer.feed(wire[i : i + 1])
        while len(seen) < len(MESSAGES) and (message := framer.next()) is not None:
            seen.append(message)
    assert seen == MESSAGES
    assert framer.take_rest() == b"file bytes"


def framed(body: object) -> bytes:
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return struct.pack("!I", len(data)) + data


@pytest.mark.parametrize(
    "body, why",
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        ({"type": "nonsense"}, "unknown type"),
        ({"type": "received"}, "without"),
        ({"type": "received", "index": -1}, "not a size"),
        ({"type": "received", "index": True}, "not a size"),
        ({"type": "received", "index": 1.5}, "not a size"),
        ({"type": "received", "index": 1 << 63}, "not a size"),
        ({"type": "data", "index": 0, "offset": "0"}, "not a size"),
        ({"type": "offer", "files": [{"name": 7, "size": 1, "sha256": SHA}]}, "not text"),
        ({"type": "offer", "files": [{"size": 1, "sha256": SHA}]}, "not text"),
        ({"type": "offer", "files": [{"name": "x", "size": 1, "sha256": "AB" * 32}]}, "SHA-256"),
        ({"type": "offer", "files": [{"name": "x", "size": 1}]}, "SHA-256"),
        ({"type": "offer", "files": ["x"]}, "not an object"),
        ({"type": "offer", "files": {}}, "not a list"),
        ({"type": "accept", "have": [[0, 1]], "complete": []}, "index, offset"),
        ({"type": "refuse", "reason": 3}, "not text"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_malformed_messages_are_one_error(body, why):
    framer = Framer()
    framer.feed(framed(body))
    with pytest.raises(TransferProtocolError, match=why):
        framer.next()


def test_an_oversized_length_is_refused_before_its_body_is_held():
    framer = Framer()
    framer.feed(struct.pack("!I", MAX_MESSAGE + 1))
    with pytest.raises(TransferProtocolError, match="over"):
        framer.next()


def test_reasons_are_cut_short_and_printable():
    [message] = [decode(framed({"type": "abort", "reason": "a\x1b[2J" + "x" * 1000})[4:])]
    assert isinstance(message, Abort)
    assert "\x1b" not in message.reason and len(message.reason) == 300


@given(st.binary(max_size=200))
def test_any_bytes_are_a_message_or_one_error(data):
    framer = Framer()
    try:
        framer.feed(data)
        while framer.next() is not None:
            pass
    except TransferProtocolError:
        pass
