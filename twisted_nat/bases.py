"""
Bases: the local transports our datagrams to a peer can leave from.

A base is the shared socket, an extra socket (the birthday method's or a
meeting run's), or a TURN allocation's relayed address.  A punch pairs
bases with the peer's candidates, a connection's path leaves from one,
and whatever arrives on one is answered on it, as ICE answers on a
candidate's base.  L{BaseRegistry} is the one place that knows which
bases exist: the puncher, the keep-alive and the data router listen on
it, so a base added or removed there is added or removed for all three.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

import attrs
from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat.address import Address, family_of, format_address
from twisted_nat.errors import ConfigurationError, TwistedNATError
from twisted_nat.mux import UDPMultiplexer


class BaseKind(enum.Enum):
    SHARED = "shared socket"
    EXTRA = "extra socket"
    RELAY = "relay"


@attrs.frozen(eq=False, repr=False)
class Base:
    """
    One local transport.  Two bases are equal only if they are the same
    object: a socket or an allocation that closed and another that opened
    on the same port are different bases.
    """

    kind: BaseKind
    label: str
    family: int = 4
    """The address family (4 or 6) of the addresses it sends to: pairs form within a family."""

    @property
    def relayed(self) -> bool:
        """Whether what leaves from this base goes through a TURN server."""
        return self.kind is BaseKind.RELAY

    def __str__(self) -> str:
        return self.label

    def __repr__(self) -> str:
        return f"<Base {self.label}>"


SHARED = Base(BaseKind.SHARED, "the shared socket")
"""The socket whose NAT binding the public address belongs to: every service has one."""

SHARED6 = Base(BaseKind.SHARED, "the shared IPv6 socket", 6)
"""
The IPv6 socket of a service that has one: IPv6's shared socket, as
L{SHARED} is IPv4's.  It is added to a registry as any other base, and its
multiplexer carries its own STUN client.
"""


def shared_base(family: int) -> Base:
    """The shared socket of C{family}."""
    return SHARED6 if family == 6 else SHARED


def extra_base(method: str, port: int) -> Base:
    """An extra socket of the punch technique C{method}, named by its local port."""
    return Base(BaseKind.EXTRA, f"{method} {port}")


def relay_base(relayed: Address) -> Base:
    """A TURN allocation, named by its relayed address (of its family)."""
    return Base(BaseKind.RELAY, f"relay {format_address(relayed)}", family_of(relayed[0]))


Received = Callable[[bytes, Address, Base], None]
Route = Callable[[UDPMultiplexer, DatagramProtocol], object]


@attrs.frozen
class _Listener:
    received: Received
    route: Route


class _Receiver(DatagramProtocol):
    """A listener's protocol on one base's multiplexer: it says which base a datagram came by."""

    noisy = False

    def __init__(self, received: Received, base: Base) -> None:
        self._received = received
        self._base = base

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        self._received(datagram, addr, self._base)


class BaseRegistry:
    """
    The bases of one service and who hears what arrives on them.

    A listener (L{listen}) names what it wants routed to it on a base's
    multiplexer (STUN methods, first bytes) and gets every such datagram
    with the base it came by; L{send} sends from a base.  The shared
    socket is registered by L{share}: its listeners sit on its multiplexer
    themselves, as its ordinary protocols.
    """

    log = Logger()

    def __init__(self) -> None:
        self._writers: dict[Base, UDPMultiplexer] = {}
        self._listeners: list[_Listener] = []

    def listen(self, received: Received, route: Route) -> None:
        """
        Hear what arrives on every other base, now and later: C{route} is
        called with a base's multiplexer and the protocol to put on it.
        """
        listener = _Listener(received, route)
        self._listeners.append(listener)
        for base, mux in self._writers.items():
            if base is not SHARED:
                route(mux, _Receiver(received, base))

    def share(self, mux: UDPMultiplexer) -> None:
        """The shared socket's multiplexer (the same one may be given again)."""
        present = self._writers.get(SHARED)
        if present is not None and present is not mux:
            raise ConfigurationError("this service has a shared socket already")
        self._writers[SHARED] = mux

    def add(self, base: Base, mux: UDPMultiplexer) -> None:
        """Send and receive on C{base} too, through its multiplexer."""
        if base is SHARED or base in self._writers:
            raise ConfigurationError(f"{base} is a base already")
        self._writers[base] = mux
        for listener in self._listeners:
            listener.route(mux, _Receiver(listener.received, base))

    def remove(self, base: Base) -> None:
        """Stop using C{base} (its socket or allocation closed); what it carried falls silent."""
        if base is not SHARED:
            self._writers.pop(base, None)

    def send(self, data: bytes, to: Address, base: Base) -> bool:
        """
        Send C{data} from C{base}.  A base that is gone, a relay that
        cannot send there (no permission yet), or a socket that refuses the
        address (another family, a full buffer) loses the datagram as a
        network would: logged, and False returned for the caller to count.
        """
        transport = self._writers.get(base)
        if transport is None:
            self.log.debug("no base {base} to send to {to} from", base=base, to=to)
            return False
        try:
            transport.write(data, to)
        except (TwistedNATError, InvalidAddressError, MessageLengthError, OSError) as e:
            self.log.debug("could not send to {to} via {base}: {error}", to=to, base=base, error=e)
            return False
        return True

    def transport_of(self, base: Base) -> object | None:
        """The transport under C{base}'s multiplexer (a UDP port, or a relay's), if any."""
        mux = self._writers.get(base)
        return None if mux is None else mux.transport

    def __contains__(self, base: object) -> bool:
        return base in self._writers

    def bases(self) -> Iterable[Base]:
        return self._writers.keys()

    def relays(self) -> list[Base]:
        """The relayed bases, in the order of their labels."""
        return sorted((b for b in self._writers if b.relayed), key=str)
