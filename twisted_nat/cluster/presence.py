"""
L{Presence}: which node holds the live connection of each peer key, in
Redis, so that any node can route an offer to it.

A node writes C{twisted-nat:at:KEY} = its id when a peer registers with it,
with an expiry (L{PRESENCE_TTL}) that it refreshes while the peer stays
connected; a node that dies stops refreshing, and its entries go by
themselves.  The newest registration wins: writing the entry returns the
node that held it before, which is told (L{twisted_nat.cluster.messages.Moved})
and drops its connection.  When Redis returns after an outage, the node
writes its entries again, except for keys that registered elsewhere
meanwhile, which it drops; keys that registered with it while Redis was
away are written as new registrations, as if they had registered now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.cluster.link import RedisLink
from twisted_nat.cluster.registry import PREFIX
from twisted_nat.errors import RegistryError
from twisted_nat.trust.keys import PeerKey

PRESENCE_TTL = 30.0
"""Seconds a node's word that it holds a key lasts unless refreshed (every third of it)."""

REFRESH_BATCH = 512
"""Keys refreshed by one script, so that no script holds Redis for long."""

_HOLD_SCRIPT = """
local old = redis.call('get', KEYS[1])
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return old
"""

_DROP_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

_REFRESH_SCRIPT = """
local lost = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('get', key)
  if holder == ARGV[1] or not holder then
    redis.call('set', key, ARGV[1], 'PX', ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
"""


def presence_key(key: PeerKey) -> str:
    return PREFIX + "at:" + key.text


class Presence:
    """
    This node's entries, for the keys whose connections it holds.

    @param node: this node's id.
    @param superseded: called with a key and the node that held it before,
        when C{hold} finds it held by another node (to tell that node).
    @param taken: called with a key we hold when a refresh finds it has
        registered at another node meanwhile (to drop our connection).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        link: RedisLink,
        node: str,
        superseded: Callable[[PeerKey, str], None],
        taken: Callable[[PeerKey], None],
        ttl: float = PRESENCE_TTL,
    ) -> None:
        self.link = link
        self.node = node
        self.ttl = ttl
        self.held: set[PeerKey] = set()
        self._unwritten: set[PeerKey] = set()
        self._superseded = superseded
        self._taken = taken
        self._refresher = LoopingCall(self.refresh)
        self._refresher.clock = reactor

    def start(self) -> None:
        self._refresher.start(self.ttl / 3, now=False)

    def stop(self) -> None:
        if self._refresher.running:
            self._refresher.stop()

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    def hold(self, key: PeerKey) -> Deferred[Any] | None:
        """A connection here holds C{key} now; the node that held it before hears so."""
        self.held.add(key)
        if not self.link.up:
            self._unwritten.add(key)  # written when Redis returns
            return None
        self._unwritten.discard(key)

        def written(old: object) -> None:
            if isinstance(old, str) and old != self.node and key in self.held:
                self._superseded(key, old)

        d = self.link.eval(_HOLD_SCRIPT, [presence_key(key)], [self.node, self._ttl_ms])
        return d.addCallbacks(written, self._failed, errbackArgs=("hold",))

    def drop(self, key: PeerKey) -> Deferred[Any] | None:
        """No connection here holds C{key} any more."""
        self.held.discard(key)
        self._unwritten.discard(key)
        if not self.link.up:
            return None
        d = self.link.eval(_DROP_SCRIPT, [presence_key(key)], [self.node])
        return d.addErrback(self._failed, "drop")

    def where(self, key: PeerKey) -> Deferred[str | None]:
        """The node holding C{key}, or None; fails with L{RedisUnavailable} while Redis is away."""

        def found(value: object) -> str | None:
            return value if isinstance(value, str) and value else None

        return self.link.call("GET", presence_key(key)).addCallback(found)

    def reconcile(self) -> None:
        """
        Redis is back: the keys that registered here meanwhile are written
        as new registrations (the node holding them before hears so), the
        others refreshed.
        """
        unwritten, self._unwritten = self._unwritten, set()
        for key in sorted(unwritten & self.held, key=lambda k: k.text):
            self.hold(key)
        self.refresh()

    def refresh(self) -> None:
        """Extend our entries; write those that expired; drop keys held elsewhere now."""
        if not self.link.up:
            return
        keys = sorted(self.held - self._unwritten, key=lambda k: k.text)
        for start in range(0, len(keys), REFRESH_BATCH):
            batch = keys[start : start + REFRESH_BATCH]
            d = self.link.eval(
                _REFRESH_SCRIPT, [presence_key(k) for k in batch], [self.node, self._ttl_ms]
            )
            d.addCallbacks(self._refreshed, self._failed, (batch,), errbackArgs=("refresh",))

    def _refreshed(self, lost: object, batch: list[PeerKey]) -> None:
        if not isinstance(lost, list):
            return
        for index in lost:
            if isinstance(index, int) and 1 <= index <= len(batch):
                key = batch[index - 1]
                if key in self.held:
                    self.held.discard(key)
                    self._taken(key)

    def _failed(self, failure: Failure, what: str) -> None:
        failure.trap(RegistryError)
        self.log.debug("Presence {what} failed: {error}", what=what, error=failure.value)
