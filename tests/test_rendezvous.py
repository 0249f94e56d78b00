"""
Rendezvous: names bound to keys, and signed offers and answers between two
peers, through our server over loopback TCP and through the in-memory hub,
and what happens when things fail.
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

from tests.support.polling import until
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.errors import (
    ConfigurationError,
    DuplicateName,
    MalformedSignal,
    NotRegistered,
    PeerUnavailable,
    RegisteredElsewhere,
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
    make_rendezvous_service,
)
from twisted_nat.rendezvous.hint import NATHint
from twisted_nat.rendezvous.protocol import AnswerArgument, OfferArgument, registration_transcript
from twisted_nat.rendezvous.quotas import ServerLimits
from twisted_nat.rendezvous.values import MAX_CANDIDATES, check_name
from twisted_nat.trust import Identity, PeerKey
from twisted_nat.trust.handshake import Offering, answer_offer

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
HINT = NATHint(
    MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
    FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
    predictable=False,
    birthday=True,
)
KEYS = {name: Identity.generate() for name in ("alice", "bob", "carol", "mallory", "raw")}
"""One key per name, so that a name reconnecting is the same peer."""


def offer_from(
    sender: str = "alice",
    to: str | None = "bob",
    candidates: tuple[Candidate, ...] = ALICE_CANDIDATES,
    nat: NATHint | None = None,
    to_key: PeerKey | None = None,
    identity: Identity | None = None,
) -> Offer:
    """A signed offer from C{sender} (with its key from L{KEYS}, unless given)."""
    return Offering(identity or KEYS[sender], sender, candidates, nat, to, to_key).offer


def answer_for(
    offer: Offer,
    name: str = "bob",
    candidates: tuple[Candidate, ...] = BOB_CANDIDATES,
    nat: NATHint | None = None,
) -> Answer:
    return answer_offer(KEYS[name], name, offer, candidates, nat)[0]


def results(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def answering(candidates=BOB_CANDIDATES, received=None, name="bob"):
    """An offer handler that records each offer and answers as C{name} with C{candidates}."""

    def handler(offer: Offer) -> Answer:
        if received is not None:
            received.append(offer)
        return answer_for(offer, name, candidates)

    return handler


# --- over loopback TCP ---


def start_server(
    endpoint: str = "tcp:0:interface=127.0.0.1",
    relay_timeout: float = 2.0,
    registry: str | None = None,
    limits: ServerLimits | None = None,
) -> RendezvousService:
    service = make_rendezvous_service(
        reactor, endpoint, relay_timeout=relay_timeout, registry=registry, limits=limits
    )
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

    def client(
        self, endpoint: str, name: str, identity: Identity | None = None, **kwargs: Any
    ) -> RendezvousClient:
        kwargs.setdefault("retry_policy", FAST_RETRY)
        client = RendezvousClient(reactor, endpoint, name, identity or KEYS[name], **kwargs)
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
    """The JSON a peer sends; C{nat}, C{to} and C{to_key} only when there are some."""
    hint = NATHint(MappingBehavior.ENDPOINT_INDEPENDENT, FilteringBehavior.ENDPOINT_INDEPENDENT)
    offer = offer_from()
    assert set(offer.as_json()) == {
        "from",
        "from_key",
        "to",
        "session",
        "ephemeral",
        "candidates",
        "signature",
    }
    by_key = offer_from(to=None, to_key=KEYS["bob"].public, nat=hint)
    assert set(by_key.as_json()) == {
        "from",
        "from_key",
        "to_key",
        "session",
        "ephemeral",
        "candidates",
        "nat",
        "signature",
    }
    assert offer.as_json()["from_key"] == KEYS["alice"].public.text
    assert offer.as_json()["candidates"] == [c.as_json() for c in ALICE_CANDIDATES]
    answer = answer_for(offer)
    assert set(answer.as_json()) == {
        "session",
        "from",
        "from_key",
        "ephemeral",
        "candidates",
        "signature",
    }
    for value in (offer, by_key, answer, answer_for(offer, nat=hint)):
        assert type(value).from_json(json.loads(json.dumps(value.as_json()))) == value
    # The signature covers everything else, and only that.
    assert b"signature" not in offer.signed_part()
    assert offer.signed_part() != attrs.evolve(offer, candidates=()).signed_part()


def test_client_provides_isignaling():
    client = RendezvousClient(reactor, "tcp:host=127.0.0.1:port=9", "alice", KEYS["alice"])
    assert verify.verifyObject(ISignaling, client)
    assert verify.verifyObject(ISignaling, InMemorySignalingHub().peer())


@pytest_twisted.ensureDeferred
async def test_offer_reaches_target_and_answer_comes_back(pair):
    server, alice, bob = pair
    received: list[Offer] = []
    bob.set_offer_handler(answering(received=received))
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    assert server.factory.names() == ["alice", "bob"]

    offering = Offering(KEYS["alice"], "alice", ALICE_CANDIDATES, None, "bob")
    answer = await alice.connect(offering.offer)

    # Every signed byte intact; the server adds only where each side connects from.
    assert received == [attrs.evolve(offering.offer, seen_from="127.0.0.1")]
    assert answer.seen_from == "127.0.0.1"
    assert answer.from_key == KEYS["bob"].public and answer.candidates == BOB_CANDIDATES
    assert len(offering.finish(answer)) == 32
    assert server.factory.stats.offers_relayed == 1
    # What a peer claims about where it connects from is the server's to say.
    lying = attrs.evolve(
        Offering(KEYS["alice"], "alice", ALICE_CANDIDATES, None, "bob").offer,
        seen_from="198.51.100.99",
    )
    await alice.connect(lying)
    assert received[-1].seen_from == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_names_are_looked_up_and_peers_reached_by_key_alone(pair):
    server, alice, bob = pair
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    assert await alice.lookup("Bob") == KEYS["bob"].public  # normalised on the way
    with pytest.raises(UnknownPeer, match="carol"):
        await alice.lookup("carol")
    answer = await alice.connect(offer_from(to=None, to_key=KEYS["bob"].public))
    assert answer.from_name == "bob"
    # A name and a key that do not belong together reach nobody.
    with pytest.raises(UnknownPeer):
        await alice.connect(offer_from(to="bob", to_key=KEYS["carol"].public))
    with pytest.raises(UnknownPeer):
        await alice.connect(offer_from(to=None, to_key=KEYS["carol"].public))


@pytest_twisted.ensureDeferred
async def test_handler_may_answer_later(pair):
    server, alice, bob = pair

    def later(offer: Offer) -> Deferred[Answer]:
        return deferLater(reactor, 0.05, answer_for, offer, "bob", BOB_CANDIDATES[:1])

    bob.set_offer_handler(later)
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    answer = await alice.connect(offer_from())
    assert answer.candidates == BOB_CANDIDATES[:1]


@pytest_twisted.ensureDeferred
async def test_unknown_peer(pair):
    server, alice, bob = pair
    await alice.when_registered()
    with pytest.raises(UnknownPeer, match="carol"):
        await alice.connect(offer_from(to="carol"))


@pytest_twisted.ensureDeferred
async def test_offer_must_come_from_our_own_name_and_key(pair):
    server, alice, bob = pair
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    with pytest.raises(MalformedSignal, match="mallory"):
        await alice.connect(offer_from("mallory"))
    with pytest.raises(MalformedSignal, match="alice"):
        await alice.connect(offer_from("alice", identity=KEYS["mallory"]))


@pytest_twisted.ensureDeferred
async def test_a_bound_name_is_never_taken_by_another_key(peers):
    """
    Mallory can neither take a name that is bound, nor take it while its
    owner is away, nor keep its owner from coming back; the owner's own key
    from a new connection takes over from its older one.
    """
    server = peers.server()
    endpoint = client_endpoint(server)
    bob = peers.client(endpoint, "bob")
    await bob.when_registered()
    mallory = peers.client(endpoint, "bob", identity=KEYS["mallory"])
    with pytest.raises(DuplicateName, match="another key"):
        await mallory.when_registered()
    await bob.close()  # bob's blip
    with pytest.raises(DuplicateName):
        await mallory.when_registered()
    assert server.factory.names() == []
    again = peers.client(endpoint, "bob")
    await again.when_registered()
    assert server.factory.names() == ["bob"]
    newest = peers.client(endpoint, "bob")
    await newest.when_registered()
    await deferLater(reactor, 0.05, lambda: None)
    holder = server.factory.directory.by_key[KEYS["bob"].public]
    assert holder.transport is not None and len(server.factory.directory.by_key) == 1
    assert server.factory.stats.refused >= 2


@pytest_twisted.ensureDeferred
async def test_bindings_outlive_a_server_restart_with_a_registry(peers, tmp_path):
    registry = str(tmp_path / "names.db")
    server = peers.server(registry=registry)
    port = port_of(server)
    endpoint = client_endpoint(server)
    bob = peers.client(endpoint, "bob")
    await bob.when_registered()
    await bob.close()
    await server.stopService()
    peers.server(f"tcp:{port}:interface=127.0.0.1", registry=registry)
    mallory = peers.client(endpoint, "bob", identity=KEYS["mallory"])
    with pytest.raises(DuplicateName):
        await mallory.when_registered()


@pytest_twisted.ensureDeferred
async def test_the_owner_releases_a_name_with_a_signature(peers):
    server = peers.server()
    endpoint = client_endpoint(server)
    carol = peers.client(endpoint, "carol")
    await carol.when_registered()
    await carol.register("carolyn")
    await carol.release("carol")
    mallory = peers.client(endpoint, "carol", identity=KEYS["mallory"])
    await mallory.when_registered()  # the name was free again
    assert server.factory.names() == ["carol", "carolyn"]
    with pytest.raises(DuplicateName):
        await mallory.release("carolyn")


@pytest_twisted.ensureDeferred
async def test_register_renames_and_keeps_the_old_name_when_refused(pair):
    server, alice, bob = pair
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    with pytest.raises(DuplicateName):
        await alice.register("bob")
    assert alice.peer_name == "alice"
    await alice.register("Alicia")
    assert alice.peer_name == "alicia"
    assert server.factory.names() == ["alicia", "bob"]
    with pytest.raises(MalformedSignal):
        await alice.register("two words")
    with pytest.raises(MalformedSignal, match="Latin and Cyrillic"):
        await alice.register("b\u043eb")


@pytest_twisted.ensureDeferred
async def test_failing_handlers_give_peer_unavailable(pair):
    server, alice, bob = pair
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])

    # no handler at all
    with pytest.raises(PeerUnavailable):
        await alice.connect(offer_from(candidates=()))

    def broken(offer: Offer) -> Answer:
        raise RuntimeError("secret internals")

    bob.set_offer_handler(broken)
    with pytest.raises(PeerUnavailable) as raised:
        await alice.connect(offer_from(candidates=()))
    assert "secret internals" not in str(raised.value)

    def failing_later(offer: Offer) -> Deferred[Answer]:
        return defer.fail(ZeroDivisionError())

    bob.set_offer_handler(failing_later)
    with pytest.raises(PeerUnavailable):
        await alice.connect(offer_from(candidates=()))

    def wrong_session(offer: Offer) -> Answer:
        return answer_for(offer_from(candidates=()))

    bob.set_offer_handler(wrong_session)
    with pytest.raises(PeerUnavailable):
        await alice.connect(offer_from(candidates=()))

    def someone_else(offer: Offer) -> Answer:
        return answer_for(offer, "carol")

    bob.set_offer_handler(someone_else)
    with pytest.raises(PeerUnavailable, match="another key"):
        await alice.connect(offer_from(candidates=()))

    def busy(offer: Offer) -> Answer:
        raise PeerUnavailable("busy, try later")

    bob.set_offer_handler(busy)
    with pytest.raises(PeerUnavailable, match="busy, try later"):
        await alice.connect(offer_from(candidates=()))

    # bob's connection survived all of that
    bob.set_offer_handler(answering())
    answer = await alice.connect(offer_from(candidates=()))
    assert answer.candidates == BOB_CANDIDATES
    assert server.factory.stats.relays_failed == 6


@pytest_twisted.ensureDeferred
async def test_relay_times_out(peers):
    server = peers.server(relay_timeout=0.2)
    endpoint = client_endpoint(server)
    alice = peers.client(endpoint, "alice")
    bob = peers.client(endpoint, "bob")
    bob.set_offer_handler(lambda offer: Deferred())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    with pytest.raises(PeerUnavailable, match=r"did not answer within 0\.2 s"):
        await alice.connect(offer_from(candidates=()))


@pytest_twisted.ensureDeferred
async def test_calls_while_disconnected_fail_at_once(peers):
    probe = start_server()
    endpoint = client_endpoint(probe)
    await probe.stopService()  # nothing listens there now

    client = peers.client(endpoint, "alice")
    calls = (
        client.connect(offer_from(candidates=())),
        client.register("alicia"),
        client.lookup("bob"),
        client.release("alice"),
    )
    for d in calls:
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

    call = alice.connect(offer_from(candidates=()))
    await deferLater(reactor, 0.05, lambda: None)
    assert not call.called
    # alice's connection breaks (the server's end is cut), bob's does not
    server.factory.directory.by_key[KEYS["alice"].public].transport.abortConnection()
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
        await alice.connect(offer_from(candidates=()))

    # Let a few reconnection attempts fail before the server is back.
    await deferLater(reactor, 0.3, lambda: None)
    restarted = peers.server(f"tcp:{port}:interface=127.0.0.1")
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    assert restarted.factory.names() == ["alice", "bob"]
    answer = await alice.connect(offer_from())
    assert answer.candidates == BOB_CANDIDATES

    text = "\n".join(client_log)
    assert "Registered as alice at the rendezvous server" in text
    assert "Lost the connection to the rendezvous server" in text
    assert "registered as alice again" in text


@pytest_twisted.ensureDeferred
async def test_a_newer_connection_of_a_key_wins_and_the_older_is_told(peers, client_log):
    server = peers.server()
    endpoint = client_endpoint(server)
    old = peers.client(endpoint, "alice")
    await old.when_registered()
    new = peers.client(endpoint, "alice")
    await new.when_registered()
    await until(lambda: not old.registered)
    with pytest.raises(RegisteredElsewhere, match="another connection"):
        await old.when_registered()
    # No taking turns: the older one does not reconnect (it would within 0.05 s).
    await deferLater(reactor, 0.3, lambda: None)
    assert new.registered and not old.registered
    assert server.factory.names() == ["alice"]
    assert "Another process holds our key" in "\n".join(client_log)


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


async def raw_register(
    raw: RawPeer, name: bytes = b"raw", identity: Identity | None = None, action: str = "register"
) -> Any:
    """Register (or release) C{name} by hand, signing the server's challenge."""
    identity = identity or KEYS["raw"]
    challenge = await raw.callRemoteString(b"Challenge")
    proof = registration_transcript(
        challenge[b"server"], challenge[b"nonce"], action, name.decode()
    )
    return await raw.callRemoteString(
        action.capitalize().encode(),
        name=name,
        key=identity.public.text.encode(),
        signature=identity.sign(proof),
    )


