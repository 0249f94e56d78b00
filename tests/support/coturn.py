"""
Run coturn (C{turnserver}) as a loopback-only child process for interoperability tests.

Testing our STUN and TURN code only against itself would let a shared misreading of the
RFCs pass unnoticed, so the interop tests also talk to coturn, an implementation nobody
here wrote.  This module makes that cheap and safe:

  - coturn runs in the foreground as our child (never C{--daemon}), so the test process
    owns it and can always stop it: SIGTERM, then SIGKILL after a grace period, also when
    the test body raises; on Linux the child additionally gets SIGTERM if the test
    process itself dies abruptly;
  - it listens and relays on 127.0.0.0/8 only, on free ports chosen here, so tests can
    run in parallel and never touch a real network;
  - every file it writes (pid file, SQLite user database, log) lives in a private
    temporary directory: nothing goes to /var or syslog, and root is not needed;
  - it is handed to the test only after it has answered a real STUN Binding request on
    every address it serves, because a started process is not yet a listening one.

The three configurations are described on L{CoturnMode}.  Typical use::

    require_tool("turnserver")
    with running_coturn(CoturnMode.RFC5780) as server:
        ...  # talk to server.address, server.alternate_address
"""

from __future__ import annotations

import ctypes
import enum
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final

import attrs
import pytest

PRIMARY_HOST: Final = "127.0.0.1"
"""The address coturn always listens on."""

ALTERNATE_HOST: Final = "127.0.0.2"
"""
The second address used in RFC 5780 mode.

Linux routes all of 127.0.0.0/8 to the loopback interface, so this works without any
interface configuration.
"""

MAGIC_COOKIE: Final = 0x2112A442
BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS_RESPONSE: Final = 0x0101
CHANGE_REQUEST: Final = 0x0003
CHANGE_IP: Final = 0x04
CHANGE_PORT: Final = 0x02

_PACKAGES: Final = {
    "turnserver": "coturn",
    "redis-server": "redis-server",
    "stun": "stun-client",
    "stund": "stun-server",
}
"""Debian packages providing the tools tests look for, to make skip messages actionable."""

_SBIN_DIRECTORIES: Final = ("/usr/local/sbin", "/usr/sbin", "/sbin")
"""Searched after C{PATH}: daemons such as C{stund} live there, outside a user's C{PATH}."""

_START_ATTEMPTS: Final = 3
"""How often to retry with fresh ports when another process grabbed ours meanwhile."""

_STOP_GRACE_SECONDS: Final = 5.0
_PROBE_INTERVAL_SECONDS: Final = 0.1
_PR_SET_PDEATHSIG: Final = 1


class CoturnMode(enum.Enum):
    """The coturn configurations tests need."""

    STUN = "stun"
    """
    Plain STUN (C{--stun-only}) on C{127.0.0.1}, one port.

    With a single listening address coturn cannot honour CHANGE-REQUEST: it ignores the
    attribute and answers from the address the request was sent to.
    """

    RFC5780 = "rfc5780"
    """
    STUN with NAT behaviour discovery: C{127.0.0.1} and C{127.0.0.2}, each on a primary
    and an alternate port.

    coturn enables RFC 5780 as soon as it has two listening addresses of one family: it
    then adds OTHER-ADDRESS (and CHANGED-ADDRESS for RFC 3489 clients) to responses and
    answers a CHANGE-REQUEST from the other address and/or the alternate port.
    """

    TURN = "turn"
    """
    TURN with the long-term credential mechanism on C{127.0.0.1}.

    Relay addresses are on C{127.0.0.1} too, and loopback peers are allowed (coturn
    refuses them by default), so a test can relay to a peer socket of its own.  Binding
    requests stay unauthenticated, as in coturn's default configuration.
    """


@attrs.frozen
class TurnCredentials:
    """A long-term credential (RFC 8489 section 9.2) coturn was started with."""

    username: str
    password: str
    realm: str


