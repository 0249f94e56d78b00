"""
Attribute tables: which attribute types a decoder turns into typed values.

A table is built once from the classes one protocol layer knows and never
changes.  The message decoder is given a table (plain STUN by default) and
decodes every type the table lacks as an L{UnknownAttribute}, so what it
returns depends on the table alone, never on which modules were imported.
TURN and the peers' control messages extend L{STUN_ATTRIBUTES} with their
own classes (L{AttributeTable.extended}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn, cast

import attrs

from twisted_nat.stun.attributes import address, error, ice, integrity, rfc5780, text
from twisted_nat.stun.attributes.base import Attribute, unchecked_fields

Decoder = Callable[[bytes, bytes], Attribute]
"""A class's C{decode_value}: value field and transaction id in."""


class AttributeTable:
    """
    An immutable map from attribute type code to the class that decodes it.

    @ivar classes: the classes, in the order given.
    @ivar decoders: each type code's C{decode_value}; what the message
        decoder looks up, once per attribute.
    """

    __slots__ = ("classes", "decoders")

    classes: tuple[type[Attribute], ...]
    decoders: Mapping[int, Decoder]

    def __init__(self, classes: Iterable[type[Attribute]]) -> None:
        """
        @raise ValueError: two classes share a type code, or one has none.
        @raise TypeError: a class inherits a C{decode_value} marked with
            L{builds_unchecked<twisted_nat.stun.attributes.base.builds_unchecked>}
            but has fields, validators or converters that decoder does not
            know about; it must override C{decode_value}.
        """
        kinds = tuple(classes)
        decoders: dict[int, Decoder] = {}
        for kind in kinds:
            if not 0 <= kind.TYPE <= 0xFFFF:
                raise ValueError(f"{kind.__name__} has no attribute type")
            if kind.TYPE in decoders:
                raise ValueError(f"attribute type {kind.TYPE:#06x} appears twice")
            _check_decoder(kind)
            decoders[kind.TYPE] = cast(Any, kind).decode_value
        object.__setattr__(self, "classes", kinds)
        object.__setattr__(self, "decoders", decoders)

    def extended(self, *classes: type[Attribute]) -> AttributeTable:
        """A new table with this one's classes and C{classes}."""
        return AttributeTable((*self.classes, *classes))

    def __contains__(self, attr_type: object) -> bool:
        return attr_type in self.decoders

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("an AttributeTable cannot be changed")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("an AttributeTable cannot be changed")

    def __repr__(self) -> str:
        return f"AttributeTable({', '.join(kind.__name__ for kind in self.classes)})"


def _check_decoder(kind: type[Attribute]) -> None:
    expected = unchecked_fields(kind)
    if expected is None:
        return
    fields = attrs.fields(cast(Any, kind))
    if tuple(f.name for f in fields) != expected or any(
        f.validator is not None or f.converter is not None for f in fields
    ):
        raise TypeError(f"{kind.__name__} must override decode_value")


STUN_ATTRIBUTES = AttributeTable(
    (
        address.MappedAddress,
        rfc5780.ChangeRequest,
        address.SourceAddress,
        address.ChangedAddress,
        text.Username,
        integrity.MessageIntegrity,
        error.ErrorCode,
        error.UnknownAttributes,
        text.Realm,
        text.Nonce,
        integrity.MessageIntegritySHA256,
        integrity.PasswordAlgorithm,
        text.UserHash,
        address.XorMappedAddress,
        ice.Priority,
        ice.UseCandidate,
        rfc5780.Padding,
        rfc5780.ResponsePort,
        integrity.PasswordAlgorithms,
        text.AlternateDomain,
        text.Software,
        address.AlternateServer,
        integrity.Fingerprint,
        ice.IceControlled,
        ice.IceControlling,
        address.ResponseOrigin,
        address.OtherAddress,
    )
)
"""The attributes of STUN (RFC 8489), RFC 5780 and ICE (RFC 8445), by type code."""
