"""
L{CipherCache}: the AEAD objects of the peer connections that carried data
most recently, for a bounded number of connections.

A ChaCha20-Poly1305 object holds about 2.3 KB of native cipher state,
which is more than everything else a connection keeps; making one costs
about a microsecond.  So the objects are kept for the connections that
are busy now, and a connection that falls out of the cache makes its
ciphers again at its next datagram: memory stays bounded however many
connections a process holds (routers share L{SHARED}), and the cost of a rebuild is paid only by
connections that went quiet.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

DEFAULT_CAPACITY = 512


class _Keys(Protocol):
    def send_cipher(self) -> ChaCha20Poly1305: ...

    def receive_cipher(self) -> ChaCha20Poly1305: ...


class CipherCache:
    """
    The sending and receiving AEAD of at most C{capacity} owners (peer
    connections), the least recently used dropped first.
    """

    __slots__ = ("_held", "capacity")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"a cipher cache holds at least one owner's ciphers, not {capacity}")
        self.capacity = capacity
        self._held: OrderedDict[object, list[ChaCha20Poly1305 | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def _pair(self, owner: object) -> list[ChaCha20Poly1305 | None]:
        pair = self._held.get(owner)
        if pair is not None:
            self._held.move_to_end(owner)
            return pair
        if len(self._held) >= self.capacity:
            self._held.popitem(last=False)
        pair = self._held[owner] = [None, None]
        return pair

    def encryptor(self, owner: object, keys: _Keys) -> ChaCha20Poly1305:
        """C{owner}'s AEAD for what it sends, made from C{keys} if not held."""
        pair = self._pair(owner)
        cipher = pair[0]
        if cipher is None:
            cipher = pair[0] = keys.send_cipher()
        return cipher

    def decryptor(self, owner: object, keys: _Keys) -> ChaCha20Poly1305:
        """C{owner}'s AEAD for what it receives, made from C{keys} if not held."""
        pair = self._pair(owner)
        cipher = pair[1]
        if cipher is None:
            cipher = pair[1] = keys.receive_cipher()
        return cipher

    def holds(self, owner: object) -> bool:
        """Whether C{owner}'s ciphers are held now."""
        return owner in self._held

    def forget(self, owner: object) -> None:
        """Drop C{owner}'s ciphers: its keys changed, or it closed."""
        self._held.pop(owner, None)


SHARED = CipherCache()
"""
The cache every router uses unless given its own: the bound is on the
process's memory, however many sockets and routers carry connections.
"""
