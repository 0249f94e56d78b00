"""
The connection options of C{twisted-nat send} and C{twisted-nat receive}:
the same as C{twistd nat peer}'s, and those that reach the peer they run
(the keep-alive interval decides how soon a transfer on a dead path moves
to a relay).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from twisted_nat.tap.options import PeerOptions
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


CONNECTION = [
    "--rendezvous", "tcp:host=127.0.0.1:port=8765", "--rendezvous", "tcp:host=127.0.0.2:port=8765",
    "--stun", "127.0.0.1", "--stun", "[::1]:3479",
    "--turn", "turn:turn.example.net", "--turn-user", "alice", "--turn-password", "pw",
    "--key", "alice.key", "--known-peers", "pins", "--port", "4000", "--interface", "127.0.0.1",
    "--keepalive-interval", "5",
]  # fmt: skip
SHARED = [
    "rendezvous", "stun", "turn", "turn-user", "turn-password", "key", "known-peers", "port",
    "interface", "keepalive-interval",
]  # fmt: skip


def _commands(tmp_path: Path, *arguments: str) -> list[usage.Options]:
    """twistd nat peer, twisted-nat send and receive, each given C{arguments}."""
    peer = PeerOptions()
    send = SendOptions()
    receive = ReceiveOptions()
    peer.parseOptions(["--name", "alice", *arguments])
    send.parseOptions(["file", "--to", "bob", *arguments])
    receive.parseOptions(["--name", "alice", "--output", str(tmp_path), *arguments])
    return [peer, send, receive]


def test_peer_send_and_receive_take_the_same_connection_options(tmp_path: Path) -> None:
    peer, send, receive = _commands(tmp_path, *CONNECTION)
    for name in SHARED:
        assert peer[name] == send[name] == receive[name], name
    assert peer["stun"] == [("127.0.0.1", 3478), ("::1", 3479)]
    assert peer["port"] == 4000 and peer["keepalive-interval"] == 5.0
    assert [server.host for server in peer["turn"]] == ["turn.example.net"]
    shared = {name + "=" for name in SHARED}
    for options in (peer, send, receive):
        assert shared <= set(options.longOpt)


@pytest.mark.parametrize(
    "arguments, why",
    [
        (["--rendezvous", "tcp:8765", "--rendezvous", "tcp:8765"], "given twice"),
        (["--stun", "127.0.0.1:99999"], "port"),
        (["--port", "x"], "port"),
        (["--interface", "nowhere"], "nowhere"),
        (["--keepalive-interval", "0"], "must be positive"),
        (["--turn-user", "alice"], "need a --turn URI"),
    ],
)
def test_peer_send_and_receive_refuse_the_same_connection_options(
    tmp_path: Path, arguments: list[str], why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWISTED_NAT_TURN_PASSWORD", raising=False)
    messages = []
    for options, given in [
        (PeerOptions(), ["--name", "alice", "--rendezvous", "tcp:1", *arguments]),
        (SendOptions(), ["file", "--to", "bob", *arguments]),
        (ReceiveOptions(), ["--name", "alice", "--output", str(tmp_path), *arguments]),
    ]:
        with pytest.raises(usage.UsageError, match=why) as raised:
            options.parseOptions(given)
        messages.append(str(raised.value))
    assert len(set(messages)) == 1, messages
