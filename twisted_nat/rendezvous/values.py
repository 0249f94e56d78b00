"""
The values two peers exchange before hole punching: an L{Offer} and its
L{Answer}.

They are checked when they are built, so a value that exists is a valid
one: L{Offer.from_json} and L{Answer.from_json} are where bytes from the
network become values, and they raise C{ValueError} for anything that
could not have been built locally.  The limits (name length, candidate
count) keep a hostile peer or server from making us hold or forward
arbitrary amounts of data.

Both may carry a L{NATHint} (L{twisted_nat.rendezvous.hint}), what the
sender's NAT does; a value from a peer that sends none has C{nat=None},
meaning "unknown".
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from twisted_nat.candidates import Candidate
from twisted_nat.errors import BadKey
from twisted_nat.rendezvous.hint import NATHint
from twisted_nat.trust.keys import SIGNATURE_SIZE, PeerKey
from twisted_nat.trust.names import normalise_name

SESSION_ID_SIZE = 16
EPHEMERAL_SIZE = 32
MAX_CANDIDATES = 32

_HEX = re.compile(r"[0-9a-f]*")


def check_name(name: object) -> str:
    """
    Return C{name} if it can name a peer on the wire, else raise
    C{ValueError}: a name L{normalise_name} accepts and leaves as it is, so
    that one name has one spelling in every signature and registry.
    """
    normal = normalise_name(name)
    if normal != name:
        raise ValueError(f"a peer name on the wire must be normalised: {normal!r}, not {name!r}")
    return normal


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


def _check_seen_from(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError("seen_from must be an IP address")
    if value is not None:
        ipaddress.ip_address(value)


def _seen_from_json(fields: dict[str, Any]) -> str | None:
    value = fields.get("seen_from")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("seen_from must be an IP address")
    ipaddress.ip_address(value)
    return value


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


def _object(
    value: object, keys: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict) or not keys <= set(value) <= keys | optional:
        extra = f" (and optionally {sorted(optional)})" if optional else ""
        raise ValueError(f"expected an object with exactly the keys {sorted(keys)}{extra}")
    return value


_check_nat = attrs.validators.optional(attrs.validators.instance_of(NATHint))


def _check_key(instance: object, attribute: attrs.Attribute[PeerKey], value: object) -> None:
    if not isinstance(value, PeerKey):
        raise ValueError(f"{attribute.name} must be a PeerKey")


_optional_key = attrs.validators.optional(attrs.validators.instance_of(PeerKey))
_optional_name = attrs.validators.optional(_check_name)


def _key_from_json(value: object, what: str) -> PeerKey:
    try:
        return PeerKey.parse(value)  # type: ignore[arg-type]
    except BadKey as e:
        raise ValueError(f"{what}: {e}") from None


def _canonical(fields: dict[str, object]) -> bytes:
    """The one byte form of a signal's fields that signatures cover."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def _signal_json(
    head: dict[str, object], candidates: tuple[Candidate, ...], nat: NATHint | None
) -> dict[str, object]:
    """C{head}, an offer's or an answer's own keys, with the candidates and hint both carry."""
    head["candidates"] = [c.as_json() for c in candidates]
    if nat is not None:
        head["nat"] = nat.as_json()
    return head


def _nat_from_json(fields: dict[str, Any]) -> NATHint | None:
    value = fields.get("nat")
    return None if value is None else NATHint.from_json(value)


