"""
Meeting runs: two symmetric NATs that both allocate ports in sequence
connect directly, even when other hosts behind them open flows between
the prediction and the punch.

Scenarios run the whole service on the simulated internet (a rendezvous
that takes 100 ms each way, so that the offerer's prediction and its run
are a round trip apart, and a I{busy} host behind a NAT can take ports in
between); the meeting port, the hint that carries it, a session's spray
towards it and the step of a busy NAT are checked on their own below them.
"""

from __future__ import annotations

import json
import random
from typing import Any

import attrs
import pytest

from tests.support.world import (
    BUSY_HOST,
    PRIMARY,
    Kinds,
    build_world,
    latest_ports,
    sockets_opened,
)
from tests.support.world import World as BaseWorld
from tests.test_birthday import SECRET, SESSION, ack_for, from_peer, sends
from twisted_nat import control
from twisted_nat import testing as sim
from twisted_nat.bases import SHARED, Base, extra_base
from twisted_nat.candidates import Candidate, CandidateType, candidate_priority
from twisted_nat.connection import PeerConnection
from twisted_nat.control import SessionKeys
from twisted_nat.nat import FilteringBehavior, MappingBehavior, port_delta
from twisted_nat.punch import Connected, PunchFailed, PunchSession, PunchSettings
from twisted_nat.punch.birthday import SPRAY_PUNCHES
from twisted_nat.punch.meeting import DEFAULT_SOCKETS, meeting_port
from twisted_nat.punch.plan import MEETING_PREFERENCE
from twisted_nat.rendezvous import Offer
from twisted_nat.rendezvous.hint import NATHint
from twisted_nat.service import NATTraversalService
from twisted_nat.stun.client import STUNClient
from twisted_nat.trust import Identity
from twisted_nat.trust.handshake import Offering

SEQUENTIAL = sim.PortAllocation.SEQUENTIAL
RANDOM = sim.PortAllocation.RANDOM
PRESERVING = sim.PortAllocation.PRESERVING
SIGNALING_DELAY = 0.1
BUSY_AT = 0.15
"""
When busy hosts open their flows, after the offerer starts: after its
prediction (10 ms) and the answerer's run (120 ms), before the answer
brings the offerer's run (220 ms).
"""
FAILING_TIMEOUT = 3.0

BOTH_SEQUENTIAL: Kinds = {"alice": ("symmetric", SEQUENTIAL), "bob": ("symmetric", SEQUENTIAL)}


# --- the world: two services behind NATs, each NAT with a busy neighbour ---


@attrs.define
class World(BaseWorld):
    latest: dict[str, list[int]] = attrs.Factory(dict)
    opened: dict[str, list[tuple[str, list[Base]]]] = attrs.Factory(dict)

    def connect(
        self, offerer: str, busy: dict[str, int] | None = None, timeout: float = 20.0
    ) -> PeerConnection:
        """
        C{offerer} connects to the other; at L{BUSY_AT} (after its
        prediction, before the answer comes back) the busy host behind each
        NAT named in C{busy} opens that many flows.
        """
        connecting = self.services[offerer].connect(other(offerer))
        for name, flows in (busy or {}).items():
            self.internet.clock.callLater(BUSY_AT, self.busy[name].open_flows, flows)
        connection: PeerConnection = self.internet.run_until(connecting, timeout=timeout)
        return connection

    def hints(self, offerer: str) -> tuple[NATHint | None, NATHint | None]:
        """The hints of the last offer C{offerer} made, and of the answer it got."""
        offer, answer = self.signaling[offerer].sent[-1]
        return offer.nat, answer.nat

    def counts(self) -> dict[str, list[tuple[str, int]]]:
        """Which method opened how many extra sockets on each side, punch by punch."""
        return {
            name: [(method, len(names)) for method, names in opened]
            for name, opened in self.opened.items()
        }

    def public_port(self, name: str, base: Base) -> int:
        """
        The public port the extra socket C{base} of C{name} got for its
        flow to the other side (its mapping outlives the socket).
        """
        inside = (self.hosts[name].addresses[0], int(str(base).split()[1]))
        [port] = {
            m.external[1]
            for m in self.nats[name].mappings()
            if m.internal == inside and m.remote_host == self.nats[other(name)].public_address
        }
        return port

    def run_ports(self, name: str) -> list[int]:
        """The public ports of the run of C{name}'s last punch, socket by socket in order."""
        method, names = self.opened[name][-1]
        assert method == "meeting"
        return [self.public_port(name, base) for base in names]

    def busy_ports(self, name: str) -> list[int]:
        """The public ports the NAT of C{name} gave its busy neighbour's flows."""
        port = self.busy[name].transport.getHost().port
        return sorted(
            m.external[1] for m in self.nats[name].mappings() if m.internal == (BUSY_HOST, port)
        )


