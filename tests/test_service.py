"""The composed service on the simulated internet: connect by name, data, status, re-punch."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import implementer

from tests.support.world import ALTERNATE, PRIMARY, Kinds, World, build_world, new_service
from twisted_nat import testing as sim
from twisted_nat.candidates import CandidateType
from twisted_nat.rendezvous import InMemorySignalingHub
from twisted_nat.service import NATTraversalManager, NATTraversalService, PeerEventsBase
from twisted_nat.stun.server import STUNServerGroup


def world(
    kinds: Kinds,
    interval: float = 25.0,
    timeout: float = 5.0,
    seed: int = 0,
    binding_timeout: float = 30.0,
    **options: Any,
) -> World:
    return build_world(
        kinds,
        World,
        seed=seed,
        nat={"binding_timeout": binding_timeout},
        keepalive_interval=interval,
        keepalive_timeout=timeout,
        **options,
    )


PRESERVE = sim.PortAllocation.PRESERVING


def test_connect_by_name_and_exchange_data():
    w = world({"alice": ("port-restricted-cone", PRESERVE), "bob": ("restricted-cone", PRESERVE)})
    alice, bob = w.services["alice"], w.services["bob"]
    connection = w.internet.run_until(alice.connect("bob"))
    w.internet.advance(0.5)
    assert connection.peer == "bob"
    assert "bob" in alice.connections and "alice" in bob.connections
    connection.write(b"hi bob")
    bob.connections["alice"].write(b"hi alice")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps["bob"][0].received] == [b"hi bob"]
    assert [d for d, _ in w.apps["alice"][0].received] == [b"hi alice"]
    assert connection.setup_time < 0.1


def test_status_reports_nat_candidates_and_connections():
    w = world({"alice": ("full-cone", PRESERVE), "bob": ("port-restricted-cone", PRESERVE)})
    alice = w.services["alice"]
    w.internet.run_until(alice.connect("bob"))
    w.internet.advance(60.0)  # a few keep-alives for link quality
    status = alice.status()
    assert status["name"] == "alice"
    assert status["public"].startswith("198.51.100.1:")
    assert status["nat"]["nat_type"] == "full cone"
    assert {c["type"] for c in status["candidates"]} == {"host", "srflx"}
    [conn] = status["connections"]
    assert conn["peer"] == "bob"
    assert conn["path"]["remote"] == "srflx"
    assert conn["path"]["remote_address"].startswith("198.51.100.2:")
    assert 10.0 <= conn["rtt_ms"] <= 20.0
    assert conn["loss"] == 0.0
    assert conn["jitter_ms"] is not None


def test_lost_binding_is_punched_again_through_the_rendezvous():
    """alice's NAT forgets everything and picks new random ports: keep-alive notices."""
    w = world(
        {
            "alice": ("port-restricted-cone", sim.PortAllocation.RANDOM),
            "bob": ("port-restricted-cone", PRESERVE),
        },
        interval=4.0,
        timeout=1.0,
    )
    connection = w.internet.run_until(w.services["alice"].connect("bob"))
    first_session = connection.session_id
    w.internet.advance(5.0)
    w.nats["alice"].flush()
    w.internet.advance(12.0)  # three intervals
    assert connection.session_id != first_session, "a new session replaced the lost one"
    assert not connection.closed
    connection.write(b"still here")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps["bob"][0].received] == [b"still here"]
    assert len(w.apps["bob"]) == 1, "the application kept its one protocol"


class Watcher(PeerEventsBase):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def offer_received(self, peer: str) -> None:
        self.seen.append(("offer", peer))

    def connected(self, connection: Any, result: Any, offerer: bool, again: bool) -> None:
        self.seen.append(("connected", connection.peer, offerer, again, result.remote.kind))

    def path_lost(self, connection: Any, reason: Any) -> None:
        self.seen.append(("lost", connection.peer, type(reason.value).__name__))


class Broken(PeerEventsBase):
    def connected(self, connection: Any, result: Any, offerer: bool, again: bool) -> None:
        raise RuntimeError("a watcher's bug")


