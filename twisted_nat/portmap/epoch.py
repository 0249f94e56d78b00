"""
A gateway's epoch: the seconds since it started, which PCP (RFC 6887
8.5) and NAT-PMP (RFC 6886 3.6) put in every answer so that a client can
tell the gateway lost its mappings (a reboot, a restart of its daemon)
and make them again.  Pure: the caller gives its own clock's time.
"""

from __future__ import annotations

import attrs


@attrs.define
class Epoch:
    """
    The last epoch a gateway told us, and when.  L{observe} says whether
    a new one means the gateway lost its state: its epoch went backwards
    (by more than a second), or it ran too fast or too slow against our
    clock (RFC 6887's test: more than 2 s plus 1/16 of the elapsed time).
    """

    _last: tuple[float, int] | None = None

    def observe(self, now: float, epoch: int) -> bool:
        """Record C{epoch}, received at C{now}; True if the gateway lost its mappings."""
        last, self._last = self._last, (now, epoch)
        if last is None:
            return False
        then, previous = last
        if epoch < previous - 1:
            return True
        ours = now - then
        theirs = epoch - previous
        return ours + 2 < theirs - theirs / 16 or theirs + 2 < ours - ours / 16

    def forget(self) -> None:
        """Start again, as with a gateway never heard (after another gateway took over)."""
        self._last = None
