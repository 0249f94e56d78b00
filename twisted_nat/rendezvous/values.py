"""
The values two peers exchange before hole punching: an L{Offer} and its
L{Answer}.

They are checked when they are built, so a value that exists is a valid
one: L{Offer.from_json} and L{Answer.from_json} are where bytes from the
network become values, and they raise C{ValueError} for anything that
could not have been built locally.  The limits (name length, candidate
count) keep a hostile peer or server from making us hold or forward
arbitrary amounts of data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from twisted_nat.candidates import Candidate

SESSION_ID_SIZE = 16
KEY_SIZE = 32
MAX_NAME_LENGTH = 64
MAX_CANDIDATES = 32

_HEX = re.compile(r"[0-9a-f]*")


def check_name(name: object) -> str:
    """
    Return C{name} if it can name a peer, else raise C{ValueError}.

    Names are shown in logs and typed by people, so they are short, printable
    and free of whitespace (which would also make log lines ambiguous).
    """
    if not isinstance(name, str):
        raise ValueError(f"a peer name must be a string, not {type(name).__name__}")
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"a peer name must have 1 to {MAX_NAME_LENGTH} characters")
    if not name.isprintable() or any(c.isspace() for c in name):
        raise ValueError(f"a peer name must be printable, without whitespace: {name!r}")
    return name


def _check_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    check_name(value)


def _sized(size: int) -> Callable[[object, attrs.Attribute[bytes], bytes], None]:
    def check(instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != size:
            raise ValueError(f"{attribute.name} must be {size} bytes")

    return check


def _as_candidates(value: Iterable[Candidate]) -> tuple[Candidate, ...]:
    return tuple(value)


def _check_candidates(
    instance: object,
    attribute: attrs.Attribute[tuple[Candidate, ...]],
    value: tuple[Candidate, ...],
) -> None:
    if len(value) > MAX_CANDIDATES:
        raise ValueError(f"at most {MAX_CANDIDATES} candidates, not {len(value)}")
    for candidate in value:
        if not isinstance(candidate, Candidate):
            raise ValueError(f"not a Candidate: {candidate!r}")


def _bytes_from_hex(value: object, size: int, what: str) -> bytes:
    # bytes.fromhex would also accept whitespace and upper case; the wire
    # form is exactly what as_json writes.
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX.fullmatch(value):
        raise ValueError(f"{what} must be {size} bytes as lower-case hex")
    return bytes.fromhex(value)


def _candidates_from_json(value: object) -> tuple[Candidate, ...]:
    if not isinstance(value, list):
        raise ValueError("candidates must be a list")
    if len(value) > MAX_CANDIDATES:
        raise ValueError(f"at most {MAX_CANDIDATES} candidates, not {len(value)}")
    candidates = []
    for item in value:
        if not isinstance(item, dict):
            raise ValueError("a candidate must be an object")
        candidates.append(Candidate.from_json(item))
    return tuple(candidates)


def _object(value: object, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise ValueError(f"expected an object with exactly the keys {sorted(keys)}")
    return value


@attrs.frozen
class Offer:
    """
    What a peer sends to the one it wants to reach.

    @ivar from_name: the name the sender registered; the rendezvous server
        refuses an offer claiming any other, so the receiver can trust it.
    @ivar session_id: identifies this attempt; the answer must repeat it, so
        a late answer to an abandoned attempt cannot be taken for a new one.
    @ivar key: the secret both ends will use to authenticate their punching
        packets.  Whoever relays the offer sees it, which is why the
        rendezvous server should be reached over TLS and trusted.  It is
        left out of C{repr} so that it does not end up in logs.
    @ivar candidates: the sender's addresses, best first.
    """

    from_name: str = attrs.field(validator=_check_name)
    session_id: bytes = attrs.field(validator=_sized(SESSION_ID_SIZE))
    key: bytes = attrs.field(validator=_sized(KEY_SIZE), repr=False)
    candidates: tuple[Candidate, ...] = attrs.field(
        converter=_as_candidates, validator=_check_candidates
    )

    def as_json(self) -> dict[str, object]:
        return {
            "from": self.from_name,
            "session": self.session_id.hex(),
            "key": self.key.hex(),
            "candidates": [c.as_json() for c in self.candidates],
        }

    @classmethod
    def from_json(cls, value: object) -> Offer:
        """The inverse of L{as_json}; raises C{ValueError} for anything malformed."""
        fields = _object(value, {"from", "session", "key", "candidates"})
        return cls(
            check_name(fields["from"]),
            _bytes_from_hex(fields["session"], SESSION_ID_SIZE, "session"),
            _bytes_from_hex(fields["key"], KEY_SIZE, "key"),
            _candidates_from_json(fields["candidates"]),
        )


@attrs.frozen
class Answer:
    """
    The reply of the peer an L{Offer} reached: its own candidates for the
    same session.  The offer's key is shared already, so none is sent back.
    """

    session_id: bytes = attrs.field(validator=_sized(SESSION_ID_SIZE))
    candidates: tuple[Candidate, ...] = attrs.field(
        converter=_as_candidates, validator=_check_candidates
    )

    def as_json(self) -> dict[str, object]:
        return {
            "session": self.session_id.hex(),
            "candidates": [c.as_json() for c in self.candidates],
        }

    @classmethod
    def from_json(cls, value: object) -> Answer:
        """The inverse of L{as_json}; raises C{ValueError} for anything malformed."""
        fields = _object(value, {"session", "candidates"})
        return cls(
            _bytes_from_hex(fields["session"], SESSION_ID_SIZE, "session"),
            _candidates_from_json(fields["candidates"]),
        )


def new_offer(from_name: str, candidates: Iterable[Candidate]) -> Offer:
    """An offer with a fresh random session id and key."""
    return Offer(from_name, os.urandom(SESSION_ID_SIZE), os.urandom(KEY_SIZE), candidates)


def answer_to(offer: Offer, candidates: Iterable[Candidate]) -> Answer:
    """The answer to C{offer} carrying C{candidates}, for offer handlers."""
    return Answer(offer.session_id, candidates)
