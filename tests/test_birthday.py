"""
The birthday method: a symmetric NAT with random ports and a
port-restricted cone connect directly.

Scenarios run the whole service on the simulated internet, with NATs
allocating from Linux's pool (1024-65535, what C{masquerade random} uses)
and a rendezvous that takes 30 ms each way; the decisions of one session,
the probe schedule, the roles and the budget arithmetic are checked on
their own below them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from tests.support.world import Sent, build_world, new_service, record_writes
from tests.support.world import World as BaseWorld
from tests.support.world import sockets_opened as spy_on_sockets
from twisted_nat import control
from twisted_nat import testing as sim
from twisted_nat.bases import SHARED, Base, extra_base, relay_base
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.connection import PeerConnection
from twisted_nat.control import SessionKeys
from twisted_nat.errors import ConfigurationError
from twisted_nat.nat import FilteringBehavior, MappingBehavior
from twisted_nat.punch import (
    Connected,
    PunchFailed,
    PunchResult,
    PunchSession,
    PunchSettings,
    Send,
    SessionState,
)
from twisted_nat.punch.birthday import (
    DEFAULT_PROBES,
    DEFAULT_RATE,
    DEFAULT_SOCKETS,
    PORT_RANGE,
    PROBE_TICK,
    SPRAY_PUNCHES,
    Prober,
    success_probability,
)
from twisted_nat.rendezvous.hint import NATHint
from twisted_nat.service import NATTraversalService
from twisted_nat.stun.message import Message

HARD_IP = "198.51.100.1"
EASY_IP = "198.51.100.2"
POOL = range(1024, 65536)
"""The public ports the simulated NATs allocate from: Linux's pool for masquerading."""

RANDOM = sim.PortAllocation.RANDOM
PRESERVING = sim.PortAllocation.PRESERVING
SIGNALING_DELAY = 0.03
TRIALS = 20


# --- the world: two services, their NATs, a rendezvous with some latency ---


@attrs.define
class World(BaseWorld):
    sent: dict[str, Sent] = attrs.Factory(dict)

    def connect(self, offerer: str, timeout: float = 20.0) -> PeerConnection:
        other = "easy" if offerer == "hard" else "hard"
        connection: PeerConnection = self.internet.run_until(
            self.services[offerer].connect(other), timeout=timeout
        )
        return connection

    def probes_on_the_wire(self) -> set[int]:
        """The ports of the hard side's address that the easy side sent PUNCHes to."""
        return {
            to[1]
            for _, data, to in self.sent["easy"]
            if to[0] == HARD_IP and control.session_of(data) is not None
        }


def birthday_world(
    seed: int,
    loss: float = 0.0,
    hard: str = "symmetric",
    easy: str = "port-restricted-cone",
    **options: Any,
) -> World:
    """
    C{hard} behind 198.51.100.1 (random ports) and C{easy} behind
    198.51.100.2 (ports preserved), both with their behaviour discovered,
    and every datagram each one's shared socket sends recorded.
    """
    kinds = {"hard": (hard, RANDOM), "easy": (easy, RANDOM if easy == "symmetric" else PRESERVING)}
    w = build_world(
        kinds,
        World,
        seed=seed,
        loss=loss,
        nat={"ports": POOL},
        signaling_delay=SIGNALING_DELAY,
        seeded_probes=True,
        **options,
    )
    for name, service in w.services.items():
        w.sent[name] = record_writes(service, w.internet)
    return w


def other(name: str) -> str:
    return "easy" if name == "hard" else "hard"


def sockets_opened(service: NATTraversalService) -> list[int]:
    """How many extra sockets the service opens for each punch from now on."""
    return spy_on_sockets(service, lambda method, names: len(names))


# --- scenarios ---


def test_the_world_is_what_the_method_is_for() -> None:
    w = birthday_world(seed=0)
    hard, easy = w.services["hard"].behavior, w.services["easy"].behavior
    assert hard is not None and easy is not None
    assert hard.mapping is MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
    assert hard.port_delta is None, "random ports: nothing to predict"
    assert easy.mapping is MappingBehavior.ENDPOINT_INDEPENDENT
    assert easy.filtering is FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT


