"""L{Recovery}: what a lost path calls for before the new punch, on a C{task.Clock}."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from twisted_nat.errors import RendezvousUnavailable
from twisted_nat.service.addresses import Addresses
from twisted_nat.service.recovery import REGISTERED_WAIT, Recovery
from twisted_nat.stun.client import STUNClient


class Signaling:
    """The part of a signalling channel Recovery uses, recording what it is asked."""

    def __init__(self) -> None:
        self.looked_up: list[str] = []
        self.registered: Deferred[None] = Deferred()
        self.lookup_fails = False

    def lookup(self, name: str) -> Deferred[Any]:
        self.looked_up.append(name)
        if self.lookup_fails:
            return fail(RendezvousUnavailable("the connection to the rendezvous server was lost"))
        return succeed(b"key")

    def when_registered(self) -> Deferred[None]:
        return self.registered


def recovery(clock: Clock, signaling: Any) -> tuple[Recovery, list[str]]:
    offered: list[str] = []

    def connect(peer: str) -> Deferred[str]:
        offered.append(peer)
        return succeed(peer)

    addresses = Addresses(clock, STUNClient([], reactor=clock), False, lambda: True)
    return Recovery(clock, addresses, lambda: signaling, lambda: "alice", connect), offered


def test_relearn_looks_ourselves_up_and_ignores_a_dead_connection() -> None:
    clock = Clock()
    signaling = Signaling()
    signaling.lookup_fails = True
    relearning, _ = recovery(clock, signaling)
    done: list[object] = []
    relearning.relearn().addCallback(done.append)
    assert signaling.looked_up == ["alice"]
    assert done == [None]


def test_connect_again_waits_for_the_rendezvous() -> None:
    clock = Clock()
    signaling = Signaling()
    relearning, offered = recovery(clock, signaling)
    result: list[object] = []
    relearning.connect_again("bob").addCallback(result.append)
    clock.advance(1.0)
    assert offered == []
    signaling.registered.callback(None)
    assert offered == ["bob"] and result == ["bob"]


def test_connect_again_tries_anyway_after_a_while() -> None:
    clock = Clock()
    relearning, offered = recovery(clock, Signaling())
    relearning.connect_again("bob")
    clock.advance(REGISTERED_WAIT - 0.1)
    assert offered == []
    clock.advance(0.1)
    assert offered == ["bob"]
    assert not clock.getDelayedCalls()


def test_without_signaling_it_offers_at_once() -> None:
    clock = Clock()
    relearning, offered = recovery(clock, None)
    relearning.connect_again("bob")
    relearning.relearn()
    assert offered == ["bob"]
