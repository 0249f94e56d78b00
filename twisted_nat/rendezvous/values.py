"""
The values two peers exchange before hole punching: an L{Offer} and its
L{Answer}.

They are checked when they are built, so a value that exists is a valid
one: L{Offer.from_json} and L{Answer.from_json} are where bytes from the
network become values, and they raise C{ValueError} for anything that
could not have been built locally.  The limits (name length, candidate
count) keep a hostile peer or server from making us hold or forward
arbitrary amounts of data.

Both may carry a L{NATHint}: what the sender's NAT does, so that the two
peers agree, without another round trip, on whether the birthday method
(L{twisted_nat.punch.birthday}) is worth its packets.  It is optional: a value
from a peer that sends none has C{nat=None}, meaning "unknown".
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from twisted_nat.candidates import Candidate
from twisted_nat.nat import FilteringBehavior, MappingBehavior, NATBehavior

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


def _object(
    value: object, keys: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict) or not keys <= set(value) <= keys | optional:
        extra = f" (and optionally {sorted(optional)})" if optional else ""
        raise ValueError(f"expected an object with exactly the keys {sorted(keys)}{extra}")
    return value


_DEPENDENT = frozenset(
    {
        MappingBehavior.ADDRESS_DEPENDENT,
        MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
        MappingBehavior.DESTINATION_DEPENDENT,
    }
)


def _enum_from_json(kind: type[MappingBehavior] | type[FilteringBehavior], value: object) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"a NAT hint's behaviour must be a string, not {value!r}")
    # A later version may name behaviour this one does not know: that is
    # advice lost, not a malformed offer.
    try:
        return kind(value)
    except ValueError:
        return kind.UNKNOWN


def _optional_port(instance: object, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is not None and (type(value) is not int or not 0 < value < 65536):
        raise ValueError(f"{attribute.name} must be a port number or None, not {value!r}")


@attrs.frozen
class NATHint:
    """
    What the sender's NAT does, as far as its behaviour discovery found out.

    @ivar mapping: how its NAT maps (RFC 4787): endpoint-independent means
        the peer can reach the server-reflexive candidate from anywhere.
    @ivar filtering: which inbound datagrams its NAT admits.
    @ivar predictable: whether a destination-dependent mapping hands out
        ports in sequence (the sender then offers predicted candidates
        itself); False when they looked random, or were not measured.
    @ivar birthday: whether the sender takes its part in the birthday
        method (its sockets or its probes may be switched off), so that a
        peer does not spend its own part for nothing.
    @ivar meet: behind a NAT that allocates in sequence, the public port
        the sender's run of extra sockets will hold towards the peer's own
        C{meet} port (L{twisted_nat.punch.meeting}); None when it runs none.
    """

    mapping: MappingBehavior = attrs.field(
        default=MappingBehavior.UNKNOWN, validator=attrs.validators.instance_of(MappingBehavior)
    )
    filtering: FilteringBehavior = attrs.field(
        default=FilteringBehavior.UNKNOWN,
        validator=attrs.validators.instance_of(FilteringBehavior),
    )
    predictable: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    birthday: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    meet: int | None = attrs.field(default=None, validator=_optional_port)

    @classmethod
    def of(cls, behavior: NATBehavior, birthday: bool = False) -> NATHint:
        """The hint for what discovery found."""
        return cls(behavior.mapping, behavior.filtering, behavior.port_delta is not None, birthday)

    @property
    def endpoint_independent(self) -> bool:
        """The mapping is the same whatever the destination: the easy side."""
        return self.mapping is MappingBehavior.ENDPOINT_INDEPENDENT

    @property
    def unpredictable(self) -> bool:
        """
        The mapping depends on the destination and its ports cannot be
        predicted: the hard side, which no candidate of its own describes.
        """
        return self.mapping in _DEPENDENT and not self.predictable

    @property
    def sequential(self) -> bool:
        """The mapping depends on the destination, with ports handed out in sequence."""
        return self.mapping in _DEPENDENT and self.predictable

    def as_json(self) -> dict[str, object]:
        return {
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "predictable": self.predictable,
            "birthday": self.birthday,
            **({} if self.meet is None else {"meet": self.meet}),
        }

    @classmethod
    def from_json(cls, value: object) -> NATHint:
        """
        The inverse of L{as_json}; raises C{ValueError} for anything
        malformed.  Keys this version does not know are ignored: a hint is
        advice, and a later version may give more of it.
        """
        if not isinstance(value, dict):
            raise ValueError("a NAT hint must be an object")
        predictable, birthday = (value.get(key, False) for key in ("predictable", "birthday"))
        if not (isinstance(predictable, bool) and isinstance(birthday, bool)):
            raise ValueError("a NAT hint's predictable and birthday must be true or false")
        return cls(
            _enum_from_json(MappingBehavior, value.get("mapping", "unknown")),
            _enum_from_json(FilteringBehavior, value.get("filtering", "unknown")),
            predictable,
            birthday,
            value.get("meet"),  # checked as any hint's
        )


_check_nat = attrs.validators.optional(attrs.validators.instance_of(NATHint))


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


_OPTIONAL = frozenset({"nat"})


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
    @ivar nat: what the sender's NAT does, if it knows and says.
    """

    from_name: str = attrs.field(validator=_check_name)
    session_id: bytes = attrs.field(validator=_sized(SESSION_ID_SIZE))
    key: bytes = attrs.field(validator=_sized(KEY_SIZE), repr=False)
    candidates: tuple[Candidate, ...] = attrs.field(
        converter=_as_candidates, validator=_check_candidates
    )
    nat: NATHint | None = attrs.field(default=None, validator=_check_nat)

    def as_json(self) -> dict[str, object]:
        """The wire form; C{nat} only when there is a hint, as a peer without one sends."""
        head: dict[str, object] = {
            "from": self.from_name,
            "session": self.session_id.hex(),
            "key": self.key.hex(),
        }
        return _signal_json(head, self.candidates, self.nat)

    @classmethod
    def from_json(cls, value: object) -> Offer:
        """The inverse of L{as_json}; raises C{ValueError} for anything malformed."""
        fields = _object(value, {"from", "session", "key", "candidates"}, _OPTIONAL)
        return cls(
            check_name(fields["from"]),
            _bytes_from_hex(fields["session"], SESSION_ID_SIZE, "session"),
            _bytes_from_hex(fields["key"], KEY_SIZE, "key"),
            _candidates_from_json(fields["candidates"]),
            _nat_from_json(fields),
        )