@pytest.mark.parametrize("loss", [0.0, 0.1], ids=["lossless", "10%-loss"])
@pytest.mark.parametrize("offerer", ["hard", "easy"])
def test_random_symmetric_and_port_restricted_connect_directly(offerer: str, loss: float) -> None:
    """The target: direct in at least 90 % of trials, within 5 s, either side offering."""
    direct = 0
    for seed in range(TRIALS):
        w = birthday_world(seed)
        w.internet.loss = loss
        start = w.internet.clock.seconds()
        try:
            connection = w.connect(offerer)
        except PunchFailed:
            continue
        elapsed = w.internet.clock.seconds() - start
        w.internet.advance(1.0)  # the answering side hears the CONFIRM (resent, at loss)
        mine = w.services[offerer].connections[other(offerer)]
        assert mine is connection
        theirs = w.services[other(offerer)].connections[offerer]
        if connection.relayed or theirs.relayed or elapsed >= 5.0:
            continue
        direct += 1
        hard = w.services["hard"].connections["easy"]
        easy = w.services["easy"].connections["hard"]
        # The hard side answers on the socket the probe found: one of its
        # extra sockets, or (once in a while) the shared one's own mapping.
        assert hard.base is SHARED or str(hard.base).startswith("birthday "), hard.base
        assert hard.remote_address[0] == EASY_IP
        assert easy.base is SHARED
        assert easy.remote.kind is CandidateType.PEER_REFLEXIVE
        assert easy.remote_address[0] == HARD_IP
        assert w.services["easy"].puncher.stats.probes_sent <= DEFAULT_PROBES
    assert direct >= 0.9 * TRIALS, f"{direct} of {TRIALS} direct"


@pytest.mark.parametrize("offerer", ["hard", "easy"])
def test_data_flows_both_ways_over_the_birthday_path(offerer: str) -> None:
    w = birthday_world(seed=3)
    w.connect(offerer)
    w.internet.advance(0.5)
    hard = w.services["hard"].connections["easy"]
    easy = w.services["easy"].connections["hard"]
    assert str(hard.base).startswith("birthday ")
    hard.write(b"from the symmetric side")
    easy.write(b"from the cone")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps["easy"][0].received] == [b"from the symmetric side"]
    assert [d for d, _ in w.apps["hard"][0].received] == [b"from the cone"]
    # Keep-alive runs on the same socket, and keeps the path open.
    w.internet.advance(120.0)
    assert hard.keepalive is not None and easy.keepalive is not None
    hard.write(b"still here")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps["easy"][0].received][-1] == b"still here"
    w.stop()


@pytest.mark.parametrize("offerer", ["hard", "easy"])
def test_extra_sockets_close_when_the_punch_ends_and_the_last_with_its_connection(
    offerer: str,
) -> None:
    w = birthday_world(seed=3)
    hard_host, service = w.hosts["hard"], w.services["hard"]
    assert len(hard_host.ports()) == 1, "the shared socket alone"
    opened = sockets_opened(service)
    w.connect(offerer)
    w.internet.advance(0.5)
    assert opened == [DEFAULT_SOCKETS]
    connection = service.connections["easy"]
    assert connection.base is not SHARED
    assert service.extra_sockets.open_bases == [connection.base]
    assert service.port is not None
    shared = service.port.getHost().port  # type: ignore[attr-defined]
    assert [f"birthday {p.port}" for p in hard_host.ports() if p.port != shared] == [
        str(connection.base)
    ]
    service.close("easy")
    assert service.extra_sockets.open_bases == []
    assert [p.port for p in hard_host.ports()] == [shared]
    assert connection.base not in service.bases
    w.stop()
    assert w.internet.clock.getDelayedCalls() == [], "every timer was cancelled"


