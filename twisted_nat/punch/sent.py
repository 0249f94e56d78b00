"""
What a settled punch session remembers of the PUNCHes it sent: their
transaction ids, to check a late PUNCH_ACK against.  A node may hold
thousands of connected sessions, so the ids are kept end to end in one
bytes object (12 bytes each, rather than 56 for an object in a tuple).
"""

from __future__ import annotations

from collections.abc import Iterable


class SentIds:
    """The transaction ids of the PUNCHes sent, all of one size (12 bytes in STUN)."""

    __slots__ = ("_ids", "_size")

    def __init__(self, ids: Iterable[bytes] = ()) -> None:
        listed = list(ids)
        self._size = len(listed[0]) if listed else 0
        if any(len(i) != self._size for i in listed):
            raise ValueError("transaction ids of different sizes")
        self._ids = b"".join(listed)

    def __len__(self) -> int:
        return len(self._ids) // self._size if self._size else 0

    def __contains__(self, transaction_id: object) -> bool:
        """Whether an id was sent: found at a boundary of the ids, not across two."""
        size = self._size
        if not isinstance(transaction_id, bytes) or len(transaction_id) != size or not size:
            return False
        ids = self._ids
        found = ids.find(transaction_id)
        while found >= 0:
            if found % size == 0:
                return True
            found = ids.find(transaction_id, found + 1)
        return False
