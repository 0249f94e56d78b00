"""
The connections of one service: made from punch results, kept alive, moved
to better paths, punched again when their path is lost, and closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.address import Address, format_address
from twisted_nat.connection import AppDataRouter, PeerConnection
from twisted_nat.control import SessionKeys
from twisted_nat.errors import KeyMismatch
from twisted_nat.keepalive import PathState, interval_for_lifetime
from twisted_nat.keepalive.keeper import BindingLost
from twisted_nat.punch import ExtraSockets, HolePuncher, PunchResult
from twisted_nat.service.events import IPeerEvents
from twisted_nat.service.relays import Relays
from twisted_nat.service.settings import KeepAliveSettings
from twisted_nat.trust.keys import PeerKey

ProtocolFactory = Callable[[PeerConnection], AbstractDatagramProtocol | None]

PUNCH_AGAIN = backoffPolicy(initialDelay=1.0, maxDelay=30.0, factor=2.0, jitter=lambda: 0.0)
"""
Pauses between attempts to punch a lost path again: whatever broke the path
(a rebooted router) may well have broken the rendezvous connection too,
which needs time to return.
"""

DIRECT_AGAIN = backoffPolicy(initialDelay=15.0, maxDelay=300.0, factor=2.0, jitter=lambda: 0.0)
"""
Pauses before a connection that fell back to a relay, when its direct path
was lost, punches again for a direct one: whatever broke the direct path
may mend, and the relayed session's own search for direct pairs lasts only
a punch's timeout.
"""


class Connections:
    """
    The peer connections of one service, by peer name.

    @param punch_again: offer a connection to a peer anew (the service's
        L{connect}); used for lost paths to the peers we offered to.
    @param refresh: relearn our public address, and make sure the rendezvous
        still hears us; called when a path is lost.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        puncher: HolePuncher,
        router: AppDataRouter,
        extra_sockets: ExtraSockets,
        relays: Relays,
        keepalive: KeepAliveSettings,
        protocol_factory: ProtocolFactory | None,
        punch_again: Callable[[str], Deferred[Any]],
        refresh: Callable[[], Deferred[None]],
        running: Callable[[], bool],
        events: IPeerEvents,
    ) -> None:
        self._reactor = reactor
        self._puncher = puncher
        self._router = router
        self._extra_sockets = extra_sockets
        self._relays = relays
        self._keepalive = keepalive
        self._protocol_factory = protocol_factory
        self._punch_again = punch_again
        self._refresh = refresh
        self._running = running
        self._events = events
        self.by_peer: dict[str, PeerConnection] = {}
        self.keepalive_interval = keepalive.interval
        """Seconds between KEEP_ALIVEs: the setting, or half the binding lifetime measured."""
        self._offered: set[str] = set()
        self._retries: dict[str, IDelayedCall] = {}
        self._direct_again: dict[str, tuple[int, IDelayedCall]] = {}
        """Per peer: the attempt at a direct path again, and its timer (fired while it runs)."""

    def offered(self, peer: str, key: PeerKey) -> None:
        """We made an offer to C{peer}: when a path to it is lost, we punch again."""
        self.check_key(peer, key)
        self._offered.add(peer)

    def check_key(self, peer: str, key: PeerKey) -> None:
        """
        L{KeyMismatch} if an open connection to C{peer} is with another
        key: no offer or answer may move a connection to a different peer.
        """
        existing = self.by_peer.get(peer)
        if existing is not None and not existing.closed and existing.peer_key != key:
            theirs = existing.peer_key.short if existing.peer_key is not None else "no key"
            raise KeyMismatch(f"{peer} is connected with key {theirs}, not {key.short}")

    def connected(
        self,
        peer: str,
        peer_key: PeerKey,
        session_id: bytes,
        secret: bytes,
        result: PunchResult,
        controlling: bool,
        peer_nat: str | None = None,
    ) -> PeerConnection:
        """
        A punch of the session C{session_id} with C{peer_key} succeeded: a
        new connection, or the peer's existing one (with the same key)
        rebound to the new path and session keys, its protocol still
        attached.  The punch proved that the peer holds the session secret,
        which only the holder of C{peer_key} can have agreed.  C{peer_nat}
        names the peer's NAT as its hint said.
        """
        self.check_key(peer, peer_key)
        keys = SessionKeys.derive(session_id, secret, offerer=controlling)
        existing = self.by_peer.get(peer)
        again = existing is not None and not existing.closed
        was_direct = existing is not None and again and not existing.relayed
        if existing is not None and again:
            self._puncher.forget(existing.session_id)
            existing.rebind(
                keys,
                result.remote,
                result.local_kind,
                result.rtt,
                result.elapsed,
                result.base,
                result.relayed,
            )
            connection = existing
        else:
            connection = PeerConnection(
                self._router,
                keys,
                result.remote,
                result.local_kind,
                result.rtt,
                result.elapsed,
                peer=peer,
                base=result.base,
                relayed=result.relayed,
                peer_key=peer_key,
            )
            self.by_peer[peer] = connection
            if self._protocol_factory is not None:
                protocol = self._protocol_factory(connection)
                if protocol is not None:
                    connection.set_protocol(protocol)
        connection.peer_nat = peer_nat
        rtt = f"{result.rtt * 1000:.1f} ms" if result.rtt is not None else "unknown"
        self.log.info(
            "connected to {peer} ({key}) via {path} in {setup:.0f} ms, round trip {rtt}",
            peer=peer,
            key=peer_key.short,
            path=connection.describe_path(),
            setup=result.elapsed * 1000,
            rtt=rtt,
        )
        self._events.connected(connection, result, controlling, again)
        self._prune_sockets()
        self._keep_alive(connection)
        self._seek_direct(peer, connection, was_direct)
        return connection

    def _seek_direct(self, peer: str, connection: PeerConnection, was_direct: bool) -> None:
        """
        A connection to a peer we offered to that fell back to a relay
        after its direct path was lost punches again for a direct path,
        after L{DIRECT_AGAIN}, for as long as each punch ends relayed.  One
        relayed from the start does not: what kept it off a direct path
        then will most likely keep it off now.
        """
        earlier = self._direct_again.pop(peer, None)
        if earlier is not None and earlier[1].active():
            earlier[1].cancel()
        if not connection.relayed or peer not in self._offered:
            return
        if earlier is None and not was_direct:
            return
        attempt = 0 if earlier is None else earlier[0] + 1
        self._schedule_direct(peer, connection, attempt)

    def _schedule_direct(self, peer: str, connection: PeerConnection, attempt: int) -> None:
        delay = DIRECT_AGAIN(attempt)
        call = self._reactor.callLater(delay, self._try_direct, peer, connection, attempt)
        self._direct_again[peer] = (attempt, call)

    def _try_direct(self, peer: str, connection: PeerConnection, attempt: int) -> None:
        if connection.closed or not connection.relayed or not self._running():
            self._direct_again.pop(peer, None)
            return
        if connection.reconnecting:
            return  # the punch for the lost path comes first, and carries the count on
        self.log.info("punching again to {peer} for a direct path", peer=peer)

        def failed(failure: Failure) -> None:
            self.log.warn(
                "punching again to {peer} for a direct path failed ({error})",
                peer=peer,
                error=failure.value,
            )
            entry = self._direct_again.get(peer)
            current = entry is not None and entry[0] == attempt and not entry[1].active()
            if current and not connection.closed and self._running():
                self._schedule_direct(peer, connection, attempt + 1)

        self._punch_again(peer).addErrback(failed)

    def moved(self, session_id: bytes, result: PunchResult) -> None:
        """A session connected over a relay found a direct path: move there."""
        for connection in self.by_peer.values():
            if connection.session_id == session_id and not connection.closed:
                break
        else:
            return
        connection.move(result.remote, result.local_kind, result.rtt, result.base, result.relayed)
        self._prune_sockets()
        self.log.info(
            "moved {peer} to a better path: {path} after {elapsed:.0f} ms",
            peer=connection.peer,
            path=connection.describe_path(),
            elapsed=result.elapsed * 1000,
        )
        self._keep_alive(connection)

    def lifetime_found(self, lifetime: float) -> None:
        """Keep-alive at half the measured binding lifetime, for every connection from now on."""
        self.keepalive_interval = interval_for_lifetime(lifetime)
        self.log.info(
            "idle NAT bindings live {lifetime:.1f} s: keep-alive every {interval:.1f} s",
            lifetime=lifetime,
            interval=self.keepalive_interval,
        )
        for connection in self.by_peer.values():
            if connection.keepalive is not None:
                connection.keepalive.set_interval(self.keepalive_interval)

    def _prune_sockets(self) -> None:
        """Close the extra sockets whose connection closed, or moved away."""
        kept = self._extra_sockets.kept
        if kept:  # nearly always empty: no need to look at every connection
            in_use = {c.base for c in self.by_peer.values() if c.base in kept and not c.closed}
            self._extra_sockets.prune(in_use)

    def _keep_alive(self, connection: PeerConnection) -> None:
        """Keep-alive on the connection's path (again, after a move)."""
        if connection.base.relayed:
            self._relays.bind_channel(connection.base, connection.remote_address, connection.peer)
        if not self._keepalive.enabled:
            return
        self._puncher.stop_binding(connection.session_id)
        interval = self.keepalive_interval
        keeping = self._puncher.maintain_binding(
            connection,
            connection.remote_address,
            interval=interval,
            timeout=min(self._keepalive.timeout, interval),
            base=connection.base,
            checks=self._keepalive.checks,
            on_state=lambda state: self._checked(connection, state),
        )
        keeping.addErrback(self._path_lost, connection)

    def _checked(self, connection: PeerConnection, state: PathState) -> None:
        """Liveness checks changed their verdict on the connection's path."""
        if state is PathState.LOST:
            return  # the keep-alive's Deferred fails next: _path_lost
        if state is PathState.CHECKING:
            self.log.info("no answer from {peer}: checking its path", peer=connection.peer)
        elif state is PathState.HEALTHY:
            self.log.info("{peer} answers again", peer=connection.peer)
        connection.state_changed()

    def _path_lost(self, failure: Failure, connection: PeerConnection) -> None:
        failure.trap(BindingLost)
        peer = connection.peer or "?"
        if connection.closed:
            return
        self._events.path_lost(connection, failure)
        connection.reconnecting = True
        connection.state_changed()
        if peer in self._offered:
            self._again(connection, 0)
        else:
            self._refresh()
            self.log.info("waiting for {peer} to punch again", peer=peer)

    def _again(self, connection: PeerConnection, attempt: int) -> None:
        """Punch again through the rendezvous, until it works or the connection is closed."""
        peer = connection.peer or "?"
        self._retries.pop(peer, None)
        if connection.closed or not self._running():
            return
        self.log.info("punching again to {peer} (attempt {n})", peer=peer, n=attempt + 1)
        again = self._refresh().addCallback(lambda _: self._punch_again(peer))

        def failed(failure: Failure) -> None:
            delay = PUNCH_AGAIN(attempt)
            self.log.warn(
                "punching again to {peer} failed ({error}); next try in {delay:.0f} s",
                peer=peer,
                error=failure.value,
                delay=delay,
            )
            if not connection.closed and self._running():
                self._retries[peer] = self._reactor.callLater(
                    delay, self._again, connection, attempt + 1
                )

        again.addErrback(failed)

    def close(self, connection: PeerConnection) -> None:
        self._puncher.forget(connection.session_id)
        if connection.peer is not None and self.by_peer.get(connection.peer) is connection:
            self._forget_direct(connection.peer)
        connection.close()
        if connection.peer is not None and self.by_peer.get(connection.peer) is connection:
            del self.by_peer[connection.peer]
        self._prune_sockets()

    def stop(self) -> None:
        for retry in self._retries.values():
            if retry.active():
                retry.cancel()
        self._retries.clear()
        for peer in list(self._direct_again):
            self._forget_direct(peer)
        for connection in list(self.by_peer.values()):
            self.close(connection)

    def _forget_direct(self, peer: str) -> None:
        entry = self._direct_again.pop(peer, None)
        if entry is not None and entry[1].active():
            entry[1].cancel()

    def status(self) -> list[dict[str, Any]]:
        """Each connection as C{--status} shows it."""
        rows = []
        for peer, connection in sorted(self.by_peer.items()):
            quality = connection.quality()
            rtt = quality.rtt if quality and quality.rtt is not None else connection.rtt
            rows.append(
                {
                    "peer": peer,
                    "peer_key": connection.peer_key.text if connection.peer_key else None,
                    "path": {
                        "local": connection.local_kind.value if connection.local_kind else None,
                        "remote": connection.remote.kind.value,
                        "remote_address": _endpoint(connection.remote_address),
                    },
                    "relayed": connection.relayed,
                    "setup_ms": round(connection.setup_time * 1000, 3),
                    "state": connection.state,
                    "reconnecting": connection.reconnecting,
                    "rtt_ms": _ms(rtt),
                    "loss": quality.loss if quality else None,
                    "jitter_ms": _ms(quality.jitter if quality else None),
                }
            )
        return rows


def _endpoint(address: Address | None) -> str | None:
    return None if address is None else format_address(address)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