def test_probing_stops_the_moment_a_pair_answers() -> None:
    w = birthday_world(seed=3)
    w.connect("easy")
    stats = w.services["easy"].puncher.stats
    probes = stats.probes_sent
    assert 0 < probes < DEFAULT_PROBES
    probed = w.probes_on_the_wire()
    w.internet.advance(5.0)
    assert stats.probes_sent == probes
    assert w.probes_on_the_wire() == probed
    assert len(probed) <= probes + 1, "the probes, and the hard side's server-reflexive port"
    w.stop()


def test_the_probe_budget_is_never_exceeded_and_failure_closes_everything() -> None:
    """
    Four sockets and fifty probes: one chance in three hundred of a hit,
    and with this seed none, so every probe goes out, paced, and no more.
    """
    w = birthday_world(seed=1, birthday_sockets=4, birthday_probes=50, punch_timeout=3.0)
    with pytest.raises(PunchFailed):
        w.connect("easy")
    stats = w.services["easy"].puncher.stats
    assert stats.probes_sent == 50
    hard_candidates = {c.port for c in w.services["hard"].candidates}
    probed = w.probes_on_the_wire() - hard_candidates
    assert len(probed) == 50
    assert all(port in PORT_RANGE for port in probed)
    # Paced: 20 a tick at 1000 a second, in three bursts 20 ms apart.
    times = sorted({t for t, _, to in w.sent["easy"] if to[0] == HARD_IP and to[1] in probed})
    assert len(times) == 3
    assert times[-1] - times[0] == pytest.approx(2 * PROBE_TICK)
    w.internet.advance(1.0)
    assert w.services["hard"].extra_sockets.open_bases == []
    assert len(w.hosts["hard"].ports()) == 1
    w.stop()
    assert w.internet.clock.getDelayedCalls() == []


def test_the_hard_sides_report_sums_its_sockets() -> None:
    """Hundreds of reports alike would bury the ones that say something."""
    w = birthday_world(seed=1, birthday_sockets=4, birthday_probes=50, punch_timeout=3.0)
    with pytest.raises(PunchFailed) as failed:
        w.connect("hard")
    assert "via 4 extra sockets: sent 8, got 0 punches and 0 acks" in str(failed.value)
    assert len(failed.value.pairs) <= 4
    w.stop()


@pytest.mark.parametrize(
    ("sockets", "probes"),
    [(0, DEFAULT_PROBES), (DEFAULT_SOCKETS, 0)],
    ids=["no-sockets", "no-probes"],
)
def test_either_side_can_switch_the_method_off_for_both(sockets: int, probes: int) -> None:
    """A side that will not play its part says so, and the other spares its own."""
    w = birthday_world(seed=0, birthday_sockets=sockets, birthday_probes=probes, punch_timeout=2.0)
    with pytest.raises(PunchFailed):
        w.connect("easy")
    assert w.services["easy"].puncher.stats.probes_sent == 0
    assert len(w.hosts["hard"].ports()) == 1
    w.stop()


def test_a_peer_without_hints_is_punched_as_before() -> None:
    """Peers that do not know their NATs send no hints, and spend nothing on the birthday method."""
    w = birthday_world(seed=0, detect_behavior=False, punch_timeout=2.0)
    with pytest.raises(PunchFailed):
        w.connect("hard")
    assert w.services["easy"].puncher.stats.probes_sent == 0
    assert len(w.hosts["hard"].ports()) == 1
    w.stop()


def test_two_random_symmetric_nats_do_not_spray() -> None:
    """Relay territory: no probe could be aimed, so none is sent and no socket opened."""
    w = birthday_world(seed=0, easy="symmetric", punch_timeout=2.0)
    opened = [sockets_opened(service) for service in w.services.values()]
    with pytest.raises(PunchFailed):
        w.connect("hard")
    assert opened == [[], []]
    assert all(s.puncher.stats.probes_sent == 0 for s in w.services.values())
    w.stop()


