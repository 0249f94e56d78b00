"""
A rendezvous client written box by box, for driving a server protocol over
a C{StringTransport}: hostile input, and many connections without sockets.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_nat.rendezvous.protocol import registration_transcript
from twisted_nat.trust import Identity

_ports = itertools.count(20000)


def box(**values: bytes) -> bytes:
    """One AMP box on the wire, keys and values as given."""
    data: bytes = amp.AmpBox({k.encode(): v for k, v in values.items()}).serialize()
    return data


class WireClient:
    """
    One connection to a server protocol, by hand: boxes in through
    C{dataReceived}, boxes out parsed from what it wrote.
    """

    def __init__(self, factory: ServerFactory, host: str = "10.0.0.1") -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, next(_ports)))
        protocol = factory.buildProtocol(self.transport.getPeer())
        assert isinstance(protocol, Protocol)
        self.protocol = protocol
        self.protocol.makeConnection(self.transport)
        self._tags = itertools.count(1)
        self._read = 0
        self._answers: dict[bytes, amp.AmpBox] = {}
        self._lost = False

    @property
    def open(self) -> bool:
        """Whether the server has not (yet) dropped this connection."""
        return not (self.transport.disconnecting or getattr(self.transport, "aborted", False))

    def send(self, command: bytes, **arguments: bytes) -> bytes:
        """Send C{command}; its tag, for L{answer}."""
        tag = b"%x" % next(self._tags)
        self.protocol.dataReceived(box(_command=command, _ask=tag, **arguments))
        return tag

    def answer(self, tag: bytes) -> amp.AmpBox | None:
        """The server's answer (or error) to the question tagged C{tag}, if it came."""
        self._collect()
        return self._answers.pop(tag, None)

    def boxes_from_server(self) -> list[amp.AmpBox]:
        """Questions the server asked us (offers delivered), since last asked."""
        return self._collect()

    def _collect(self) -> list[amp.AmpBox]:
        data = self.transport.value()
        new, self._read = data[self._read :], len(data)
        questions = []
        for each in amp.parseString(new) if new else []:
            tag = each.get(b"_answer") or each.get(b"_error")
            if tag is not None:
                self._answers[tag] = each
            else:
                questions.append(each)
        return questions

    def call(self, command: bytes, **arguments: bytes) -> amp.AmpBox:
        """Send C{command} and return its answer, which must have come at once."""
        answer = self.answer(self.send(command, **arguments))
        assert answer is not None, f"no answer to {command!r}"
        return answer

    def register(self, name: str, identity: Identity) -> amp.AmpBox:
        """Challenge, then register C{name} for C{identity}: the register answer."""
        challenge = self.call(b"Challenge")
        if b"_error" in challenge:
            return challenge
        proof = registration_transcript(challenge[b"server"], challenge[b"nonce"], "register", name)
        return self.call(
            b"Register",
            name=name.encode(),
            key=identity.public.text.encode(),
            signature=identity.sign(proof),
        )

    def lose(self, reason: Any = None) -> None:
        """The connection ends: the server protocol hears of it, once."""
        if not self._lost:
            self._lost = True
            self.protocol.connectionLost(Failure(reason or ConnectionError("closed")))