def other(name: str) -> str:
    return "bob" if name == "alice" else "alice"


def meeting_world(
    seed: int = 0,
    loss: float = 0.0,
    kinds: Kinds = BOTH_SEQUENTIAL,
    options: dict[str, dict[str, Any]] | None = None,
    **common: Any,
) -> World:
    """
    alice behind 198.51.100.1, bob behind 198.51.100.2, each NAT with a
    busy neighbour (192.0.2.99 inside it) that stays quiet until told, and
    their behaviour discovered; C{options} are each service's own keywords,
    C{common} both's.
    """
    w = build_world(
        kinds,
        World,
        seed=seed,
        loss=loss,
        signaling_delay=SIGNALING_DELAY,
        busy_neighbours=True,
        seeded_probes=True,
        peer_options=options,
        **common,
    )
    for name, service in w.services.items():
        w.latest[name] = latest_ports(service)
        w.opened[name] = sockets_opened(service, lambda method, names: (method, names))
    return w


def port_of(service: NATTraversalService) -> int:
    """The shared socket's port."""
    assert service.port is not None
    port: int = service.port.getHost().port  # type: ignore[attr-defined]
    return port


def assert_met(w: World, offerer: str) -> None:
    """Both sides connected directly, each over the run's socket on its own meeting port."""
    w.internet.advance(0.5)  # the answering side hears the CONFIRM
    ours, theirs = w.hints(offerer)
    meet = {offerer: ours.meet, other(offerer): theirs.meet}
    for name in w.services:
        connection = w.services[name].connections[other(name)]
        assert not connection.relayed
        assert str(connection.base).startswith("meeting "), connection.base
        assert w.public_port(name, connection.base) == meet[name]
        assert connection.remote_address == (w.nats[other(name)].public_address, meet[other(name)])


# --- scenarios ---


def test_the_world_is_what_the_method_is_for() -> None:
    """Both NATs are symmetric, and discovery saw their ports come in sequence."""
    w = meeting_world()
    for service in w.services.values():
        behavior = service.behavior
        assert behavior is not None
        assert behavior.mapping is MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
        assert behavior.port_delta == 1


@pytest.mark.parametrize("offerer", ["alice", "bob"])
def test_two_sequential_symmetric_nats_meet_over_their_runs(offerer: str) -> None:
    """
    The target: direct, from the run's socket on each side's meeting port,
    and data both ways; each run holds the ports right after its side's
    prediction, in the order of its sockets.
    """
    w = meeting_world()
    connection = w.connect(offerer)
    assert_met(w, offerer)
    assert w.counts() == {
        "alice": [("meeting", DEFAULT_SOCKETS)],
        "bob": [("meeting", DEFAULT_SOCKETS)],
    }
    for name in w.services:
        [latest] = w.latest[name]
        assert w.run_ports(name) == list(range(latest + 1, latest + DEFAULT_SOCKETS + 1))
    connection.write(b"between two symmetric NATs")
    w.services[other(offerer)].connections[offerer].write(b"and back")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps[other(offerer)][0].received] == [b"between two symmetric NATs"]
    assert [d for d, _ in w.apps[offerer][0].received] == [b"and back"]
    w.stop()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("offerer", ["alice", "bob"])
def test_the_runs_meet_at_ten_percent_loss(offerer: str, seed: int) -> None:
    """Each socket's second PUNCH, and the ordinary retries once one got through, cover losses."""
    w = meeting_world(seed=seed, loss=0.1)
    w.connect(offerer)
    assert_met(w, offerer)
    w.stop()


def test_the_answerers_second_punch_makes_up_for_the_offerers_lost_ones() -> None:
    """
    The design (L{twisted_nat.punch.meeting}): the answerer's first PUNCHes are
    dropped, the offerer's pass, "and so does the answerer's second".  So
    losing both of the offerer's PUNCHes from its meeting socket should
    cost a round, not the meeting.
    """
    w = meeting_world(punch_timeout=FAILING_TIMEOUT)
    alice_ip = w.nats["alice"].public_address
    nat = w.nats["bob"]
    dropped: list[float] = []

    def lossy(source: tuple[str, int], destination: tuple[str, int]) -> bool:
        sent = w.signaling["alice"].sent
        if sent and len(dropped) < SPRAY_PUNCHES:
            offer, answer = sent[-1]
            assert offer.nat is not None and answer.nat is not None
            if source == (alice_ip, offer.nat.meet) and destination[1] == answer.nat.meet:
                dropped.append(w.internet.clock.seconds())
                return True
        return False

    nat.lose_inbound = lossy
    w.connect("alice")
    assert len(dropped) == SPRAY_PUNCHES
    assert_met(w, "alice")
    w.stop()


