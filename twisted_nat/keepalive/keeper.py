"""
Keep-alive on punched paths: the I/O of L{KeepAliveMachine}.

A L{Keeper} sends each kept path's KEEP_ALIVEs on the path's base, gives
the machine the peer's ACKs, and answers the peer's own KEEP_ALIVEs, on
every base of the registry.  It decides nothing itself: when to probe and
when a path is lost are the machine's decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat import control
from twisted_nat.address import Address, format_address
from twisted_nat.bases import SHARED, Base, BaseRegistry
from twisted_nat.control import SessionKeys
from twisted_nat.errors import ConfigurationError, TwistedNATError
from twisted_nat.keepalive.checks import LivenessChecks
from twisted_nat.keepalive.freshness import CheckSettings, PathState
from twisted_nat.keepalive.machine import KeepAliveMachine
from twisted_nat.keepalive.timers import Schedule, TimerQueue
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.stun.message import MessageClass

TIMER_RESOLUTION = 0.25
"""
Keep-alive timers fire up to this late (see L{TimerQueue}), and never later
than a twentieth of the shortest of the interval, timeout and retry
interval of a path.  Nothing measured depends on when a probe leaves, only
on when its ACK comes back, and coarser steps batch more work per turn of
the reactor.
"""


def timer_resolution(interval: float, timeout: float, retry_interval: float | None = None) -> float:
    shortest = min(interval, timeout, retry_interval or timeout)
    resolution = min(TIMER_RESOLUTION, shortest / 20)
    # Bad settings are the machine's to refuse, with its own message.
    return resolution if 0 < resolution < math.inf else TIMER_RESOLUTION


class BindingLost(TwistedNATError):
    """Keep-alive got no answer for too long: the NAT binding (or the peer) is gone."""


@attrs.define
class KeeperStats:
    """Counters of keep-alive traffic; every dropped datagram lands in one."""

    received: int = 0
    dropped_malformed: int = 0
    dropped_unknown_session: int = 0
    dropped_bad_mac: int = 0
    dropped_wrong_path: int = 0


def _ignore(state: PathState) -> None:
    pass


class KeptPath:
    """
    One path's keep-alive: its machine, its liveness checks (if any), the
    Deferred its owner holds, and their callbacks, as methods rather than
    closures, since there is one of these per connection.
    """

    __slots__ = (
        "base",
        "checks",
        "deferred",
        "keeper",
        "keys",
        "machine",
        "remote",
        "session_id",
    )

    def __init__(
        self,
        keeper: Keeper,
        session_id: bytes,
        keys: SessionKeys,
        remote: Address,
        base: Base,
        checks: CheckSettings | None = None,
        on_state: Callable[[PathState], object] = _ignore,
        check_schedule: Schedule | None = None,
        **machine_options: Any,
    ) -> None:
        self.keeper = keeper
        self.session_id = session_id
        self.keys = keys
        self.remote = remote
        self.base = base
        self.deferred: Deferred[None] = Deferred()
        self.machine = KeepAliveMachine(
            send_probe=self.send_probe, on_warning=self.warn, on_lost=self.lost, **machine_options
        )
        self.checks: LivenessChecks | None = None
        if checks is not None and checks.enabled:
            self.checks = LivenessChecks(
                checks,
                send_check=self.send_check,
                machine=self.machine,
                schedule=check_schedule or machine_options["schedule"],
                now=machine_options["now"],
                on_lost=self.checks_lost,
                on_state=on_state,
            )

    def send_probe(self) -> bytes:
        tid = self.send_check()
        if self.checks is not None:
            # An unanswered probe starts checks as unanswered data does.
            self.checks.sent()
        return tid

    def send_check(self) -> bytes:
        tid, data = control.keepalive(self.keys)
        self.keeper.write(data, self.remote, self.base)
        return tid

    def acked(self, transaction_id: bytes) -> None:
        """An authenticated ACK on the path: the machine's probe's, or a check's."""
        if self.machine.ack_received(transaction_id) is not None:
            if self.checks is not None:
                self.checks.answered()
        elif self.checks is not None:
            self.checks.check_answered(transaction_id)

    def stop(self) -> None:
        self.machine.stop()
        if self.checks is not None:
            self.checks.stop()

    def checks_lost(self) -> None:
        self.machine.stop()
        self.lost()

    def warn(self, failures: int) -> None:
        self.keeper.log.warn(
            "no answer from {peer} to {failures} keep-alives in a row",
            peer=format_address(self.remote),
            failures=failures,
        )

    def lost(self) -> None:
        if self.checks is not None:
            self.checks.stop()
        self.keeper.lost(self)
        self.deferred.errback(BindingLost(f"no answer from {format_address(self.remote)}"))