def offer_json(**changes: Any) -> bytes:
    value = offer_from("raw").as_json()
    value.update(changes)
    return json.dumps(value).encode()


@pytest_twisted.ensureDeferred
async def test_malformed_commands_are_refused_and_server_keeps_serving(pair):
    server, alice, bob = pair
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    raw = await raw_client(server)
    call = raw.callRemoteString
    key = KEYS["raw"].public.text.encode()

    # before registering
    assert await error_code(call(b"Connect", offer=offer_json())) == b"NOT_REGISTERED"
    # without a challenge, or with a signature that is not over it
    signed = {"name": b"raw", "key": key, "signature": KEYS["raw"].sign(b"raw")}
    assert await error_code(call(b"Register", **signed)) == b"REGISTRATION_REFUSED"
    await call(b"Challenge")
    assert await error_code(call(b"Register", **signed)) == b"REGISTRATION_REFUSED"
    for name in (b"", b"two words", b"x" * 65, b"\xff\xfe", b"tab\there", b"nul\x00", b"Raw"):
        assert await error_code(call(b"Register", **{**signed, "name": name})) == b"MALFORMED"
    for bad_key in (b"", b"tn-", key[:-1], key[:-1] + (b"a" if key[-1:] != b"a" else b"b")):
        assert await error_code(call(b"Register", **{**signed, "key": bad_key})) == b"MALFORMED"
    assert await error_code(call(b"Register")) == b"MALFORMED"  # no arguments at all
    # a signature for another action, or another name, is no good
    challenge = await call(b"Challenge")
    proof = registration_transcript(challenge[b"server"], challenge[b"nonce"], "release", "raw")
    wrong = {**signed, "signature": KEYS["raw"].sign(proof)}
    assert await error_code(call(b"Register", **wrong)) == b"REGISTRATION_REFUSED"
    with pytest.raises(amp.RemoteAmpError) as taken:
        await raw_register(raw, b"alice")
    assert taken.value.errorCode == b"DUPLICATE_NAME"
    await raw_register(raw)

    bad_offers = [
        b"",
        b"not json",
        b"[" * 20000,
        b'"a string"',
        offer_json(session="00" * 15),
        offer_json(session="zz" * 16),
        offer_json(ephemeral="00" * 31),
        offer_json(ephemeral="AB" * 32),
        offer_json(signature="00" * 63),
        offer_json(from_key="tn-nope"),
        offer_json(**{"from": "two words"}),
        offer_json(to="Bob"),
        offer_json(candidates=[ALICE_CANDIDATES[0].as_json()] * (MAX_CANDIDATES + 1)),
        offer_json(candidates=[{"type": "host", "host": "not-an-ip", "port": 1, "priority": 1}]),
        offer_json(candidates=[{"type": "host", "host": "10.0.0.1", "port": 0, "priority": 1}]),
        offer_json(candidates=["host"]),
        offer_json(extra=1),
    ]
    for offer in bad_offers:
        assert await error_code(call(b"Connect", offer=offer)) == b"MALFORMED", offer
    assert await error_code(call(b"Connect")) == b"MALFORMED"
    # claiming to be someone else
    spoofed = json.dumps(offer_from("alice").as_json()).encode()
    assert await error_code(call(b"Connect", offer=spoofed)) == b"MALFORMED"
    assert await error_code(call(b"NoSuchCommand")) == b"UNHANDLED"

    assert server.factory.stats.refused_malformed >= len(bad_offers)
    # The raw connection is still up and can do the real thing.
    response = await call(b"Connect", offer=offer_json())
    assert Answer.from_json(json.loads(response[b"answer"])).candidates == BOB_CANDIDATES
    # So can everyone else.
    answer = await alice.connect(offer_from())
    assert answer.candidates == BOB_CANDIDATES


