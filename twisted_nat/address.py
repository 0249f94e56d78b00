"""
L{Address}, the one C{(host, port)} type of twisted-nat, and the parsing and
formatting of the C{HOST[:PORT]} strings users type, with one clear error.
"""

from __future__ import annotations

from twisted.internet.abstract import isIPAddress, isIPv6Address

from twisted_nat.errors import ConfigurationError

Address = tuple[str, int]
"""A UDP or TCP endpoint: an IP address (or, where allowed, a host name) and a port."""


def parse_port(text: str) -> int:
    """A port number, 0 to 65535, or L{ConfigurationError}."""
    try:
        port = int(text, 10)
    except ValueError:
        raise ConfigurationError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"port out of range 0-65535: {port}")
    return port


def parse_ip(text: str) -> str:
    """An IPv4 or IPv6 literal, or L{ConfigurationError}."""
    if isIPAddress(text) or isIPv6Address(text):
        return text
    raise ConfigurationError(f"not an IP address: {text!r}")


def parse_hostport(text: str, default_port: int | None = None) -> Address:
    """
    C{host:port}, C{[v6]:port}, a bare IPv6 literal, or a bare host when a
    C{default_port} is given.
    """
    text = text.strip()
    if not text:
        raise ConfigurationError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not isIPv6Address(host):
            raise ConfigurationError(f"bad bracketed IPv6 address: {text!r}")
        if rest.startswith(":"):
            return host, parse_port(rest[1:])
        if rest:
            raise ConfigurationError(f"unexpected text after address: {text!r}")
    elif text.count(":") > 1:
        host, rest = text, ""
        if not isIPv6Address(host):
            raise ConfigurationError(f"not an address: {text!r}")
    else:
        host, sep, port_text = text.partition(":")
        if sep:
            if not host:
                raise ConfigurationError(f"missing host in {text!r}")
            return host, parse_port(port_text)
    if default_port is None:
        raise ConfigurationError(f"missing port in {text!r}")
    return host, default_port


def family_of(host: str) -> int:
    """4 or 6: the family of an IP literal (a host name counts as IPv4, as it is resolved so)."""
    return 6 if ":" in host else 4


def format_address(address: Address) -> str:
    """C{host:port}, with an IPv6 host in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
