"""
Boxes plain AMP lets escape into the reactor as a logged traceback, found
by the fuzz run: each must now be refused quietly.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols import amp

from twisted_nat.rendezvous.server import RendezvousServerFactory

PEER = IPv4Address("TCP", "198.51.100.5", 5000)


def connected() -> tuple[RendezvousServerFactory, Any, StringTransport]:
    factory = RendezvousServerFactory(Clock())
    protocol = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    return factory, protocol, transport


def box(**fields: bytes) -> bytes:
    return bytes(amp.AmpBox({k.encode(): v for k, v in fields.items()}).serialize())


@pytest.mark.parametrize(
    "data",
    [
        box(),  # neither a command, an answer nor an error
        box(name=b"alice"),
        box(_answer=b"7"),  # an answer to a question never asked
        box(_error=b"7", _error_code=b"X", _error_description=b"x"),
        box(_command=b"Lo\x80kup", _ask=b"1"),  # a command name that is not ASCII
    ],
)
def test_a_box_that_cannot_be_dispatched_is_refused_quietly(data):
    """Dropped and counted, never raised into the reactor; the connection serves on."""
    factory, protocol, transport = connected()
    with capturedLogs() as events:
        protocol.dataReceived(data + box(_command=b"Challenge", _ask=b"2"))
    assert [e for e in events if e.get("log_failure") is not None] == []
    assert factory.stats.refused_malformed == 1
    assert not transport.disconnecting
    assert b"nonce" in transport.value(), "the next command is answered"


@pytest.mark.parametrize(
    "data",
    [
        box(_command=b"Lookup"),  # missing its argument
        box(_command=b"Lookup", name=b"nobody"),  # refused: unknown peer
        box(_command=b"NoSuchCommand"),
    ],
)
def test_a_refused_command_that_asked_no_answer_keeps_the_connection(data):
    factory, protocol, transport = connected()
    with capturedLogs() as events:
        protocol.dataReceived(data)
        protocol.dataReceived(box(_command=b"Challenge", _ask=b"1"))
    assert [e for e in events if e.get("log_failure") is not None] == []
    assert not transport.disconnecting
    assert b"nonce" in transport.value(), "the next command is answered"