@pytest_twisted.ensureDeferred
async def test_malformed_answer_from_a_peer_is_peer_unavailable(pair):
    server, alice, bob = pair
    await alice.when_registered()
    raw = await raw_client(server)
    await raw_register(raw)
    with pytest.raises(PeerUnavailable, match="malformed answer"):
        await alice.connect(offer_from(to="raw"))


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
    answer = await alice.connect(offer_from())
    assert answer.candidates == BOB_CANDIDATES


# --- configuration ---


def test_bad_configuration_is_one_clear_error():
    with pytest.raises(ConfigurationError):
        RendezvousClient(reactor, "tcp:host=127.0.0.1:port=9", "two words", KEYS["alice"])
    with pytest.raises(ConfigurationError):
        RendezvousClient(reactor, "nonsense:foo", "alice", KEYS["alice"])
    with pytest.raises(ConfigurationError):
        make_rendezvous_service(reactor, "nonsense:foo")


def test_a_port_in_use_fails_start_at_once(peers):
    taken = peers.server()
    second = make_rendezvous_service(reactor, f"tcp:{port_of(taken)}:interface=127.0.0.1")
    with pytest.raises(CannotListenError):
        second.privilegedStartService()
    assert second.port is None


# --- the in-memory hub ---


def hub_peer(hub: InMemorySignalingHub, name: str) -> LoopbackSignaling:
    return hub.peer(name, KEYS[name])