@attrs.frozen
class Answer:
    """
    The reply of the peer an L{Offer} reached: its own candidates for the
    same session.  The offer's key is shared already, so none is sent back.

    @ivar nat: what the answering peer's NAT does, if it knows and says.
    """

    session_id: bytes = attrs.field(validator=_sized(SESSION_ID_SIZE))
    candidates: tuple[Candidate, ...] = attrs.field(
        converter=_as_candidates, validator=_check_candidates
    )
    nat: NATHint | None = attrs.field(default=None, validator=_check_nat)

    def as_json(self) -> dict[str, object]:
        """The wire form; C{nat} only when there is a hint, as a peer without one sends."""
        return _signal_json({"session": self.session_id.hex()}, self.candidates, self.nat)

    @classmethod
    def from_json(cls, value: object) -> Answer:
        """The inverse of L{as_json}; raises C{ValueError} for anything malformed."""
        fields = _object(value, {"session", "candidates"}, _OPTIONAL)
        return cls(
            _bytes_from_hex(fields["session"], SESSION_ID_SIZE, "session"),
            _candidates_from_json(fields["candidates"]),
            _nat_from_json(fields),
        )


def new_offer(from_name: str, candidates: Iterable[Candidate], nat: NATHint | None = None) -> Offer:
    """An offer with a fresh random session id and key."""
    return Offer(from_name, os.urandom(SESSION_ID_SIZE), os.urandom(KEY_SIZE), candidates, nat)


def answer_to(offer: Offer, candidates: Iterable[Candidate], nat: NATHint | None = None) -> Answer:
    """The answer to C{offer} carrying C{candidates}, for offer handlers."""
    return Answer(offer.session_id, candidates, nat)
