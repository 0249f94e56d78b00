"""
The connection options of C{twisted-nat send} and C{twisted-nat receive}
that reach the peer they run: here the keep-alive interval, which decides
how soon a transfer on a dead path moves to a relay.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from twisted_nat.transfer.command import _service
from twisted_nat.transfer.options import ReceiveOptions, SendOptions
from twisted_nat.trust.keys import Identity


def sent(*arguments: str) -> SendOptions:
    options = SendOptions()
    options.parseOptions(["file", "--to", "bob", *arguments])
    return options


def test_the_keepalive_interval_is_25_s_unless_given() -> None:
    assert sent()["keepalive-interval"] == 25.0
    assert sent("--keepalive-interval", "1.5")["keepalive-interval"] == 1.5


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_keepalive_interval_must_be_positive(value: str) -> None:
    with pytest.raises(usage.UsageError, match="--keepalive-interval must be positive"):
        sent("--keepalive-interval", value)


def test_the_peer_keeps_alive_at_the_interval_given(tmp_path: Path) -> None:
    options = ReceiveOptions()
    options.parseOptions(["--name", "bob", "--output", str(tmp_path), "--keepalive-interval", "2"])
    service = _service(Clock(), options, "bob", Identity.generate(), None, None)
    assert service.settings.keepalive.interval == 2.0
    assert service.settings.keepalive.enabled
