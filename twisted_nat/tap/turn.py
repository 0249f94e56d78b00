"""
The C{--turn} options of C{twistd nat peer} and of C{twisted-nat send} and
C{receive}: RFC 7065 URIs sharing one user name and password.
"""

from __future__ import annotations

import os

from twisted.python import usage

from twisted_nat.errors import ConfigurationError
from twisted_nat.turn.uri import TURNServer, parse_turn_uri

TURN_PASSWORD_ENVIRONMENT = "TWISTED_NAT_TURN_PASSWORD"


def turn_servers(uris: list[str], user: str | None, password: str | None) -> list[TURNServer]:
    """
    The --turn URIs with their credentials (the password from the
    environment when not given).  A user name or password without any
    --turn is refused too: it is most likely a --turn that was lost on the
    way, and running without a relay would go unnoticed.
    """
    if not uris:
        if user is not None or password is not None:
            raise usage.UsageError("--turn-user and --turn-password need a --turn URI")
        return []
    if password is None:
        password = os.environ.get(TURN_PASSWORD_ENVIRONMENT)
    if not user:
        raise usage.UsageError("--turn needs --turn-user")
    if not password:
        raise usage.UsageError(
            f"--turn needs --turn-password or {TURN_PASSWORD_ENVIRONMENT} in the environment"
        )
    servers: list[TURNServer] = []
    for uri in uris:
        try:
            server = parse_turn_uri(uri, user, password)
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        if server in servers:
            raise usage.UsageError(f"TURN server {server.uri()} is given twice")
        servers.append(server)
    return servers
