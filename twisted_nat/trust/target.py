"""
L{Target}: whom to connect to, as a user writes it: a name (its key
pinned at first contact), a name and the key it must have (C{bob=tn-...}),
or a key alone (C{tn-...}).
"""

from __future__ import annotations

import attrs

from twisted_nat.trust.keys import KEY_PREFIX, PeerKey
from twisted_nat.trust.names import normalise_name


def _name(value: str | None) -> str | None:
    return None if value is None else normalise_name(value)


@attrs.frozen
class Target:
    """A peer to connect to, by name, by key, or both."""

    name: str | None = attrs.field(default=None, converter=_name)
    key: PeerKey | None = None

    def __attrs_post_init__(self) -> None:
        if self.name is None and self.key is None:
            raise ValueError("a target is a name, a key, or both")

    @classmethod
    def parse(cls, text: str) -> Target:
        """
        C{NAME}, C{NAME=KEY} or C{KEY}; C{ValueError} (L{BadKey} for the
        key) for anything else.
        """
        name, equals, key = text.partition("=")
        if equals:
            return cls(name, PeerKey.parse(key))
        if text.lower().startswith(KEY_PREFIX):
            return cls(None, PeerKey.parse(text))
        return cls(text)

    def __str__(self) -> str:
        if self.key is None:
            return str(self.name)
        return self.key.short if self.name is None else f"{self.name} ({self.key.short})"