@pytest.mark.parametrize("cone", ["full-cone", "restricted-cone"])
def test_cones_that_let_the_symmetric_side_in_need_no_birthday(cone: str) -> None:
    w = birthday_world(seed=0, easy=cone)
    connection = w.connect("hard")
    assert not connection.relayed and connection.base is SHARED
    assert w.services["easy"].puncher.stats.probes_sent == 0
    assert len(w.hosts["hard"].ports()) == 1
    w.stop()


def test_bad_settings_are_refused() -> None:
    bad: list[dict[str, Any]] = [
        {"birthday_sockets": -1},
        {"birthday_probes": -1},
        {"birthday_rate": 0.0},
        {"birthday_rate": float("inf")},  # the prober's bursts would overflow
        {"meeting_sockets": -1},
    ]
    for options in bad:
        with pytest.raises(ConfigurationError):
            new_service(sim.SimulatedInternet().clock, [], **options)


# --- one session's decisions ---

SECRET = bytes(range(32))
SESSION = bytes(16)
EASY_SRFLX = Candidate(CandidateType.SERVER_REFLEXIVE, EASY_IP, 5000)
EASY_HOST = Candidate(CandidateType.HOST, "192.0.2.12", 5000)
HARD_SRFLX = Candidate(CandidateType.SERVER_REFLEXIVE, HARD_IP, 40000)
SPRAY = [extra_base("birthday", port) for port in (1, 2, 3)]


def hard_session(controlling: bool) -> PunchSession:
    keys = SessionKeys.derive(SESSION, SECRET, offerer=controlling)
    return PunchSession(
        keys, controlling, [], [EASY_HOST, EASY_SRFLX], PunchSettings(), 0.0, spray=SPRAY
    )


def easy_session(controlling: bool, budget: int = 100) -> PunchSession:
    keys = SessionKeys.derive(SESSION, SECRET, offerer=controlling)
    prober = Prober(HARD_IP, budget, DEFAULT_RATE, 0.0, random.Random(1))
    return PunchSession(keys, controlling, [], [HARD_SRFLX], PunchSettings(), 0.0, prober=prober)


def from_peer(build: Callable[[SessionKeys], bytes], controlling: bool) -> Message:
    claimed = control.session_of(
        build(SessionKeys.derive(SESSION, SECRET, offerer=not controlling))
    )
    assert claimed is not None
    return claimed[0]


def ack_for(send: Send, controlling: bool) -> Message:
    claimed = control.session_of(send.data)
    assert claimed is not None
    tid = claimed[0].transaction_id
    return from_peer(lambda keys: control.punch_ack(keys, tid, send.to), controlling)