@attrs.frozen
class CoturnInstance:
    """
    A running coturn, as a test sees it.

    @ivar host: The primary address, always L{PRIMARY_HOST}.
    @ivar port: The primary port (UDP; also TCP when started with C{tcp=True}).
    @ivar alternate_host: L{ALTERNATE_HOST} in RFC 5780 mode, otherwise C{None}.
    @ivar alternate_port: The alternate port in RFC 5780 mode, otherwise C{None}.
    @ivar credentials: The TURN user in TURN mode, otherwise C{None}.
    @ivar pid: The process id, e.g. for measuring its CPU time.
    @ivar argv: The exact command line, to reproduce a failure by hand.
    @ivar log_path: coturn's log; it is deleted when the context manager exits.
    """

    mode: CoturnMode
    host: str
    port: int
    alternate_host: str | None
    alternate_port: int | None
    credentials: TurnCredentials | None
    pid: int
    argv: tuple[str, ...]
    log_path: str

    @property
    def address(self) -> tuple[str, int]:
        """The primary transport address, where clients send their first request."""
        return (self.host, self.port)

    @property
    def alternate_address(self) -> tuple[str, int] | None:
        """
        The address RFC 5780 calls OTHER-ADDRESS: alternate host I{and} alternate port.

        This is where the answer to a CHANGE-REQUEST with both flags comes from.
        """
        if self.alternate_host is None or self.alternate_port is None:
            return None
        return (self.alternate_host, self.alternate_port)

    @property
    def listening_addresses(self) -> tuple[tuple[str, int], ...]:
        """Every (host, port) coturn serves STUN on."""
        if self.alternate_host is None or self.alternate_port is None:
            return (self.address,)
        return tuple(
            (host, port)
            for host in (self.host, self.alternate_host)
            for port in (self.port, self.alternate_port)
        )

    def read_log(self) -> str:
        """Return coturn's log so far, for assertions and failure messages."""
        return _read_text(self.log_path)


class CoturnError(RuntimeError):
    """coturn could not be started, or did not start answering STUN in time."""


class CoturnUnavailable(CoturnError):
    """The C{turnserver} executable is not installed; see L{require_tool}."""


class _PortTaken(Exception):
    """coturn could not bind a port we picked: someone else took it after we checked."""


def find_tool(name: str) -> str | None:
    """
    Return the path of executable C{name}, or C{None}.

    Besides C{PATH} this looks in the sbin directories, because a non-root C{PATH} usually
    lacks them and Debian installs daemons such as C{stund} there.
    """
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRECTORIES))


def coturn_path() -> str | None:
    """Return the path of coturn's C{turnserver} executable, or C{None} if not installed."""
    return find_tool("turnserver")


def require_tool(name: str) -> str:
    """
    Return the path of executable C{name}, or end the current test.

    A missing tool skips the test on a developer machine, but fails it when the
    environment variable C{CI} is C{true}: the CI image is supposed to provide every
    tool, and a silent skip there would hide that the interop tests no longer run.
    """
    path = find_tool(name)
    if path is not None:
        return path
    package = _PACKAGES.get(name)
    message = f"{name} is not installed" + (f" (Debian package {package})" if package else "")
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(
            f"{message}, but CI=true: the CI environment must provide it, so this is a "
            "setup error, not a reason to skip",
            pytrace=False,
        )
    pytest.skip(message)


def stun_binding_request(
    transaction_id: bytes, *, change_ip: bool = False, change_port: bool = False
) -> bytes:
    """
    Encode an RFC 8489 Binding request by hand, optionally with an RFC 5780 CHANGE-REQUEST.

    Built from raw bytes on purpose: the helper must not depend on the STUN code it is
    used to test.
    """
    if len(transaction_id) != 12:
        raise ValueError("an RFC 8489 transaction id is 12 bytes")
    attributes = b""
    if change_ip or change_port:
        flags = (CHANGE_IP if change_ip else 0) | (CHANGE_PORT if change_port else 0)
        attributes = struct.pack("!HHI", CHANGE_REQUEST, 4, flags)
    header = struct.pack("!HHI", BINDING_REQUEST, len(attributes), MAGIC_COOKIE)
    return header + transaction_id + attributes


