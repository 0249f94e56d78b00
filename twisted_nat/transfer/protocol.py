"""
The transfer protocol's messages, over QUIC streams between two peers.

The sender opens a control stream and offers its files (L{Offer}: names,
sizes, SHA-256).  The receiver answers L{Accept}, saying for each file it
holds part of how many bytes it has and their SHA-256 (L{Have}), and which
it holds whole already; or L{Refuse}.  The sender then opens one data
stream per file, a few at once: a L{DataHeader} (which file, from which
offset: the receiver's if the sender's own first bytes hash the same, else
0), then the file's bytes up to the stream's end.  The receiver checks each
file's SHA-256 and answers L{Received} or L{Failed} on the control stream.
L{Abort} ends a transfer from either side, with a reason for the person.

Each message is a JSON object after its length (4 bytes, big-endian), at
most L{MAX_MESSAGE} bytes: a peer can make us hold no more than that.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import attrs

from twisted_nat.errors import TransferProtocolError

MAX_MESSAGE = 1 << 20
"""Bytes of one message at most: an offer of the most files with long names fits."""
MAX_SIZE = (1 << 63) - 1
"""The largest file size or offset."""
MAX_REASON = 300
"""Characters of a reason at most."""

_LENGTH = struct.Struct("!I")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


@attrs.frozen
class FileEntry:
    """One file offered: its relative name, its size and its SHA-256 (hex)."""

    name: str
    size: int
    sha256: str


@attrs.frozen
class Offer:
    """The sender's files, named as it likes: L{twisted_nat.transfer.names} checks them."""

    files: tuple[FileEntry, ...]

    @property
    def total(self) -> int:
        return sum(entry.size for entry in self.files)


@attrs.frozen
class Have:
    """The receiver holds the first C{offset} bytes of file C{index}, hashing to C{sha256}."""

    index: int
    offset: int
    sha256: str


@attrs.frozen
class Accept:
    have: tuple[Have, ...] = ()
    complete: tuple[int, ...] = ()
    """Files the receiver holds whole already: they are not sent."""


@attrs.frozen
class Refuse:
    reason: str


@attrs.frozen
class Received:
    index: int


@attrs.frozen
class Failed:
    index: int
    reason: str


@attrs.frozen
class Abort:
    reason: str


@attrs.frozen
class DataHeader:
    index: int
    offset: int


Message = Offer | Accept | Refuse | Received | Failed | Abort | DataHeader


def encode(message: Message) -> bytes:
    """The bytes of C{message} on a stream."""
    body: dict[str, Any]
    match message:
        case Offer(files):
            body = {"type": "offer", "files": [attrs.asdict(f) for f in files]}
        case Accept(have, complete):
            body = {
                "type": "accept",
                "have": [[h.index, h.offset, h.sha256] for h in have],
                "complete": list(complete),
            }
        case Refuse(reason):
            body = {"type": "refuse", "reason": reason[:MAX_REASON]}
        case Received(index):
            body = {"type": "received", "index": index}
        case Failed(index, reason):
            body = {"type": "failed", "index": index, "reason": reason[:MAX_REASON]}
        case Abort(reason):
            body = {"type": "abort", "reason": reason[:MAX_REASON]}
        case DataHeader(index, offset):
            body = {"type": "data", "index": index, "offset": offset}
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise TransferProtocolError(f"a message of {len(data)} bytes, over {MAX_MESSAGE}")
    return _LENGTH.pack(len(data)) + data


class Framer:
    """
    Cuts a stream's bytes into messages.  After the last message it was
    asked for, what follows (a data stream's file bytes) is L{take_rest}.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Add C{data}; call L{next} after each, so that no more than one message is held."""
        self._buffer += data

    def next(self) -> Message | None:
        """The next whole message, or None until more bytes come."""
        if len(self._buffer) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > MAX_MESSAGE:
            raise TransferProtocolError(f"a message of {length} bytes, over {MAX_MESSAGE}")
        end = _LENGTH.size + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[_LENGTH.size : end])
        del self._buffer[:end]
        return decode(body)

    def take_rest(self) -> bytes:
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def decode(body: bytes) -> Message:
    """The message in C{body}, checked; L{TransferProtocolError} for anything else."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TransferProtocolError("a message that is not JSON") from None
    if not isinstance(value, dict):
        raise TransferProtocolError("a message that is not a JSON object")
    kind = value.get("type")
    try:
        match kind:
            case "offer":
                return _offer(value["files"])
            case "accept":
                have = tuple(_have(item) for item in _list(value["have"]))
                complete = tuple(_count(i) for i in _list(value["complete"]))
                return Accept(have, complete)
            case "refuse":
                return Refuse(_reason(value["reason"]))
            case "received":
                return Received(_count(value["index"]))
            case "failed":
                return Failed(_count(value["index"]), _reason(value["reason"]))
            case "abort":
                return Abort(_reason(value["reason"]))
            case "data":
                return DataHeader(_count(value["index"]), _count(value["offset"]))
    except KeyError as e:
        raise TransferProtocolError(f"a {kind} message without {e}") from None
    raise TransferProtocolError(f"a message of unknown type {str(kind)[:40]!r}")


def _offer(files: object) -> Offer:
    items = _list(files)
    if not all(isinstance(item, dict) for item in items):
        raise TransferProtocolError("a file in an offer that is not an object")
    names = [item.get("name") for item in items]
    if not all(isinstance(name, str) for name in names):
        raise TransferProtocolError("a file name in an offer that is not text")
    # Whether the names may be written is the receiver's to say, in its refusal.
    return Offer(
        tuple(
            FileEntry(str(name), _count(item.get("size")), _hash(item.get("sha256")))
            for name, item in zip(names, items, strict=True)
        )
    )


def _have(item: object) -> Have:
    if not (isinstance(item, list) and len(item) == 3):
        raise TransferProtocolError("a held file that is not [index, offset, sha256]")
    return Have(_count(item[0]), _count(item[1]), _hash(item[2]))


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TransferProtocolError("a list that is not a list")
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
        raise TransferProtocolError(f"not a size, offset or index: {str(value)[:40]!r}")
    return value


def _hash(value: object) -> str:
    if not (isinstance(value, str) and _SHA256.match(value)):
        raise TransferProtocolError("a SHA-256 that is not 64 lowercase hex digits")
    return value


def _reason(value: object) -> str:
    if not isinstance(value, str):
        raise TransferProtocolError("a reason that is not text")
    printable = "".join(c if c.isprintable() else "?" for c in value[:MAX_REASON])
    return printable