@pytest.mark.parametrize("flows", [1, 10, 40, DEFAULT_SOCKETS - 1])
@pytest.mark.parametrize("offerer", ["alice", "bob"])
def test_a_busy_nat_shifts_the_run_but_one_socket_still_lands_on_the_meeting_port(
    offerer: str, flows: int
) -> None:
    """
    The offerer's neighbour opens C{flows} flows between the offerer's
    prediction and its run: every port of the run moves up by as many, and
    the socket that gets the meeting port is the C{flows}-th before the
    last, up to a shift of C{L - 1}.  The answerer's neighbour is as busy
    at the same time, which is after the answerer ran: nothing moves there.
    """
    answerer = other(offerer)
    w = meeting_world()
    w.connect(offerer, busy={offerer: flows, answerer: flows})
    [latest] = w.latest[offerer]
    assert w.busy_ports(offerer) == list(range(latest + 1, latest + flows + 1)), (
        "the flows took the ports right after the prediction's"
    )
    assert w.run_ports(offerer) == list(
        range(latest + flows + 1, latest + flows + DEFAULT_SOCKETS + 1)
    )
    [answerer_latest] = w.latest[answerer]
    assert w.run_ports(answerer) == list(
        range(answerer_latest + 1, answerer_latest + DEFAULT_SOCKETS + 1)
    )
    assert min(w.busy_ports(answerer)) > answerer_latest + DEFAULT_SOCKETS
    assert_met(w, offerer)
    [(_, run)] = w.opened[offerer]
    assert w.services[offerer].connections[answerer].base == run[DEFAULT_SOCKETS - 1 - flows]
    w.stop()


@pytest.mark.parametrize("flows", [DEFAULT_SOCKETS, 100])
def test_a_nat_busier_than_the_run_is_long_does_not_meet(flows: int) -> None:
    """
    The limit: with C{L} flows or more in the round trip, another host's
    flow has the meeting port and the whole run lies past it; nothing
    else reaches a NAT that maps and filters by port (and there is no relay).
    """
    w = meeting_world(punch_timeout=FAILING_TIMEOUT)
    with pytest.raises(PunchFailed):
        w.connect("alice", busy={"alice": flows})
    [latest] = w.latest["alice"]
    ours, _ = w.hints("alice")
    assert ours is not None and ours.meet in w.busy_ports("alice")
    assert w.run_ports("alice") == list(
        range(latest + flows + 1, latest + flows + DEFAULT_SOCKETS + 1)
    )
    w.stop()


def test_without_runs_a_busy_nat_breaks_the_aligned_prediction() -> None:
    """
    What the run is for: with it switched off on both sides, the ports
    the two sides predicted for each other meet while nothing else takes a
    port, and ten flows of a neighbour in the round trip are enough to
    leave them with no direct path.
    """
    quiet = meeting_world(meeting_sockets=0)
    connection = quiet.connect("alice")
    assert not connection.relayed and connection.base is SHARED
    busy = meeting_world(meeting_sockets=0, punch_timeout=FAILING_TIMEOUT)
    with pytest.raises(PunchFailed):
        busy.connect("alice", busy={"alice": 10})
    for w in (quiet, busy):
        assert w.counts() == {"alice": [], "bob": []}
        w.stop()


@pytest.mark.parametrize("offerer", ["alice", "bob"])
def test_both_hints_name_the_port_after_a_run_from_the_latest(offerer: str) -> None:
    """The meeting port is the one the L-th socket of a run gets from the prediction's on."""
    w = meeting_world()
    w.connect(offerer)
    ours, theirs = w.hints(offerer)
    [offerer_latest] = w.latest[offerer]
    [answerer_latest] = w.latest[other(offerer)]
    assert ours is not None and ours.meet == offerer_latest + DEFAULT_SOCKETS
    assert theirs is not None and theirs.meet == answerer_latest + DEFAULT_SOCKETS
    for name, latest in ((offerer, offerer_latest), (other(offerer), answerer_latest)):
        # The prediction's own flow, to the STUN server, from a socket of its own.
        [prediction] = [m for m in w.nats[name].mappings() if m.external[1] == latest]
        assert (prediction.remote_host, prediction.remote_port) == PRIMARY
        assert prediction.internal != (w.hosts[name].addresses[0], port_of(w.services[name]))
    w.stop()