def test_watchers_see_offers_connections_and_lost_paths():
    """A broken watcher costs a logged failure, not the others' events nor the connection."""
    w = world(
        {
            "alice": ("port-restricted-cone", sim.PortAllocation.RANDOM),
            "bob": ("port-restricted-cone", PRESERVE),
        },
        interval=4.0,
        timeout=1.0,
    )
    watchers = {name: Watcher() for name in w.services}
    for name, service in w.services.items():
        service.watch(Broken())
        service.watch(watchers[name])
    failures: list[Any] = []

    @implementer(ILogObserver)
    def observe(event: Any) -> None:
        if "watcher" in event.get("log_format", "") and "log_failure" in event:
            failures.append(event["log_failure"].value)

    globalLogPublisher.addObserver(observe)
    try:
        watched(w, watchers)
    finally:
        globalLogPublisher.removeObserver(observe)
    connected = [e for seen in watchers.values() for e in seen.seen if e[0] == "connected"]
    assert len(connected) == 4
    assert [type(f) for f in failures] == [RuntimeError] * len(connected)


def watched(w: World, watchers: dict[str, Watcher]) -> None:
    connection = w.internet.run_until(w.services["alice"].connect("bob"))
    w.internet.advance(0.5)
    srflx = CandidateType.SERVER_REFLEXIVE
    assert watchers["alice"].seen == [("connected", "bob", True, False, srflx)]
    assert watchers["bob"].seen[0] == ("offer", "alice")
    assert watchers["bob"].seen[1][:4] == ("connected", "alice", False, False)
    w.nats["alice"].flush()
    w.internet.advance(12.0)
    assert not connection.closed
    assert ("lost", "bob", "BindingLost") in watchers["alice"].seen
    assert watchers["alice"].seen[-1][:4] == ("connected", "bob", True, True)
    assert watchers["bob"].seen[-1][:4] == ("connected", "alice", False, True)


def test_the_old_name_is_the_same_class():
    assert NATTraversalManager is NATTraversalService


def test_connect_without_rendezvous_is_a_configuration_error():
    from twisted_nat.errors import ConfigurationError

    internet = sim.SimulatedInternet()
    host = internet.add_host("203.0.113.50")
    service = new_service(host, [], host_addresses=["203.0.113.50"])
    service.startService()
    with pytest.raises(ConfigurationError):
        internet.run_until(service.connect("bob"))


def test_status_page_serves_json():
    import json

    from twisted.web.test.requesthelper import DummyRequest

    from twisted_nat.status import StatusResource

    w = world({"alice": ("full-cone", PRESERVE), "bob": ("restricted-cone", PRESERVE)})
    w.internet.run_until(w.services["alice"].connect("bob"))
    request = DummyRequest([b""])
    body = StatusResource(w.services["alice"]).render_GET(request)  # type: ignore[arg-type]
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    status = json.loads(body)
    assert status["connections"][0]["peer"] == "bob"
    assert status["nat"]["nat_type"] == "full cone"


def test_keepalive_interval_follows_the_measured_binding_lifetime():
    w = world(
        {"alice": ("port-restricted-cone", PRESERVE), "bob": ("full-cone", PRESERVE)},
        binding_timeout=12.0,
        follow_lifetime=True,
    )
    alice = w.services["alice"]
    connection = w.internet.run_until(alice.connect("bob"))
    assert connection.keepalive is not None
    assert connection.keepalive.interval == 25.0
    w.internet.advance(120.0)  # the measurement takes about twice the lifetime, summed
    assert alice.binding_lifetime is not None and 10.0 <= alice.binding_lifetime <= 12.0
    assert connection.keepalive.interval == pytest.approx(alice.binding_lifetime / 2)
    connection.write(b"still connected")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps["bob"][0].received] == [b"still connected"]


SEQUENTIAL = sim.PortAllocation.SEQUENTIAL


@pytest.mark.parametrize("offerer", ["alice", "bob"])
def test_sequential_symmetric_reaches_port_restricted_by_port_prediction(offerer):
    """The pair no plain punch can open, when the symmetric NAT allocates in sequence."""
    w = world({"alice": ("symmetric", SEQUENTIAL), "bob": ("port-restricted-cone", PRESERVE)})
    alice = w.services["alice"]
    assert alice.behavior is not None and alice.behavior.port_delta == 1
    other = "bob" if offerer == "alice" else "alice"
    connection = w.internet.run_until(w.services[offerer].connect(other))
    w.internet.advance(0.5)
    assert other in w.services[offerer].connections
    assert offerer in w.services[other].connections
    connection.write(b"through a symmetric NAT")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps[other][0].received] == [b"through a symmetric NAT"]


