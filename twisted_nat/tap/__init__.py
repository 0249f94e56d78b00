"""
C{twistd nat}: options and service construction for the twistd plugin.

    twistd -n nat                       a whole demonstration on loopback: an
                                        RFC 5780 STUN server, a rendezvous
                                        server, and two peers that connect
    twistd -n nat server [options]      STUN server (+ rendezvous server)
    twistd -n nat peer --name NAME --rendezvous ENDPOINT [--stun HOST:PORT ...]
                       [--connect PEER ...] [--status ENDPOINT]
                       [--turn URI ... --turn-user NAME [--turn-password PASSWORD]]
                       [--birthday-sockets N] [--birthday-probes N]
                       [--birthday-rate R] [--meeting-sockets N]

A bad setting, or a socket that cannot be bound, ends the process with one
line on stderr and exit status 1, never a traceback.

The plugin names this package as the module with L{Options} and
L{makeService}.
"""

from twisted_nat.tap.make import demo_service, makeService
from twisted_nat.tap.options import (
    DEFAULT_ADDRESS,
    DEFAULT_ALTERNATE_ADDRESS,
    DEFAULT_ALTERNATE_PORT,
    DEFAULT_PORT,
    DEFAULT_RENDEZVOUS,
    DemoOptions,
    Options,
    PeerOptions,
    ServerOptions,
)
from twisted_nat.tap.services import ExitOnListenFailure, Greeter, STUNServerService
from twisted_nat.tap.turn import TURN_PASSWORD_ENVIRONMENT

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_ALTERNATE_ADDRESS",
    "DEFAULT_ALTERNATE_PORT",
    "DEFAULT_PORT",
    "DEFAULT_RENDEZVOUS",
    "TURN_PASSWORD_ENVIRONMENT",
    "DemoOptions",
    "ExitOnListenFailure",
    "Greeter",
    "Options",
    "PeerOptions",
    "STUNServerService",
    "ServerOptions",
    "demo_service",
    "makeService",
]
