"""Waiting for something a bounded time, without cancelling it."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime


def within(reactor: IReactorTime, waited: Deferred[Any], seconds: float) -> Deferred[None]:
    """
    Fires when C{waited} does or after C{seconds}, whichever comes first;
    never fails, and leaves C{waited} running (a slow relay or discovery
    still helps later punches).
    """
    done: Deferred[None] = Deferred()

    def fire(_: object = None) -> None:
        if not done.called:
            done.callback(None)
        if timer.active():
            timer.cancel()

    timer = reactor.callLater(seconds, fire)
    waited.addBoth(fire)
    return done


async def both(first: Any, second: Any) -> None:
    """Waits for C{first} (if not None), then for C{second}."""
    if first is not None:
        await first
    await second
