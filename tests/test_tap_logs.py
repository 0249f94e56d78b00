"""What C{twistd nat} prints: the story at info, no line per socket, more with --log-level debug."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol, Protocol, ServerFactory
from twisted.logger import LogLevel, PredicateResult, capturedLogs, formatEvent

from tests.netutil import free_udp_ports
from tests.test_tap import REPO, run_python, twistd
from twisted_nat.tap.logs import OperatorView, is_socket_line, level_named


def event(level: LogLevel, text: str) -> dict[str, Any]:
    return {"log_level": level, "log_namespace": "twisted_nat.x", "log_format": text}


@pytest_twisted.ensureDeferred
async def test_twisteds_own_lines_for_each_socket_count_as_debug():
    """
    Twisted's ports announce every socket opened and closed ("... starting
    on N", "(UDP Port N Closed)"), whatever the protocol says: captured from
    real ports here, so that a change of Twisted's wording fails this test.
    """
    with capturedLogs() as events:
        ports: Any = reactor
        udp = ports.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        tcp = ports.listenTCP(0, ServerFactory.forProtocol(Protocol), interface="127.0.0.1")
        await defer.maybeDeferred(udp.stopListening)
        await defer.maybeDeferred(tcp.stopListening)
    texts = [formatEvent(e) for e in events if is_socket_line(e)]
    assert any("starting on" in text for text in texts), [formatEvent(e) for e in events]
    assert any(text.startswith("(UDP Port") for text in texts)
    assert any(text.startswith("(TCP Port") for text in texts)
    at_info, at_debug = OperatorView(LogLevel.info), OperatorView(LogLevel.debug)
    assert [at_info(e) for e in events if is_socket_line(e)] == [PredicateResult.no] * len(texts)
    assert {at_debug(e) for e in events} == {PredicateResult.yes}


def test_the_level_chosen_and_above_pass():
    at_info = OperatorView(LogLevel.info)
    assert at_info(event(LogLevel.debug, "a datagram")) is PredicateResult.no
    for level in (LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical):
        assert at_info(event(level, "peer connected")) is PredicateResult.yes
    at_warn = OperatorView(level_named("warn"))
    assert at_warn(event(LogLevel.info, "peer connected")) is PredicateResult.no
    assert at_warn(event(LogLevel.warn, "binding lost")) is PredicateResult.yes
    # Our own words are never taken for Twisted's socket lines.
    ours = event(LogLevel.info, "STUN server listening on 127.0.0.1:3478")
    assert not is_socket_line(ours) and at_info(ours) is PredicateResult.yes


def run_server(tmp_path: Any, *top: str) -> str:
    """C{twistd nat [top...] server}, asked once for our address; what it printed."""
    primary, alternate = free_udp_ports(2, "127.0.0.1", "127.0.0.2")
    code = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"
    command = [sys.executable, "-c", code, "-n", "--pidfile=", "nat", *top, "server"]
    command += ["--no-rendezvous", "--port", str(primary), "--alternate-port", str(alternate)]
    server = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(40):
            asked = run_python(
                ["-m", "twisted_nat.cli", "stun", "-t", "0.5", f"127.0.0.1:{primary}"]
            )
            if asked.returncode == 0:
                break
        assert asked.returncode == 0, asked.stderr
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    return output


def test_twistd_prints_the_story_and_no_line_per_socket(tmp_path):
    output = run_server(tmp_path)
    assert "STUN server listening on 127.0.0.1" in output
    assert "starting on" not in output and "Closed)" not in output, output
    assert "#debug" not in output


def test_twistd_log_level_debug_shows_the_sockets_too(tmp_path):
    output = run_server(tmp_path, "--log-level", "debug")
    assert "STUN server listening on 127.0.0.1" in output
    assert "BindingServer starting on" in output, output


@pytest.mark.parametrize("level", ["loud", "INFO", ""])
def test_a_bad_log_level_is_one_line(level):
    result = twistd("-n", "--pidfile=", "nat", "--log-level", level, "server")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"twistd nat: --log-level must be one of debug, info, warn, error, critical, not {level!r}"
    )