def sends(actions: list[Any]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def test_spray_bases_punch_the_peers_public_address_a_few_times_only() -> None:
    s = hard_session(controlling=False)
    # The first rounds' quick pace (20 ms apart), then whole intervals.
    times = [0.0, 0.02, 0.04, 0.08, 0.16, 0.36, 0.56, 0.76]
    rounds = [sends(s.tick(t)) for t in times]
    first = {(x.base, x.to) for x in rounds[0]}
    assert first == {(SHARED, EASY_HOST.address), (SHARED, EASY_SRFLX.address)} | {
        (base, EASY_SRFLX.address) for base in SPRAY
    }, "spray bases pair with the server-reflexive candidate alone"
    for base in SPRAY:
        sent = [t for t, r in zip(times, rounds, strict=True) for x in r if x.base == base]
        # A few PUNCHes each, a whole interval apart: a peer that starts
        # later still finds the second.
        assert sent == [0.0, 0.36][:SPRAY_PUNCHES]
    assert all(len([x for x in r if x.base is SHARED]) == 2 for r in rounds)


def test_a_probe_that_finds_a_spray_socket_is_punched_back_at_once() -> None:
    s = hard_session(controlling=True)
    for i in range(3):
        s.tick(0.2 * i)
    probe = from_peer(lambda keys: control.punch(keys, (HARD_IP, 51234))[1], controlling=True)
    ack, back = sends(s.punch_received(0.5, probe, EASY_SRFLX.address, SPRAY[1]))
    assert (ack.base, ack.to) == (back.base, back.to) == (SPRAY[1], EASY_SRFLX.address)
    assert control.session_of(back.data) is not None
    # The pair is an ordinary one now: punched every round until it works.
    later = sends(s.tick(0.6))
    assert (SPRAY[1], EASY_SRFLX.address) in {(x.base, x.to) for x in later}
    assert not {x.base for x in later} & {SPRAY[0], SPRAY[2]}
    [grace] = s.ack_received(0.61, ack_for(back, True), EASY_SRFLX.address, SPRAY[1])
    [confirm, connected] = s.grace_over(0.65)
    assert isinstance(connected, Connected)
    assert connected.result.base == SPRAY[1] and not connected.result.relayed
    assert confirm.base == SPRAY[1]
    # What the unreached sockets saw is one report, kept with the result.
    reports = [p for p in connected.result.pairs if p.sockets == 2]
    assert len(reports) == 1 and reports[0].punches_sent == 2 * SPRAY_PUNCHES
    assert len(connected.result.pairs) == 4


def test_a_settled_session_keeps_only_the_ids_of_its_path() -> None:
    s = hard_session(controlling=False)
    punches = [x for i in range(3) for x in sends(s.tick(0.2 * i))]
    ordinary = len([x for x in punches if x.base is SHARED])
    spray = next(x for x in punches if x.base == SPRAY[0])
    assert s.ack_received(0.45, ack_for(spray, False), EASY_SRFLX.address, SPRAY[0]) == []
    [connected] = s.confirm_received(0.5, EASY_SRFLX.address, SPRAY[0])
    assert isinstance(connected, Connected)
    assert not s.searching
    # the ordinary PUNCHes' ids, and the two sent from the chosen socket
    assert s.remembered == ordinary + SPRAY_PUNCHES
    late = ack_for(spray, controlling=False)
    assert s.owns(late.transaction_id)
    other_spray = next(x for x in punches if x.base == SPRAY[1])
    assert not s.owns(ack_for(other_spray, controlling=False).transaction_id)


def test_probes_go_out_paced_and_stop_at_the_first_answer() -> None:
    s = easy_session(controlling=True)
    assert s.next_probe == 0.0
    burst = sends(s.probe(0.0))
    assert len(burst) == 20 and s.next_probe == pytest.approx(PROBE_TICK)
    assert s.probe(0.01) == [], "not due yet"
    assert {x.to[0] for x in burst} == {HARD_IP} and all(x.base is SHARED for x in burst)
    assert len({x.to for x in burst}) == 20
    second = sends(s.probe(PROBE_TICK))
    hit = second[7]
    [grace] = s.ack_received(0.05, ack_for(hit, True), hit.to)
    assert s.next_probe is None and s.probe(0.06) == []
    [confirm, connected] = s.grace_over(0.08)
    assert isinstance(connected, Connected)
    assert connected.result.remote.address == hit.to
    assert connected.result.remote.kind is CandidateType.PEER_REFLEXIVE
    assert s.remembered == 1, "of the probes, only the one that hit is remembered"
    assert s.owns(ack_for(hit, True).transaction_id)
    assert not s.owns(ack_for(second[6], True).transaction_id)


def test_a_punch_from_a_new_address_stops_the_probes_too() -> None:
    """The hard side punched back from the socket a probe found; its ACK to us was lost."""
    s = easy_session(controlling=False)
    s.probe(0.0)
    punch = from_peer(lambda keys: control.punch(keys, EASY_SRFLX.address)[1], controlling=False)
    ack, back = sends(s.punch_received(0.05, punch, (HARD_IP, 61000)))
    assert back.to == (HARD_IP, 61000)
    assert s.next_probe is None


def test_probing_goes_on_while_only_a_relay_works() -> None:
    keys = SessionKeys.derive(SESSION, SECRET, offerer=True)
    prober = Prober(HARD_IP, 100, DEFAULT_RATE, 0.0, random.Random(1))
    relay = relay_base(("203.0.113.200", 40001))
    s = PunchSession(keys, True, [], [HARD_SRFLX], PunchSettings(), 0.0, [relay], prober=prober)
    relayed = next(x for x in sends(s.tick(0.0)) if x.base == relay)
    s.ack_received(0.01, ack_for(relayed, True), HARD_SRFLX.address, relay)
    s.grace_over(0.6)
    assert s.state is SessionState.CONNECTED and s.searching
    assert s.next_probe is not None and sends(s.probe(0.6))


def test_failed_sessions_stop_probing() -> None:
    s = easy_session(controlling=True, budget=DEFAULT_PROBES)
    s.probe(0.0)
    s.tick(10.0)
    assert s.state is SessionState.FAILED
    assert s.next_probe is None and s.probe(10.0) == []


# --- the probe schedule ---


def test_prober_samples_distinct_ports_reproducibly_within_its_budget() -> None:
    a = Prober(HARD_IP, 300, 1000.0, 5.0, random.Random(7))
    b = Prober(HARD_IP, 300, 1000.0, 5.0, random.Random(7))
    ports: list[int] = []
    now = 5.0
    while a.next_at is not None:
        now = a.next_at
        burst = a.due(now)
        assert burst == b.due(now)
        assert len(burst) <= a.per_burst
        ports += [port for _, port in burst]
    assert len(ports) == len(set(ports)) == 300 == a.sent
    assert all(port in PORT_RANGE for port in ports)
    assert now == pytest.approx(5.0 + 14 * PROBE_TICK), "15 bursts of 20"
    assert a.due(now + 10) == []


def test_prober_does_not_catch_up_after_a_stall() -> None:
    p = Prober(HARD_IP, 100, 1000.0, 0.0, random.Random(1))
    p.due(0.0)
    assert len(p.due(1.0)) == 20, "one burst, however late"
    assert p.next_at == pytest.approx(1.0 + PROBE_TICK)


@pytest.mark.parametrize(
    ("rate", "tick", "per_burst"), [(1000.0, 0.02, 20), (100.0, 0.02, 2), (10.0, 0.1, 1)]
)
def test_prober_paces_any_rate(rate: float, tick: float, per_burst: int) -> None:
    p = Prober(HARD_IP, 10, rate, 0.0, random.Random(1))
    assert p.tick == pytest.approx(tick) and p.per_burst == per_burst


def test_prober_refuses_bad_settings_and_stops_at_zero() -> None:
    with pytest.raises(ConfigurationError):
        Prober(HARD_IP, -1, 1000.0, 0.0, random.Random())
    with pytest.raises(ConfigurationError):
        Prober(HARD_IP, 10, 0.0, 0.0, random.Random())
    assert Prober(HARD_IP, 0, 1000.0, 0.0, random.Random()).next_at is None
    small = Prober(HARD_IP, 5000, 1000.0, 0.0, random.Random(), ports=range(2000, 2010))
    assert small.budget == 10


# --- the hint on the wire ---

PORT_RESTRICTED = NATHint(
    MappingBehavior.ENDPOINT_INDEPENDENT,
    FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
    birthday=True,
)


def test_hints_round_trip_and_tolerate_what_a_later_version_may_add() -> None:
    hint = attrs.evolve(PORT_RESTRICTED, predictable=True)
    assert NATHint.from_json(json.loads(json.dumps(hint.as_json()))) == hint
    later = {**hint.as_json(), "mapping": "quantum", "hairpinning": True}
    assert NATHint.from_json(later).mapping is MappingBehavior.UNKNOWN
    assert NATHint.from_json({}) == NATHint()
    bad: object
    for bad in ([], "symmetric", {"predictable": "yes"}, {"birthday": 1}, {"mapping": 3}):
        with pytest.raises(ValueError):
            NATHint.from_json(bad)


# --- the budget ---


def test_the_documented_budget() -> None:
    assert success_probability(DEFAULT_SOCKETS, DEFAULT_PROBES) == pytest.approx(0.99975, abs=5e-5)
    assert success_probability(DEFAULT_SOCKETS, DEFAULT_PROBES, loss=0.1) == pytest.approx(
        0.99942, abs=5e-5
    )
    assert success_probability(DEFAULT_SOCKETS, DEFAULT_PROBES // 2) == pytest.approx(
        0.983, abs=1e-3
    )
    assert success_probability(64, DEFAULT_PROBES) == pytest.approx(0.873, abs=1e-3)
    R = len(PORT_RANGE)
    # Distinct probes do a little better than the formula with repeats.
    exact = success_probability(100, 1000)
    assert 0 < exact - (1 - (1 - 100 / R) ** 1000) < 0.005
    assert success_probability(0, 1000) == success_probability(100, 0) == 0.0
    assert success_probability(R, 1) == 1.0
    assert DEFAULT_PROBES / DEFAULT_RATE < 2.1


# --- the puncher alone, with a relay beside the birthday method ---


@pytest.mark.parametrize("seed", range(5))
def test_a_birthday_path_wins_over_a_relay(seed: int) -> None:
    from tests.test_punch import PORT, make_internet, make_peer
    from tests.test_relay_punch import with_relay
    from twisted_nat.punch import ExtraSockets

    internet = make_internet(seed=seed, loss=0.1 if seed else 0.0)
    hard, easy = make_peer(internet, "symmetric", 1), make_peer(internet, "port-restricted", 2)
    with_relay(internet, easy, 40002)
    sockets = ExtraSockets(hard.host, hard.puncher.bases, "0.0.0.0")
    session, secret = bytes(range(16)), bytes(range(32))
    names = sockets.open(session, 64, "birthday")
    settled: list[Base | None] = []

    def on_settled(base: Base | None) -> None:
        settled.append(base)
        sockets.settle(session, base)

    hard_public = [c for c in hard.candidates if c.kind is CandidateType.SERVER_REFLEXIVE]
    prober = Prober(hard_public[0].host, 4096, DEFAULT_RATE, 0.0, random.Random(seed))
    results: list[Any] = []
    hard.puncher.punch_hole(
        PORT, easy.candidates, session, secret=secret, controlling=True,
        local_candidates=hard.candidates, bases=names, on_settled=on_settled,
    ).addBoth(results.append)  # fmt: skip
    easy.puncher.punch_hole(
        PORT, hard.candidates, session, secret=secret, controlling=False,
        local_candidates=easy.candidates, prober=prober,
    ).addBoth(results.append)  # fmt: skip
    internet.advance(11.0)
    assert len(results) == 2 and all(isinstance(r, PunchResult) for r in results), results
    hard_session = hard.puncher.session(session)
    assert hard_session is not None
    chosen = hard_session.chosen
    assert chosen is not None and chosen[0] in [*names, SHARED], "direct, from a guess"
    assert settled == [chosen[0]]
    assert sockets.open_bases == ([chosen[0]] if chosen[0] is not SHARED else [])
    assert len(hard.host.ports()) == 1 + len(sockets.open_bases)
    assert easy.puncher.stats.probes_sent < 4096
    hard.puncher.forget(session)
    easy.puncher.forget(session)
    sockets.close_all()
    internet.advance(1.0)
    assert internet.clock.getDelayedCalls() == []


def test_spray_bases_must_be_direct_bases_of_the_puncher() -> None:
    from tests.test_punch import PORT, make_internet, make_peer
    from tests.test_relay_punch import with_relay

    internet = make_internet()
    peer = make_peer(internet, "symmetric", 1)
    relay = with_relay(internet, peer, 40001)
    for bases in ([extra_base("birthday", 1)], [relay], [SHARED]):
        with pytest.raises(ConfigurationError):
            peer.puncher.punch_hole(
                PORT, [], bytes(16), secret=bytes(32), controlling=True, bases=bases
            )
