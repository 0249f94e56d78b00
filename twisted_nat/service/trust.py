"""
Whom a service talks to: the key it expects behind a name, the offers it
answers, and the keys it pins once a handshake proves them.

Every refusal is counted by reason and logged at warning with the key
involved: a refused offer is either a misconfiguration the operator must
see (a peer with a new key) or an attack (a relay that redirects offers).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.logger import Logger

from twisted_nat.errors import (
    BadSignature,
    ConfigurationError,
    KeyMismatch,
    PeerRefused,
    TrustError,
)
from twisted_nat.rendezvous import Answer, ISignaling, Offer
from twisted_nat.trust.handshake import check_addressed, check_offer
from twisted_nat.trust.keys import Identity, PeerKey
from twisted_nat.trust.known import KnownPeers
from twisted_nat.trust.names import normalise_name

_log = Logger()


@attrs.define
class TrustStats:
    """Offers and answers refused, by reason."""

    bad_signature: int = 0
    key_mismatch: int = 0
    not_accepted: int = 0

    def as_json(self) -> dict[str, int]:
        return attrs.asdict(self)


class PeerTrust:
    """
    The trust decisions of one service.

    @param identity: our key.
    @param known: the keys pinned to names, and whom we answer.
    """

    log = Logger()

    def __init__(self, identity: Identity, known: KnownPeers) -> None:
        self.identity = identity
        self.known = known
        self.stats = TrustStats()

    @property
    def key(self) -> PeerKey:
        return self.identity.public

    def expected_key(self, name: str | None, key: PeerKey | None) -> PeerKey | None:
        """
        The key a connection to C{name} and/or C{key} must reach: the one
        given (which must agree with a pin for the name), else the one
        pinned for the name; None when the name is new to us, and the
        rendezvous routes the offer by name.  Its word for the key is then
        no more than a lookup would be, and costs no round trip: the key
        the peer's signed answer proves is pinned (L{answered}).
        """
        if name is not None and key is not None:
            self._checked(self.known.check, name, key)
            return key
        if name is not None:
            return self.known.key_for(name)
        return key

    def answered(self, answer: Answer) -> None:
        """
        A handshake we offered completed: the answer's name must agree with
        its pinned key (when we dialled a key alone, the name is news), and
        is pinned from now on.
        """
        self._checked(self.known.pin, answer.from_name, answer.from_key)

    def check_offer(
        self,
        offer: Offer,
        our_name: str | None,
        connected_key: Callable[[str, PeerKey], None],
    ) -> None:
        """
        Raise unless we answer C{offer}: its signature verifies, it is for
        us, its name is not pinned to another key nor connected with one
        (C{connected_key} raises L{KeyMismatch} then), and our policy
        accepts it.
        """
        try:
            check_offer(offer)
            check_addressed(offer, our_name, self.key)
            self.known.check(offer.from_name, offer.from_key)
            connected_key(offer.from_name, offer.from_key)
            if not self.known.accepts(offer.from_name, offer.from_key):
                raise PeerRefused(f"{offer.from_name} ({offer.from_key.short}) is not a known peer")
        except TrustError as e:
            self.refused(e, offer.from_name, offer.from_key)
            raise

    def offer_connected(self, offer: Offer) -> None:
        """An offer we answered became a connection: pin its key to its name."""
        self._checked(self.known.pin, offer.from_name, offer.from_key)

    def _checked(self, check: Callable[[str, PeerKey], None], name: str, key: PeerKey) -> None:
        try:
            check(normalise_name(name), key)
        except TrustError as e:
            self.refused(e, name, key)
            raise

    def refused(self, error: TrustError, name: str | None, key: PeerKey | None) -> None:
        """Count and log a refusal of C{name} with C{key}."""
        if isinstance(error, BadSignature):
            self.stats.bad_signature += 1
        elif isinstance(error, KeyMismatch):
            self.stats.key_mismatch += 1
        else:
            self.stats.not_accepted += 1
        self.log.warn(
            "refused {name} ({key}): {error}",
            name=name or "a peer",
            key=key.text if key is not None else "no key",
            error=error,
        )


def choose_identity(
    identity: Identity | None, signaling: ISignaling | None, name: str | None
) -> Identity:
    """The key a service signs with: given, the signalling channel's, or a new one."""
    if signaling is not None:
        theirs: Identity = signaling.identity
        if identity is not None and identity.public != theirs.public:
            raise ConfigurationError("the signalling channel is registered with another key")
        return theirs
    if identity is not None:
        return identity
    identity = Identity.generate()
    _log.info(
        "no key given: {name} is {key} until it stops (give a key file to keep one)",
        name=name or "this peer",
        key=identity.public.text,
    )
    return identity


def checked_name(name: str) -> str:
    """C{name} normalised, or L{ConfigurationError} saying why it is no name."""
    try:
        return normalise_name(name)
    except ValueError as e:
        raise ConfigurationError(str(e)) from None