def test_in_memory_peers_reach_each_other_synchronously():
    hub = InMemorySignalingHub()
    alice, bob = hub_peer(hub, "alice"), hub_peer(hub, "bob")
    received: list[Offer] = []
    bob.set_offer_handler(answering(received=received))
    offer = offer_from()
    (answer,) = results(alice.connect(offer))
    assert answer.session_id == offer.session_id and answer.candidates == BOB_CANDIDATES
    assert received == [offer]
    assert hub.names() == ["alice", "bob"]
    assert results(alice.lookup("BOB")) == [KEYS["bob"].public]
    (by_key,) = results(alice.connect(offer_from(to=None, to_key=KEYS["bob"].public)))
    assert by_key.from_name == "bob"


def test_in_memory_errors_match_the_server():
    hub = InMemorySignalingHub()
    alice, bob = hub_peer(hub, "alice"), hub_peer(hub, "bob")
    stranger = LoopbackSignaling(hub, KEYS["mallory"])

    def failure_of(d: Deferred[Any]) -> type[BaseException]:
        (out,) = results(d)
        assert isinstance(out, Failure) and out.value is not None
        return type(out.value)

    assert failure_of(alice.connect(offer_from(to="carol"))) is UnknownPeer
    assert failure_of(alice.lookup("carol")) is UnknownPeer
    assert failure_of(alice.connect(offer_from())) is PeerUnavailable
    assert failure_of(alice.connect(offer_from("mallory"))) is MalformedSignal
    assert failure_of(stranger.connect(offer_from("mallory"))) is NotRegistered
    assert failure_of(stranger.register("bob")) is DuplicateName
    assert failure_of(stranger.register("")) is MalformedSignal
    with pytest.raises(DuplicateName):
        hub.peer("alice")  # another key

    def broken(offer: Offer) -> Answer:
        raise RuntimeError("boom")

    bob.set_offer_handler(broken)
    assert failure_of(alice.connect(offer_from())) is PeerUnavailable

    results(bob.close())
    assert hub.names() == ["alice"]
    assert failure_of(alice.connect(offer_from())) is UnknownPeer
    assert failure_of(bob.register("bob")) is RendezvousUnavailable
    # the name stays bob's key's: a stranger cannot have it, bob's key can
    assert failure_of(stranger.register("bob")) is DuplicateName
    again = hub_peer(hub, "bob")
    assert again.peer_name == "bob"