@pytest.mark.parametrize("offerer", ["alice", "bob"])
def test_two_sequential_symmetric_nats_meet_on_aligned_predictions(offerer):
    """
    Each side's k-th punch to the other's predicted ports leaves from its
    own k-th new port, which it offered k-th: the two NATs' mappings meet.
    """
    w = world({"alice": ("symmetric", SEQUENTIAL), "bob": ("symmetric", SEQUENTIAL)})
    other = "bob" if offerer == "alice" else "alice"
    connection = w.internet.run_until(w.services[offerer].connect(other))
    assert connection.remote.kind is not CandidateType.RELAYED
    w.internet.advance(0.5)
    connection.write(b"between two symmetric NATs")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps[other][0].received] == [b"between two symmetric NATs"]


def test_random_symmetric_and_port_restricted_need_the_birthday_method():
    """Without it (and without a relay) the punch fails: what the method is for."""
    from twisted_nat.punch import PunchFailed

    w = world(
        {
            "alice": ("symmetric", sim.PortAllocation.RANDOM),
            "bob": ("port-restricted-cone", PRESERVE),
        },
        birthday_sockets=0,
        birthday_probes=0,
    )
    assert w.services["alice"].behavior.port_delta is None
    with pytest.raises(PunchFailed):
        w.internet.run_until(w.services["alice"].connect("bob"), timeout=60)


def test_punching_again_retries_until_the_rendezvous_is_back():
    from twisted.internet import defer

    from twisted_nat.errors import RendezvousUnavailable

    w = world(
        {
            "alice": ("port-restricted-cone", sim.PortAllocation.RANDOM),
            "bob": ("port-restricted-cone", PRESERVE),
        },
        interval=4.0,
        timeout=1.0,
    )
    alice: Any = w.services["alice"]
    connection = w.internet.run_until(alice.connect("bob"))
    first_session = connection.session_id
    attempts: list[str] = []
    working = alice.signaling.connect

    def flaky(offer: Any) -> Any:
        attempts.append(offer.to_name)
        if len(attempts) <= 2:  # the router's reboot took the rendezvous with it
            return defer.fail(RendezvousUnavailable("no connection to the rendezvous server"))
        return working(offer)

    alice.signaling.connect = flaky
    w.nats["alice"].flush()
    for _ in range(120):
        w.internet.advance(0.1)
        if connection.reconnecting:
            break
    assert connection.reconnecting
    row = alice.status()["connections"][0]
    assert (row["reconnecting"], row["state"]) == (True, "reconnecting")
    w.internet.advance(10.0)  # retries after 1 s, then 2 s
    assert attempts == ["bob", "bob", "bob"]
    assert not connection.reconnecting
    assert connection.session_id != first_session
    connection.write(b"back")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps["bob"][0].received] == [b"back"]


def test_a_symmetric_nat_that_forgets_its_bindings_is_noticed_by_both_sides():
    """
    Its peer's keep-alives come from a new port afterwards; answering them there would
    hide the loss from both sides, since data still goes to the old port.
    """
    w = world(
        {"alice": ("symmetric", sim.PortAllocation.RANDOM), "bob": ("full-cone", PRESERVE)},
        interval=4.0,
        timeout=1.0,
    )
    connection = w.internet.run_until(w.services["alice"].connect("bob"))
    first_session = connection.session_id
    w.internet.advance(5.0)
    w.nats["alice"].flush()
    w.internet.advance(15.0)
    assert w.services["bob"].puncher.keeper.stats.dropped_wrong_path > 0
    assert connection.session_id != first_session
    w.services["bob"].connections["alice"].write(b"to the new port")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps["alice"][0].received] == [b"to the new port"]


