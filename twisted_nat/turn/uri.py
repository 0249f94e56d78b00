"""
TURN servers as RFC 7065 URIs: C{turn:host[:port][?transport=udp|tcp]} and
C{turns:host[:port][?transport=tcp]}.

This is how TURN servers are written everywhere else (WebRTC's
C{RTCIceServer}, coturn's documentation, every ICE library), so an operator
can paste the URI their provider gave them.  A URI carries no credentials:
RFC 7065 leaves the user name and password out of it, and so do we, which
keeps the secret out of logs and status pages that show the URI.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from twisted_nat.address import Address
from twisted_nat.errors import ConfigurationError

DEFAULT_TURN_PORT = 3478
"""Default port of C{turn:} URIs (RFC 8656 section 3)."""

DEFAULT_TURNS_PORT = 5349
"""Default port of C{turns:} URIs, TURN over TLS (RFC 8656 section 3)."""

_TRANSPORTS = ("udp", "tcp")

# One RFC 1123 label: letters, digits and inner hyphens.  Underscores and
# other reg-name characters are refused: a TLS client cannot put them in SNI
# or match them against a certificate, and no TURN server needs them.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z", re.ASCII)
_DIGITS = re.compile(r"[0-9]+\Z", re.ASCII)
# Longest message excerpt of a bad URI: enough to recognise it, short enough
# that a pasted blob cannot flood the one-line error.
_SHOWN = 100


@attrs.frozen
class TURNServer:
    """
    A TURN server to allocate on, with its long-term credential.

    A value, not a connection: the service decides when to allocate and over
    which socket.  Build it with L{parse_turn_uri}, which checks everything;
    the constructor checks only what would make L{uri} lie.
    """

    host: str
    port: int
    transport: str = attrs.field(validator=attrs.validators.in_(_TRANSPORTS))
    secure: bool
    username: str
    password: str = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if self.secure and self.transport != "tcp":
            # turns: over UDP would be DTLS (RFC 7350), which there is no code for.
            raise ValueError("a secure (turns:) TURN server needs transport 'tcp'")

    def endpoint(self) -> str:
        """
        The Twisted client endpoint string that reaches this server over a
        stream, C{tcp:host=...:port=...} or C{tls:host=...:port=...}, for
        L{twisted_nat.turn.connect_stream}.

        An IPv6 host has its colons backslash-escaped, as endpoint strings
        require.  For C{turns:} on an IPv6 literal the TLS layer is given an
        explicit inner C{tcp:} endpoint, because Twisted's C{tls:} parser
        would otherwise try to IDNA-encode the address as a host name.

        @raise ValueError: the transport is UDP, which has no stream endpoint:
            UDP allocations are made from the shared socket instead.
        """
        if self.transport != "tcp":
            raise ValueError(f"{self.uri()} is a UDP TURN server; it has no stream endpoint")
        host = _escape(self.host)
        tcp = f"tcp:host={host}:port={self.port}"
        if not self.secure:
            return tcp
        if ":" in self.host:
            return f"tls:host={host}:port={self.port}:endpoint={_escape(tcp)}"
        return f"tls:host={host}:port={self.port}"

    def uri(self) -> str:
        """
        The RFC 7065 URI of this server, without credentials, for logs and
        status.  Port and transport are always spelt out so that a reader
        does not have to know the defaults; L{parse_turn_uri} reads it back
        to an equal value.
        """
        scheme = "turns" if self.secure else "turn"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}:{host}:{self.port}?transport={self.transport}"


def parse_turn_uri(uri: str, username: str, password: str) -> TURNServer:
    """
    Parse C{turn:host[:port][?transport=udp|tcp]} or
    C{turns:host[:port][?transport=tcp]} (RFC 7065) into a L{TURNServer}
    holding C{username} and C{password}.

    The host is a DNS name, an IPv4 address, or an IPv6 address in brackets;
    names and addresses are normalised (lower case, compressed IPv6) so that
    two spellings of one server compare equal.  The port defaults to 3478
    for C{turn:} and 5349 for C{turns:}; the transport to UDP for C{turn:}
    and TCP for C{turns:}.

    @raise ConfigurationError: the URI is not one of those, asks for
        something unsupported (DTLS: C{turns:} over UDP), or a credential
        is empty.  The message names the URI but never the password.
    """
    text = uri.strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("turn", "turns"):
        raise _bad(uri, "the scheme must be turn: or turns:")
    secure = scheme == "turns"
    if rest.startswith("//"):
        raise _bad(uri, f"write {scheme}:host[:port], without '//' (RFC 7065)")
    authority, question, query = rest.partition("?")
    if "#" in authority or "#" in query:
        raise _bad(uri, "a TURN URI has no fragment ('#')")
    if "@" in authority:
        raise _bad(uri, "the user name and password are given separately, not in the URI")
    host, port = _authority(uri, authority, DEFAULT_TURNS_PORT if secure else DEFAULT_TURN_PORT)
    transport = _transport(uri, query) if question else ("tcp" if secure else "udp")
    if secure and transport == "udp":
        raise _bad(uri, "turns: over UDP is DTLS, which is not supported; use transport=tcp")
    if not username:
        raise _bad(uri, "the TURN user name is empty")
    if not password:
        raise _bad(uri, "the TURN password is empty")
    return TURNServer(
        host=host,
        port=port,
        transport=transport,
        secure=secure,
        username=username,
        password=password,
    )


def _authority(uri: str, authority: str, default_port: int) -> Address:
    """The host and port of C{host[:port]}, with IPv6 in brackets."""
    if authority.startswith("["):
        literal, bracket, after = authority[1:].partition("]")
        if not bracket:
            raise _bad(uri, "an IPv6 address needs its closing ']'")
        host = _ipv6(uri, literal)
        if after and not after.startswith(":"):
            raise _bad(uri, "only ':port' may follow the IPv6 address")
        port_text = after[1:] if after else None
    else:
        if authority.count(":") > 1:
            raise _bad(uri, "an IPv6 address must be in brackets, like turn:[2001:db8::1]")
        name, colon, after = authority.partition(":")
        host = _hostname(uri, name)
        port_text = after if colon else None
    # RFC 3986 allows an empty port after ':' and means the default by it.
    return host, _port(uri, port_text) if port_text else default_port


def _ipv6(uri: str, literal: str) -> str:
    if "%" in literal:
        raise _bad(uri, "IPv6 zone identifiers are not supported")
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError:
        raise _bad(uri, "not an IPv6 address in the brackets") from None
    _check_unicast(uri, address)
    return address.compressed


def _hostname(uri: str, name: str) -> str:
    if not name:
        raise _bad(uri, "the host is missing")
    name = name.lower()
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if all(_DIGITS.match(label) for label in labels):
        # All-numeric is an IPv4 address or a mistake, never a name (RFC 1123 2.1).
        try:
            address = ipaddress.IPv4Address(name)
        except ValueError:
            raise _bad(uri, "an all-numeric host must be an IPv4 address") from None
        _check_unicast(uri, address)
        return str(address)
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _bad(uri, "the host is not a valid host name")
    return name


def _check_unicast(uri: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """
    Refuse addresses no server can have: connecting to 0.0.0.0 or :: quietly
    reaches this host instead, and a multicast group cannot answer.
    """
    if address.is_unspecified or address.is_multicast:
        raise _bad(uri, "the host must be a unicast address")


def _port(uri: str, text: str) -> int:
    if not _DIGITS.match(text):
        raise _bad(uri, "the port is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _bad(uri, "the port is out of range 1-65535")
    return port


def _transport(uri: str, query: str) -> str:
    """The transport of the query; RFC 7065 defines no other parameter."""
    if "&" in query:
        raise _bad(uri, "only one query parameter, transport, is allowed")
    key, equals, value = query.partition("=")
    if key.lower() != "transport" or not equals:
        raise _bad(uri, "the only query parameter is transport (?transport=udp or tcp)")
    value = value.lower()
    if value not in _TRANSPORTS:
        raise _bad(uri, f"unknown transport {value[:20]!r}; only udp or tcp")
    return value


def _escape(text: str) -> str:
    """Quote C{text} as one value of a Twisted endpoint string."""
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _bad(uri: str, reason: str) -> ConfigurationError:
    """
    The one error for a bad URI, naming it (shortened, and without any
    userinfo, which could be somebody's password) so the operator can see
    which of several --turn options is wrong.
    """
    shown = uri.strip()
    scheme, colon, rest = shown.partition(":")
    if "@" in rest:
        shown = f"{scheme}{colon}...@{rest.rpartition('@')[2]}"
    if len(shown) > _SHOWN:
        shown = shown[:_SHOWN] + "..."
    return ConfigurationError(f"bad TURN URI {shown!r}: {reason}")
