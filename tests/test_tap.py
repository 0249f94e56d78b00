"""C{twistd nat} and C{twisted-nat}: options, service, and their errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent

from tests.netutil import free_udp_ports
from twisted_nat import testing as sim
from twisted_nat.cli import discovery_json
from twisted_nat.punch import birthday, meeting
from twisted_nat.rendezvous import RendezvousService, SQLiteRegistry
from twisted_nat.service import NATTraversalService
from twisted_nat.status import StatusSite
from twisted_nat.stun.client import DiscoveryResult
from twisted_nat.tap import DemoOptions, Options, STUNServerService, demo_service, makeService
from twisted_nat.trust import Identity
from twisted_nat.trust.target import Target
from twisted_nat.turn import TURNServer

REPO = Path(__file__).resolve().parent.parent


def run_python(
    code_or_args: list[str], timeout: float = 20.0, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ if environ is None else environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, *code_or_args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def twistd(
    *args: str, timeout: float = 20.0, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_python(
        ["-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())", *args],
        timeout,
        environ,
    )


def test_defaults_are_rfc5780_on_two_loopback_addresses():
    options = Options()
    options.parseOptions(["server"])
    sub = options.subOptions
    assert (sub["address"], sub["port"]) == ("127.0.0.1", 3478)
    assert (sub["alternate-address"], sub["alternate-port"]) == ("127.0.0.2", 3479)
    assert not sub["single"]


def test_no_subcommand_means_the_loopback_demo():
    options = Options()
    options.parseOptions([])
    service: Any = makeService(options, reactor=Clock())
    [demo] = list(service)
    children = list(demo)
    assert isinstance(children[0], STUNServerService)
    assert children[0].alternate == ("127.0.0.2", 3479)
    assert isinstance(children[1], RendezvousService)
    peers = [c for c in children if isinstance(c, NATTraversalService)]
    assert [p.peer_name for p in peers] == ["bob", "alice"]
    assert peers[1].settings.connect_to == (Target("bob"),)


def test_server_runs_stun_and_rendezvous():
    options = Options()
    options.parseOptions(["server"])
    service: Any = makeService(options, reactor=Clock())
    stun, rendezvous = list(service)
    assert isinstance(stun, STUNServerService)
    assert isinstance(rendezvous, RendezvousService)
    assert rendezvous.endpoint == "tcp:8765:interface=127.0.0.1"
    options = Options()
    options.parseOptions(["server", "--no-rendezvous"])
    assert len(list(makeService(options, reactor=Clock()))) == 1  # type: ignore[call-overload]


def test_server_limits_each_source_by_default():
    options = Options()
    options.parseOptions(["server", "--no-rendezvous"])
    [stun] = list(makeService(options, reactor=Clock()))  # type: ignore[call-overload]
    assert stun.rate_limit == (100.0, 200.0)
    options = Options()
    options.parseOptions(["server", "--rate-limit", "5", "--rate-burst", "7"])
    assert options.subOptions["rate-limit"] == (5.0, 7.0)
    options = Options()
    options.parseOptions(["server", "--rate-limit", "0"])
    assert options.subOptions["rate-limit"] is None


@pytest.mark.parametrize("alternate", [None, ("127.0.0.2", 3479)])
def test_the_stun_service_limits_every_socket_with_one_limit(alternate):
    host = sim.SimulatedInternet().add_host(["127.0.0.1", "127.0.0.2"])
    service = STUNServerService(host, ("127.0.0.1", 3478), alternate, None, (3.0, 5.0))
    service.privilegedStartService()
    servers = [service.server] if alternate is None else [s for _, s in service.group.members()]
    assert len(service.ports) == len(servers) == (1 if alternate is None else 4)
    [limit] = {id(server.limit): server.limit for server in servers}.values()
    assert (limit.rate, limit.buckets.burst, limit.clock) == (3.0, 5.0, host)


def test_peer_options():
    options = Options()
    options.parseOptions(
        ["peer", "--name", "alice", "--rendezvous", "tcp:host=127.0.0.1:port=8765",
         "--stun", "127.0.0.1", "--stun", "127.0.0.2:3479", "--connect", "bob",
         "--keepalive-interval", "4", "--status", "tcp:0:interface=127.0.0.1"]
    )  # fmt: skip
    service: Any = makeService(options, reactor=Clock())
    peer, status = list(service)
    assert isinstance(peer, NATTraversalService)
    assert peer.peer_name == "alice"
    assert peer.stun_servers == [("127.0.0.1", 3478), ("127.0.0.2", 3479)]
    assert peer.settings.connect_to == (Target("bob"),)
    assert peer.keepalive_interval == 4.0


PEER = ["peer", "--name", "alice", "--rendezvous", "tcp:host=127.0.0.1:port=8765"]
BOB = Identity.generate().public
TYPO = BOB.text[:-1] + ("a" if BOB.text[-1] != "a" else "b")


def test_peer_keys_targets_and_known_peers(tmp_path):
    """--key makes a key file once and keeps it; --connect takes names, keys or both."""
    key, known = tmp_path / "alice.key", tmp_path / "known_peers"
    known.write_text(f"# pinned by hand\nbob {BOB.text}\n")
    args = [*PEER, "--key", str(key), "--known-peers", str(known), "--accept", "known",
            "--connect", "bob", "--connect", f"carol={BOB.text}",
            "--connect", BOB.text]  # fmt: skip
    options = Options()
    options.parseOptions(args)
    [peer] = list(makeService(options, reactor=Clock()))  # type: ignore[call-overload]
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert peer.settings.connect_to == (Target("bob"), Target("carol", BOB), Target(None, BOB))
    assert peer.trust.known.key_for("bob") == BOB
    assert not peer.trust.known.accepts("mallory", Identity.generate().public)
    again = Options()
    again.parseOptions(args)
    [same] = list(makeService(again, reactor=Clock()))  # type: ignore[call-overload]
    assert same.key == peer.key


def test_a_key_file_others_can_read_is_refused_in_one_line(tmp_path):
    key = tmp_path / "alice.key"
    options = Options()
    options.parseOptions([*PEER, "--key", str(key)])
    makeService(options, reactor=Clock())
    key.chmod(0o644)
    with pytest.raises(SystemExit) as raised:
        makeService(options, reactor=Clock())
    message = str(raised.value.code)
    assert message.startswith("twistd nat: ") and "\n" not in message
    assert str(key) in message and "chmod 600" in message


def test_a_registry_that_is_no_database_ends_the_server_in_one_line(tmp_path):
    bad = tmp_path / "names.db"
    bad.write_bytes(b"this is not a database, " * 100)
    options = Options()
    options.parseOptions(["server", "--registry", str(bad)])
    with pytest.raises(SystemExit) as raised:
        makeService(options, reactor=Clock())
    message = str(raised.value.code)
    assert message.startswith("twistd nat: cannot open the name registry") and "\n" not in message


def test_server_keeps_its_registry_in_the_file_given(tmp_path):
    options = Options()
    options.parseOptions(["server", "--registry", str(tmp_path / "names.db")])
    stun, rendezvous = list(makeService(options, reactor=Clock()))  # type: ignore[call-overload]
    assert isinstance(rendezvous.factory.directory.registry, SQLiteRegistry)
    rendezvous.stopService()


def test_server_on_redis_shares_its_registry_with_the_other_nodes():
    from twisted_nat.cluster.node import ClusterNode
    from twisted_nat.cluster.registry import RedisRegistry

    options = Options()
    options.parseOptions(["server", "--redis", "redis://127.0.0.1:1/2"])
    stun, rendezvous = list(makeService(options, reactor=Clock()))  # type: ignore[call-overload]
    cluster = rendezvous.factory.directory.cluster
    assert isinstance(cluster, ClusterNode) and cluster.link.address.database == 2
    assert isinstance(rendezvous.factory.directory.registry, RedisRegistry)
    assert rendezvous.status()["cluster"]["redis_connected"] is False
    with_status = Options()
    with_status.parseOptions(["server", "--redis", "tcp:127.0.0.1:1", "--status", "tcp:0"])
    assert len(list(makeService(with_status, reactor=Clock()))) == 3  # type: ignore[call-overload]
    with_metrics = Options()
    with_metrics.parseOptions(["server", "--metrics", "tcp:0", "--status", "tcp:0"])
    assert len(list(makeService(with_metrics, reactor=Clock()))) == 4  # type: ignore[call-overload]
    # Without --redis: a server on its own, as before.
    alone = Options()
    alone.parseOptions(["server"])
    stun, rendezvous = list(makeService(alone, reactor=Clock()))  # type: ignore[call-overload]
    assert rendezvous.factory.directory.cluster is None


@pytest.mark.parametrize(
    "arguments, why",
    [
        (["--redis", "redis://:pw@host"], "password"),
        (["--redis", "redis://host/x"], "database"),
        (["--redis", "tcp:127.0.0.1:6379", "--registry", "names.db"], "exclude"),
        (["--no-rendezvous", "--status", "tcp:0"], "rendezvous server's"),
        (["--no-rendezvous", "--metrics", "tcp:0"], "rendezvous server's"),
    ],
)
def test_bad_redis_settings_are_one_line(arguments, why):
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(["server", *arguments])
    message = str(raised.value.code)
    assert message.startswith("twistd nat: ") and why in message and "\n" not in message


def test_a_peer_takes_several_rendezvous_nodes():
    from twisted_nat.rendezvous import RendezvousClient

    options = Options()
    options.parseOptions([*PEER, "-r", "tcp:host=127.0.0.1:port=8766"])
    [peer] = list(makeService(options, reactor=Clock()))  # type: ignore[call-overload]
    assert isinstance(peer.signaling, RendezvousClient)
    assert [d for d, _ in peer.signaling.nodes.endpoints] == [
        "tcp:host=127.0.0.1:port=8765",
        "tcp:host=127.0.0.1:port=8766",
    ]
    with pytest.raises(SystemExit, match="given twice"):
        Options().parseOptions([*PEER, "--rendezvous", PEER[-1]])
    with_metrics = Options()
    with_metrics.parseOptions([*PEER, "--metrics", "tcp:0:interface=127.0.0.1"])
    assert len(list(makeService(with_metrics, reactor=Clock()))) == 2  # type: ignore[call-overload]


TURN_PASSWORD = "hunter2-Zq"


@pytest.fixture
def no_turn_password_in_environment(monkeypatch):
    monkeypatch.delenv("TWISTED_NAT_TURN_PASSWORD", raising=False)


@pytest.mark.usefixtures("no_turn_password_in_environment")
def test_peer_turn_servers_reach_the_service():
    options = Options()
    options.parseOptions(
        [*PEER, "--turn", "turn:turn.example.net", "--turn-user", "alice",
         "--turn", "turns:[2001:db8::1]:443", "--turn-password", TURN_PASSWORD]
    )  # fmt: skip
    expected = [
        TURNServer("turn.example.net", 3478, "udp", False, "alice", TURN_PASSWORD),
        TURNServer("2001:db8::1", 443, "tcp", True, "alice", TURN_PASSWORD),
    ]
    assert options.subOptions["turn"] == expected
    service: Any = makeService(options, reactor=Clock())
    [peer] = list(service)
    assert isinstance(peer, NATTraversalService)
    assert list(peer.settings.turn_servers) == expected


def test_peer_defaults():
    """Numbers left at their defaults are numbers too, and there is no TURN server."""
    options = Options()
    options.parseOptions(PEER)
    assert options.subOptions["keepalive-interval"] == 25.0
    assert options.subOptions["greet-every"] == 0.0
    [peer] = list(makeService(options, reactor=Clock()))  # type: ignore[call-overload]
    assert peer.keepalive_interval == 25.0
    assert list(peer.settings.turn_servers) == []


def test_peer_symmetric_nat_methods_reach_the_service():
    options = Options()
    options.parseOptions(
        [*PEER, "--birthday-sockets", "32", "--birthday-probes", "500", "--birthday-rate", "250.5",
         "--meeting-sockets", "16"]
    )  # fmt: skip
    [peer] = list(makeService(options, reactor=Clock()))  # type: ignore[call-overload]
    assert isinstance(peer, NATTraversalService)
    assert peer.settings.symmetric.birthday_sockets == 32
    assert peer.settings.symmetric.birthday_probes == 500
    assert peer.settings.symmetric.birthday_rate == 250.5
    assert peer.settings.symmetric.meeting_sockets == 16


def test_peer_symmetric_nat_methods_default_to_the_library_defaults():
    options = Options()
    options.parseOptions(PEER)
    sub = options.subOptions
    assert sub["birthday-sockets"] == birthday.DEFAULT_SOCKETS
    assert sub["birthday-probes"] == birthday.DEFAULT_PROBES
    assert sub["birthday-rate"] == birthday.DEFAULT_RATE
    assert sub["meeting-sockets"] == meeting.DEFAULT_SOCKETS
    [peer] = list(makeService(options, reactor=Clock()))  # type: ignore[call-overload]
    assert peer.settings.symmetric.birthday_sockets == birthday.DEFAULT_SOCKETS
    assert peer.settings.symmetric.birthday_probes == birthday.DEFAULT_PROBES
    assert peer.settings.symmetric.birthday_rate == birthday.DEFAULT_RATE
    assert peer.settings.symmetric.meeting_sockets == meeting.DEFAULT_SOCKETS


def test_peer_symmetric_nat_methods_can_be_switched_off():
    options = Options()
    options.parseOptions(
        [*PEER, "--birthday-sockets", "0", "--birthday-probes", "0", "--meeting-sockets", "0"]
    )
    [peer] = list(makeService(options, reactor=Clock()))  # type: ignore[call-overload]
    assert (
        peer.settings.symmetric.birthday_sockets,
        peer.settings.symmetric.birthday_probes,
        peer.settings.symmetric.meeting_sockets,
    ) == (0, 0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--birthday-sockets", "-1"], "--birthday-sockets cannot be negative"),
        (["--birthday-sockets", "x"], "--birthday-sockets must be a whole number, not 'x'"),
        (["--birthday-sockets", "2.5"], "--birthday-sockets must be a whole number, not '2.5'"),
        (["--birthday-probes", "-1"], "--birthday-probes cannot be negative"),
        (["--birthday-probes", "x"], "--birthday-probes must be a whole number, not 'x'"),
        (["--meeting-sockets", "-1"], "--meeting-sockets cannot be negative"),
        (["--meeting-sockets", "x"], "--meeting-sockets must be a whole number, not 'x'"),
        (["--birthday-rate", "0"], "--birthday-rate must be positive"),
        (["--birthday-rate", "-5"], "--birthday-rate must be positive"),
        (["--birthday-rate", "nan"], "--birthday-rate must be positive"),
        (["--birthday-rate", "inf"], "--birthday-rate must be positive and finite"),
        (["--birthday-rate", "x"], "--birthday-rate must be a number, not 'x'"),
    ],
)
def test_bad_symmetric_nat_options_end_in_one_line(args, message):
    refused_in_one_line(args, message)


def refused_in_one_line(args: list[str], message: str) -> str:
    """The options are refused with one line that says C{message}; that line."""
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions([*PEER, *args])
    text = str(raised.value.code)
    assert text.startswith("twistd nat: ")
    assert message in text
    assert "\n" not in text
    return text


def test_turn_password_from_the_environment(monkeypatch):
    """So that the password need not appear in the process list."""
    monkeypatch.setenv("TWISTED_NAT_TURN_PASSWORD", "from-environment")
    options = Options()
    options.parseOptions([*PEER, "--turn", "turn:turn.example.net", "--turn-user", "alice"])
    [server] = options.subOptions["turn"]
    assert server.password == "from-environment"
    options = Options()
    options.parseOptions(
        [*PEER, "--turn", "turn:turn.example.net", "--turn-user", "alice",
         "--turn-password", TURN_PASSWORD]
    )  # fmt: skip
    [server] = options.subOptions["turn"]
    assert server.password == TURN_PASSWORD


@pytest.mark.usefixtures("no_turn_password_in_environment")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--turn", "turn:t.example.net"], "--turn needs --turn-user"),
        (["--turn", "turn:t.example.net", "--turn-password", "x"], "--turn needs --turn-user"),
        (
            ["--turn", "turn:t.example.net", "--turn-user", "alice"],
            "--turn needs --turn-password or TWISTED_NAT_TURN_PASSWORD in the environment",
        ),
        (
            ["--turn", "turn:t.example.net", "--turn-user", "alice", "--turn-password", ""],
            "--turn needs --turn-password",
        ),
        (["--turn-user", "alice"], "--turn-user and --turn-password need a --turn URI"),
        (
            ["--turn", "turns:t.example.net?transport=udp", "--turn-user", "a",
             "--turn-password", TURN_PASSWORD],
            "bad TURN URI 'turns:t.example.net?transport=udp': turns: over UDP is DTLS",
        ),
        (
            ["--turn", "stun:t.example.net", "--turn-user", "a", "--turn-password", TURN_PASSWORD],
            "bad TURN URI 'stun:t.example.net': the scheme must be turn: or turns:",
        ),
        (
            ["--turn", "turn:t.example.net", "--turn", "TURN:T.example.net:3478",
             "--turn-user", "a", "--turn-password", TURN_PASSWORD],
            "TURN server turn:t.example.net:3478?transport=udp is given twice",
        ),
    ],
)  # fmt: skip
def test_bad_turn_options_end_in_one_line(args, message):
    assert TURN_PASSWORD not in refused_in_one_line(args, message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["peer", "--rendezvous", "tcp:host=127.0.0.1:port=1"], "a peer needs --name"),
        (["peer", "--name", "a"], "a peer needs --rendezvous"),
        (["peer", "--name", "a", "--rendezvous", "x", "--stun", "h:0x"], "not a port number"),
        (["peer", "--name", "a", "--rendezvous", "x", "--keepalive-interval", "0"], "positive"),
        (["peer", "--name", "a", "--rendezvous", "x", "--accept", "friends"], "anyone or known"),
        (["peer", "--name", "a", "--rendezvous", "x", "--connect", "bob=tn-abc"], "--connect bob"),
        (["peer", "--name", "a", "--rendezvous", "x", "--connect", "two words"], "--connect"),
        (["peer", "--name", "a", "--rendezvous", "x", "--connect", TYPO], "checksum"),
    ],
)
def test_bad_peer_options_end_in_one_line(args, message):
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(args)
    assert message in str(raised.value.code)


def test_bad_endpoint_is_one_line():
    options = Options()
    options.parseOptions(["server", "--rendezvous", "nonsense:1:2:3"])
    with pytest.raises(SystemExit) as raised:
        makeService(options, reactor=Clock())
    assert str(raised.value.code).startswith("twistd nat: bad rendezvous server endpoint")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["server", "--address", "nowhere"], "not an IP address: 'nowhere'"),
        (["server", "--port", "70000"], "port out of range"),
        (["server", "--port", "x"], "not a port number"),
        (["server", "--alternate-address", "127.0.0.1"], "two different addresses"),
        (["server", "--alternate-port", "3478"], "two different ports"),
        (["server", "--bogus"], "bogus"),
        (["server", "--rate-limit", "x"], "--rate-limit must be a number"),
        (["server", "--rate-limit", "-1"], "--rate-limit must be 0 or more"),
        (["server", "--rate-limit", "inf"], "--rate-limit must be 0 or more and finite"),
        (["server", "--rate-burst", "0.5"], "--rate-burst must be 1 or more"),
        (["server", "--rate-burst", "x"], "--rate-burst must be a number, not 'x'"),
        (["server", "--rate-burst", "nan"], "--rate-burst must be 1 or more and finite: nan"),
        (["server", "--rate-limit", "nan"], "--rate-limit must be 0 or more and finite: nan"),
        (["server", "--offer-timeout", "0"], "--offer-timeout must be positive and finite: 0"),
        (["server", "--idle-timeout", "-inf"], "--idle-timeout must be positive and finite"),
    ],
)
def test_bad_options_end_in_one_line(args, message):
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(args)
    text = str(raised.value.code)
    assert message in text
    assert text.startswith("twistd nat: ")
    assert "\n" not in text


def test_single_mode_allows_one_address():
    options = Options()
    options.parseOptions(
        ["server", "--single", "--alternate-address", "127.0.0.1", "--no-rendezvous"]
    )
    service: Any = makeService(options, reactor=Clock())
    [child] = list(service)
    assert child.alternate is None


def test_twistd_reports_a_port_in_use_in_one_line():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = twistd(
            "-n", "--pidfile=", "nat", "server", "--single", "--no-rendezvous", "--port", str(port)
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert f"twisted-nat: cannot listen on 127.0.0.1:{port}: Address already in use" in (
        result.stderr
    )


def test_twistd_bad_address_is_one_line():
    result = twistd("-n", "--pidfile=", "nat", "server", "--address", "300.1.1.1")
    assert result.returncode == 1
    assert result.stderr.strip() == "twistd nat: not an IP address: '300.1.1.1'"
    assert "Traceback" not in result.stdout


def test_twistd_bad_turn_uri_is_one_line():
    result = twistd(
        "-n", "--pidfile=", "nat", *PEER, "--turn", "turn:[2001:db8::1", "--turn-user", "alice",
        "--turn-password", TURN_PASSWORD,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "twistd nat: bad TURN URI 'turn:[2001:db8::1': an IPv6 address needs its closing ']'"
    )
    assert "Traceback" not in result.stdout
    assert TURN_PASSWORD not in result.stdout + result.stderr


def test_twistd_turn_without_password_is_one_line():
    environ = {k: v for k, v in os.environ.items() if k != "TWISTED_NAT_TURN_PASSWORD"}
    result = twistd(
        "-n", "--pidfile=", "nat", *PEER, "--turn", "turn:127.0.0.1", "--turn-user", "alice",
        environ=environ,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "twistd nat: --turn needs --turn-password or TWISTED_NAT_TURN_PASSWORD in the environment"
    )
    assert "Traceback" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--birthday-sockets", "-1"],
            "twistd nat: --birthday-sockets cannot be negative (0 switches it off): -1",
        ),
        (
            ["--meeting-sockets", "x"],
            "twistd nat: --meeting-sockets must be a whole number, not 'x'",
        ),
        (["--birthday-rate", "0"], "twistd nat: --birthday-rate must be positive and finite: 0"),
    ],
)
def test_twistd_bad_symmetric_nat_option_is_one_line(args, message):
    result = twistd("-n", "--pidfile=", "nat", *PEER, *args)
    assert result.returncode == 1
    assert result.stderr.strip() == message
    assert "Traceback" not in result.stdout + result.stderr


def test_twistd_runs_the_server_and_answers(tmp_path):
    """Start the real twistd process and ask it for our address."""
    primary, alternate = free_udp_ports(2, "127.0.0.1", "127.0.0.2")
    args = ["-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    server = subprocess.Popen(
        [
            sys.executable,
            *args,
            "-n",
            "--pidfile=",
            "nat",
            "server",
            "--no-rendezvous",
            "--port",
            str(primary),
            "--alternate-port",
            str(alternate),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        result = None
        for _ in range(40):
            result = run_python(
                ["-m", "twisted_nat.cli", "stun", "-t", "0.5", f"127.0.0.1:{primary}"]
            )
            if result.returncode == 0:
                break
        assert result is not None and result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["host"] == "127.0.0.1"
        assert answer["server"] == f"127.0.0.1:{primary}"
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    assert f"STUN server listening on 127.0.0.2:{alternate}" in output


def test_cli_errors_are_one_line():
    result = run_python(["-m", "twisted_nat.cli", "stun", "nohost:99999"])
    assert result.returncode != 0
    assert result.stderr.strip() == "twisted-nat: port out of range 0-65535: 99999"
    result = run_python(["-m", "twisted_nat.cli", "stun", "-t", "0.3", "127.0.0.1:9"])
    assert result.returncode == 1
    assert result.stderr.startswith("twisted-nat: public address discovery failed")
    assert "Traceback" not in result.stderr
    result = run_python(["-m", "twisted_nat.cli"])
    assert result.returncode != 0
    assert "name a command" in result.stderr


def test_discovery_json_shape():
    result = DiscoveryResult(
        mapped=("2001:db8::1", 4000), local=("::", 5000), server=("2001:db8::2", 3478), rtt=0.0125
    )
    assert json.loads(discovery_json(result)) == {
        "mapped_address": "[2001:db8::1]:4000",
        "host": "2001:db8::1",
        "port": 4000,
        "local_address": "[::]:5000",
        "server": "[2001:db8::2]:3478",
        "rtt_ms": 12.5,
    }


# --- what the person running twistd nat reads ---


def free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def info_lines(events: Sequence[dict[str, Any]]) -> list[str]:
    """The text of every event above debug, as twistd writes it."""
    return [formatEvent(e) for e in events if e.get("log_level") is not LogLevel.debug]


NOISY = ("Starting protocol", "Stopping protocol", "Starting factory", "Stopping factory")


@pytest_twisted.ensureDeferred
async def test_the_demo_connects_on_loopback_without_connection_detail_at_info():
    """
    The demonstration, run on loopback for real: alice and bob greet each
    other, and the log above debug holds no line per protocol started or
    per rendezvous connection.  (Twisted's own "<protocol> starting on
    <port>" and "(UDP Port N Closed)" lines come from its port classes
    whatever the protocol says; twistd nat's observer drops them, which
    tests/test_tap_logs.py shows.)
    """
    primary, alternate = free_udp_ports(2, "127.0.0.1", "127.0.0.2")
    options = DemoOptions()
    options.parseOptions(["--rendezvous", f"tcp:{free_tcp_port('127.0.0.1')}:interface=127.0.0.1"])
    demo = demo_service(reactor, options, stun=(("127.0.0.1", primary), ("127.0.0.2", alternate)))
    with capturedLogs() as events:
        demo.startService()
        try:
            for _ in range(200):
                greeted = {e.get("peer") for e in events if e.get("text", "").endswith("#1")}
                if greeted == {"alice", "bob"}:
                    break
                await deferLater(reactor, 0.05, lambda: None)
        finally:
            await demo.stopService()
    assert greeted == {"alice", "bob"}, info_lines(events)
    lines = info_lines(events)
    assert any("STUN server listening on" in line for line in lines)
    assert any("Rendezvous server listening on" in line for line in lines)
    assert not [line for line in lines if line.startswith(NOISY)]
    assert not [line for line in lines if "connection established" in line]
    assert not [line for line in lines if "connection lost" in line]


class FixedStatus:
    def status(self) -> dict[str, Any]:
        return {"name": "alice", "connections": []}


@pytest_twisted.ensureDeferred
async def test_status_requests_are_logged_at_debug_only():
    """A monitor polling C{--status} must not fill the log with a line per request."""
    with capturedLogs() as events:
        endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(StatusSite(FixedStatus()))
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        try:
            url = f"http://127.0.0.1:{address.port}/"
            for _ in range(3):
                body = await deferToThread(lambda: urllib.request.urlopen(url, timeout=5).read())
                assert json.loads(body) == FixedStatus().status()
        finally:
            await defer.maybeDeferred(port.stopListening)
    requests = [e for e in events if e.get("method") == "GET"]
    assert len(requests) == 3
    assert all(e["log_level"] is LogLevel.debug for e in requests)
    assert not [line for line in info_lines(events) if "GET" in line or line.startswith(NOISY)]


@pytest.mark.parametrize(
    "arguments, prefix, other",
    [
        (["server", "--single"], b"twisted_nat_rendezvous_", b"twisted_nat_peer_"),
        (PEER, b"twisted_nat_peer_", b"twisted_nat_rendezvous_"),
    ],
)
def test_metrics_serve_the_server_or_the_peer_they_belong_to(arguments, prefix, other):
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest

    from twisted_nat.metrics.exposition import MetricsSite

    options = Options()
    options.parseOptions([*arguments, "--metrics", "tcp:0:interface=127.0.0.1"])
    services: Any = list(makeService(options, reactor=Clock()))  # type: ignore[call-overload]
    [site] = [s.factory for s in services if isinstance(getattr(s, "factory", None), MetricsSite)]
    text = generate_latest(site.resource.registry)
    assert prefix in text and other not in text
