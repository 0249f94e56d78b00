"""
Port prediction behind a NAT whose mapping depends on the destination but
which allocates ports in sequence.  The server-reflexive address is of no
use to a peer there: a punch leaves from a port the NAT has not chosen yet.
So the port the NAT hands out now is asked for (L{latest_port}, the I/O),
and the next ones are offered as predicted candidates
(L{predicted_candidates}, pure); the peer's PUNCHes to them open its own
NAT for the port our punch gets.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP
from twisted.logger import Logger

from twisted_nat.address import Address
from twisted_nat.candidates import Candidate, CandidateType, candidate_priority
from twisted_nat.errors import TwistedNATError
from twisted_nat.nat.behavior import MappingBehavior, NATBehavior
from twisted_nat.stun.client import RetransmissionSchedule, STUNClient
from twisted_nat.stun.message import request

PREDICTED_PORTS = 16
"""How many predicted ports a peer behind a sequential symmetric NAT offers (and a few more)."""

PREDICTION_WAIT = 2.0
"""How long the Binding request showing the NAT's latest port may take: it holds the offer back."""

PREDICTION_FLOWS = 2
"""New flows the prediction opens at once (see L{latest_port})."""

PREDICTION_SCHEDULE = RetransmissionSchedule.within(PREDICTION_WAIT, sends=8)
"""
Eight transmissions in L{PREDICTION_WAIT} rather than the RFC's three: a
lost prediction costs the direct path, so it must survive heavy loss.
"""

PREDICTED_PREFERENCE = 32767
"""The local preference of the first predicted candidate; the others count down from it."""

log = Logger()


def prediction_step(behavior: NATBehavior) -> int | None:
    """
    The step to predict our NAT's next ports with: its port delta when its
    mapping depends on the destination and it allocates ports in sequence;
    None when there is nothing to predict.
    """
    if behavior.mapping is MappingBehavior.ENDPOINT_INDEPENDENT:
        return None
    return behavior.port_delta


def predicted_candidates(latest: Address, step: int, shape: Sequence[Candidate]) -> list[Candidate]:
    """
    The predicted candidates after C{latest}, the public address the NAT
    handed out last, for a NAT that allocates every C{step} ports.

    Their order matters when the peer's NAT allocates in sequence too.  Our
    punch opens a new port for each of the peer's candidates in rank order:
    first for those ranked above its predicted ones (its host and
    server-reflexive candidates, C{ahead} of them), then one for each
    predicted one.  So the port our k-th punch to its k-th predicted port
    leaves from is C{latest + ahead + k} steps, and offering that port k-th
    makes the peer's k-th punch (from its own C{ahead + k}-th port, by the
    same rule) go exactly there: the two mappings meet.  C{ahead} is
    counted on C{shape}: the peer's offer when answering, our own
    candidates when offering (the peer runs this code too).  The first
    C{ahead} ports follow, ranked last: a peer whose NAT maps
    endpoint-independently reaches the port our punch to its
    server-reflexive candidate gets.

    @return: L{PREDICTED_PORTS} candidates and C{ahead} more, their
        priorities counting down from L{PREDICTED_PREFERENCE}; ports
        outside 1-65535 are left out.
    """
    host, port = latest
    first_predicted = candidate_priority(CandidateType.SERVER_REFLEXIVE, PREDICTED_PREFERENCE)
    ahead = sum(
        1 for c in shape if c.priority > first_predicted and c.kind is not CandidateType.RELAYED
    )
    steps = [*range(ahead + 1, ahead + PREDICTED_PORTS + 1), *range(1, ahead + 1)]
    return [
        Candidate(
            CandidateType.SERVER_REFLEXIVE,
            host,
            predicted,
            candidate_priority(CandidateType.SERVER_REFLEXIVE, PREDICTED_PREFERENCE - rank),
        )
        for rank, k in enumerate(steps)
        if 0 < (predicted := port + k * step) < 65536
    ]


async def latest_port(
    reactor: IReactorUDP, server: Address, interface: str = "0.0.0.0"
) -> Address | None:
    """
    The public address of the newest flow: Binding requests to C{server}
    from L{PREDICTION_FLOWS} sockets opened for them, at once, and the
    highest port they show.  A socket the kernel binds to the local port of
    an earlier, closed one sends on that flow's 5-tuple, and a NAT that
    still holds the flow answers with its old port; two fresh flows are
    both stale far more rarely, and the newer port is the higher (but for
    a wrap of the NAT's pool).

    @param reactor: opens the sockets, and must also provide
        C{IReactorTime} (a real reactor, or a host of
        L{twisted_nat.testing}'s simulated internet).
    @return: the address, or None when no flow got an answer within
        L{PREDICTION_WAIT}.
    """
    clock = IReactorTime(reactor)
    asking: list[Deferred[Address | None]] = []
    ports: list[IListeningPort] = []
    try:
        for _ in range(PREDICTION_FLOWS):
            client = STUNClient(reactor=clock, schedule=PREDICTION_SCHEDULE, software=None)
            try:
                ports.append(reactor.listenUDP(0, client, interface=interface, maxPacketSize=8192))
            except (CannotListenError, OSError) as e:
                log.warn("port prediction: cannot open a socket: {error}", error=e)
                break
            asking.append(Deferred.fromCoroutine(_ask(client, server)))
        found = [mapped for d in asking if (mapped := await d) is not None]
    finally:
        for port in ports:
            port.stopListening()
    if not found:
        return None
    return max(found, key=lambda address: address[1])


async def _ask(client: STUNClient, server: Address) -> Address | None:
    """One flow of a prediction: its public address, if it answers."""
    try:
        response = await client.request(request(), server)
    except TwistedNATError as e:
        log.warn("no port prediction from one flow: {error}", error=e)
        return None
    return response.mapped_address
