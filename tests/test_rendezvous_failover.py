"""
L{FailoverEndpoint}: several rendezvous nodes as one client endpoint, on a
clock and fake endpoints.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from zope.interface import implementer

from tests.test_rendezvous import KEYS
from twisted_nat.errors import ConfigurationError
from twisted_nat.rendezvous import RendezvousClient
from twisted_nat.rendezvous.failover import FailoverEndpoint


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Answers each connect as told: refuse, accept, or never answer."""

    def __init__(self, name: str, log: list[str], behaviour: str = "accept") -> None:
        self.name, self.log, self.behaviour = name, log, behaviour

    def connect(self, factory: Any) -> Deferred[Any]:
        self.log.append(self.name)
        if self.behaviour == "refuse":
            return defer.fail(ConnectionRefusedError(self.name))
        if self.behaviour == "hang":
            return Deferred()
        return defer.succeed(Protocol())


def endpoint(*behaviours: str) -> tuple[FailoverEndpoint, list[FakeEndpoint], list[str], Clock]:
    log: list[str] = []
    fakes = [FakeEndpoint(str(i), log, b) for i, b in enumerate(behaviours)]
    clock = Clock()
    return FailoverEndpoint([(f.name, f) for f in fakes], clock, 5.0), fakes, log, clock


def results(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_the_first_node_that_accepts_is_used():
    failover, fakes, log, clock = endpoint("refuse", "accept", "accept")
    [protocol] = results(failover.connect(Factory()))
    assert isinstance(protocol, Protocol)
    assert log == ["0", "1"] and failover.current == "1"


def test_a_node_that_never_answers_is_left_after_the_attempt_timeout():
    failover, fakes, log, clock = endpoint("hang", "accept")
    out = results(failover.connect(Factory()))
    assert out == [] and log == ["0"]
    clock.advance(5.0)
    assert isinstance(out[0], Protocol) and failover.current == "1"


def test_after_a_loss_the_next_attempt_starts_with_the_next_node():
    failover, fakes, log, clock = endpoint("accept", "accept", "accept")
    results(failover.connect(Factory()))
    failover.lost()
    assert failover.current is None
    results(failover.connect(Factory()))
    assert log == ["0", "1"] and failover.current == "1"
    failover.lost()
    fakes[2].behaviour = "refuse"
    results(failover.connect(Factory()))
    assert log == ["0", "1", "2", "0"] and failover.current == "0"


def test_when_every_node_fails_the_attempt_fails_for_the_backoff_to_retry():
    failover, fakes, log, clock = endpoint("refuse", "refuse")
    [failure] = results(failover.connect(Factory()))
    assert failure.check(ConnectionRefusedError) and log == ["0", "1"]
    with pytest.raises(ValueError):
        FailoverEndpoint([], clock)


def test_a_client_takes_several_endpoints_and_refuses_bad_ones():
    client = RendezvousClient(Clock(), ["tcp:127.0.0.1:1", "tcp:127.0.0.1:2"], "bob", KEYS["bob"])
    assert client.endpoint == "tcp:127.0.0.1:1 or tcp:127.0.0.1:2"
    with pytest.raises(ConfigurationError, match="nonsense"):
        RendezvousClient(Clock(), ["tcp:127.0.0.1:1", "nonsense:x"], "bob", KEYS["bob"])
    with pytest.raises(ConfigurationError):
        RendezvousClient(Clock(), [], "bob", KEYS["bob"])
