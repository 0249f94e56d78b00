"""
What strangers' offers may make us spend.  Keys cost nothing to make, so
every limit holds per key and in total: offers are rate limited, a peer
already searching for many paths answers "busy" rather than queue without
bound, and the expensive techniques (extra sockets, birthday probes) run
for one punch of a key at a time, a few times a minute, and for a few
punches at once in all.  Pure: the caller passes the time.
"""

from __future__ import annotations

import attrs

from twisted_nat.limits import KeyedBuckets, TokenBucket, positive
from twisted_nat.trust.keys import PeerKey


@attrs.frozen
class GateSettings:
    """
    @ivar offer_rate: offers a second one key may make, after
        C{offer_burst} at once.
    @ivar total_offer_rate: offers a second from all keys together, after
        C{total_offer_burst} at once.
    @ivar max_searching: punches searching for a path at once; beyond,
        offers are answered "busy".
    @ivar expensive_rate: punches a second (3 a minute) one key may have
        with an expensive technique, after C{expensive_burst}; one at a
        time in any case.
    @ivar max_expensive: punches with an expensive technique at once, from
        all keys together.
    @ivar max_keys: keys whose rates are remembered at once.
    """

    offer_rate: float = attrs.field(default=0.5, validator=positive)
    offer_burst: int = attrs.field(default=5, validator=positive)
    total_offer_rate: float = attrs.field(default=10.0, validator=positive)
    total_offer_burst: int = attrs.field(default=30, validator=positive)
    max_searching: int = attrs.field(default=64, validator=positive)
    expensive_rate: float = attrs.field(default=3 / 60, validator=positive)
    expensive_burst: int = attrs.field(default=3, validator=positive)
    max_expensive: int = attrs.field(default=4, validator=positive)
    max_keys: int = attrs.field(default=4096, validator=positive)


class OfferGate:
    """The limits of L{GateSettings}, with the state they need."""

    def __init__(self, settings: GateSettings, now: float) -> None:
        self.settings = settings
        self._offers: KeyedBuckets[PeerKey] = KeyedBuckets(
            settings.offer_rate, settings.offer_burst, settings.max_keys
        )
        self._all_offers = TokenBucket(settings.total_offer_rate, settings.total_offer_burst, now)
        self._expensive: KeyedBuckets[PeerKey] = KeyedBuckets(
            settings.expensive_rate, settings.expensive_burst, settings.max_keys
        )
        self._running: dict[bytes, PeerKey] = {}

    def offer(self, key: PeerKey, now: float, searching: int) -> str | None:
        """Why an offer from C{key} is refused now, or None to answer it."""
        if searching >= self.settings.max_searching:
            return "busy: searching for too many paths already"
        if not self._offers.take(key, now):
            return "too many offers from this key"
        if not self._all_offers.take(now):
            return "too many offers"
        return None

    def expensive(self, key: PeerKey, punch_id: bytes, now: float) -> str | None:
        """
        Why a punch C{punch_id} with C{key} may not use an expensive
        technique now, or None: it may, until L{expensive_over}.
        """
        if key in self._running.values():
            return "one is running for this key already"
        if len(self._running) >= self.settings.max_expensive:
            return f"{len(self._running)} are running already"
        if not self._expensive.take(key, now):
            return "this key had its share this minute"
        self._running[punch_id] = key
        return None

    def expensive_over(self, punch_id: bytes) -> None:
        """The punch C{punch_id} closed its extra sockets, or stopped probing."""
        self._running.pop(punch_id, None)