@contextmanager
def running_coturn(
    mode: CoturnMode = CoturnMode.STUN,
    *,
    relay_threads: int | None = None,
    tcp: bool = False,
    username: str = "twisted",
    password: str = "nat-traversal",
    realm: str = "twisted-nat.test",
    extra_args: Sequence[str] = (),
    startup_timeout: float = 10.0,
) -> Iterator[CoturnInstance]:
    """
    Start coturn in C{mode}, yield it once it answers STUN, and always stop it afterwards.

    @param relay_threads: coturn's C{--relay-threads}: C{None} keeps its default (one per
        CPU), C{0} is single-threaded mode, C{1} means one relay thread besides the
        listener and authentication threads, the usual choice for comparable benchmarks.
    @param tcp: Also listen on TCP (same ports).  Off by default, which halves the ports
        that must be free.
    @param username: TURN user name (TURN mode only).
    @param password: TURN password (TURN mode only).
    @param realm: TURN realm (TURN mode only).
    @param extra_args: Appended verbatim to the command line.
    @param startup_timeout: How long to wait for coturn to answer, in seconds.
    @raise CoturnUnavailable: C{turnserver} is not installed; call L{require_tool} first
        to turn that into a skip.
    @raise CoturnError: coturn exited or did not answer within C{startup_timeout}; the
        message includes the end of its log.
    """
    executable = coturn_path()
    if executable is None:
        raise CoturnUnavailable("turnserver is not installed (Debian package coturn)")
    credentials = (
        TurnCredentials(username=username, password=password, realm=realm)
        if mode is CoturnMode.TURN
        else None
    )
    with tempfile.TemporaryDirectory(prefix="coturn-") as workdir:
        instance, process = _start(
            executable,
            mode,
            workdir,
            relay_threads,
            tcp,
            credentials,
            extra_args,
            startup_timeout,
        )
        try:
            yield instance
        finally:
            _stop(process)


def _start(
    executable: str,
    mode: CoturnMode,
    workdir: str,
    relay_threads: int | None,
    tcp: bool,
    credentials: TurnCredentials | None,
    extra_args: Sequence[str],
    startup_timeout: float,
) -> tuple[CoturnInstance, subprocess.Popen[bytes]]:
    """Pick ports, spawn coturn and wait until it answers; retry if a port got taken."""
    hosts = (PRIMARY_HOST, ALTERNATE_HOST) if mode is CoturnMode.RFC5780 else (PRIMARY_HOST,)
    for attempt in range(_START_ATTEMPTS):
        ports = _free_ports(hosts, 2 if mode is CoturnMode.RFC5780 else 1, tcp)
        port = ports[0]
        alternate_port = ports[1] if mode is CoturnMode.RFC5780 else None
        argv = command_line(
            executable, mode, workdir, port, alternate_port, relay_threads, tcp, credentials
        ) + list(extra_args)
        log_path = os.path.join(workdir, f"turnserver-{attempt}.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                preexec_fn=_die_with_parent_hook(),
            )
        instance = CoturnInstance(
            mode=mode,
            host=PRIMARY_HOST,
            port=port,
            alternate_host=ALTERNATE_HOST if mode is CoturnMode.RFC5780 else None,
            alternate_port=alternate_port,
            credentials=credentials,
            pid=process.pid,
            argv=tuple(argv),
            log_path=log_path,
        )
        try:
            _wait_until_answering(process, instance, startup_timeout)
        except _PortTaken:
            _stop(process)
            continue
        except BaseException:
            _stop(process)
            raise
        return instance, process
    raise CoturnError(f"coturn could not bind free loopback ports in {_START_ATTEMPTS} attempts")


def command_line(
    executable: str,
    mode: CoturnMode,
    workdir: str,
    port: int,
    alternate_port: int | None,
    relay_threads: int | None,
    tcp: bool,
    credentials: TurnCredentials | None,
    primary_host: str = PRIMARY_HOST,
    alternate_host: str = ALTERNATE_HOST,
) -> list[str]:
    """
    Build coturn's command line (the NAT lab uses it too, with the lab's addresses).

    Every option that would otherwise make coturn read a configuration file, open a
    management port, load TLS keys, or write under /var is set explicitly here.
    """
    argv = [
        executable,
        "-n",  # no configuration file: only this command line counts
        "--log-file", "stdout",  # our stdout is a file in workdir; nothing goes to syslog
        "--no-cli",  # no telnet management port
        "--no-tls",
        "--no-dtls",
        "--pidfile", os.path.join(workdir, "turnserver.pid"),  # default is under /var
        "--db", os.path.join(workdir, "turndb"),  # default SQLite DB is under /var/lib
        "--listening-ip", primary_host,
        "--listening-port", str(port),
        "--relay-ip", primary_host,  # relay sockets on the same address, whatever the mode
    ]  # fmt: skip
    if not tcp:
        argv.append("--no-tcp")
    if relay_threads is not None:
        argv += ["--relay-threads", str(relay_threads)]
    if mode is CoturnMode.STUN:
        argv.append("--stun-only")
    elif mode is CoturnMode.RFC5780:
        assert alternate_port is not None
        argv += [
            "--listening-ip", alternate_host,
            "--alt-listening-port", str(alternate_port),
            "--stun-only",
        ]  # fmt: skip
    else:
        assert credentials is not None
        argv += [
            "--lt-cred-mech",
            "--user", f"{credentials.username}:{credentials.password}",
            "--realm", credentials.realm,
            "--allow-loopback-peers",
        ]  # fmt: skip
    return argv


