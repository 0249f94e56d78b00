"""
Rendezvous (signalling): how two peers behind NATs exchange their candidates
and a session secret before they punch holes towards each other.

A peer registers a name with a rendezvous server (L{RendezvousClient}), and
sends an L{Offer} to another peer by name; that peer's offer handler returns
an L{Answer}.  Anything providing L{ISignaling} can carry them instead of
the server; L{InMemorySignalingHub} does it inside one process, for tests.
"""

from twisted_nat.rendezvous.client import RendezvousClient, default_retry_policy
from twisted_nat.rendezvous.interfaces import (
    InMemorySignalingHub,
    ISignaling,
    LoopbackSignaling,
    OfferHandler,
)
from twisted_nat.rendezvous.server import (
    RendezvousServerFactory,
    RendezvousService,
    make_rendezvous_service,
)
from twisted_nat.rendezvous.values import Answer, Offer, answer_to, new_offer

__all__ = [
    "Answer",
    "ISignaling",
    "InMemorySignalingHub",
    "LoopbackSignaling",
    "Offer",
    "OfferHandler",
    "RendezvousClient",
    "RendezvousServerFactory",
    "RendezvousService",
    "answer_to",
    "default_retry_policy",
    "make_rendezvous_service",
    "new_offer",
]
