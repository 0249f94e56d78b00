"""
Tests for L{tests.support.coturn}, against the real coturn.

The interop tests trust this helper to deliver what each mode promises: a server that
reports the right mapped address, a second address and port that really answer a
CHANGE-REQUEST, a TURN server that really wants the credentials it was given, and a
process that is gone afterwards.  Everything is checked with STUN bytes built and parsed
by hand here, so a bug in twisted-nat's own codec cannot hide a broken fixture (or the
other way round).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from tests.support.coturn import (
    ALTERNATE_HOST,
    MAGIC_COOKIE,
    PRIMARY_HOST,
    CoturnInstance,
    CoturnMode,
    find_tool,
    require_tool,
    running_coturn,
    stun_binding_request,
)

pytestmark = pytest.mark.interop

BINDING_SUCCESS = 0x0101
ALLOCATE_REQUEST = 0x0003
ALLOCATE_SUCCESS = 0x0103
ALLOCATE_ERROR = 0x0113

USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_TRANSPORT = 0x0019
XOR_MAPPED_ADDRESS = 0x0020
OTHER_ADDRESS = 0x802C

UDP_TRANSPORT = 17
RECEIVE_TIMEOUT = 2.0


def _attribute(attribute_type: int, value: bytes) -> bytes:
    """Encode one attribute, padded to a multiple of four bytes."""
    return struct.pack("!HH", attribute_type, len(value)) + value + b"\0" * (-len(value) % 4)


def _attributes(message: bytes) -> dict[int, bytes]:
    """Split a STUN message's attributes into a type -> value mapping."""
    (length,) = struct.unpack_from("!H", message, 2)
    assert len(message) == 20 + length, "length field disagrees with datagram size"
    found: dict[int, bytes] = {}
    offset = 20
    while offset < len(message):
        attribute_type, attribute_length = struct.unpack_from("!HH", message, offset)
        found[attribute_type] = message[offset + 4 : offset + 4 + attribute_length]
        offset += 4 + attribute_length + (-attribute_length % 4)
    return found


def _xor_address(value: bytes) -> tuple[str, int]:
    """Decode an IPv4 XOR-MAPPED-ADDRESS style value (RFC 8489 section 14.2)."""
    family, xored_port, xored_host = struct.unpack("!xBHI", value)
    assert family == 0x01, "expected an IPv4 address"
    host = struct.pack("!I", xored_host ^ MAGIC_COOKIE)
    return (socket.inet_ntoa(host), xored_port ^ (MAGIC_COOKIE >> 16))


def _plain_address(value: bytes) -> tuple[str, int]:
    """Decode an IPv4 MAPPED-ADDRESS style value, as used by OTHER-ADDRESS."""
    family, port, host = struct.unpack("!xBH4s", value)
    assert family == 0x01, "expected an IPv4 address"
    return (socket.inet_ntoa(host), port)


def _exchange(
    sock: socket.socket, request: bytes, destination: tuple[str, int]
) -> tuple[bytes, tuple[str, int]]:
    """Send C{request} and return the response with its transaction id, and its source."""
    sock.settimeout(RECEIVE_TIMEOUT)
    for _ in range(3):  # loopback does not drop, but a retransmission costs nothing
        sock.sendto(request, destination)
        try:
            while True:
                data, source = sock.recvfrom(2048)
                if data[8:20] == request[8:20]:
                    return data, source
        except TimeoutError:
            continue
    raise AssertionError(f"no response from {destination}")


@pytest.fixture
def client() -> Iterator[socket.socket]:
    """A UDP socket on loopback, playing the STUN client."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((PRIMARY_HOST, 0))
        yield sock


@pytest.fixture
def coturn_installed() -> None:
    """Skip (or fail, on CI) when coturn is missing."""
    require_tool("turnserver")


@pytest.mark.usefixtures("coturn_installed")
def test_stun_mode_reports_mapped_address(client: socket.socket) -> None:
    """A Binding response carries the client's own address as XOR-MAPPED-ADDRESS."""
    with running_coturn(CoturnMode.STUN) as server:
        assert server.address == (PRIMARY_HOST, server.port)
        assert server.alternate_address is None
        assert server.credentials is None
        response, source = _exchange(client, stun_binding_request(os.urandom(12)), server.address)
    assert source == server.address
    message_type, _, cookie = struct.unpack_from("!HHI", response)
    assert (message_type, cookie) == (BINDING_SUCCESS, MAGIC_COOKIE)
    assert _xor_address(_attributes(response)[XOR_MAPPED_ADDRESS]) == client.getsockname()


@pytest.mark.usefixtures("coturn_installed")
def test_rfc5780_mode_advertises_other_address(client: socket.socket) -> None:
    """Without CHANGE-REQUEST the answer comes from the primary address and names the other."""
    with running_coturn(CoturnMode.RFC5780) as server:
        assert server.alternate_address == (ALTERNATE_HOST, server.alternate_port)
        assert server.alternate_port != server.port
        response, source = _exchange(client, stun_binding_request(os.urandom(12)), server.address)
    attributes = _attributes(response)
    assert source == server.address
    assert _xor_address(attributes[XOR_MAPPED_ADDRESS]) == client.getsockname()
    assert _plain_address(attributes[OTHER_ADDRESS]) == server.alternate_address


