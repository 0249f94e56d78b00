"""
Rendezvous: offers and answers between two peers, through our server over
loopback TCP, through the in-memory hub, and what happens when things fail.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, endpoints
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer, verify

from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.errors import (
    ConfigurationError,
    DuplicateName,
    MalformedSignal,
    NotRegistered,
    PeerUnavailable,
    RendezvousUnavailable,
    UnknownPeer,
)
from twisted_nat.nat import FilteringBehavior, MappingBehavior
from twisted_nat.rendezvous import (
    Answer,
    InMemorySignalingHub,
    ISignaling,
    LoopbackSignaling,
    Offer,
    RendezvousClient,
    RendezvousService,
    answer_to,
    make_rendezvous_service,
    new_offer,
)
from twisted_nat.rendezvous.protocol import AnswerArgument, OfferArgument
from twisted_nat.rendezvous.values import MAX_CANDIDATES, NATHint, check_name

reactor: Any = global_reactor

FAST_RETRY = backoffPolicy(initialDelay=0.05, maxDelay=0.2, factor=1.5, jitter=lambda: 0.0)

ALICE_CANDIDATES = (
    Candidate(CandidateType.HOST, "192.168.1.10", 40000),
    Candidate(CandidateType.SERVER_REFLEXIVE, "203.0.113.7", 51000),
)
BOB_CANDIDATES = (
    Candidate(CandidateType.HOST, "10.0.0.5", 41000),
    Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.9", 52000),
    Candidate(CandidateType.HOST, "fd00::5", 41000),
)


def results(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def answering(candidates=BOB_CANDIDATES, received=None):
    """An offer handler that records each offer and answers with C{candidates}."""

    def handler(offer: Offer) -> Answer:
        if received is not None:
            received.append(offer)
        return answer_to(offer, candidates)

    return handler


# --- over loopback TCP ---


def start_server(
    endpoint: str = "tcp:0:interface=127.0.0.1", relay_timeout: float = 2.0
) -> RendezvousService:
    service = make_rendezvous_service(reactor, endpoint, relay_timeout=relay_timeout)
    service.startService()
    return service


def port_of(service: RendezvousService) -> int:
    assert service.port is not None
    host = service.port.getHost()
    assert isinstance(host, IPv4Address)
    return host.port


def client_endpoint(service: RendezvousService) -> str:
    return f"tcp:host=127.0.0.1:port={port_of(service)}"


class Peers:
    """Starts rendezvous clients and stops whatever is left at the end."""

    def __init__(self) -> None:
        self.clients: list[RendezvousClient] = []
        self.servers: list[RendezvousService] = []

    def server(self, *args: Any, **kwargs: Any) -> RendezvousService:
        service = start_server(*args, **kwargs)
        self.servers.append(service)
        return service

    def client(self, endpoint: str, name: str, **kwargs: Any) -> RendezvousClient:
        kwargs.setdefault("retry_policy", FAST_RETRY)
        client = RendezvousClient(reactor, endpoint, name, **kwargs)
        client.startService()
        self.clients.append(client)
        return client

    def stop(self) -> Deferred[Any]:
        stopping = [c.close() for c in self.clients]
        stopping += [s.stopService() for s in self.servers if s.running]
        return defer.gatherResults(stopping)


@pytest.fixture
def peers():
    p = Peers()
    yield p
    pytest_twisted.blockon(p.stop())


@pytest.fixture
def pair(peers):
    """A server, and alice and bob registered at it (bob answers with BOB_CANDIDATES)."""
    server = peers.server()
    endpoint = client_endpoint(server)
    alice = peers.client(endpoint, "alice")
    bob = peers.client(endpoint, "bob")
    return server, alice, bob


@implementer(ILogObserver)
class LogLines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if "RendezvousClient" in str(event.get("log_namespace", "")):
            self.lines.append(formatEvent(event))


@pytest.fixture
def client_log():
    observer = LogLines()
    globalLogPublisher.addObserver(observer)
    yield observer.lines
    globalLogPublisher.removeObserver(observer)


def test_offer_and_answer_wire_forms_key_by_key():
    """The JSON a peer sends, in order; C{nat} only when there is a hint."""
    session, key = bytes(range(16)), bytes(range(32))
    candidates = [c.as_json() for c in ALICE_CANDIDATES]
    hint = NATHint(MappingBehavior.ENDPOINT_INDEPENDENT, FilteringBehavior.ENDPOINT_INDEPENDENT)
    offer = Offer("alice", session, key, ALICE_CANDIDATES)
    answer = Answer(session, ALICE_CANDIDATES)
    offer_keys = ["from", "session", "key", "candidates"]
    assert list(offer.as_json()) == offer_keys
    assert list(attrs.evolve(offer, nat=hint).as_json()) == [*offer_keys, "nat"]
    assert offer.as_json() == {
        "from": "alice",
        "session": session.hex(),
        "key": key.hex(),
        "candidates": candidates,
    }
    assert answer.as_json() == {"session": session.hex(), "candidates": candidates}
    assert attrs.evolve(answer, nat=hint).as_json() == {
        "session": session.hex(),
        "candidates": candidates,
        "nat": hint.as_json(),
    }
    for value in (offer, answer, attrs.evolve(offer, nat=hint), attrs.evolve(answer, nat=hint)):
        assert type(value).from_json(json.loads(json.dumps(value.as_json()))) == value


def test_client_provides_isignaling():
    client = RendezvousClient(reactor, "tcp:host=127.0.0.1:port=9", "alice")
    assert verify.verifyObject(ISignaling, client)
    assert verify.verifyObject(ISignaling, InMemorySignalingHub().peer())


@pytest_twisted.ensureDeferred
async def test_offer_reaches_target_and_answer_comes_back(pair):
    server, alice, bob = pair
    received: list[Offer] = []
    bob.set_offer_handler(answering(received=received))
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    assert server.factory.names() == ["alice", "bob"]

    offer = new_offer("alice", ALICE_CANDIDATES)
    answer = await alice.connect("bob", offer)

    assert received == [offer]  # key and candidates intact
    assert answer == Answer(offer.session_id, BOB_CANDIDATES)
    assert server.factory.stats.offers_relayed == 1


@pytest_twisted.ensureDeferred
async def test_handler_may_answer_later(pair):
    server, alice, bob = pair

    def later(offer: Offer) -> Deferred[Answer]:
        return deferLater(reactor, 0.05, answer_to, offer, BOB_CANDIDATES[:1])

    bob.set_offer_handler(later)
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    offer = new_offer("alice", ALICE_CANDIDATES)
    answer = await alice.connect("bob", offer)
    assert answer.candidates == BOB_CANDIDATES[:1]


@pytest_twisted.ensureDeferred
async def test_unknown_peer(pair):
    server, alice, bob = pair
    await alice.when_registered()
    with pytest.raises(UnknownPeer, match="carol"):
        await alice.connect("carol", new_offer("alice", ALICE_CANDIDATES))


@pytest_twisted.ensureDeferred
async def test_offer_must_come_from_our_own_name(pair):
    server, alice, bob = pair
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    with pytest.raises(MalformedSignal, match="mallory"):
        await alice.connect("bob", new_offer("mallory", ALICE_CANDIDATES))


@pytest_twisted.ensureDeferred
async def test_duplicate_name_is_refused_until_the_holder_leaves(peers):
    server = peers.server()
    endpoint = client_endpoint(server)
    first = peers.client(endpoint, "alice")
    await first.when_registered()
    second = peers.client(endpoint, "alice")
    with pytest.raises(DuplicateName):
        await second.when_registered()
    assert first.registered and not second.registered

    # The server forgets a name when its connection drops; the second
    # client keeps trying and gets it.
    await first.close()
    await second.when_registered()
    assert server.factory.names() == ["alice"]


@pytest_twisted.ensureDeferred
async def test_register_renames_and_keeps_the_old_name_when_refused(pair):
    server, alice, bob = pair
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    with pytest.raises(DuplicateName):
        await alice.register("bob")
    assert alice.peer_name == "alice"
    await alice.register("alicia")
    assert alice.peer_name == "alicia"
    assert server.factory.names() == ["alicia", "bob"]
    with pytest.raises(MalformedSignal):
        await alice.register("two words")


@pytest_twisted.ensureDeferred
async def test_failing_handlers_give_peer_unavailable(pair):
    server, alice, bob = pair
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])

    # no handler at all
    with pytest.raises(PeerUnavailable):
        await alice.connect("bob", new_offer("alice", ()))

    def broken(offer: Offer) -> Answer:
        raise RuntimeError("secret internals")

    bob.set_offer_handler(broken)
    with pytest.raises(PeerUnavailable) as raised:
        await alice.connect("bob", new_offer("alice", ()))
    assert "secret internals" not in str(raised.value)

    def failing_later(offer: Offer) -> Deferred[Answer]:
        return defer.fail(ZeroDivisionError())

    bob.set_offer_handler(failing_later)
    with pytest.raises(PeerUnavailable):
        await alice.connect("bob", new_offer("alice", ()))

    def wrong_session(offer: Offer) -> Answer:
        return answer_to(new_offer("bob", ()), ())

    bob.set_offer_handler(wrong_session)
    with pytest.raises(PeerUnavailable):
        await alice.connect("bob", new_offer("alice", ()))

    def busy(offer: Offer) -> Answer:
        raise PeerUnavailable("busy, try later")

    bob.set_offer_handler(busy)
    with pytest.raises(PeerUnavailable, match="busy, try later"):
        await alice.connect("bob", new_offer("alice", ()))

    # bob's connection survived all of that
    bob.set_offer_handler(answering())
    answer = await alice.connect("bob", new_offer("alice", ()))
    assert answer.candidates == BOB_CANDIDATES
    assert server.factory.stats.relays_failed == 5


@pytest_twisted.ensureDeferred
async def test_relay_times_out(peers):
    server = peers.server(relay_timeout=0.2)
    endpoint = client_endpoint(server)
    alice = peers.client(endpoint, "alice")
    bob = peers.client(endpoint, "bob")
    bob.set_offer_handler(lambda offer: Deferred())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    with pytest.raises(PeerUnavailable, match=r"did not answer within 0\.2 s"):
        await alice.connect("bob", new_offer("alice", ()))


@pytest_twisted.ensureDeferred
async def test_calls_while_disconnected_fail_at_once(peers):
    probe = start_server()
    endpoint = client_endpoint(probe)
    await probe.stopService()  # nothing listens there now

    client = peers.client(endpoint, "alice")
    for d in (client.connect("bob", new_offer("alice", ())), client.register("alicia")):
        out = results(d)
        assert len(out) == 1, "failed at once, not queued"
        assert isinstance(out[0], Failure)
        assert out[0].check(RendezvousUnavailable)
    assert not client.registered


@pytest_twisted.ensureDeferred
async def test_connection_lost_mid_call(peers):
    server = peers.server(relay_timeout=5.0)
    endpoint = client_endpoint(server)
    alice = peers.client(endpoint, "alice")
    bob = peers.client(endpoint, "bob")
    bob.set_offer_handler(lambda offer: Deferred())  # never answers
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])

    call = alice.connect("bob", new_offer("alice", ()))
    await deferLater(reactor, 0.05, lambda: None)
    assert not call.called
    # alice's connection breaks (the server's end is cut), bob's does not
    server.factory.directory.peers["alice"].transport.abortConnection()
    with pytest.raises(RendezvousUnavailable):
        await call
    assert not alice.registered
    await alice.when_registered()  # and she is back


@pytest_twisted.ensureDeferred
async def test_server_restart_clients_reconnect_and_register_again(peers, client_log):
    server = peers.server()
    port = port_of(server)
    endpoint = client_endpoint(server)
    alice = peers.client(endpoint, "alice")
    bob = peers.client(endpoint, "bob")
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])

    await server.stopService()
    await deferLater(reactor, 0.01, lambda: None)
    assert not alice.registered and not bob.registered
    with pytest.raises(RendezvousUnavailable):
        await alice.connect("bob", new_offer("alice", ()))

    # Let a few reconnection attempts fail before the server is back.
    await deferLater(reactor, 0.3, lambda: None)
    restarted = peers.server(f"tcp:{port}:interface=127.0.0.1")
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    assert restarted.factory.names() == ["alice", "bob"]
    answer = await alice.connect("bob", new_offer("alice", ALICE_CANDIDATES))
    assert answer.candidates == BOB_CANDIDATES

    text = "\n".join(client_log)
    assert "Registered as alice at the rendezvous server" in text
    assert "Lost the connection to the rendezvous server" in text
    assert "registered as alice again" in text


# --- hostile input from a raw AMP client ---


class RawPeer(amp.AMP):
    """Speaks AMP boxes by hand; answers DeliverOffer with garbage."""

    def amp_DELIVEROFFER(self, box: amp.AmpBox) -> amp.AmpBox:
        return amp.AmpBox(answer=b'{"session": "00", "candidates": []}')


async def raw_client(service: RendezvousService) -> RawPeer:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(service))
    protocol = RawPeer()
    await endpoints.connectProtocol(endpoint, protocol)
    return protocol


async def error_code(d: Deferred[Any]) -> bytes:
    try:
        await d
    except amp.RemoteAmpError as e:
        return bytes(e.errorCode)
    except amp.UnhandledCommand:
        return b"UNHANDLED"
    raise AssertionError("the server accepted it")


def offer_json(**changes: Any) -> bytes:
    value = new_offer("raw", ALICE_CANDIDATES).as_json()
    value.update(changes)
    return json.dumps(value).encode()


@pytest_twisted.ensureDeferred
async def test_malformed_commands_are_refused_and_server_keeps_serving(pair):
    server, alice, bob = pair
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    raw = await raw_client(server)
    call = raw.callRemoteString

    # before registering
    assert await error_code(call(b"Connect", to=b"bob", offer=offer_json())) == b"NOT_REGISTERED"
    for name in (b"", b"two words", b"x" * 65, b"\xff\xfe", b"tab\there", b"nul\x00"):
        assert await error_code(call(b"Register", name=name)) == b"MALFORMED"
    assert await error_code(call(b"Register")) == b"MALFORMED"  # no name at all
    assert await error_code(call(b"Register", name=b"alice")) == b"DUPLICATE_NAME"
    await call(b"Register", name=b"raw")

    bad_offers = [
        b"",
        b"not json",
        b"[" * 20000,
        b'"a string"',
        offer_json(session="00" * 15),
        offer_json(session="zz" * 16),
        offer_json(key="00" * 31),
        offer_json(key="AB" * 32),
        offer_json(**{"from": "two words"}),
        offer_json(candidates=[ALICE_CANDIDATES[0].as_json()] * (MAX_CANDIDATES + 1)),
        offer_json(candidates=[{"type": "host", "host": "not-an-ip", "port": 1, "priority": 1}]),
        offer_json(candidates=[{"type": "host", "host": "10.0.0.1", "port": 0, "priority": 1}]),
        offer_json(candidates=["host"]),
        offer_json(extra=1),
    ]
    for offer in bad_offers:
        assert await error_code(call(b"Connect", to=b"bob", offer=offer)) == b"MALFORMED", offer
    assert await error_code(call(b"Connect", to=b"bob")) == b"MALFORMED"
    # claiming to be someone else
    spoofed = json.dumps(new_offer("alice", ()).as_json()).encode()
    assert await error_code(call(b"Connect", to=b"bob", offer=spoofed)) == b"MALFORMED"
    assert await error_code(call(b"NoSuchCommand")) == b"UNHANDLED"

    assert server.factory.stats.refused_malformed >= len(bad_offers)
    # The raw connection is still up and can do the real thing.
    response = await call(b"Connect", to=b"bob", offer=offer_json())
    assert Answer.from_json(json.loads(response[b"answer"])).candidates == BOB_CANDIDATES
    # So can everyone else.
    answer = await alice.connect("bob", new_offer("alice", ALICE_CANDIDATES))
    assert answer.candidates == BOB_CANDIDATES


@pytest_twisted.ensureDeferred
async def test_malformed_answer_from_a_peer_is_peer_unavailable(pair):
    server, alice, bob = pair
    await alice.when_registered()
    raw = await raw_client(server)
    await raw.callRemoteString(b"Register", name=b"raw")
    with pytest.raises(PeerUnavailable, match="malformed answer"):
        await alice.connect("raw", new_offer("alice", ()))


# --- TLS, which needs no code of ours ---


@pytest_twisted.ensureDeferred
async def test_over_tls(peers):
    pytest.importorskip("OpenSSL")
    import twisted.test
    from twisted.python.filepath import FilePath

    pem = FilePath(twisted.test.__file__).sibling("server.pem").path
    server = peers.server(
        f"ssl:0:interface=127.0.0.1:privateKey={endpoints.quoteStringArgument(pem)}"
    )
    port = port_of(server)
    # ssl: without caCertsDir does not check the certificate (it is
    # Twisted's test one); applications use tls:HOST:PORT, which does.
    endpoint = f"ssl:host=127.0.0.1:port={port}"
    alice = peers.client(endpoint, "alice")
    bob = peers.client(endpoint, "bob")
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    answer = await alice.connect("bob", new_offer("alice", ALICE_CANDIDATES))
    assert answer.candidates == BOB_CANDIDATES


# --- configuration ---


def test_bad_configuration_is_one_clear_error():
    with pytest.raises(ConfigurationError):
        RendezvousClient(reactor, "tcp:host=127.0.0.1:port=9", "two words")
    with pytest.raises(ConfigurationError):
        RendezvousClient(reactor, "nonsense:foo", "alice")
    with pytest.raises(ConfigurationError):
        make_rendezvous_service(reactor, "nonsense:foo")


def test_a_port_in_use_fails_start_at_once(peers):
    taken = peers.server()
    second = make_rendezvous_service(reactor, f"tcp:{port_of(taken)}:interface=127.0.0.1")
    with pytest.raises(CannotListenError):
        second.privilegedStartService()
    assert second.port is None


# --- the in-memory hub ---


def test_in_memory_peers_reach_each_other_synchronously():
    hub = InMemorySignalingHub()
    alice, bob = hub.peer("alice"), hub.peer("bob")
    received: list[Offer] = []
    bob.set_offer_handler(answering(received=received))
    offer = new_offer("alice", ALICE_CANDIDATES)
    (answer,) = results(alice.connect("bob", offer))
    assert answer == Answer(offer.session_id, BOB_CANDIDATES)
    assert received == [offer]
    assert hub.names() == ["alice", "bob"]


def test_in_memory_errors_match_the_server():
    hub = InMemorySignalingHub()
    alice, bob = hub.peer("alice"), hub.peer("bob")
    stranger = LoopbackSignaling(hub)

    def failure_of(d: Deferred[Any]) -> type[BaseException]:
        (out,) = results(d)
        assert isinstance(out, Failure) and out.value is not None
        return type(out.value)

    assert failure_of(alice.connect("carol", new_offer("alice", ()))) is UnknownPeer
    assert failure_of(alice.connect("bob", new_offer("alice", ()))) is PeerUnavailable
    assert failure_of(alice.connect("bob", new_offer("mallory", ()))) is MalformedSignal
    assert failure_of(stranger.connect("bob", new_offer("x", ()))) is NotRegistered
    assert failure_of(stranger.register("bob")) is DuplicateName
    assert failure_of(stranger.register("")) is MalformedSignal
    with pytest.raises(DuplicateName):
        hub.peer("alice")

    def broken(offer: Offer) -> Answer:
        raise RuntimeError("boom")

    bob.set_offer_handler(broken)
    assert failure_of(alice.connect("bob", new_offer("alice", ()))) is PeerUnavailable

    results(bob.close())
    assert hub.names() == ["alice"]
    assert failure_of(alice.connect("bob", new_offer("alice", ()))) is UnknownPeer
    assert failure_of(bob.register("bob")) is RendezvousUnavailable
    # the name is free again
    assert results(stranger.register("bob")) == [None]
    assert stranger.peer_name == "bob"


def test_in_memory_when_registered_fires_once_the_name_is_ours():
    """C{when_registered}, part of L{ISignaling}, as the rendezvous client has it."""
    hub = InMemorySignalingHub()
    alice = hub.peer("alice")
    assert results(alice.when_registered()) == [None]  # at once: registered already

    bob = LoopbackSignaling(hub)
    waiting = results(bob.when_registered())
    assert waiting == []
    assert results(bob.register("bob")) == [None]
    assert waiting == [None]
    assert results(bob.when_registered()) == [None]

    # A refused registration fails whoever waits for it, with the refusal.
    stranger = LoopbackSignaling(hub)
    refused = results(stranger.when_registered())
    results(stranger.register("alice"))
    assert isinstance(refused[0], Failure) and refused[0].check(DuplicateName)
    malformed = results(stranger.when_registered())
    results(stranger.register("not a name"))
    assert isinstance(malformed[0], Failure) and malformed[0].check(MalformedSignal)

    # Closing first fails the wait; a closed peer fails it at once.
    closing = results(stranger.when_registered())
    results(stranger.close())
    assert isinstance(closing[0], Failure) and closing[0].check(RendezvousUnavailable)
    (closed,) = results(alice.close().addCallback(lambda _: alice.when_registered()))
    assert isinstance(closed, Failure) and closed.check(RendezvousUnavailable)


def test_in_memory_with_a_clock_delivers_a_turn_later_and_times_out():
    clock = Clock()
    hub = InMemorySignalingHub(clock, relay_timeout=3.0)
    alice, bob = hub.peer("alice"), hub.peer("bob")
    bob.set_offer_handler(answering())
    out = results(alice.connect("bob", new_offer("alice", ())))
    assert out == []
    clock.advance(0)
    assert isinstance(out[0], Answer)

    bob.set_offer_handler(lambda offer: Deferred())
    out = results(alice.connect("bob", new_offer("alice", ())))
    clock.advance(2.9)
    assert out == []
    clock.advance(0.1)
    assert isinstance(out[0], Failure) and out[0].check(PeerUnavailable)
    assert clock.getDelayedCalls() == []


# --- values ---


def test_values_round_trip_and_keep_the_key_out_of_repr():
    offer = new_offer("alice", ALICE_CANDIDATES)
    assert len(offer.session_id) == 16 and len(offer.key) == 32
    assert new_offer("alice", ()).session_id != offer.session_id
    assert Offer.from_json(json.loads(json.dumps(offer.as_json()))) == offer
    answer = answer_to(offer, BOB_CANDIDATES)
    assert Answer.from_json(json.loads(json.dumps(answer.as_json()))) == answer
    assert offer.key.hex() not in repr(offer) and repr(offer.key) not in repr(offer)
    assert OfferArgument().fromString(OfferArgument().toString(offer)) == offer
    assert AnswerArgument().fromString(AnswerArgument().toString(answer)) == answer


@pytest.mark.parametrize(
    "name, valid",
    [
        ("alice", True),
        ("a", True),
        ("x" * 64, True),
        ("Zoë-42_@home", True),
        ("", False),
        ("x" * 65, False),
        ("two words", False),
        ("tab\t", False),
        ("new\nline", False),
        ("nbsp\u00a0", False),
        ("bell\x07", False),
        (b"bytes", False),
    ],
)
def test_names(name, valid):
    if valid:
        assert check_name(name) == name
    else:
        with pytest.raises(ValueError):
            check_name(name)


def test_values_refuse_bad_sizes_and_too_many_candidates():
    with pytest.raises(ValueError):
        Offer("alice", b"\0" * 15, b"\0" * 32, ())
    with pytest.raises(ValueError):
        Offer("alice", b"\0" * 16, b"\0" * 31, ())
    with pytest.raises(ValueError):
        Answer(b"\0" * 16, ALICE_CANDIDATES[:1] * (MAX_CANDIDATES + 1))
    with pytest.raises(ValueError):
        Answer(b"\0" * 16, ("10.0.0.1",))  # type: ignore[arg-type]
    assert len(Answer(b"\0" * 16, ALICE_CANDIDATES[:1] * MAX_CANDIDATES).candidates) == 32


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


def offer_like() -> st.SearchStrategy[Any]:
    """Mostly-valid offers with one part replaced by anything, to get past the first checks."""
    valid = new_offer("alice", ALICE_CANDIDATES).as_json()
    return st.sampled_from(sorted(valid)).flatmap(
        lambda key: json_values.map(lambda v: {**valid, key: v})
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decoding_arbitrary_bytes_raises_only_malformed_signal(data):
    for argument in (OfferArgument(), AnswerArgument()):
        with contextlib.suppress(MalformedSignal):
            argument.fromString(data)


@settings(max_examples=300, deadline=None)
@given(offer_like())
def test_decoding_nearly_valid_offers_raises_only_malformed_signal(value):
    with contextlib.suppress(MalformedSignal):
        OfferArgument().fromString(json.dumps(value).encode())


# --- NAT hints: beside the offer and the answer, for readers old and new ---

HINT = NATHint(
    MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
    FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
    predictable=False,
    birthday=True,
)
OLD_OFFER_KEYS = {"from", "session", "key", "candidates"}


def test_hints_round_trip_and_are_absent_from_values_without_one():
    offer = new_offer("alice", ALICE_CANDIDATES, HINT)
    answer = answer_to(offer, BOB_CANDIDATES, HINT)
    assert Offer.from_json(json.loads(json.dumps(offer.as_json()))) == offer
    assert Answer.from_json(json.loads(json.dumps(answer.as_json()))) == answer
    assert OfferArgument().fromString(OfferArgument().toString(offer)) == offer
    assert set(new_offer("alice", ()).as_json()) == OLD_OFFER_KEYS
    assert set(answer_to(offer, ()).as_json()) == {"session", "candidates"}
    assert Offer.from_json(new_offer("alice", ()).as_json()).nat is None
    with pytest.raises(ValueError):
        Offer.from_json({**offer.as_json(), "nat": "symmetric"})


def test_a_hint_rides_in_an_amp_key_of_its_own():
    """
    AMP readers skip keys they do not know, where an offer's own JSON may
    have no key it does not know: so a peer or server from before hints
    reads the offer and passes over the hint.
    """
    offer = new_offer("alice", ALICE_CANDIDATES, HINT)
    box: dict[bytes, bytes] = {}
    OfferArgument().toBox(b"offer", box, {"offer": offer}, None)
    assert set(box) == {b"offer", b"offer-nat"}
    assert set(json.loads(box[b"offer"])) == OLD_OFFER_KEYS
    assert Offer.from_json(json.loads(box[b"offer"])) == attrs.evolve(offer, nat=None)
    objects: dict[str, Any] = {}
    OfferArgument().fromBox(b"offer", dict(box), objects, None)
    assert objects == {"offer": offer}
    # From an old peer: no hint.
    objects = {}
    OfferArgument().fromBox(b"offer", {b"offer": box[b"offer"]}, objects, None)
    assert objects["offer"].nat is None
    # Without a hint, nothing beside it.
    plain: dict[bytes, bytes] = {}
    AnswerArgument().toBox(b"answer", plain, {"answer": answer_to(offer, ())}, None)
    assert set(plain) == {b"answer"}
    for bad in (b"not json", b"[]", b'{"predictable": "no"}'):
        with pytest.raises(MalformedSignal):
            OfferArgument().fromBox(b"offer", {**box, b"offer-nat": bad}, {}, None)


@pytest_twisted.ensureDeferred
async def test_hints_travel_through_the_server(pair):
    server, alice, bob = pair
    received: list[Offer] = []

    def handler(offer: Offer) -> Answer:
        received.append(offer)
        return answer_to(offer, BOB_CANDIDATES, attrs.evolve(HINT, predictable=True))

    bob.set_offer_handler(handler)
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    offer = new_offer("alice", ALICE_CANDIDATES, HINT)
    answer = await alice.connect("bob", offer)
    assert received == [offer]
    assert answer.nat == attrs.evolve(HINT, predictable=True)


class OldPeer(amp.AMP):
    """A peer from before hints: its offers carry none, and it reads only the offer."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes: list[amp.AmpBox] = []

    def amp_DELIVEROFFER(self, box: amp.AmpBox) -> amp.AmpBox:
        self.boxes.append(box)
        fields = json.loads(box[b"offer"])
        assert set(fields) == OLD_OFFER_KEYS, "what an old peer's strict reader accepts"
        answer = {"session": fields["session"], "candidates": []}
        return amp.AmpBox(answer=json.dumps(answer).encode())


@pytest_twisted.ensureDeferred
async def test_old_peers_and_new_ones_understand_each_other(pair):
    server, alice, bob = pair
    received: list[Offer] = []
    bob.set_offer_handler(answering(received=received))
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    old = OldPeer()
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(server))
    await endpoints.connectProtocol(endpoint, old)
    await old.callRemoteString(b"Register", name=b"old")
    # new -> old: the old peer reads the offer and answers without a hint
    answer = await alice.connect("old", new_offer("alice", ALICE_CANDIDATES, HINT))
    assert answer.candidates == () and answer.nat is None
    assert old.boxes[0][b"offer-nat"] == json.dumps(HINT.as_json(), separators=(",", ":")).encode()
    # old -> new: the offer arrives without a hint
    raw = new_offer("old", ALICE_CANDIDATES)
    response = await old.callRemoteString(
        b"Connect", to=b"bob", offer=json.dumps(raw.as_json()).encode()
    )
    assert received == [raw] and received[0].nat is None
    assert b"answer-nat" not in response
    old.transport.loseConnection()
