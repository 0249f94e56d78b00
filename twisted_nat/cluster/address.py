"""
Where the Redis server the rendezvous nodes share is: C{--redis} as a
Twisted client endpoint string (C{tcp:127.0.0.1:6379}, C{unix:/run/redis.sock},
C{tls:redis.example.net:6380}) or a C{redis://HOST[:PORT][/DB]} URL
(C{rediss://} for TLS).  Pure parsing, so that a bad setting is refused
before anything starts.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from twisted_nat.errors import ConfigurationError

DEFAULT_REDIS_PORT = 6379
MAX_DATABASE = 15
"""Redis's databases are 0 to 15 unless configured otherwise."""


@attrs.frozen
class RedisAddress:
    """
    A Redis server to connect to.

    @ivar endpoint: a Twisted client endpoint string.
    @ivar database: the database number to select (0 is Redis's default).
    @ivar text: what the operator wrote, for log lines and the status.
    """

    endpoint: str
    database: int = 0
    text: str = ""


def _escape(host: str) -> str:
    """A host as an endpoint string's value: its colons (IPv6) escaped."""
    return host.replace("\\", "\\\\").replace(":", "\\:")


def parse_redis_address(text: str) -> RedisAddress:
    """
    C{--redis}'s value as a L{RedisAddress}.

    @raise ConfigurationError: for a URL with a password (it would be seen
        in the process list), a bad port or database, or an empty value.
    """
    text = text.strip()
    if not text:
        raise ConfigurationError("--redis needs an endpoint or a redis:// URL")
    if not text.startswith(("redis://", "rediss://")):
        return RedisAddress(text, 0, text)
    try:
        url = urlsplit(text)
        port = url.port or DEFAULT_REDIS_PORT
    except ValueError as e:
        raise ConfigurationError(f"bad Redis URL {text!r}: {e}") from None
    if url.username or url.password:
        raise ConfigurationError(
            f"bad Redis URL {text!r}: a password on the command line is readable by "
            "anyone who can list processes; use a Redis that needs none on a private "
            "network or socket"
        )
    host = url.hostname
    if not host:
        raise ConfigurationError(f"bad Redis URL {text!r}: no host")
    if url.query or url.fragment:
        raise ConfigurationError(f"bad Redis URL {text!r}: options are not supported")
    path = url.path.strip("/")
    try:
        database = int(path, 10) if path else 0
    except ValueError:
        raise ConfigurationError(f"bad Redis URL {text!r}: the database is a number") from None
    if not 0 <= database <= MAX_DATABASE:
        raise ConfigurationError(f"bad Redis URL {text!r}: databases are 0 to {MAX_DATABASE}")
    kind = "tls" if url.scheme == "rediss" else "tcp"
    return RedisAddress(f"{kind}:host={_escape(host)}:port={port}", database, text)
