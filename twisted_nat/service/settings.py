"""
How a peer is configured, as values: one frozen object a service is built
with, rather than a constructor of many loose arguments.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from twisted_nat.errors import ConfigurationError
from twisted_nat.keepalive.freshness import CheckSettings
from twisted_nat.limits import positive
from twisted_nat.portmap import DEFAULT_LIFETIME, Mode
from twisted_nat.punch import PunchSettings, SymmetricSettings
from twisted_nat.service.gate import GateSettings
from twisted_nat.sockbuf import RECEIVE_BUFFER
from twisted_nat.streams.settings import StreamSettings
from twisted_nat.trust.target import Target
from twisted_nat.turn import TURNServer


def _servers(servers: Iterable[TURNServer]) -> tuple[TURNServer, ...]:
    return tuple(servers)


def _targets(targets: Iterable[str | Target]) -> tuple[Target, ...]:
    try:
        return tuple(t if isinstance(t, Target) else Target.parse(t) for t in targets)
    except ValueError as e:
        raise ConfigurationError(f"bad peer to connect to: {e}") from None


def _addresses(addresses: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if addresses is None else tuple(addresses)


@attrs.frozen
class KeepAliveSettings:
    """
    @ivar enabled: keep every connection's NAT bindings open.
    @ivar interval: seconds between KEEP_ALIVEs; with C{follow_lifetime},
        replaced by half the binding lifetime measured.
    @ivar timeout: how long a KEEP_ALIVE waits for its ACK (at most the
        interval).
    @ivar follow_lifetime: measure how long the NAT keeps an idle binding (in
        the background; it takes about twice that lifetime) and then send
        keep-alives at half of it instead of C{interval}.
    @ivar checks: liveness checks, which find a broken path in use within
        seconds rather than at the next keep-alive (L{CheckSettings}).
    """

    enabled: bool = True
    interval: float = attrs.field(default=25.0, validator=positive)
    timeout: float = attrs.field(default=5.0, validator=positive)
    follow_lifetime: bool = False
    checks: CheckSettings = attrs.field(factory=CheckSettings)


@attrs.frozen
class PeerSettings:
    """
    Everything a L{twisted_nat.service.NATTraversalService} is configured
    with but its servers and its application.

    @ivar local_port: the UDP port to bind (0 for any).
    @ivar interface: the address to bind.
    @ivar host_addresses: our interface addresses for host candidates
        (found with C{ifaddr} when not given).
    @ivar detect_behavior: discover what our NAT does (RFC 5780), with the
        first STUN server; what we offer depends on it.
    @ivar turn_servers: TURN servers to allocate a relayed candidate on
        (see L{twisted_nat.turn.parse_turn_uri}); a relay is used only for
        the peers no direct path reaches.
    @ivar relay_only: offer and answer with our relayed candidates only, so
        that a connection runs through the relay when the peer does the
        same: to prove a relay, or where direct paths are not wanted.  It
        hides no address: our punches still reach the peer's candidates.
    @ivar connect_to: peers to connect to as soon as we are ready and
        registered at the rendezvous: L{Target}s, or strings for
        L{Target.parse} (C{"bob"}, C{"bob=tn-..."}, C{"tn-..."}).
    @ivar gate: what strangers' offers may make us spend.
    @ivar port_mapping: ask the default gateway to forward a public port to
        our socket (PCP, NAT-PMP, UPnP-IGD, or all in turn with
        C{Mode.AUTO}), and offer that address; off unless asked for, so
        that a library user's tests send nothing to their router
        (C{twistd nat peer} asks for C{auto}).
    @ivar port_mapping_lease: seconds of lease asked for; renewed at half.
    @ivar streams: QUIC streams between peers (L{StreamSettings}).
    @ivar ipv6: also bind an IPv6 socket, when the machine has IPv6, with
        IPv6 host candidates and (from an IPv6 STUN server) an IPv6
        server-reflexive one; IPv6 and IPv4 pairs are then punched together
        (L{twisted_nat.punch.FamilyPreference}).  Without IPv6 everything
        is as with C{ipv6=False}.
    @ivar interface6: the IPv6 address to bind; when not given, every
        address (C{::}) if C{interface} is every IPv4 address, else no
        IPv6 socket at all.
    @ivar receive_buffer: bytes of kernel receive buffer asked for on the
        sockets that carry connections (the shared sockets, and an extra
        socket once a path uses it), so that a fast stream's bursts are not
        lost while we are busy; the system's limit caps it (on Linux
        C{net.core.rmem_max}); 0 keeps the system's default.
    """

    local_port: int = 0
    interface: str = "0.0.0.0"
    host_addresses: tuple[str, ...] | None = attrs.field(default=None, converter=_addresses)
    detect_behavior: bool = True
    turn_servers: tuple[TURNServer, ...] = attrs.field(default=(), converter=_servers)
    relay_only: bool = False
    connect_to: tuple[Target, ...] = attrs.field(default=(), converter=_targets)
    keepalive: KeepAliveSettings = attrs.field(factory=KeepAliveSettings)
    punch: PunchSettings = attrs.field(factory=PunchSettings)
    symmetric: SymmetricSettings = attrs.field(factory=SymmetricSettings)
    gate: GateSettings = attrs.field(factory=GateSettings)
    port_mapping: Mode = Mode.OFF
    port_mapping_lease: int = attrs.field(default=DEFAULT_LIFETIME, validator=positive)
    streams: StreamSettings = attrs.field(factory=StreamSettings)
    ipv6: bool = True
    interface6: str | None = None
    receive_buffer: int = attrs.field(default=RECEIVE_BUFFER, validator=attrs.validators.ge(0))


DEFAULT_SETTINGS = PeerSettings()
