"""Waiting on the real reactor for something to become true, in tests over real sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet import task

reactor: Any = global_reactor


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait, on the reactor, until C{condition()} holds; fail after C{timeout} seconds."""
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await task.deferLater(reactor, 0.02)
        waited += 0.02