def test_in_memory_when_registered_fires_once_the_name_is_ours():
    """C{when_registered}, part of L{ISignaling}, as the rendezvous client has it."""
    hub = InMemorySignalingHub()
    alice = hub_peer(hub, "alice")
    assert results(alice.when_registered()) == [None]  # at once: registered already

    bob = LoopbackSignaling(hub, KEYS["bob"])
    waiting = results(bob.when_registered())
    assert waiting == []
    assert results(bob.register("bob")) == [None]
    assert waiting == [None]
    assert results(bob.when_registered()) == [None]

    # A refused registration fails whoever waits for it, with the refusal.
    stranger = LoopbackSignaling(hub, KEYS["mallory"])
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
    alice, bob = hub_peer(hub, "alice"), hub_peer(hub, "bob")
    bob.set_offer_handler(answering())
    out = results(alice.connect(offer_from()))
    assert out == []
    clock.advance(0)
    assert isinstance(out[0], Answer)

    bob.set_offer_handler(lambda offer: Deferred())
    out = results(alice.connect(offer_from()))
    clock.advance(2.9)
    assert out == []
    clock.advance(0.1)
    assert isinstance(out[0], Failure) and out[0].check(PeerUnavailable)
    assert clock.getDelayedCalls() == []


# --- values ---