class Keeper(DatagramProtocol):
    """
    The keep-alive protocol on the shared socket and every other base.

    @param keys_of: the keys of a punched session by its id, or None for an
        unknown one: the peer's KEEP_ALIVEs are answered for every punched
        session, kept alive on our side or not.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        reactor: IReactorTime,
        bases: BaseRegistry,
        keys_of: Callable[[bytes], SessionKeys | None],
    ) -> None:
        self._reactor = reactor
        self._bases = bases
        self._keys_of = keys_of
        self._kept: dict[bytes, KeptPath] = {}
        # Every machine's one timer lives in a queue shared on the reactor
        # (see TimerQueue); machines share one schedule per resolution.
        self._schedules: dict[float, Schedule] = {}
        self.stats = KeeperStats()
        bases.listen(self.received, _route)

    def attach(self, mux: UDPMultiplexer) -> None:
        """Keep alive on the shared socket of C{mux}."""
        self._bases.share(mux)
        _route(mux, self)

    def keep(
        self,
        session_id: bytes,
        keys: SessionKeys,
        remote: Address,
        base: Base = SHARED,
        interval: float = 25.0,
        timeout: float = 5.0,
        checks: CheckSettings | None = None,
        on_state: Callable[[PathState], object] = _ignore,
        **options: Any,
    ) -> KeptPath:
        """
        Keep the NAT bindings of the path from C{base} to C{remote} open
        with KEEP_ALIVE every C{interval} seconds, measuring it meanwhile.
        C{options} go to the machine (C{warn_after}, C{dead_after},
        C{retry_interval}).  With C{checks}, liveness checks find a broken
        path in use within seconds (L{LivenessChecks}), and C{on_state}
        hears their verdicts.  The path's Deferred fires with None when
        L{stop} is called, or fails with L{BindingLost}.
        """
        if session_id in self._kept:
            raise ConfigurationError(f"session {session_id.hex()} is already kept alive")
        schedule = self._schedule(
            timer_resolution(interval, timeout, options.get("retry_interval"))
        )
        kept = KeptPath(
            self,
            session_id,
            keys,
            remote,
            base,
            checks,
            on_state,
            self._schedule(timer_resolution(checks.interval, checks.interval)) if checks else None,
            interval=interval,
            timeout=timeout,
            schedule=schedule,
            now=self._reactor.seconds,
            **options,
        )
        self._kept[session_id] = kept
        kept.machine.start()
        return kept

    def kept(self, session_id: bytes) -> KeptPath | None:
        return self._kept.get(session_id)

    def stop(self, session_id: bytes) -> None:
        """Stop keeping a session's path alive (its Deferred fires with None)."""
        kept = self._kept.pop(session_id, None)
        if kept is not None:
            kept.stop()
            kept.deferred.callback(None)

    def lost(self, kept: KeptPath) -> None:
        """A machine gave up on its path."""
        if self._kept.get(kept.session_id) is kept:
            del self._kept[kept.session_id]
        self.log.warn("lost the path to {peer}", peer=format_address(kept.remote))

    def write(self, data: bytes, to: Address, base: Base) -> None:
        self._bases.send(data, to, base)

    def _schedule(self, resolution: float) -> Schedule:
        schedule = self._schedules.get(resolution)
        if schedule is None:
            queue = TimerQueue.shared(self._reactor, resolution)
            schedule = self._schedules[resolution] = queue.schedule
        return schedule

    # --- the protocol ---

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        self.received(datagram, addr, SHARED)

    def received(self, datagram: bytes, addr: Address, base: Base) -> None:
        """A KEEP_ALIVE or its ACK that arrived on C{base}."""
        self.stats.received += 1
        # Keep-alives in our own layout, nearly all the traffic of a node
        # with many connections, skip the general decoder.
        fields = control.keepalive_fields(datagram)
        if fields is not None:
            session_id, message_class, transaction_id = fields
            keys = self._keys(session_id, addr)
            if keys is None:
                return
            if not control.verify_keepalive(datagram, keys):
                self._bad_mac(addr)
                return
        else:
            claimed = control.session_of(datagram)
            if claimed is None:
                self.stats.dropped_malformed += 1
                self.log.debug("dropped malformed keep-alive from {addr}", addr=addr)
                return
            message, session_id = claimed
            keys = self._keys(session_id, addr)
            if keys is None:
                return
            if not control.verify(message, keys):
                self._bad_mac(addr)
                return
            message_class, transaction_id = message.message_class, message.transaction_id
        self._heard(session_id, keys, message_class, transaction_id, addr, base)

    def _keys(self, session_id: bytes, addr: Address) -> SessionKeys | None:
        keys = self._keys_of(session_id)
        if keys is None:
            self.stats.dropped_unknown_session += 1
            self.log.debug("dropped a keep-alive for an unknown session from {addr}", addr=addr)
        return keys

    def _bad_mac(self, addr: Address) -> None:
        self.stats.dropped_bad_mac += 1
        self.log.debug("dropped a keep-alive failing its MAC from {addr}", addr=addr)

    def _heard(
        self,
        session_id: bytes,
        keys: SessionKeys,
        message_class: MessageClass,
        transaction_id: bytes,
        addr: Address,
        base: Base,
    ) -> None:
        """
        Answer the peer's KEEP_ALIVE; give our machine the peer's ACK.

        Only traffic from the connection's own path counts, and only it is
        answered: a peer whose NAT lost its binding sends from a new public
        port, and answering there would convince it that a path still works
        which, towards its old port, no longer does; both sides must see
        the loss, so that one of them punches again.
        """
        kept = self._kept.get(session_id)
        if kept is not None and (addr != kept.remote or base is not kept.base):
            self.stats.dropped_wrong_path += 1
            self.log.debug("ignored a keep-alive from {addr}, off the path", addr=addr)
            return
        if message_class == MessageClass.REQUEST:
            self.write(control.keepalive_ack(keys, transaction_id), addr, base)
            if kept is not None:
                kept.machine.probe_received()
        elif message_class == MessageClass.SUCCESS and kept is not None:
            kept.acked(transaction_id)

    def doStop(self) -> None:
        for session_id in list(self._kept):
            self.stop(session_id)
        super().doStop()


def _route(mux: UDPMultiplexer, protocol: DatagramProtocol) -> object:
    return mux.add_stun(protocol, [control.KEEPALIVE])