@pytest.mark.parametrize("switched_off", ["alice", "bob"])
@pytest.mark.parametrize("offerer", ["alice", "bob"])
def test_a_peer_without_runs_names_no_meeting_port_and_neither_side_runs(
    offerer: str, switched_off: str
) -> None:
    """
    A side that will not run says so, and the other spares its own
    sockets; nobody is busy, so the aligned prediction connects them.
    """
    w = meeting_world(options={switched_off: {"meeting_sockets": 0}})
    connection = w.connect(offerer)
    assert not connection.relayed and connection.base is SHARED
    hints = dict(zip([offerer, other(offerer)], w.hints(offerer), strict=True))
    assert hints[switched_off] is not None and hints[switched_off].meet is None
    assert hints[other(switched_off)] is not None and hints[other(switched_off)].meet is not None
    assert w.counts() == {"alice": [], "bob": []}
    assert [len(h.ports()) for h in w.hosts.values()] == [1, 1]
    w.stop()


@pytest.mark.parametrize(
    ("peer", "connects"),
    [(("port-restricted-cone", PRESERVING), True), (("symmetric", RANDOM), False)],
    ids=["port-restricted-cone", "random-symmetric"],
)
@pytest.mark.parametrize("offerer", ["alice", "bob"])
def test_a_sequential_nat_runs_only_at_another(
    offerer: str, peer: tuple[str, sim.PortAllocation], connects: bool
) -> None:
    """
    alice's NAT allocates in sequence, and she names her meeting port
    whoever the peer is; only a peer that names its own makes either run
    (and the birthday method has no part for either of these pairs).
    """
    w = meeting_world(
        kinds={"alice": ("symmetric", SEQUENTIAL), "bob": peer}, punch_timeout=FAILING_TIMEOUT
    )
    try:
        connection = w.connect(offerer)
    except PunchFailed:
        assert not connects
    else:
        assert connects and not connection.relayed and connection.base is SHARED
    hints = dict(zip([offerer, other(offerer)], w.hints(offerer), strict=True))
    assert hints["alice"] is not None and hints["alice"].meet is not None
    assert hints["bob"] is not None and hints["bob"].meet is None
    assert w.counts() == {"alice": [], "bob": []}
    w.stop()


@pytest.mark.parametrize("offerer", ["alice", "bob"])
def test_extra_sockets_close_when_the_punch_ends_and_the_last_with_its_connection(
    offerer: str,
) -> None:
    """Sixty-four sockets a side for the punch's duration, one for the connection's."""
    w = meeting_world()
    for host in w.hosts.values():
        assert len(host.ports()) == 1, "the shared socket alone"
    w.connect(offerer)
    w.internet.advance(0.5)
    for name, service in w.services.items():
        host = w.hosts[name]
        assert w.counts()[name] == [("meeting", DEFAULT_SOCKETS)]
        connection = service.connections[other(name)]
        assert str(connection.base).startswith("meeting ")
        assert service.extra_sockets.open_bases == [connection.base]
        shared = port_of(service)
        assert [f"meeting {p.port}" for p in host.ports() if p.port != shared] == [
            str(connection.base)
        ]
        service.close(other(name))
        assert service.extra_sockets.open_bases == []
        assert [p.port for p in host.ports()] == [shared]
        assert connection.base not in service.bases
    w.stop()
    assert w.internet.clock.getDelayedCalls() == [], "every timer was cancelled"


def test_a_prediction_on_a_recycled_local_port_still_meets() -> None:
    """
    A socket bound to the local port of an earlier, closed one sends on
    that flow's 5-tuple, and the NAT, still holding it, answers with the
    old port: a prediction from that socket alone names a meeting port the
    NAT has long passed.  The prediction's second flow shows the newest.
    """
    w = meeting_world()
    host = w.hosts["alice"]
    listen = host.listenUDP
    predictions: list[int] = []
    recycled: list[int] = []

    def recording(port: int, protocol: Any, interface: str = "", **kw: Any) -> Any:
        if isinstance(protocol, STUNClient) and recycled:
            port = recycled.pop(0)
        listening = listen(port, protocol, interface, **kw)
        if isinstance(protocol, STUNClient):
            predictions.append(listening.getHost().port)
        return listening

    host.listenUDP = recording  # type: ignore[method-assign,assignment]
    w.connect("alice")
    assert_met(w, "alice")
    first = w.latest["alice"][-1]
    # The next prediction's first socket gets the first one's local port.
    recycled.append(predictions[0])
    w.connect("alice")
    assert_met(w, "alice")
    assert w.latest["alice"][-1] > first + DEFAULT_SOCKETS, "the newest flow, not the old one"
    w.stop()