@attrs.frozen
class Offer:
    """
    What a peer sends to the one it wants to reach, signed by its key.

    Everything but the signature is covered by the signature (L{signed_part}),
    so whoever relays the offer can drop it but not change it.

    @ivar from_name: the name the sender registered with C{from_key}.
    @ivar from_key: the sender's long-term key, which signed the offer.
    @ivar to_name: the name of the peer it is for, when the sender dialled a
        name; None when it dialled a key alone.
    @ivar to_key: the key of the peer it is for, when the sender knows it
        (pinned or given); the receiver refuses an offer for
        another key.
    @ivar session_id: identifies this attempt; the answer repeats it.
    @ivar ephemeral: the sender's fresh X25519 public key for this session.
    @ivar candidates: the sender's addresses, best first.
    @ivar nat: what the sender's NAT does, if it knows and says.
    @ivar signature: C{from_key}'s Ed25519 signature over L{signed_part}.
    @ivar seen_from: the IP address the rendezvous server saw the sender
        connect from: the server's word, set by the server when it relays,
        outside the signature.
    """

    from_name: str = attrs.field(validator=_check_name)
    from_key: PeerKey = attrs.field(validator=_check_key)
    to_name: str | None = attrs.field(validator=_optional_name)
    to_key: PeerKey | None = attrs.field(validator=_optional_key)
    session_id: bytes = attrs.field(validator=_sized(SESSION_ID_SIZE))
    ephemeral: bytes = attrs.field(validator=_sized(EPHEMERAL_SIZE))
    candidates: tuple[Candidate, ...] = attrs.field(
        converter=_as_candidates, validator=_check_candidates
    )
    nat: NATHint | None = attrs.field(default=None, validator=_check_nat)
    signature: bytes = attrs.field(
        default=bytes(SIGNATURE_SIZE), validator=_sized(SIGNATURE_SIZE), repr=False
    )
    seen_from: str | None = attrs.field(default=None, validator=_check_seen_from)

    def __attrs_post_init__(self) -> None:
        if self.to_name is None and self.to_key is None:
            raise ValueError("an offer is for a name, a key, or both")

    def _unsigned(self) -> dict[str, object]:
        head: dict[str, object] = {
            "from": self.from_name,
            "from_key": self.from_key.text,
            "session": self.session_id.hex(),
            "ephemeral": self.ephemeral.hex(),
        }
        if self.to_name is not None:
            head["to"] = self.to_name
        if self.to_key is not None:
            head["to_key"] = self.to_key.text
        return _signal_json(head, self.candidates, self.nat)

    def signed_part(self) -> bytes:
        """The bytes the signature covers."""
        return _canonical(self._unsigned())

    def as_json(self) -> dict[str, object]:
        """The wire form."""
        return _with_seen_from(
            {**self._unsigned(), "signature": self.signature.hex()}, self.seen_from
        )

    @classmethod
    def from_json(cls, value: object) -> Offer:
        """The inverse of L{as_json}; raises C{ValueError} for anything malformed."""
        fields = _object(
            value,
            {"from", "from_key", "session", "ephemeral", "candidates", "signature"},
            frozenset({"nat", "to", "to_key", "seen_from"}),
        )
        to_name, to_key = fields.get("to"), fields.get("to_key")
        return cls(
            check_name(fields["from"]),
            _key_from_json(fields["from_key"], "from_key"),
            None if to_name is None else check_name(to_name),
            None if to_key is None else _key_from_json(to_key, "to_key"),
            _bytes_from_hex(fields["session"], SESSION_ID_SIZE, "session"),
            _bytes_from_hex(fields["ephemeral"], EPHEMERAL_SIZE, "ephemeral"),
            _candidates_from_json(fields["candidates"]),
            _nat_from_json(fields),
            _bytes_from_hex(fields["signature"], SIGNATURE_SIZE, "signature"),
            _seen_from_json(fields),
        )


@attrs.frozen
class Answer:
    """
    The reply of the peer an L{Offer} reached, signed by its key: its own
    name, key, ephemeral key and candidates for the same session.

    @ivar nat: what the answering peer's NAT does, if it knows and says.
    @ivar signature: C{from_key}'s signature over L{signed_part}, which
        also covers the offer (L{twisted_nat.trust.handshake}).
    @ivar seen_from: as L{Offer.seen_from}, for the answering peer.
    """

    session_id: bytes = attrs.field(validator=_sized(SESSION_ID_SIZE))
    from_name: str = attrs.field(validator=_check_name)
    from_key: PeerKey = attrs.field(validator=_check_key)
    ephemeral: bytes = attrs.field(validator=_sized(EPHEMERAL_SIZE))
    candidates: tuple[Candidate, ...] = attrs.field(
        converter=_as_candidates, validator=_check_candidates
    )
    nat: NATHint | None = attrs.field(default=None, validator=_check_nat)
    signature: bytes = attrs.field(
        default=bytes(SIGNATURE_SIZE), validator=_sized(SIGNATURE_SIZE), repr=False
    )
    seen_from: str | None = attrs.field(default=None, validator=_check_seen_from)

    def _unsigned(self) -> dict[str, object]:
        head: dict[str, object] = {
            "session": self.session_id.hex(),
            "from": self.from_name,
            "from_key": self.from_key.text,
            "ephemeral": self.ephemeral.hex(),
        }
        return _signal_json(head, self.candidates, self.nat)

    def signed_part(self) -> bytes:
        """The bytes of the answer itself that the signature covers."""
        return _canonical(self._unsigned())

    def as_json(self) -> dict[str, object]:
        """The wire form."""
        return _with_seen_from(
            {**self._unsigned(), "signature": self.signature.hex()}, self.seen_from
        )

    @classmethod
    def from_json(cls, value: object) -> Answer:
        """The inverse of L{as_json}; raises C{ValueError} for anything malformed."""
        fields = _object(
            value,
            {"session", "from", "from_key", "ephemeral", "candidates", "signature"},
            frozenset({"nat", "seen_from"}),
        )
        return cls(
            _bytes_from_hex(fields["session"], SESSION_ID_SIZE, "session"),
            check_name(fields["from"]),
            _key_from_json(fields["from_key"], "from_key"),
            _bytes_from_hex(fields["ephemeral"], EPHEMERAL_SIZE, "ephemeral"),
            _candidates_from_json(fields["candidates"]),
            _nat_from_json(fields),
            _bytes_from_hex(fields["signature"], SIGNATURE_SIZE, "signature"),
            _seen_from_json(fields),
        )


def _with_seen_from(wire: dict[str, object], seen_from: str | None) -> dict[str, object]:
    if seen_from is not None:
        wire["seen_from"] = seen_from
    return wire