@pytest.mark.usefixtures("coturn_installed")
@pytest.mark.parametrize(("change_ip", "change_port"), [(True, True), (True, False), (False, True)])
def test_rfc5780_mode_honours_change_request(
    client: socket.socket, change_ip: bool, change_port: bool
) -> None:
    """
    A CHANGE-REQUEST is answered from the alternate host and/or port, as flagged.

    The both-flags case is the one NAT filtering discovery depends on (RFC 5780 4.4).
    """
    with running_coturn(CoturnMode.RFC5780) as server:
        assert server.alternate_host is not None and server.alternate_port is not None
        expected_source = (
            server.alternate_host if change_ip else server.host,
            server.alternate_port if change_port else server.port,
        )
        request = stun_binding_request(os.urandom(12), change_ip=change_ip, change_port=change_port)
        response, source = _exchange(client, request, server.address)
    assert source == expected_source
    assert struct.unpack_from("!H", response)[0] == BINDING_SUCCESS
    assert _xor_address(_attributes(response)[XOR_MAPPED_ADDRESS]) == client.getsockname()


@pytest.mark.usefixtures("coturn_installed")
def test_turn_mode_requires_and_accepts_long_term_credentials(client: socket.socket) -> None:
    """
    An anonymous Allocate gets 401 with the configured realm; a signed retry gets a relay.

    The signed request follows RFC 8489 section 9.2: key = MD5(username:realm:password),
    MESSAGE-INTEGRITY = HMAC-SHA1 over the message with its length covering the MAC.
    """
    transport = _attribute(REQUESTED_TRANSPORT, bytes([UDP_TRANSPORT, 0, 0, 0]))
    with running_coturn(CoturnMode.TURN) as server:
        credentials = server.credentials
        assert credentials is not None
        anonymous = struct.pack("!HHI", ALLOCATE_REQUEST, len(transport), MAGIC_COOKIE)
        challenge, _ = _exchange(client, anonymous + os.urandom(12) + transport, server.address)
        assert struct.unpack_from("!H", challenge)[0] == ALLOCATE_ERROR
        challenge_attributes = _attributes(challenge)
        error_class, error_number = challenge_attributes[ERROR_CODE][2:4]
        assert error_class * 100 + error_number == 401
        assert challenge_attributes[REALM] == credentials.realm.encode()

        body = (
            _attribute(USERNAME, credentials.username.encode())
            + _attribute(REALM, credentials.realm.encode())
            + _attribute(NONCE, challenge_attributes[NONCE])
            + transport
        )
        header = struct.pack("!HHI", ALLOCATE_REQUEST, len(body) + 24, MAGIC_COOKIE)
        header += os.urandom(12)
        key = hashlib.md5(
            f"{credentials.username}:{credentials.realm}:{credentials.password}".encode()
        ).digest()
        mac = hmac.new(key, header + body, hashlib.sha1).digest()
        signed = header + body + _attribute(MESSAGE_INTEGRITY, mac)
        allocated, source = _exchange(client, signed, server.address)
    assert source == server.address
    assert struct.unpack_from("!H", allocated)[0] == ALLOCATE_SUCCESS
    allocated_attributes = _attributes(allocated)
    relayed_host, relayed_port = _xor_address(allocated_attributes[XOR_RELAYED_ADDRESS])
    assert relayed_host == PRIMARY_HOST and relayed_port > 0
    assert _xor_address(allocated_attributes[XOR_MAPPED_ADDRESS]) == client.getsockname()


@pytest.mark.usefixtures("coturn_installed")
@pytest.mark.parametrize("body_raises", [False, True])
def test_process_is_stopped_and_ports_released(body_raises: bool) -> None:
    """After the block, whether it returned or raised, coturn is gone and its ports free."""

    class BodyFailed(Exception):
        pass

    started: list[CoturnInstance] = []

    def use_server() -> None:
        with running_coturn(CoturnMode.RFC5780) as server:
            started.append(server)
            if body_raises:
                raise BodyFailed()

    if body_raises:
        with pytest.raises(BodyFailed):
            use_server()
    else:
        use_server()
    [server] = started
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    for address in server.listening_addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(address)


def test_require_tool_returns_path_of_installed_tool() -> None:
    """A tool that exists is found, with the same answer as L{find_tool}."""
    path = require_tool("sh")
    assert path == find_tool("sh")
    assert os.access(path, os.X_OK)


def test_require_tool_skips_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a developer machine a missing tool means: skip, and say what to install."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_tool("twisted-nat-no-such-tool")


def test_require_tool_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI=true a missing tool is a broken CI image, so the test must fail loudly."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_tool("twisted-nat-no-such-tool")
