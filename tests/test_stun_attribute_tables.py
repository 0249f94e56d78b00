"""
Attribute tables: what the decoder returns depends on the table it is given,
never on which modules happen to be imported; and a table refuses classes
its fast decoders would build wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import attrs
import pytest

from twisted_nat.control import CONTROL_ATTRIBUTES, Destination
from twisted_nat.stun.attributes import (
    STUN_ATTRIBUTES,
    Attribute,
    AttributeTable,
    TextAttribute,
    UnknownAttribute,
    XorAddressAttribute,
    XorMappedAddress,
    unpack_xor_address,
)
from twisted_nat.stun.message import Message, MessageClass, Method, decode, encode
from twisted_nat.turn.attributes import TURN_ATTRIBUTES, Lifetime, XorRelayedAddress

TID = bytes(range(1, 13))


def bare(*attributes: Attribute) -> Message:
    return Message(Method.ALLOCATE, MessageClass.SUCCESS, TID, attributes)


# In a fresh interpreter: builds a message carrying XOR-RELAYED-ADDRESS,
# LIFETIME (TURN) and DESTINATION (control) from STUN's names alone, imports
# the modules named on the command line in that order, decodes the message,
# then imports TURN and control for their tables and decodes it again.
# Prints the attribute class names each decoding produced.
_PROBE = textwrap.dedent(
    """
    import importlib, json, sys

    from twisted_nat.stun.attributes import (
        STUN_ATTRIBUTES, UnknownAttribute, pack_xor_address
    )
    from twisted_nat.stun.message import Message, MessageClass, Method, decode, encode

    tid = bytes(range(1, 13))
    data = encode(
        Message(
            Method.ALLOCATE,
            MessageClass.SUCCESS,
            tid,
            (
                UnknownAttribute(0x0016, pack_xor_address("192.0.2.1", 5, tid)),
                UnknownAttribute(0x000D, (600).to_bytes(4, "big")),
                UnknownAttribute(0xC0D0, pack_xor_address("192.0.2.2", 6, tid)),
            ),
        )
    )

    def names(message):
        return [type(a).__name__ for a in message.attributes]

    for name in sys.argv[1:]:
        importlib.import_module(name)
    found = {
        "turn imported": "twisted_nat.turn" in sys.modules,
        "default": names(decode(data)),
        "stun": names(decode(data, table=STUN_ATTRIBUTES)),
    }

    from twisted_nat.control import CONTROL_ATTRIBUTES
    from twisted_nat.turn.attributes import TURN_ATTRIBUTES

    print(json.dumps(found | {
        "default after": names(decode(data)),
        "turn": names(decode(data, table=TURN_ATTRIBUTES)),
        "control": names(decode(data, table=CONTROL_ATTRIBUTES)),
    }))
    """
)


@pytest.mark.parametrize(
    "imports",
    [
        (),
        ("twisted_nat.turn",),
        ("twisted_nat.control",),
        ("twisted_nat.service",),
        ("twisted_nat.control", "twisted_nat.turn", "twisted_nat.stun"),
    ],
    ids=lambda names: "+".join(names) or "nothing-more",
)
def test_decoding_does_not_depend_on_what_was_imported(imports: tuple[str, ...]) -> None:
    """
    Whatever was imported, and in whichever order: the STUN table (and the
    default) decodes TURN's and the control messages' attributes as
    unknown, the TURN table types TURN's, the control table DESTINATION.
    """
    output = subprocess.run(
        [sys.executable, "-c", _PROBE, *imports],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ).stdout
    unknown = ["UnknownAttribute"] * 3
    assert json.loads(output) == {
        "turn imported": "twisted_nat.turn" in imports or "twisted_nat.service" in imports,
        "default": unknown,
        "stun": unknown,
        "default after": unknown,
        "turn": ["XorRelayedAddress", "Lifetime", "UnknownAttribute"],
        "control": ["UnknownAttribute", "UnknownAttribute", "Destination"],
    }


def test_each_table_types_its_own_attributes_in_this_process() -> None:
    """The same, in the test process, where everything has been imported."""
    attributes = (XorRelayedAddress("192.0.2.1", 5), Lifetime(600), Destination("192.0.2.2", 6))
    data = encode(bare(*attributes))
    assert all(type(a) is UnknownAttribute for a in decode(data).attributes)
    assert decode(data, table=TURN_ATTRIBUTES).attributes[:2] == attributes[:2]
    assert decode(data, table=CONTROL_ATTRIBUTES).attributes[2] == attributes[2]
    for table in (STUN_ATTRIBUTES, TURN_ATTRIBUTES, CONTROL_ATTRIBUTES):
        for kind in STUN_ATTRIBUTES.classes:
            assert kind.TYPE in table


def test_tables_cannot_be_changed() -> None:
    with pytest.raises(AttributeError):
        STUN_ATTRIBUTES.decoders = {}
    with pytest.raises(AttributeError):
        del STUN_ATTRIBUTES.classes
    bigger = STUN_ATTRIBUTES.extended(Lifetime)
    assert Lifetime.TYPE in bigger and Lifetime.TYPE not in STUN_ATTRIBUTES


def test_a_type_code_appears_once() -> None:
    @attrs.frozen
    class Another(XorAddressAttribute):
        TYPE = XorMappedAddress.TYPE

    with pytest.raises(ValueError, match="appears twice"):
        STUN_ATTRIBUTES.extended(Another)
    with pytest.raises(ValueError, match="no attribute type"):
        AttributeTable([XorAddressAttribute])


def test_tables_refuse_subclasses_the_fast_decoders_would_build_wrong() -> None:
    """
    The address, text, PRIORITY and tie-breaker decoders build instances
    without C{__init__}; a subclass with more fields, or a validator, must
    bring its own decoder, and a table with it but without one fails loudly.
    """

    @attrs.frozen
    class Relayed(XorAddressAttribute):
        TYPE = 0xFFF0

    @attrs.frozen
    class Labelled(XorAddressAttribute):
        TYPE = 0xFFF1
        label: str = ""

    @attrs.frozen
    class Checked(TextAttribute):
        TYPE = 0xFFF2
        value: str = attrs.field(validator=attrs.validators.max_len(4))

    @attrs.frozen
    class Overridden(XorAddressAttribute):
        TYPE = 0xFFF3
        label: str = ""

        @classmethod
        def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
            return cls(*unpack_xor_address(value, transaction_id), label="decoded")

    table = STUN_ATTRIBUTES.extended(Relayed)
    decoded = decode(encode(bare(Relayed("192.0.2.1", 5))), table=table)
    assert decoded.attributes == (Relayed("192.0.2.1", 5),)
    for kind in (Labelled, Checked):
        with pytest.raises(TypeError, match="must override decode_value"):
            STUN_ATTRIBUTES.extended(kind)
    table = STUN_ATTRIBUTES.extended(Overridden)
    decoded = decode(encode(bare(Overridden("192.0.2.1", 5))), table=table)
    assert decoded.attributes == (Overridden("192.0.2.1", 5, "decoded"),)
