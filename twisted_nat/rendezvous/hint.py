"""
L{NATHint}: what a peer tells the other about its NAT in an offer or an
answer, so that the two agree, without another round trip, on which
technique beyond the ordinary handshake is worth its packets.
"""

from __future__ import annotations

from typing import Any

import attrs

from twisted_nat.nat import FilteringBehavior, MappingBehavior, NATBehavior, NATType, classify

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

    @property
    def nat_type(self) -> NATType:
        """
        The classic name of the sender's NAT, as far as its hint says (a hint
        says nothing of whether there is a NAT at all: behind none, it reads
        as a cone).
        """
        return classify(True, True, self.mapping, self.filtering)

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
