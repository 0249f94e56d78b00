"""Name resolution for STUN servers given by host name, without blocking."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IAddress, IResolutionReceiver
from zope.interface import implementer

Resolver = Callable[[str], "Deferred[str]"]
"""A host name in, a Deferred firing with one of its addresses out."""


def resolve_with_reactor(reactor: object, host: str, ipv6: bool) -> Deferred[str]:
    """
    Resolve C{host} through C{reactor}'s C{nameResolver} (threaded, never
    blocking the reactor) to its first address of the family asked for.
    """
    name_resolver = getattr(reactor, "nameResolver", None)
    if name_resolver is None:
        return defer.fail(DNSLookupError(f"cannot resolve {host!r}: reactor has no resolver"))
    receiver = _FirstAddress(host)
    name_resolver.resolveHostName(
        receiver,
        host,
        0,
        addressTypes=[IPv6Address if ipv6 else IPv4Address],
        transportSemantics="UDP",
    )
    return receiver.deferred


@implementer(IResolutionReceiver)
class _FirstAddress:
    """Collects a host name's resolution and fires with its first address."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.deferred: Deferred[str] = Deferred()
        self._found: list[str] = []

    def resolutionBegan(self, resolutionInProgress: object) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, IPv4Address | IPv6Address):
            self._found.append(address.host)

    def resolutionComplete(self) -> None:
        if self._found:
            self.deferred.callback(self._found[0])
        else:
            self.deferred.errback(DNSLookupError(f"{self.host!r} has no address"))
