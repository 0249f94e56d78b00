"""The counters of a TURN client."""

from __future__ import annotations

import attrs


@attrs.define
class TURNStats:
    """Counters; everything received and not delivered is counted here too."""

    allocations: int = 0
    refreshes: int = 0
    permissions: int = 0
    channel_binds: int = 0
    stale_nonces: int = 0
    stale_allocations: int = 0
    sent_indications: int = 0
    sent_channel_data: int = 0
    received_indications: int = 0
    received_channel_data: int = 0
    dropped_malformed: int = 0
    dropped_unknown_server: int = 0
    dropped_unknown_channel: int = 0
