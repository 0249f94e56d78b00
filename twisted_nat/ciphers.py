"""
L{CipherCache}: the AEAD objects of the peer connections that carried data
most recently, for a bounded number of connections.

A ChaCha20-Poly1305 object holds native cipher state larger than
everything else a connection keeps, and making one is cheap next to a
datagram's round trip (benchmarks/README.md has both).  So the objects
are kept for the connections that are busy now, and a connection that
falls out of the cache makes its ciphers again at its next datagram:
memory stays bounded however many connections a process holds (routers
share L{SHARED}), and only connections that went quiet pay for a rebuild.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
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

    def _cipher(
        self, owner: object, direction: int, make: Callable[[], ChaCha20Poly1305]
    ) -> ChaCha20Poly1305:
        """C{owner}'s cipher of C{direction} (0 sending, 1 receiving), made if not held."""
        pair = self._held.get(owner)
        if pair is not None:
            self._held.move_to_end(owner)
        else:
            if len(self._held) >= self.capacity:
                self._held.popitem(last=False)
            pair = self._held[owner] = [None, None]
        cipher = pair[direction]
        if cipher is None:
            cipher = pair[direction] = make()
        return cipher

    def encryptor(self, owner: object, keys: _Keys) -> ChaCha20Poly1305:
        """C{owner}'s AEAD for what it sends, made from C{keys} if not held."""
        return self._cipher(owner, 0, keys.send_cipher)

    def decryptor(self, owner: object, keys: _Keys) -> ChaCha20Poly1305:
        """C{owner}'s AEAD for what it receives, made from C{keys} if not held."""
        return self._cipher(owner, 1, keys.receive_cipher)

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