def test_values_round_trip_and_keep_the_signature_out_of_repr():
    offer = offer_from()
    assert len(offer.session_id) == 16 and len(offer.ephemeral) == 32
    assert offer_from().session_id != offer.session_id
    assert offer_from().ephemeral != offer.ephemeral
    assert Offer.from_json(json.loads(json.dumps(offer.as_json()))) == offer
    answer = answer_for(offer)
    assert Answer.from_json(json.loads(json.dumps(answer.as_json()))) == answer
    assert offer.signature.hex() not in repr(offer)
    assert OfferArgument().fromString(OfferArgument().toString(offer)) == offer
    assert AnswerArgument().fromString(AnswerArgument().toString(answer)) == answer


@pytest.mark.parametrize(
    "name, valid",
    [
        ("alice", True),
        ("a", True),
        ("x" * 64, True),
        ("zoë-42_home", True),
        ("Alice", False),  # not normalised: a peer sends "alice"
        ("", False),
        ("x" * 65, False),
        ("two words", False),
        ("tab\t", False),
        ("new\nline", False),
        ("nbsp\u00a0", False),
        ("bell\x07", False),
        ("b\u043eb", False),
        (b"bytes", False),
    ],
)
def test_names_on_the_wire(name, valid):
    if valid:
        assert check_name(name) == name
    else:
        with pytest.raises(ValueError):
            check_name(name)


