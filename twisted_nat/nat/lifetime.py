"""
How long the NAT keeps an idle UDP binding (RFC 5780 section 4.6): what
keep-alive must beat.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.task import deferLater

from twisted_nat.address import Address
from twisted_nat.errors import DiscoveryError
from twisted_nat.stun.attributes import ResponsePort
from twisted_nat.stun.client import RetransmissionSchedule, STUNClient
from twisted_nat.stun.message import request


class _LifetimeTarget(STUNClient):
    """
    The socket whose binding is timed: besides its own transactions, it
    watches for answers to requests another socket sent with RESPONSE-PORT
    pointing here, which arrive only while the binding lives.
    """

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__(reactor=clock, software=None)
        self.awaited: dict[bytes, Deferred[bool]] = {}

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        waiting = self.awaited.pop(datagram[8:20], None) if len(datagram) >= 20 else None
        if waiting is None:
            super().datagramReceived(datagram, addr)
            return
        waiting.callback(True)


async def measure_binding_lifetime(
    reactor: IReactorUDP,
    server: Address,
    interface: str = "0.0.0.0",
    first: float = 1.0,
    longest: float = 600.0,
    precision: float = 0.1,
    window: float = 0.5,
) -> tuple[float, float]:
    """
    How long the NAT keeps an idle UDP binding towards C{server}.

    Socket X creates a binding towards C{server}; after X has been idle for
    T seconds, socket Y sends a Binding request carrying RESPONSE-PORT with
    X's public port, so the answer reaches X only while X's binding lives.
    T doubles from C{first} until the binding is found dead (or C{longest}
    is reached), then is bisected until the bounds are within C{precision}
    (relative).  After every probe X sends again, so each probe measures
    idleness from X's last outbound packet.  This takes about twice the
    lifetime, summed over the probes: it is a separate, long-running test.

    @param reactor: opens the two sockets, and must also provide
        C{IReactorTime} (a real reactor, or a host of
        L{twisted_nat.testing}'s simulated internet).
    @return: C{(alive, dead)}: the longest idle time the binding survived
        and the shortest it did not (C{dead} is C{inf} when it survived
        C{longest}).
    """
    clock = IReactorTime(reactor)
    target = _LifetimeTarget(clock)
    prober = STUNClient(reactor=clock, software=None)
    ports = [
        reactor.listenUDP(0, target, interface=interface, maxPacketSize=8192),
        reactor.listenUDP(0, prober, interface=interface, maxPacketSize=8192),
    ]
    schedule = RetransmissionSchedule.within(window)

    async def refresh() -> Address:
        response = await target.request(request(), server, schedule=RetransmissionSchedule(0.2))
        if response.mapped_address is None:
            raise DiscoveryError({server: ValueError("no mapped address in the answer")})
        return response.mapped_address

    async def survives(idle: float, public: Address) -> bool:
        await deferLater(clock, idle)
        probe = request(attributes=[ResponsePort(public[1])])
        arrived: Deferred[bool] = Deferred()
        target.awaited[probe.transaction_id] = arrived
        sent = prober.request(probe, server, schedule=schedule)
        sent.addErrback(lambda failure: None)  # the answer goes to X, never to Y

        def give_up() -> None:
            if not arrived.called:
                arrived.callback(False)

        timer = clock.callLater(window, give_up)
        alive = await arrived
        target.awaited.pop(probe.transaction_id, None)
        if timer.active():
            timer.cancel()
        sent.cancel()
        return alive

    try:
        public = await refresh()
        alive, dead = 0.0, float("inf")
        idle = first
        while dead == float("inf") and idle <= longest:
            if await survives(idle, public):
                alive = idle
                idle *= 2
            else:
                dead = idle
            public = await refresh()
        while dead != float("inf") and dead - alive > precision * max(alive, first):
            idle = (alive + dead) / 2
            if await survives(idle, public):
                alive = idle
            else:
                dead = idle
            public = await refresh()
        return alive, dead
    finally:
        for port in ports:
            await maybeDeferred(port.stopListening)
