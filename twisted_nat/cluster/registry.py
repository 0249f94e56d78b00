"""
L{RedisRegistry}: the name-to-key bindings that rendezvous nodes share, in
Redis, which is their source of truth.

Each change is one Lua script, which Redis runs atomically, so that of any
number of nodes claiming a free name at once exactly one key gets it.
Bindings live as long as Redis keeps its data: run it with an append-only
file (C{appendonly yes}; C{appendfsync always} loses nothing a node has
confirmed, C{everysec} at most a second of it) for them to survive a Redis
restart; docs/architecture.md says which copy survives what.

While Redis is unreachable the node answers from the bindings it has
confirmed recently (a bounded cache): the peers it knows register again and
are found, and a name it has not seen is refused for now with
L{RedisUnavailable}.  Nothing is written meanwhile, so there is nothing to
merge when Redis returns.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_nat.cluster.link import RedisLink
from twisted_nat.errors import BadKey, RedisUnavailable, RegistryError
from twisted_nat.rendezvous.registry import SERVER_ID_SIZE, INameRegistry, require_key, require_name
from twisted_nat.trust.keys import PeerKey

PREFIX = "twisted-nat:"
SERVER_ID = PREFIX + "server-id"
CACHE_SIZE = 16_384
"""Bindings a node remembers for when Redis is away (about 200 bytes each)."""

_UNCHECKED: object = object()

_SERVER_ID_SCRIPT = """
redis.call('set', KEYS[1], ARGV[1], 'NX')
return redis.call('get', KEYS[1])
"""

_CLAIM_SCRIPT = """
local holder = redis.call('get', KEYS[1])
if not holder then
  redis.call('set', KEYS[1], ARGV[1])
  redis.call('sadd', KEYS[2], ARGV[2])
  return ARGV[1]
end
return holder
"""

_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('srem', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


def name_key(name: str) -> str:
    """The Redis key holding the key bound to C{name}."""
    return PREFIX + "name:" + name


def names_key(key: PeerKey) -> str:
    """The Redis set of the names C{key} holds."""
    return PREFIX + "names-of:" + key.text


def _holder(value: object) -> PeerKey | None:
    """A key as Redis returned it: None for none, L{RegistryError} for anything not a key."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return PeerKey.parse(str(value)[:100])
    except BadKey:
        raise RegistryError("Redis holds something that is not a peer key") from None


@implementer(INameRegistry)
class RedisRegistry:
    """
    The bindings in the Redis of C{link}, and a cache of those confirmed.

    @ivar cache_size: how many bindings the cache keeps, most recent first.
    """

    def __init__(self, link: RedisLink, cache_size: int = CACHE_SIZE) -> None:
        self.link = link
        self.cache_size = cache_size
        self._cache: OrderedDict[str, PeerKey] = OrderedDict()
        self._server_id: bytes | None = None
        self._closed = False

    def _remember(self, name: str, key: PeerKey | None) -> None:
        if key is None:
            self._cache.pop(name, None)
            return
        self._cache[name] = key
        self._cache.move_to_end(name)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _refused(self, name: object = _UNCHECKED, key: object = _UNCHECKED) -> Failure | None:
        """Why an operation on C{name} and C{key} cannot go ahead (closed, a bad value), or None."""
        try:
            if self._closed:
                raise RegistryError("the name registry is closed")
            if name is not _UNCHECKED:
                require_name(name)  # type: ignore[arg-type]
            if key is not _UNCHECKED:
                require_key(key)  # type: ignore[arg-type]
        except (RegistryError, TypeError, ValueError):
            return Failure()
        return None

    def _confirmed(self, name: str, value: object) -> PeerKey | None:
        """The holder of C{name} as Redis answered it, remembered for when Redis is away."""
        holder = _holder(value)
        self._remember(name, holder)
        return holder

    def _cached(self, name: str, failure: Failure) -> PeerKey | Failure:
        """Redis is away: the holder of C{name} confirmed last, or C{failure} if none."""
        failure.trap(RedisUnavailable)
        known = self._cache.get(name)
        return failure if known is None else known

    def server_id(self) -> Deferred[bytes]:
        """The id kept in Redis (made by the first node), asked once per process."""
        refused = self._refused()
        if refused is not None:
            return defer.fail(refused)
        if self._server_id is not None:
            return defer.succeed(self._server_id)

        def kept(value: object) -> bytes:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            try:
                server_id = bytes.fromhex(text)
            except ValueError:
                server_id = b""
            if len(server_id) != SERVER_ID_SIZE:
                raise RegistryError(f"Redis holds a damaged server id under {SERVER_ID}")
            self._server_id = server_id
            return server_id

        made = os.urandom(SERVER_ID_SIZE).hex()
        return self.link.eval(_SERVER_ID_SCRIPT, [SERVER_ID], [made]).addCallback(kept)

    def claim(self, name: str, key: PeerKey) -> Deferred[bool]:
        refused = self._refused(name, key)
        if refused is not None:
            return defer.fail(refused)
        d = self.link.eval(_CLAIM_SCRIPT, [name_key(name), names_key(key)], [key.text, name])
        d.addCallbacks(lambda value: self._confirmed(name, value), lambda f: self._cached(name, f))
        return d.addCallback(lambda holder: holder == key)

    def lookup(self, name: str) -> Deferred[PeerKey | None]:
        refused = self._refused(name)
        if refused is not None:
            return defer.fail(refused)
        d = self.link.call("GET", name_key(name))
        return d.addCallbacks(
            lambda value: self._confirmed(name, value), lambda f: self._cached(name, f)
        )

    def names_of(self, key: PeerKey) -> Deferred[list[str]]:
        refused = self._refused(key=key)
        if refused is not None:
            return defer.fail(refused)

        def listed(value: Any) -> list[str]:
            if not isinstance(value, list):
                raise RegistryError("Redis answered SMEMBERS with something not a list")
            return sorted(str(name) for name in value)

        return self.link.call("SMEMBERS", names_key(key)).addCallback(listed)

    def release(self, name: str, key: PeerKey) -> Deferred[bool]:
        refused = self._refused(name, key)
        if refused is not None:
            return defer.fail(refused)

        def released(value: object) -> bool:
            if value == 1:
                self._remember(name, None)
                return True
            return False

        d = self.link.eval(_RELEASE_SCRIPT, [name_key(name), names_key(key)], [key.text, name])
        return d.addCallback(released)

    def close(self) -> Deferred[None]:
        """Refuse further operations; the link is the owner's to stop."""
        self._closed = True
        return defer.succeed(None)
