"""
What rendezvous nodes say to each other over Redis pub/sub, as JSON text,
and its parsing: pure, so that anything malformed is refused here.

    OfferRequest  node A -> node B   an offer for a peer B holds; answer to A
    OfferReply    node B -> node A   the answer, or why there is none
    Moved         node B -> node A   a key A held has registered at B (newest wins)

A message on Redis is input like a box from a peer: whoever can publish on
Redis can send anything, so L{decode} takes text of at most L{MAX_MESSAGE}
characters and returns one of these values or raises L{MalformedSignal}.
Offers and answers inside are the signed values of
L{twisted_nat.rendezvous.values}, checked as when they come from a peer.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from twisted_nat.errors import (
    BadKey,
    MalformedSignal,
    PeerUnavailable,
    RendezvousBusy,
    RendezvousError,
    UnknownPeer,
)
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust.keys import PeerKey

MAX_MESSAGE = 64 * 1024
"""The longest message a node reads: an offer with every candidate is under 8 KB."""

MAX_DETAIL = 200
_ID = re.compile(r"[0-9a-f]{16,32}")

ERRORS: dict[str, type[RendezvousError]] = {
    "unavailable": PeerUnavailable,
    "busy": RendezvousBusy,
    "unknown": UnknownPeer,
}
"""The refusals a node may send back, by the word that names them."""


def _check_id(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"{attribute.name} must be 16 to 32 lowercase hex digits")


@attrs.frozen
class OfferRequest:
    """
    @ivar id: the request's id, which its reply carries.
    @ivar reply_to: the node (its id) that waits for the reply.
    @ivar key: the peer the offer is for, held by the node it is sent to.
    """

    id: str = attrs.field(validator=_check_id)
    reply_to: str = attrs.field(validator=_check_id)
    key: PeerKey
    offer: Offer


@attrs.frozen
class OfferReply:
    """The answer to request C{id}, or the C{error} word of L{ERRORS} and why."""

    id: str = attrs.field(validator=_check_id)
    answer: Answer | None = None
    error: str | None = None
    detail: str = ""

    def result(self) -> Answer:
        """The answer, or the refusal raised as its exception."""
        if self.answer is not None:
            return self.answer
        raise ERRORS.get(self.error or "", PeerUnavailable)(self.detail)


@attrs.frozen
class Moved:
    """C{key} registered at node C{node}: the node that held it before drops its connection."""

    key: PeerKey
    node: str = attrs.field(validator=_check_id)


Message = OfferRequest | OfferReply | Moved


def encode(message: Message) -> str:
    wire: dict[str, Any]
    if isinstance(message, OfferRequest):
        wire = {
            "t": "offer",
            "id": message.id,
            "reply_to": message.reply_to,
            "key": message.key.text,
            "offer": message.offer.as_json(),
        }
    elif isinstance(message, OfferReply):
        wire = {"t": "reply", "id": message.id}
        if message.answer is not None:
            wire["answer"] = message.answer.as_json()
        else:
            wire["error"] = message.error
            wire["detail"] = message.detail[:MAX_DETAIL]
    else:
        wire = {"t": "moved", "key": message.key.text, "node": message.node}
    return json.dumps(wire, separators=(",", ":"))


def decode(text: str | bytes) -> Message:
    """The message C{text} holds; L{MalformedSignal} for anything else."""
    if len(text) > MAX_MESSAGE:
        raise MalformedSignal(f"a message of more than {MAX_MESSAGE} characters")
    try:
        wire = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MalformedSignal(f"not JSON: {str(e)[:MAX_DETAIL]}") from None
    if not isinstance(wire, dict):
        raise MalformedSignal("a message is a JSON object")
    try:
        return _decode(wire)
    except (KeyError, TypeError, ValueError, BadKey) as e:
        raise MalformedSignal(
            f"malformed {wire.get('t')!r} message: {str(e)[:MAX_DETAIL]}"
        ) from None


def _key(value: object) -> PeerKey:
    if not isinstance(value, str):
        raise TypeError("a key is a string")
    return PeerKey.parse(value)


def _decode(wire: dict[str, Any]) -> Message:
    kind = wire.get("t")
    if kind == "offer" and len(wire) == 5:
        return OfferRequest(
            wire["id"], wire["reply_to"], _key(wire["key"]), Offer.from_json(wire["offer"])
        )
    if kind == "reply" and "answer" in wire and len(wire) == 3:
        return OfferReply(wire["id"], Answer.from_json(wire["answer"]))
    if kind == "reply" and len(wire) == 4:
        error, detail = wire["error"], wire["detail"]
        if error not in ERRORS or not isinstance(detail, str) or len(detail) > MAX_DETAIL:
            raise ValueError("an error is a known word and a short detail")
        return OfferReply(wire["id"], None, error, detail)
    if kind == "moved" and len(wire) == 3:
        return Moved(_key(wire["key"]), wire["node"])
    raise ValueError("not a message of ours")
