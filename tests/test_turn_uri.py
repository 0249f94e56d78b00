"""TURN server URIs (RFC 7065): parsing, defaults, errors, and the endpoint strings."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from twisted_nat.errors import ConfigurationError
from twisted_nat.turn import TURNServer, parse_turn_uri

USER = "alice"
PASSWORD = "pw-Zq7!x"


def server(host: str, port: int, transport: str, secure: bool, username: str = USER) -> TURNServer:
    return TURNServer(host, port, transport, secure, username, PASSWORD)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("turn:turn.example.net", server("turn.example.net", 3478, "udp", False)),
        ("turns:turn.example.net", server("turn.example.net", 5349, "tcp", True)),
        ("turn:192.0.2.1:3479", server("192.0.2.1", 3479, "udp", False)),
        ("turn:192.0.2.1?transport=tcp", server("192.0.2.1", 3478, "tcp", False)),
        ("turn:[2001:db8::1]", server("2001:db8::1", 3478, "udp", False)),
        ("turns:[2001:db8::1]:443", server("2001:db8::1", 443, "tcp", True)),
        ("turns:t.example.net:443?transport=tcp", server("t.example.net", 443, "tcp", True)),
        # Scheme, host, parameter and transport are case-insensitive, and
        # two spellings of one server are one value.
        ("TURN:Turn.Example.NET?TRANSPORT=TCP", server("turn.example.net", 3478, "tcp", False)),
        ("Turns:[2001:DB8:0::0:1]", server("2001:db8::1", 5349, "tcp", True)),
        # RFC 3986: an empty port means the scheme's default.
        ("turn:turn.example.net:", server("turn.example.net", 3478, "udp", False)),
        ("  turn:localhost\n", server("localhost", 3478, "udp", False)),
        ("turn:example.net.", server("example.net.", 3478, "udp", False)),
    ],
)
def test_parse(uri, expected):
    assert parse_turn_uri(uri, USER, PASSWORD) == expected


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("stun:turn.example.net", "the scheme must be turn: or turns:"),
        ("turn.example.net", "the scheme must be turn: or turns:"),
        ("", "the scheme must be turn: or turns:"),
        ("turn://turn.example.net", "without '//'"),
        ("turns:turn.example.net?transport=udp", "DTLS"),
        ("turn:turn.example.net?transport=sctp", "unknown transport 'sctp'"),
        ("turn:turn.example.net?transport=", "unknown transport ''"),
        ("turn:turn.example.net?foo=bar", "the only query parameter is transport"),
        ("turn:turn.example.net?transport", "the only query parameter is transport"),
        ("turn:turn.example.net?", "the only query parameter is transport"),
        ("turn:turn.example.net?transport=udp&x=1", "only one query parameter"),
        ("turn:turn.example.net#x", "no fragment"),
        ("turn:", "the host is missing"),
        ("turn::3478", "the host is missing"),
        ("turn:turn_1.example.net", "not a valid host name"),
        ("turn:-turn.example.net", "not a valid host name"),
        ("turn:turn..example.net", "not a valid host name"),
        ("turn:" + "a" * 64 + ".net", "not a valid host name"),
        ("turn:" + "a." * 127 + "net", "not a valid host name"),
        ("turn:t%C3%A9.example.net", "not a valid host name"),
        ("turn:1.2.3", "must be an IPv4 address"),
        ("turn:256.1.1.1", "must be an IPv4 address"),
        ("turn:2001:db8::1", "must be in brackets"),
        ("turn:[2001:db8::1", "closing ']'"),
        ("turn:[example.net]", "not an IPv6 address"),
        ("turn:[fe80::1%25eth0]", "zone identifiers"),
        ("turn:[::1]3478", "only ':port' may follow"),
        ("turn:0.0.0.0", "unicast"),
        ("turn:[::]", "unicast"),
        ("turn:224.0.0.1", "unicast"),
        ("turn:[ff02::1]", "unicast"),
        ("turn:turn.example.net:x", "the port is not a number"),
        ("turn:turn.example.net:-1", "the port is not a number"),
        ("turn:turn.example.net:\u0663", "the port is not a number"),  # an Arabic-Indic 3
        ("turn:turn.example.net:0", "out of range"),
        ("turn:turn.example.net:65536", "out of range"),
        ("turn:bob@turn.example.net", "given separately"),
    ],
)
def test_bad_uri_is_one_clear_error(uri, reason):
    with pytest.raises(ConfigurationError) as raised:
        parse_turn_uri(uri, USER, PASSWORD)
    message = str(raised.value)
    assert message.startswith("bad TURN URI ")
    if len(uri) < 100 and "@" not in uri:  # longer ones are shortened, userinfo hidden
        assert message.startswith(f"bad TURN URI {uri.strip()!r}: ")
    assert reason in message
    assert "\n" not in message


@pytest.mark.parametrize(("username", "password"), [("", PASSWORD), (USER, "")])
def test_empty_credentials_are_refused(username, password):
    with pytest.raises(ConfigurationError, match="empty") as raised:
        parse_turn_uri("turn:turn.example.net", username, password)
    assert "turn:turn.example.net" in str(raised.value)


def test_errors_never_show_a_password_from_the_uri():
    """A pasted C{user:password@host} must not end up in a log or on a terminal."""
    for uri in ["turn:bob:hunter2@example.net", "turn://bob:hunter2@example.net:99999"]:
        with pytest.raises(ConfigurationError) as raised:
            parse_turn_uri(uri, USER, PASSWORD)
        assert "hunter2" not in str(raised.value)
        assert "example.net" in str(raised.value)


def test_long_garbage_is_shortened_in_the_message():
    with pytest.raises(ConfigurationError) as raised:
        parse_turn_uri("turn:" + "x" * 5000, USER, PASSWORD)
    assert len(str(raised.value)) < 200


def test_password_is_not_in_the_repr():
    value = parse_turn_uri("turn:turn.example.net", USER, PASSWORD)
    assert PASSWORD not in repr(value)
    assert value.password == PASSWORD


@pytest.mark.parametrize(
    ("uri", "endpoint"),
    [
        ("turn:turn.example.net?transport=tcp", "tcp:host=turn.example.net:port=3478"),
        ("turns:turn.example.net", "tls:host=turn.example.net:port=5349"),
        ("turns:192.0.2.1:443", "tls:host=192.0.2.1:port=443"),
        ("turn:[2001:db8::1]?transport=tcp", r"tcp:host=2001\:db8\:\:1:port=3478"),
        (
            "turns:[::1]",
            r"tls:host=\:\:1:port=5349:endpoint=tcp\:host\=\\\:\\\:1\:port\=5349",
        ),
    ],
)
def test_endpoint_strings(uri, endpoint):
    assert parse_turn_uri(uri, USER, PASSWORD).endpoint() == endpoint


def test_udp_has_no_endpoint():
    with pytest.raises(ValueError, match="UDP"):
        parse_turn_uri("turn:turn.example.net", USER, PASSWORD).endpoint()


@pytest.mark.parametrize(
    ("uri", "text"),
    [
        ("turn:turn.example.net", "turn:turn.example.net:3478?transport=udp"),
        ("TURNS:[2001:db8:0::1]:443", "turns:[2001:db8::1]:443?transport=tcp"),
    ],
)
def test_uri_spells_everything_out(uri, text):
    assert parse_turn_uri(uri, USER, PASSWORD).uri() == text


def test_constructor_refuses_what_uri_cannot_say():
    with pytest.raises(ValueError, match="tcp"):
        TURNServer("turn.example.net", 5349, "udp", True, USER, PASSWORD)
    with pytest.raises(ValueError):
        TURNServer("turn.example.net", 3478, "sctp", False, USER, PASSWORD)


def test_values_are_frozen():
    value = parse_turn_uri("turn:turn.example.net", USER, PASSWORD)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        value.port = 1  # type: ignore[misc]


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hostnames = (
    st.lists(label, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda name: not name.replace(".", "").isdigit())
)
ip_literals = (
    st.ip_addresses().filter(lambda ip: not (ip.is_unspecified or ip.is_multicast)).map(str)
)


@st.composite
def servers(draw: st.DrawFn, hosts: st.SearchStrategy[str] = hostnames | ip_literals) -> TURNServer:
    secure = draw(st.booleans())
    return TURNServer(
        host=draw(hosts),
        port=draw(st.integers(1, 65535)),
        transport="tcp" if secure else draw(st.sampled_from(["udp", "tcp"])),
        secure=secure,
        username=draw(st.text(min_size=1)),
        password=draw(st.text(min_size=1)),
    )


@settings(max_examples=300, deadline=None)
@given(servers())
def test_uri_round_trips(value):
    assert parse_turn_uri(value.uri(), value.username, value.password) == value


@settings(max_examples=300, deadline=None)
@given(value=servers(), upper=st.booleans(), defaults=st.booleans())
def test_other_spellings_parse_to_the_same_value(value, upper, defaults):
    """Upper case, and the defaults left out, change nothing."""
    text = value.uri()
    if defaults:
        default_port = 5349 if value.secure else 3478
        default_transport = "tcp" if value.secure else "udp"
        if value.port == default_port:
            text = text.replace(f":{default_port}?", "?")
        if value.transport == default_transport:
            text = text.partition("?")[0]
    if upper:
        text = text.upper()
    assert parse_turn_uri(text, value.username, value.password) == value


@implementer(IHostResolution)
@attrs.frozen
class Resolution:
    name: str

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class LiteralResolver:
    """Resolves an IP literal to itself, as a real resolver does, without a thread."""

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: object = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        kind = IPv6Address if ":" in hostName else IPv4Address
        resolutionReceiver.addressResolved(kind("TCP", hostName, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@settings(max_examples=200, deadline=None)
@given(servers(hosts=ip_literals).filter(lambda value: value.transport == "tcp"))
def test_endpoint_connects_to_the_address(value):
    """Twisted reads the endpoint string back to the server's address, over TLS for turns:."""
    reactor = MemoryReactorClock()
    reactor.nameResolver = LiteralResolver()  # its own resolves everything to 127.0.0.1
    clientFromString(reactor, value.endpoint()).connect(Factory.forProtocol(Protocol))
    [(host, port, factory, _, _)] = reactor.tcpClients
    assert (host, port) == (value.host, value.port)
    # What goes out first on the new connection: a TLS ClientHello, or nothing.
    transport = StringTransport()
    factory.buildProtocol(transport.getPeer()).makeConnection(transport)
    assert transport.value().startswith(b"\x16\x03") == value.secure


uri_pieces = st.sampled_from(
    ["turn:", "turns:", "TURN:", "[", "]", ":", "::1", "?", "transport=", "udp", "tcp", "&",
     "#", "@", "%25", "//", ".", "-", "example", "net", "1", "256", "3478", "0", " ", "\n"]
)  # fmt: skip
near_uris = st.lists(uri_pieces, max_size=12).map("".join)


@settings(max_examples=1000, deadline=None)
@given(uri=st.text() | near_uris, username=st.text(max_size=3), password=st.text(max_size=3))
def test_garbage_raises_only_configuration_errors(uri, username, password):
    secret = "S3cret!" + password  # never in a message, whatever the URI
    try:
        value = parse_turn_uri(uri, username, secret)
    except ConfigurationError as e:
        assert "\n" not in str(e)
        assert secret not in str(e)
    else:
        assert parse_turn_uri(value.uri(), username, secret) == value
