"""
Extra sockets never take the process's last descriptors: without a
reserve, a few offers to a peer behind a random-port NAT could leave every
other part of the process failing with EMFILE.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import pytest
from twisted.internet import reactor

from twisted_nat.bases import BaseRegistry
from twisted_nat.limits import DESCRIPTOR_RESERVE, descriptors_left
from twisted_nat.punch.sockets import ExtraSockets


@pytest.fixture
def tight_limit() -> Iterator[int]:
    """A soft descriptor limit 10 above what is open plus the reserve; restored after."""
    if descriptors_left() is None:
        pytest.skip("no descriptor limit, or no /proc/self/fd, on this machine")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + DESCRIPTOR_RESERVE + 10, hard))
    try:
        yield 10
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_extra_sockets_leave_the_reserve_free(tight_limit: int) -> None:
    sockets = ExtraSockets(reactor, BaseRegistry(), "127.0.0.1")  # type: ignore[arg-type]
    try:
        opened = sockets.open(b"punch", 256, "birthday")
        assert len(opened) <= tight_limit
        left = descriptors_left()
        assert left is not None and left >= 0
        assert (
            len(os.listdir("/proc/self/fd"))
            <= resource.getrlimit(resource.RLIMIT_NOFILE)[0] - DESCRIPTOR_RESERVE
        )
    finally:
        sockets.close_all()
