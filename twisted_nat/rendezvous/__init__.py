"""
Rendezvous (signalling): how two peers behind NATs exchange their signed
offers and answers before they punch holes towards each other.

A peer registers a name, bound to its key, with a rendezvous server
(L{RendezvousClient}), and sends an L{Offer} to another peer by name or
key; that peer's offer handler returns an L{Answer}.  Anything providing
L{ISignaling} can carry them instead of the server; L{InMemorySignalingHub}
does it inside one process, for tests.
"""

from twisted_nat.rendezvous.client import RendezvousClient, default_retry_policy
from twisted_nat.rendezvous.hint import NATHint
from twisted_nat.rendezvous.interfaces import ISignaling, OfferHandler
from twisted_nat.rendezvous.listening import RendezvousService, make_rendezvous_service
from twisted_nat.rendezvous.loopback import InMemorySignalingHub, LoopbackSignaling
from twisted_nat.rendezvous.registry import (
    INameRegistry,
    MemoryRegistry,
    SQLiteRegistry,
    open_registry,
)
from twisted_nat.rendezvous.server import RendezvousServerFactory
from twisted_nat.rendezvous.values import Answer, Offer

__all__ = [
    "Answer",
    "INameRegistry",
    "ISignaling",
    "InMemorySignalingHub",
    "LoopbackSignaling",
    "MemoryRegistry",
    "NATHint",
    "Offer",
    "OfferHandler",
    "RendezvousClient",
    "RendezvousServerFactory",
    "RendezvousService",
    "SQLiteRegistry",
    "default_retry_policy",
    "make_rendezvous_service",
    "open_registry",
]