def test_a_failed_run_closes_every_socket() -> None:
    """No socket of a run outlives a punch that found nothing, on either side."""
    w = meeting_world(punch_timeout=FAILING_TIMEOUT)
    with pytest.raises(PunchFailed):
        w.connect("alice", busy={"alice": 100})
    w.internet.advance(1.0)  # the answering side times out too
    for name, service in w.services.items():
        assert w.counts()[name] == [("meeting", DEFAULT_SOCKETS)]
        assert service.extra_sockets.open_bases == []
        assert len(w.hosts[name].ports()) == 1
    w.stop()
    assert w.internet.clock.getDelayedCalls() == []


# --- the meeting port, and who runs ---


def test_meeting_port() -> None:
    """Where the last socket of a run lands when nothing shifts it; never what is no port."""
    assert DEFAULT_SOCKETS == 64, "the run the documentation's budget is for"
    assert meeting_port(40000, 1, 64) == 40064
    assert meeting_port(40000, 2, 64) == 40128, "every step of a NAT that counts in twos"
    assert meeting_port(40000, 1, 1) == 40001
    assert meeting_port(40000, 1, 0) is None, "no run"
    assert meeting_port(40000, 0, 64) is None, "no step"
    assert meeting_port(65471, 1, 64) == 65535
    assert meeting_port(65472, 1, 64) is None, "past the last port"
    assert meeting_port(65000, 2, 300) is None


# --- the hint on the wire ---

SEQ = NATHint(
    MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
    FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
    predictable=True,
    meet=40064,
)


def test_the_meeting_port_travels_in_the_hint() -> None:
    """The peer learns the port from the hint alone; without one, it reads as an older peer's."""
    assert SEQ.as_json()["meet"] == 40064
    assert NATHint.from_json(json.loads(json.dumps(SEQ.as_json()))) == SEQ
    without = attrs.evolve(SEQ, meet=None)
    assert "meet" not in without.as_json(), "a hint without a run reads as an older version's"
    assert NATHint.from_json(without.as_json()).meet is None
    offer = Offering(Identity.generate(), "alice", [], SEQ, "bob").offer
    assert Offer.from_json(json.loads(json.dumps(offer.as_json()))).nat == SEQ


@pytest.mark.parametrize("bad", [0, -1, 65536, "x", "40064", True, 1.5, [40064]])
def test_a_meeting_port_that_is_no_port_is_refused(bad: object) -> None:
    """A peer's meeting port is punched at: only a port number is taken from the wire."""
    with pytest.raises(ValueError):
        NATHint.from_json({**SEQ.as_json(), "meet": bad})
    offer = Offering(Identity.generate(), "alice", [], None, "bob").offer
    with pytest.raises(ValueError):
        Offer.from_json({**offer.as_json(), "nat": {"meet": bad}})


# --- one session's run ---

PEER_IP = "198.51.100.2"
PEER_HOST = Candidate(CandidateType.HOST, "192.0.2.12", 5000)
PEER_SRFLX = Candidate(CandidateType.SERVER_REFLEXIVE, PEER_IP, 40000)
PEER_PREDICTED = [
    Candidate(
        CandidateType.SERVER_REFLEXIVE,
        PEER_IP,
        40001 + k,
        candidate_priority(CandidateType.SERVER_REFLEXIVE, 32767 - k),
    )
    for k in range(3)
]
MEET = Candidate(
    CandidateType.SERVER_REFLEXIVE,
    PEER_IP,
    40064,
    candidate_priority(CandidateType.SERVER_REFLEXIVE, MEETING_PREFERENCE),
)
RUN = [extra_base("meeting", port) for port in (51007, 33001, 42003)]
"""Not in any order of their names: the run goes in the order it is given."""


