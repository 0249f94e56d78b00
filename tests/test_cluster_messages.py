"""
What rendezvous nodes publish to each other: the values round trip, anything
else is refused as L{MalformedSignal} and nothing else, and a node serves at
most its share of other nodes' offers at once.  No Redis: a clock and a
recording C{publish}.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.test_rendezvous import answer_for, offer_from
from twisted_nat.cluster import messages
from twisted_nat.cluster.address import RedisAddress
from twisted_nat.cluster.node import ClusterNode, channel_of
from twisted_nat.errors import MalformedSignal, PeerUnavailable, RendezvousBusy, UnknownPeer
from twisted_nat.trust import Identity

KEY = Identity.generate().public
OFFER = offer_from()
REQUEST = messages.OfferRequest("a" * 16, "b" * 16, KEY, OFFER)
VALUES: list[messages.Message] = [
    REQUEST,
    messages.OfferReply("c" * 16, answer_for(OFFER)),
    messages.OfferReply("c" * 16, None, "busy", "node busy"),
    messages.Moved(KEY, "d" * 32),
]


def test_messages_round_trip():
    for value in VALUES:
        assert messages.decode(messages.encode(value)) == value
        assert messages.decode(messages.encode(value).encode()) == value


def test_a_reply_is_its_answer_or_its_refusal():
    assert messages.OfferReply("c" * 16, answer_for(OFFER)).result().from_name == "bob"
    for word, error in (("busy", RendezvousBusy), ("unknown", UnknownPeer)):
        with pytest.raises(error, match="why"):
            messages.OfferReply("c" * 16, None, word, "why").result()
    with pytest.raises(PeerUnavailable):
        messages.OfferReply("c" * 16, None, "unavailable", "").result()


@given(st.binary(max_size=300) | st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_decoding_anything_raises_only_malformed_signal(data):
    with pytest.raises(MalformedSignal):
        messages.decode(data)


def _mutations() -> st.SearchStrategy[Any]:
    wires = [json.loads(messages.encode(v)) for v in VALUES]
    junk = st.none() | st.integers() | st.text(max_size=20) | st.lists(st.integers(), max_size=2)

    def mutate(wire: dict[str, Any], key: str, value: Any, drop: bool) -> dict[str, Any]:
        changed = dict(wire)
        if drop:
            changed.pop(key, None)
        else:
            changed[key] = value
        return changed

    return st.sampled_from(wires).flatmap(
        lambda wire: st.builds(
            mutate, st.just(wire), st.sampled_from([*wire, "extra"]), junk, st.booleans()
        )
    )


@given(_mutations())
@settings(max_examples=300, deadline=None)
def test_nearly_valid_messages_are_decoded_or_refused_never_raised(wire):
    text = json.dumps(wire)
    try:
        value = messages.decode(text)
    except MalformedSignal:
        return
    assert messages.decode(messages.encode(value)) == value


def test_the_longest_message_is_bounded():
    with pytest.raises(MalformedSignal, match="more than"):
        messages.decode(" " * (messages.MAX_MESSAGE + 1))


def test_a_node_serves_at_most_its_share_of_other_nodes_offers():
    clock = Clock()
    node = ClusterNode(clock, RedisAddress("tcp:127.0.0.1:1"), max_pending=2)
    published: list[tuple[str, str]] = []

    def publish(channel: str, message: str) -> Deferred[int]:
        published.append((channel, message))
        return defer.succeed(1)

    node.link.publish = publish  # type: ignore[method-assign]
    waiting: list[Deferred[Any]] = []

    def deliver(offer: Any, key: Any, node_id: str) -> Deferred[Any]:
        waiting.append(Deferred())
        return waiting[-1]

    node.serve(deliver, lambda key, node_id: None)
    for i in range(3):
        node._heard(messages.encode(messages.OfferRequest(f"{i:016x}", "b" * 16, KEY, OFFER)))
    assert len(waiting) == 2
    [(channel, busy)] = published
    assert channel == channel_of("b" * 16)
    assert messages.decode(busy) == messages.OfferReply(f"{2:016x}", None, "busy", "node busy")
    waiting[0].callback(answer_for(OFFER))
    waiting[1].errback(UnknownPeer("gone"))
    replies = [messages.decode(m) for _, m in published[1:]]
    assert [r.error for r in replies if isinstance(r, messages.OfferReply)] == [None, "unknown"]
    node._heard(messages.encode(messages.OfferRequest("f" * 16, "b" * 16, KEY, OFFER)))
    assert len(waiting) == 3  # room again
