"""
What a transfer tells the person running it: on a terminal a progress
line redrawn in place and a line per file; with C{--json} one JSON object
per line on standard output, for scripts.
"""

from __future__ import annotations

import json
import shutil
from typing import Any, TextIO

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from twisted_nat.streams.stream import PeerAddress
from twisted_nat.transfer.progress import Progress, format_bytes, render
from twisted_nat.transfer.protocol import Offer

REDRAW = 0.25
"""Seconds between redraws of the progress line on a terminal."""
JSON_EVERY = 1.0
"""Seconds between progress objects with C{--json}."""
LISTED = 10
"""Files named when an offer is shown; the rest are counted."""


@attrs.frozen
class Outcome:
    """How a transfer ended: C{error} is None only when every file arrived and checked."""

    files: int
    received: int
    error: str | None


class Reporter:
    """
    @param out: where JSON objects go (standard output).
    @param err: where the person reads (standard error).
    @param as_json: one JSON object per line on C{out}, nothing on C{err}.
    @param terminal: C{err} is a terminal: redraw a progress line there.
    """

    def __init__(
        self, clock: IReactorTime, out: TextIO, err: TextIO, as_json: bool, terminal: bool
    ) -> None:
        self._clock = clock
        self._out = out
        self._err = err
        self._json = as_json
        self._terminal = terminal and not as_json
        self.progress = Progress(0, clock.seconds())
        self._drawn = False
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock

    # --- output ---

    def say(self, text: str) -> None:
        """A line for the person (not in JSON mode)."""
        if self._json:
            return
        self._clear()
        self._err.write(text + "\n")
        self._err.flush()

    def event(self, kind: str, **fields: Any) -> None:
        """A JSON object (in JSON mode only)."""
        if self._json:
            self._out.write(json.dumps({"event": kind, **fields}) + "\n")
            self._out.flush()

    def _clear(self) -> None:
        if self._drawn:
            self._err.write("\r\x1b[K")
            self._drawn = False

    def _tick(self) -> None:
        snapshot = self.progress.snapshot(self._clock.seconds())
        if self._json:
            self._out.write(json.dumps(snapshot.as_json()) + "\n")
            self._out.flush()
        elif self._terminal:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            self._err.write("\r" + render(snapshot, width) + "\x1b[K")
            self._err.flush()
            self._drawn = True

    # --- what happens ---

    def offer(self, peer: PeerAddress | str, offer: Offer, incoming: bool) -> None:
        who = _who(peer)
        path = self.progress.path
        self.progress = Progress(offer.total, self._clock.seconds())
        self.progress.path = path
        self.event(
            "offer",
            peer=peer.name if isinstance(peer, PeerAddress) else peer,
            key=peer.key.text if isinstance(peer, PeerAddress) and peer.key else None,
            files=[{"name": f.name, "size": f.size, "sha256": f.sha256} for f in offer.files],
            total=offer.total,
        )
        count = len(offer.files)
        verb = "offers" if incoming else "offering"
        noun = "file" if count == 1 else "files"
        self.say(f"{who} {verb} {count} {noun}, {format_bytes(offer.total)}:")
        for entry in offer.files[:LISTED]:
            self.say(f"  {entry.name} ({format_bytes(entry.size)})")
        if count > LISTED:
            self.say(f"  ... and {count - LISTED} more")

    def accepted(self, held: int) -> None:
        """The transfer goes ahead; C{held} bytes (whole files) are at the receiver already."""
        self.progress.held(held)
        self.event("accepted", held=held)
        if self._json or self._terminal:
            self._ticker.start(JSON_EVERY if self._json else REDRAW, now=False)

    def resumed(self, name: str, offset: int, had: int) -> None:
        """A file starts from C{offset} (0 when the receiver's C{had} bytes were not ours)."""
        self.progress.held(offset)
        if had:
            self.event("resume", name=name, offset=offset, had=had)
            if offset:
                self.say(f"resuming {name} from {format_bytes(offset)}")
            else:
                self.say(f"{name}: the {format_bytes(had)} held differ; sending it whole")

    def moved(self, count: int) -> None:
        self.progress.moved(self._clock.seconds(), count)

    def path_is(self, relayed: bool) -> None:
        path = "relayed" if relayed else "direct"
        before = self.progress.path
        self.progress.path_is(path)
        if path != before:
            self.event("path", path=path)
            if before != "connecting":
                self.say(f"the path is {path} now")

    def file_done(self, name: str, size: int, why: str | None) -> None:
        self.event("file", name=name, size=size, ok=why is None, error=why)
        if why is None:
            self.say(f"{name}: {format_bytes(size)}, SHA-256 checked")
        else:
            self.say(f"{name}: FAILED, {why}")

    def finished(self, outcome: Outcome) -> None:
        if self._ticker.running:
            self._ticker.stop()
        snapshot = self.progress.snapshot(self._clock.seconds())
        self.event(
            "done",
            ok=outcome.error is None,
            files=outcome.files,
            received=outcome.received,
            bytes=snapshot.done,
            seconds=round(snapshot.elapsed, 3),
            path=snapshot.path,
            path_changes=snapshot.path_changes,
            error=outcome.error,
        )
        if outcome.error is None:
            self.say(
                f"done: {outcome.files} files, {format_bytes(snapshot.total)} in "
                f"{snapshot.elapsed:.1f} s ({snapshot.path})"
            )
        else:
            self._clear()


def _who(peer: PeerAddress | str) -> str:
    if isinstance(peer, str):
        return peer
    name = peer.name or "a peer"
    return f"{name} ({peer.key.text})" if peer.key is not None else name
