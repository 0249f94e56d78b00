"""
The NAT lab with our servers in it, and the peer processes a test starts
there: the fixtures of the lab tests that run the whole service.

A lab test module asks for its lab with L{lab_fixtures}, which gives it
two fixtures: C{world}, the lab of the module's NATs with our STUN server,
our rendezvous server and (if asked for) coturn as a TURN server in the
internet namespace, built once per module; and C{peers}, the test's
L{Peers}, through which it starts peer processes (L{tests.support.peer_runner}).

What they guarantee: under C{CI=true} a lab that cannot be built fails
every test of the module (L{require_lab}); elsewhere the tests skip,
saying why.  Every peer a test started is stopped after it, and the lab
(namespaces, servers and anything still running in them) is torn down
after the module, also when a test or the building failed.

With C{LAB_PEER_LOGS=DIR} in the environment, every peer logs at info
level to C{DIR/NAME.log}: the story of a trial that went wrong.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import pytest

from tests.support.lab_servers import (
    OURS,
    TURN_CREDENTIALS,
    start_rendezvous,
    start_servers,
    start_turn,
)
from tests.support.natlab import Lab, Nat, NatSpec, nat_lab, require_lab
from tests.support.peer_runner import PeerProcess

PEER_LIFETIME = 300
"""Seconds after which a peer process exits by itself, should its test never stop it."""


@attrs.frozen
class LabWorld:
    """
    A lab and where its servers listen, as peers are told.

    @ivar rendezvous: the rendezvous server's client endpoint.
    @ivar stun: our STUN server's C{HOST:PORT}.
    @ivar turn: coturn's C{turn:} URI, when the world has a TURN server.
    """

    lab: Lab
    rendezvous: str
    stun: str
    turn: str | None = None


@contextmanager
def lab_world(specs: Sequence[NatSpec], *, turn: bool = False) -> Iterator[LabWorld]:
    """
    A lab of C{specs} with our STUN and rendezvous servers running, and
    coturn as a TURN server with C{turn}; torn down on leaving.  Ends the
    test (a skip, or a failure under C{CI=true}) where no lab can be built.
    """
    require_lab()
    with nat_lab(specs) as lab, tempfile.TemporaryDirectory() as workdir:
        start_servers(lab, None, workdir)
        rendezvous = start_rendezvous(lab)
        relay = start_turn(lab, workdir) if turn else None
        yield LabWorld(lab, rendezvous, f"{lab.internet.addresses[0]}:{OURS}", relay)


class Peers:
    """The peer processes of one test, in the world's lab; L{stop_all} stops them all."""

    def __init__(self, world: LabWorld) -> None:
        self.world = world
        self.started: list[PeerProcess] = []

    def start(
        self, nat: str, name: str, *options: str, index: int = 0, instances: int = 1
    ) -> PeerProcess:
        """
        A peer process called C{name} behind the C{index}-th peer of
        C{nat}, running C{instances} services, told where the world's
        servers are (and its TURN server's credentials); C{options} are
        more of L{tests.support.peer_runner}'s.
        """
        world = self.world
        arguments = ["--name", name, "--rendezvous", world.rendezvous, "--stun", world.stun]
        if world.turn is not None:
            arguments += ["--turn", world.turn, "--turn-user", TURN_CREDENTIALS.username]
            arguments += ["--turn-password", TURN_CREDENTIALS.password]
        arguments += ["--instances", str(instances), "--exit-after", str(PEER_LIFETIME)]
        namespace = world.lab.nat(nat).peers[index].namespace
        logs = os.environ.get("LAB_PEER_LOGS")
        stderr = None
        if logs:
            os.makedirs(logs, exist_ok=True)
            arguments.append("--verbose")
            stderr = open(os.path.join(logs, f"{name}.log"), "w")  # noqa: SIM115
        try:
            peer = PeerProcess.spawn(
                world.lab,
                namespace,
                [*arguments, *options],
                label=f"{name} ({nat} p{index})",
                stderr=stderr,
            )
        finally:
            if stderr is not None:
                stderr.close()
        self.started.append(peer)
        return peer

    def stop_all(self) -> None:
        """Stop every peer started, each even if stopping another failed."""
        problems: list[BaseException] = []
        for peer in self.started:
            try:
                peer.stop()
            except Exception as problem:
                problems.append(problem)
        if problems:
            raise problems[0]


def lab_fixtures(specs: Sequence[NatSpec], *, turn: bool = False) -> tuple[Any, Any]:
    """
    The fixtures C{world} (the module's L{LabWorld} of C{specs}, with a
    TURN server with C{turn}) and C{peers} (the test's L{Peers}); a module
    takes them as C{world, peers = lab_fixtures(NATS)}.
    """

    @pytest.fixture(scope="module")
    def world() -> Iterator[LabWorld]:
        """The module's lab with our servers, torn down after the module."""
        with lab_world(specs, turn=turn) as built:
            yield built

    @pytest.fixture
    def peers(world: LabWorld) -> Iterator[Peers]:
        """The test's peer processes, stopped after it whatever happened."""
        started = Peers(world)
        try:
            yield started
        finally:
            started.stop_all()

    return world, peers


@contextmanager
def loss_on(nats: Sequence[Nat], percent: float) -> Iterator[None]:
    """C{percent} loss on the outside links of C{nats}, taken off again on leaving."""
    try:
        for nat in nats:
            nat.set_loss(percent)
        yield
    finally:
        for nat in nats:
            nat.set_loss(0)