def run_session(controlling: bool) -> PunchSession:
    keys = SessionKeys.derive(SESSION, SECRET, offerer=controlling)
    return PunchSession(
        keys,
        controlling,
        [],
        [PEER_HOST, PEER_SRFLX, *PEER_PREDICTED],
        PunchSettings(),
        0.0,
        spray=RUN,
        spray_to=[MEET],
    )


@pytest.mark.parametrize("controlling", [True, False])
def test_the_run_punches_the_meeting_port_alone_and_first(controlling: bool) -> None:
    """
    The run's PUNCHes leave before any other, socket by socket in the
    order given, so that a NAT counting up gives them consecutive ports;
    they go to the meeting port alone, never to the peer's other public
    ports, which would take ports of the run's own.
    """
    s = run_session(controlling)
    first = [(x.base, x.to) for x in sends(s.tick(0.0))]
    assert first[: len(RUN)] == [(base, MEET.address) for base in RUN]
    ordinary = [PEER_HOST, PEER_SRFLX, *PEER_PREDICTED]
    assert sorted(first[len(RUN) :]) == sorted((SHARED, c.address) for c in ordinary)
    assert all(base is SHARED for base, _ in first[len(RUN) :])


def test_each_socket_of_the_run_punches_a_few_times_then_waits() -> None:
    """
    Sixty-four guesses a side: a few PUNCHes each, a whole interval apart
    (not at the first rounds' quick pace: the answerer's second must come
    after the offerer's run, a rendezvous trip later), while the ordinary
    pairs go on every round.
    """
    s = run_session(controlling=True)
    times = [0.0, 0.02, 0.04, 0.08, 0.16, 0.36, 0.56, 0.76]
    rounds = [sends(s.tick(t)) for t in times]
    for base in RUN:
        sent = [(t, x) for t, r in zip(times, rounds, strict=True) for x in r if x.base == base]
        assert [t for t, _ in sent] == [0.0, 0.36][:SPRAY_PUNCHES]
        assert {x.to for _, x in sent} == {MEET.address}
    for i in (0, 5):
        r = rounds[i]
        assert [x.base for x in r[: len(RUN)]] == RUN, "first in every round they punch"
    assert all(len([x for x in r if x.base is SHARED]) == 5 for r in rounds)


@pytest.mark.parametrize("spent", [0, SPRAY_PUNCHES])
def test_a_punch_from_the_meeting_port_is_answered_on_its_socket_and_punched_back(
    spent: int,
) -> None:
    """The peer's run socket on its meeting port reached ours: an ordinary pair from now on."""
    s = run_session(controlling=True)
    for i in range(spent):
        s.tick(0.2 * i)
    punch = from_peer(lambda keys: control.punch(keys, (PEER_IP, 61000))[1], controlling=True)
    ack, back = sends(s.punch_received(0.5, punch, MEET.address, RUN[1]))
    assert (ack.base, ack.to) == (back.base, back.to) == (RUN[1], MEET.address)
    assert control.session_of(back.data) is not None
    later = sends(s.tick(0.6))
    assert (RUN[1], MEET.address) in {(x.base, x.to) for x in later}
    if spent:
        assert not {x.base for x in later} & {RUN[0], RUN[2]}, "the others stay quiet"
    s.ack_received(0.61, ack_for(back, True), MEET.address, RUN[1])
    [confirm, connected] = s.grace_over(0.65)
    assert isinstance(connected, Connected)
    assert connected.result.base == RUN[1] and not connected.result.relayed
    assert connected.result.remote.address == MEET.address
    assert (confirm.base, confirm.to) == (RUN[1], MEET.address)


# --- the step of a busy NAT ---


@pytest.mark.parametrize(
    ("ports", "step"),
    [
        ([40000, 40001, 40002], 1),
        ([40000, 40003, 40010], 1),
        ([40000, 40006, 40016], 2),
        ([40000, 40256, 40512], 256),
        ([40000, 40257], None),
        ([40000, 40010, 40005], 5),  # a lost first datagram: its flow's port came later
        ([40000, 40010, 39000], None),
        ([40000, 40000], None),
        ([40000], None),
    ],
)
def test_port_delta_sees_through_other_flows(ports: list[int], step: int | None) -> None:
    """Other hosts' flows take whole steps in between: the step is the gaps' divisor."""
    assert port_delta(ports) == step


def test_port_delta_of_a_random_nat() -> None:
    """Widening the spread for busy NATs must not make random ports look sequential."""
    for seed in range(50):
        ports = random.Random(seed).sample(range(1024, 65536), 3)
        assert port_delta(ports) is None, ports
