"""
Endpoint strings for peer streams, so that C{clientFromString} and
C{serverFromString} reach peers as they reach TCP hosts:

    published = publish(service)
    endpoint = clientFromString(reactor, "peer:bob")
    server = serverFromString(reactor, "peer")
    ...
    published.withdraw()

A string names a peer, not the service to reach it through, so services
are published here under their own names (one registry, in this module):
C{peer:bob} goes through the only one published, C{peer:bob:via=alice}
through the one called alice.  The plugin in C{twisted/plugins} is one line.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import (
    IReactorCore,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_nat.errors import ConfigurationError
from twisted_nat.streams.endpoints import PeerEndpoint, PeerServerEndpoint, StreamService

_published: dict[str, StreamService] = {}


@attrs.frozen
class Published:
    """A service's place in the endpoint strings, until L{withdraw}."""

    name: str
    service: StreamService

    def withdraw(self) -> None:
        if _published.get(self.name) is self.service:
            del _published[self.name]


def publish(service: StreamService, name: str | None = None) -> Published:
    """
    Let endpoint strings reach peers through C{service}, under C{name}
    (the service's own peer name when not given).
    """
    name = name or getattr(service, "peer_name", None)
    if not name:
        raise ConfigurationError("publish a service under a name")
    if name in _published and _published[name] is not service:
        raise ConfigurationError(f"another service is published as {name!r}")
    _published[name] = service
    return Published(name, service)


def _service(via: str | None) -> StreamService:
    if via is not None:
        try:
            return _published[via]
        except KeyError:
            raise ConfigurationError(f"no service published as {via!r}") from None
    if len(_published) != 1:
        names = ", ".join(sorted(_published)) or "none"
        raise ConfigurationError(f"say which service with via=NAME (published: {names})")
    [service] = _published.values()
    return service


@implementer(
    IPlugin, IStreamClientEndpointStringParserWithReactor, IStreamServerEndpointStringParser
)
class PeerEndpointParser:
    """C{peer:NAME[:via=OURS]} for clients, C{peer[:via=OURS]} for servers."""

    prefix = "peer"

    def parseStreamClient(
        self, reactor: IReactorCore, *args: object, **kwargs: object
    ) -> IStreamClientEndpoint:
        via = kwargs.pop("via", None)
        if len(args) != 1 or kwargs:
            raise ValueError("a peer endpoint is peer:NAME or peer:NAME:via=OUR_NAME")
        return PeerEndpoint(_service(_text(via)), str(args[0]))

    def parseStreamServer(
        self, reactor: IReactorCore, *args: object, **kwargs: object
    ) -> IStreamServerEndpoint:
        via = kwargs.pop("via", None)
        if args or kwargs:
            raise ValueError("a peer server endpoint is peer or peer:via=OUR_NAME")
        return PeerServerEndpoint(_service(_text(via)))


def _text(value: object) -> str | None:
    return None if value is None else str(value)