def _free_ports(hosts: Sequence[str], count: int, tcp: bool) -> list[int]:
    """
    Return C{count} distinct ports that are currently free on every host in C{hosts}.

    All probe sockets stay open until every port is chosen, so the same port cannot be
    returned twice; coturn may still lose a race for them, which L{_start} handles.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(100):
            if len(ports) == count:
                return ports
            first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(first)
            first.bind((hosts[0], 0))
            port: int = first.getsockname()[1]
            if _bind_everywhere(port, hosts, tcp, held):
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    raise CoturnError(f"could not find {count} free ports on {', '.join(hosts)}")


def _bind_everywhere(port: int, hosts: Sequence[str], tcp: bool, held: list[socket.socket]) -> bool:
    """Bind C{port} on every host (UDP, plus TCP if wanted), appending sockets to C{held}."""
    wanted = [(host, socket.SOCK_DGRAM) for host in hosts[1:]]
    if tcp:
        wanted += [(host, socket.SOCK_STREAM) for host in hosts]
    for host, kind in wanted:
        sock = socket.socket(socket.AF_INET, kind)
        held.append(sock)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent_hook() -> Callable[[], None] | None:
    """
    Return a C{preexec_fn} asking Linux to SIGTERM coturn when the test process dies.

    Without it a test run killed by a CI timeout (SIGKILL, so no C{finally} runs) leaves
    coturn holding its ports.  The function is resolved here, in the parent, so the child
    only makes one system call between fork and exec.  Linux delivers the signal when
    the I{thread} that started coturn exits, so start it from a long-lived thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return die_with_parent


def _wait_until_answering(
    process: subprocess.Popen[bytes], instance: CoturnInstance, timeout: float
) -> None:
    """
    Return once every listening address answered a Binding request.

    Polls every L{_PROBE_INTERVAL_SECONDS}, with a fresh transaction id each time so a
    late answer to an old probe still counts.

    @raise _PortTaken: coturn logged that it could not bind one of its ports.
    @raise CoturnError: coturn exited or stayed silent for C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    waiting = set(instance.listening_addresses)
    sent: dict[bytes, tuple[str, int]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((PRIMARY_HOST, 0))
        while waiting:
            status = process.poll()
            log = instance.read_log()
            if status is not None:
                raise CoturnError(
                    f"turnserver exited with status {status} before answering STUN\n"
                    + _describe(instance)
                )
            if "Cannot bind" in log:
                raise _PortTaken()
            if time.monotonic() >= deadline:
                raise CoturnError(
                    f"turnserver did not answer STUN on {sorted(waiting)} within "
                    f"{timeout:g}s\n" + _describe(instance)
                )
            for address in waiting:
                transaction_id = secrets.token_bytes(12)
                sent[transaction_id] = address
                sock.sendto(stun_binding_request(transaction_id), address)
            _collect_answers(sock, sent, waiting, time.monotonic() + _PROBE_INTERVAL_SECONDS)


def _collect_answers(
    sock: socket.socket,
    sent: dict[bytes, tuple[str, int]],
    waiting: set[tuple[str, int]],
    until: float,
) -> None:
    """Receive Binding success responses until C{until}, crossing answered addresses off."""
    while waiting and (remaining := until - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data = sock.recv(2048)
        except TimeoutError:
            return
        except ConnectionRefusedError:
            continue  # ICMP port unreachable for an earlier probe: not listening yet
        if len(data) < 20:
            continue
        message_type, _, cookie = struct.unpack_from("!HHI", data)
        address = sent.get(data[8:20])
        if message_type == BINDING_SUCCESS_RESPONSE and cookie == MAGIC_COOKIE and address:
            waiting.discard(address)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate coturn, and kill it if it is still there after a grace period."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _describe(instance: CoturnInstance) -> str:
    """Summarise a failed start: command line and the end of the log."""
    tail = "\n".join(instance.read_log().splitlines()[-40:])
    return f"command: {' '.join(instance.argv)}\nlog tail:\n{tail}"


def _read_text(path: str) -> str:
    """Read a log that a running process may still be writing, never failing on bytes."""
    try:
        with open(path, "rb") as file:
            return file.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