def test_without_an_answer_from_stun_the_public_address_is_asked_again_in_the_background():
    """
    Nothing answers at the STUN server's address at first: start-up tries
    twice (5 s each), goes on without a public address, and keeps asking;
    once the server answers, the server-reflexive candidate appears.
    """
    from twisted_nat.candidates import CandidateType as Kind

    internet = sim.SimulatedInternet(seed=0, latency=0.005)
    nat = internet.add_nat_of_type("198.51.100.1", "port-restricted-cone")
    host = internet.add_host("192.0.2.11", behind=nat)
    service = new_service(
        host, [PRIMARY], host_addresses=[host.addresses[0]], detect_behavior=False
    )
    service.startService()
    internet.run_until(service.ready(), timeout=30)
    assert 10.0 <= internet.clock.seconds() < 11.0, "two attempts of 5 s each"
    assert service.public is None
    assert [c.kind for c in service.candidates] == [Kind.HOST]
    server = internet.add_host([PRIMARY[0], ALTERNATE[0]])
    STUNServerGroup(PRIMARY, ALTERNATE).listen(server)
    internet.advance(20.0)
    assert service.public is not None and service.public.mapped[0] == "198.51.100.1"
    assert [c.kind for c in service.candidates] == [Kind.HOST, Kind.SERVER_REFLEXIVE]
    internet.run_until(service.stopService())
    assert internet.clock.getDelayedCalls() == []


def test_a_discovery_that_could_not_tell_the_mapping_is_run_again_later():
    """
    Behaviour discovery whose answers do not come (here: no STUN server
    yet) leaves the mapping unknown, which would keep the techniques for
    symmetric NATs from running: it is run again with backoff, and a later
    run's finding replaces the unknown one.
    """
    from twisted_nat.nat import MappingBehavior, NATType

    internet = sim.SimulatedInternet(seed=0, latency=0.005)
    nat = internet.add_nat_of_type("198.51.100.1", "port-restricted-cone")
    host = internet.add_host("192.0.2.11", behind=nat)
    service = new_service(host, [PRIMARY], host_addresses=[host.addresses[0]])
    service.startService()
    internet.run_until(service.ready(), timeout=30)
    for _ in range(60):
        if service.behavior is not None:
            break
        internet.advance(1.0)
    assert service.behavior is not None
    assert service.behavior.mapping is MappingBehavior.UNKNOWN
    server = internet.add_host([PRIMARY[0], ALTERNATE[0]])
    STUNServerGroup(PRIMARY, ALTERNATE).listen(server)
    internet.advance(5.0 + 15.0 + 45.0 + 20.0)
    assert service.behavior.nat_type is NATType.PORT_RESTRICTED_CONE
    internet.run_until(service.stopService())
    assert internet.clock.getDelayedCalls() == []


def test_an_answer_waits_only_so_long_for_a_rediscovery_of_the_public_address():
    """
    An offer that arrives while the public address is being asked for
    again gets its answer within REFRESH_WAIT, not when the rediscovery
    gives up (5 s later): a rendezvous gives the answer only 10 s, and an
    answer that comes after the offerer gave up leaves us punching alone.
    """
    from twisted_nat.candidates import Candidate
    from twisted_nat.service.punching import REFRESH_WAIT
    from twisted_nat.trust.handshake import Offering

    internet = sim.SimulatedInternet(seed=0, latency=0.005)
    nat = internet.add_nat_of_type("198.51.100.1", "port-restricted-cone")
    host = internet.add_host("192.0.2.11", behind=nat)
    hub = InMemorySignalingHub(reactor=internet.clock)
    service = new_service(
        host,
        [PRIMARY],  # nobody answers there: the address is asked for in the background
        name="bob",
        signaling=hub.peer("bob"),
        host_addresses=[host.addresses[0]],
        detect_behavior=False,
        punch_timeout=1.0,
    )
    service.startService()
    internet.run_until(service.ready(), timeout=30)
    internet.advance(1.5)  # the first background attempt is under way
    assert service.addresses.refreshing
    offered_at = internet.clock.seconds()
    alice = hub.peer("alice")
    candidates = [Candidate(CandidateType.HOST, "203.0.113.50", 4000)]
    offer = Offering(alice.identity, "alice", candidates, None, "bob").offer
    answer = internet.run_until(alice.connect(offer), timeout=10)
    waited = internet.clock.seconds() - offered_at
    assert waited <= REFRESH_WAIT + 0.1, waited
    assert service.addresses.refreshing, "the rediscovery goes on in the background"
    assert [c.kind for c in answer.candidates] == [CandidateType.HOST]
    internet.advance(5.0)
    internet.run_until(service.stopService())