def test_values_refuse_bad_sizes_and_too_many_candidates():
    offer = offer_from()
    with pytest.raises(ValueError):
        attrs.evolve(offer, session_id=b"\0" * 15)
    with pytest.raises(ValueError):
        attrs.evolve(offer, ephemeral=b"\0" * 31)
    with pytest.raises(ValueError):
        attrs.evolve(offer, to_name=None, to_key=None)
    answer = answer_for(offer)
    with pytest.raises(ValueError):
        attrs.evolve(answer, candidates=ALICE_CANDIDATES[:1] * (MAX_CANDIDATES + 1))
    with pytest.raises(ValueError):
        attrs.evolve(answer, candidates=("10.0.0.1",))  # type: ignore[arg-type]
    assert len(attrs.evolve(answer, candidates=ALICE_CANDIDATES[:1] * 32).candidates) == 32


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


def offer_like() -> st.SearchStrategy[Any]:
    """Mostly-valid offers with one part replaced by anything, to get past the first checks."""
    valid = offer_from(nat=HINT).as_json()
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


# --- NAT hints ---


def test_hints_round_trip_and_are_absent_from_values_without_one():
    offer = offer_from(nat=HINT)
    answer = answer_for(offer, nat=HINT)
    assert Offer.from_json(json.loads(json.dumps(offer.as_json()))) == offer
    assert Answer.from_json(json.loads(json.dumps(answer.as_json()))) == answer
    assert OfferArgument().fromString(OfferArgument().toString(offer)) == offer
    assert "nat" not in offer_from().as_json()
    assert "nat" not in answer_for(offer).as_json()
    assert Offer.from_json(offer_from().as_json()).nat is None
    with pytest.raises(ValueError):
        Offer.from_json({**offer.as_json(), "nat": "symmetric"})


@pytest_twisted.ensureDeferred
async def test_hints_travel_through_the_server(pair):
    server, alice, bob = pair
    received: list[Offer] = []
    theirs = attrs.evolve(HINT, predictable=True)

    def handler(offer: Offer) -> Answer:
        received.append(offer)
        return answer_for(offer, nat=theirs)

    bob.set_offer_handler(handler)
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    offer = offer_from(nat=HINT)
    answer = await alice.connect(offer)
    assert received == [attrs.evolve(offer, seen_from="127.0.0.1")]
    assert answer.nat == theirs


@pytest_twisted.ensureDeferred
async def test_a_busy_server_only_delays_registering(peers):
    """
    Over its source's registration rate, a client is told "busy": it
    keeps waiting and registers at a later attempt, where a refusal of
    the name would have failed its waiters.
    """
    server = peers.server(limits=ServerLimits(register_rate=4.0, register_burst=1))
    endpoint = client_endpoint(server)
    alice = peers.client(endpoint, "alice")
    await alice.when_registered()
    bob = peers.client(endpoint, "bob")
    await bob.when_registered()
    assert server.factory.stats.refused_busy >= 1
    assert sorted(server.factory.names()) == ["alice", "bob"]
