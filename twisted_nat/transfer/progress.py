"""
How far a transfer has come, and its line on a terminal: bytes, rate,
time left and the path (direct or relayed).  Pure: the caller says what
time it is.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs

WINDOW = 5.0
"""Seconds the rate is measured over."""
_SPACING = 0.1
"""Seconds between the samples kept for the rate."""


@attrs.frozen
class Snapshot:
    """The state of a transfer at one moment."""

    done: int
    total: int
    rate: float
    eta: float | None
    path: str
    path_changes: int
    elapsed: float

    def as_json(self) -> dict[str, Any]:
        return {
            "event": "progress",
            "bytes": self.done,
            "total": self.total,
            "rate": round(self.rate),
            "eta": None if self.eta is None else round(self.eta, 1),
            "path": self.path,
            "path_changes": self.path_changes,
        }


class Progress:
    """
    Bytes done of C{total} since C{start}.  Bytes the receiver held already
    (a resumed transfer) count as done but not towards the rate.
    """

    def __init__(self, total: int, start: float) -> None:
        self.total = total
        self.done = 0
        self.path = "connecting"
        self.path_changes = 0
        self._start = start
        self._samples: deque[tuple[float, int]] = deque([(start, 0)])

    def held(self, count: int) -> None:
        """C{count} bytes the receiver has already: done, without having moved."""
        self.done += count
        self._samples = deque((at, done + count) for at, done in self._samples)

    def moved(self, now: float, count: int) -> None:
        self.done += count
        if now - self._samples[-1][0] >= _SPACING:
            self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[0][0] > WINDOW:
            self._samples.popleft()

    def path_is(self, path: str) -> None:
        """The connection's path is now C{path} (C{direct} or C{relayed})."""
        if path != self.path:
            if self.path != "connecting":
                self.path_changes += 1
            self.path = path

    def rate(self, now: float) -> float:
        at, done = self._samples[0]
        if now - at <= 0:
            return 0.0
        return (self.done - done) / (now - at)

    def snapshot(self, now: float) -> Snapshot:
        rate = self.rate(now)
        left = self.total - self.done
        eta = None if rate <= 0 else left / rate
        if left <= 0:
            eta = 0.0
        return Snapshot(
            self.done, self.total, rate, eta, self.path, self.path_changes, now - self._start
        )


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(snapshot: Snapshot, width: int = 80) -> str:
    """One terminal line: a bar, bytes, rate, time left and path, at most C{width} wide."""
    fraction = 1.0 if snapshot.total == 0 else min(1.0, snapshot.done / snapshot.total)
    path = snapshot.path
    if snapshot.path_changes:
        path += f" ({snapshot.path_changes} path changes)"
    text = (
        f" {fraction * 100:3.0f}% {format_bytes(snapshot.done)} / {format_bytes(snapshot.total)}"
        f"  {format_bytes(snapshot.rate)}/s  ETA {format_duration(snapshot.eta)}  {path}"
    )
    bar_width = max(0, min(30, width - len(text) - 3))
    filled = round(bar_width * fraction)
    bar = f"[{'#' * filled}{'.' * (bar_width - filled)}]" if bar_width >= 5 else ""
    return (bar + text)[:width]
