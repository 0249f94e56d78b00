"""
The punch handshake's I/O: L{HolePuncher} sits on the shared socket's
multiplexer and on every other base, turns datagrams into events for each
L{PunchSession} and its actions into writes and timers, and keeps answering
late PUNCHes after success, since the peer may still be waiting for its
CONFIRM.  Keep-alive on the paths it punched is its L{Keeper}'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat import control
from twisted_nat.address import Address, format_address
from twisted_nat.bases import SHARED, Base, BaseRegistry
from twisted_nat.candidates import Candidate
from twisted_nat.control import SessionKeys
from twisted_nat.errors import ConfigurationError
from twisted_nat.keepalive import KeepAliveMachine, LivenessChecks
from twisted_nat.keepalive.keeper import Keeper
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.punch.birthday import Prober
from twisted_nat.punch.running import PuncherStats, Running
from twisted_nat.punch.session import PunchSession
from twisted_nat.punch.values import (
    Action,
    Connected,
    PunchError,
    PunchFailed,
    PunchResult,
    PunchSettings,
    Refused,
    Send,
    StartGrace,
)
from twisted_nat.stun.message import MessageClass


class KeptConnection(Protocol):
    """What L{HolePuncher.maintain_binding} needs of a connection."""

    @property
    def session_id(self) -> bytes: ...

    keys: SessionKeys
    keepalive: KeepAliveMachine | None
    liveness: LivenessChecks | None


class HolePuncher(DatagramProtocol):
    """
    The punch handshake on the shared socket and every other base: attach
    it to the shared socket's multiplexer (L{attach}), call L{punch_hole},
    then L{maintain_binding} for the connection made.

    Sessions stay registered after they connect, so that late PUNCHes and
    the peer's KEEP_ALIVEs are still answered, until L{forget} is called
    when the connection closes.

    @param reactor: the clock and timers; the global reactor when not given.
    @param bases: the registry of bases to punch from and answer on; one of
        its own when not given.
    """

    log = Logger()
    noisy = False

    def __init__(
        self, reactor: IReactorTime | None = None, bases: BaseRegistry | None = None
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        assert reactor is not None
        self._reactor: IReactorTime = reactor
        self.bases = bases if bases is not None else BaseRegistry()
        self.keeper = Keeper(reactor, self.bases, self.keys)
        """Keep-alive on the paths punched; it answers the peer's for every session here."""
        self._running: dict[bytes, Running] = {}
        self.stats = PuncherStats()
        self.bases.listen(self.received, _route)

    def attach(self, mux: UDPMultiplexer) -> None:
        """Punch and keep alive on the shared socket of C{mux}."""
        self.bases.share(mux)
        _route(mux, self)
        self.keeper.attach(mux)

    def write(self, data: bytes, to: Address, base: Base = SHARED) -> None:
        """Send on a base; what cannot leave is counted, and retried by whoever retries."""
        if not self.bases.send(data, to, base):
            self.stats.unsendable += 1

    def maintain_binding(
        self,
        connection: KeptConnection,
        remote_addr: Address,
        interval: float = 25.0,
        timeout: float = 5.0,
        *,
        base: Base = SHARED,
        **options: Any,
    ) -> Deferred[None]:
        """
        Keep the NAT bindings of C{connection}'s path open with KEEP_ALIVE
        every C{interval} seconds, and measure the path while doing so
        (L{Keeper.keep}).  The connection gets the path's machine as its
        C{keepalive}, whose C{quality()} is the link's RTT, loss and jitter,
        and its liveness checks as C{liveness} (with C{checks} settings).

        @return: a Deferred that fires with None when keep-alive is stopped
            (L{stop_binding}, L{forget}), or fails with
            L{twisted_nat.keepalive.keeper.BindingLost} when the peer stopped answering.
        """
        session_id = connection.session_id
        running = self._running.get(session_id)
        if running is None:
            raise ConfigurationError(f"no punched session {session_id.hex()} to keep alive")
        session = running.session
        keys = session.keys
        theirs = connection.keys
        if theirs is not keys and theirs == keys:
            # The connection derived the same keys again: keep one copy of
            # them, not two, for as long as the connection lasts.
            session.keys = keys = theirs
        kept = self.keeper.keep(session_id, keys, remote_addr, base, interval, timeout, **options)
        connection.keepalive = kept.machine
        connection.liveness = kept.checks
        return kept.deferred

    def stop_binding(self, session_id: bytes) -> None:
        """Stop keeping a session's path alive (its Deferred fires with None)."""
        self.keeper.stop(session_id)

    def punch_hole(
        self,
        local_port: int,
        remote_candidates: Sequence[Candidate],
        punch_id: bytes,
        timeout: float = 10.0,
        max_retries: int = 30,
        *,
        secret: bytes,
        controlling: bool,
        local_candidates: Sequence[Candidate] = (),
        interval: float = 0.2,
        on_better_path: Callable[[PunchResult], object] | None = None,
        bases: Sequence[Base] = (),
        prober: Prober | None = None,
        on_settled: Callable[[Base | None], object] | None = None,
        spray_to: Sequence[Candidate] | None = None,
        settings: PunchSettings | None = None,
        family_in_use: int | None = None,
    ) -> Deferred[PunchResult]:
        """
        Punch towards C{remote_candidates} for session C{punch_id}.

        @param local_port: the shared socket's port; checked, since a punch
            from any other socket would open the wrong binding.
        @param secret: the 32-byte session secret the offer and answer agreed
            (L{twisted_nat.trust.handshake}).
        @param controlling: True for the offering peer, which picks the path.
        @param on_better_path: called with a new L{PunchResult} when a
            session connected over a relay moves to a direct pair.
        @param bases: spray bases of this session alone (extra sockets of
            the birthday method's hard side or a meeting run); they pair
            with the peer's server-reflexive candidates only, and send a few
            PUNCHes each until the peer reaches one.
        @param spray_to: what the spray bases punch instead of the peer's
            server-reflexive candidates (the meeting method's one port).
        @param prober: the birthday method's easy side: probes sent as it
            paces them, until a direct pair answers.
        @param on_settled: called once, with the base of the path in use,
            when the session has stopped looking for a better one
            (connected directly, or the timeout ended a relayed
            connection's search), and with None when it failed or was
            forgotten first: when the spray bases can go.
        @param settings: all the session's settings at once, in place of
            C{interval}, C{timeout} and C{max_retries}.
        @param family_in_use: the family of the connection this punch
            replaces the path of, if any: the choice between families
            leans to it (L{FamilyPreference}'s hysteresis).
        @return: a Deferred firing with a L{PunchResult}, or failing with
            L{PunchFailed} saying what each pair saw.
        """
        if self.transport is None:
            raise ConfigurationError("the hole puncher is not attached to a socket")
        bound = self.transport.getHost().port
        if local_port != bound:
            raise ConfigurationError(
                f"punching from port {local_port}, but the shared socket is on port {bound}"
            )
        if punch_id in self._running:
            raise ConfigurationError(f"session {punch_id.hex()} is already punching")
        for base in bases:
            if base not in self.bases or base.relayed or base is SHARED:
                raise ConfigurationError(f"{base} is no extra base to punch from")
        keys = SessionKeys.derive(punch_id, secret, offerer=controlling)
        session = PunchSession(
            keys,
            controlling,
            local_candidates,
            remote_candidates,
            settings if settings is not None else PunchSettings.of(interval, timeout, max_retries),
            self._reactor.seconds(),
            self.bases.relays(),
            bases,
            prober,
            spray_to,
            family_in_use,
        )
        running = Running(session, on_better_path, prober, on_settled)
        self._running[punch_id] = running
        deferred = running.deferred
        assert deferred is not None
        if prober is not None:
            self.log.info(
                "probing up to {budget} ports of {host} for {session}",
                budget=prober.budget,
                host=prober.host,
                session=punch_id.hex(),
            )
            self._schedule_probe(punch_id, running)
        self._tick(punch_id)
        return deferred

    def forget(self, punch_id: bytes) -> None:
        """Stop answering for a session (its connection closed)."""
        self.stop_binding(punch_id)
        running = self._running.pop(punch_id, None)
        if running is not None:
            running.cancel_timers()
            deferred, running.deferred = running.deferred, None
            if deferred is not None and not deferred.called:
                deferred.errback(PunchFailed(self._reactor.seconds() - running.session.started, ()))
            self._follow_up(running)

    def session(self, punch_id: bytes) -> PunchSession | None:
        """The session punching, or kept after it connected, for C{punch_id}."""
        running = self._running.get(punch_id)
        return running.session if running is not None else None

    def sessions(self) -> Iterator[PunchSession]:
        """The sessions punching or kept, oldest first."""
        return (running.session for running in self._running.values())

    def session_ids(self) -> list[bytes]:
        """The sessions punching or kept, oldest first."""
        return list(self._running)

    def keys(self, punch_id: bytes) -> SessionKeys | None:
        running = self._running.get(punch_id)
        return running.session.keys if running is not None else None

    # --- the protocol ---

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        self.received(datagram, addr, SHARED)

    def received(self, datagram: bytes, addr: Address, base: Base) -> None:
        """A PUNCH, PUNCH_ACK or PUNCH_CONFIRM that arrived on C{base}."""
        self.stats.received += 1
        claimed = control.session_of(datagram)
        if claimed is None:
            self.stats.dropped_malformed += 1
            self.log.debug("dropped malformed control datagram from {addr}", addr=addr)
            return
        message, session_id = claimed
        running = self._running.get(session_id)
        if running is None:
            self.stats.dropped_unknown_session += 1
            self.log.debug("dropped PUNCH for an unknown session from {addr}", addr=addr)
            return
        session = running.session
        if not control.verify(message, session.keys):
            self.stats.dropped_bad_mac += 1
            self.log.debug("dropped control message failing its MAC from {addr}", addr=addr)
            return
        now = self._reactor.seconds()
        if message.message_class == MessageClass.REQUEST:
            self._decide(session_id, lambda: session.punch_received(now, message, addr, base))
        elif message.message_class == MessageClass.SUCCESS:
            self._decide(session_id, lambda: session.ack_received(now, message, addr, base))
        elif message.message_class == MessageClass.INDICATION:
            self._decide(session_id, lambda: session.confirm_received(now, addr, base))

    def doStop(self) -> None:
        for punch_id in list(self._running):
            self.forget(punch_id)
        super().doStop()

    # --- carrying out the session's decisions ---

    def _tick(self, punch_id: bytes) -> None:
        running = self._running.get(punch_id)
        if running is None:
            return
        running.ticker = None
        session = running.session
        self._decide(punch_id, lambda: session.tick(self._reactor.seconds()))
        if session.searching and punch_id in self._running:
            delay = running.round_delay(self._reactor.seconds())
            running.ticker = self._reactor.callLater(delay, self._tick, punch_id)
            running.schedule_pace(self._reactor, partial(self._pace, punch_id))

    def _pace(self, punch_id: bytes) -> None:
        running = self._running.get(punch_id)
        if running is None:
            return
        running.pacer = None
        session = running.session
        self._decide(punch_id, lambda: session.pace(self._reactor.seconds()))
        if punch_id in self._running:
            running.schedule_pace(self._reactor, partial(self._pace, punch_id))

    def _grace_over(self, punch_id: bytes) -> None:
        running = self._running.get(punch_id)
        if running is not None:
            running.grace = None
            session = running.session
            self._decide(punch_id, lambda: session.grace_over(self._reactor.seconds()))

    def _decide(self, punch_id: bytes, decide: Callable[[], list[Action]]) -> None:
        """
        Carry out what the session decides; an error on the way (a bug, or
        input no check foresaw) ends this punch, never the caller's loop.
        """
        try:
            self._carry_out(punch_id, decide())
        except Exception as e:
            self.log.failure("punch {session} ended by an error", session=punch_id.hex())
            running = self._running.pop(punch_id, None)
            if running is None:
                return
            running.cancel_timers()
            elapsed = self._reactor.seconds() - running.session.started
            deferred, running.deferred = running.deferred, None
            if deferred is not None and not deferred.called:
                deferred.errback(PunchError(elapsed, e))
            self._follow_up(running)

    def _carry_out(self, punch_id: bytes, actions: list[Action]) -> None:
        running = self._running[punch_id]
        for action in actions:
            if isinstance(action, Send):
                self.write(action.data, action.to, action.base)
            elif isinstance(action, StartGrace):
                running.start_grace(
                    self._reactor, action.delay, partial(self._grace_over, punch_id)
                )
            elif isinstance(action, Connected):
                if not running.session.searching:
                    running.cancel_timers()
                elif running.grace is not None:
                    running.grace.cancel()
                    running.grace = None
                result = action.result
                self.log.info(
                    "punched through to {remote} ({kind}{relayed}) in {elapsed:.0f} ms",
                    remote=format_address(result.remote.address),
                    kind=result.remote.kind.value,
                    relayed=", relayed" if result.relayed else "",
                    elapsed=result.elapsed * 1000,
                )
                deferred, running.deferred = running.deferred, None
                if deferred is not None:
                    deferred.callback(result)
                elif running.on_better_path is not None:
                    running.on_better_path(result)
            elif isinstance(action, Refused):
                self.stats.dropped_off_path += 1
                self.log.debug(
                    "{session}: dropped {reason}", session=punch_id.hex(), reason=action.reason
                )
            else:
                running.cancel_timers()
                del self._running[punch_id]
                deferred, running.deferred = running.deferred, None
                if deferred is not None:
                    deferred.errback(action.error)
        self._follow_up(running)

    # --- the birthday method ---

    def _schedule_probe(self, punch_id: bytes, running: Running) -> None:
        probe = partial(self._probe, punch_id)
        if punch_id not in self._running or not running.schedule_probe(self._reactor, probe):
            self._follow_up(running)

    def _probe(self, punch_id: bytes) -> None:
        running = self._running.get(punch_id)
        if running is None:
            return
        running.prober_timer = None
        session = running.session

        def probes() -> list[Action]:
            actions = session.probe(self._reactor.seconds())
            self.stats.probes_sent += len(actions)
            return actions

        self._decide(punch_id, probes)
        self._schedule_probe(punch_id, running)

    def _follow_up(self, running: Running) -> None:
        """
        After each event of a session using the birthday method or a
        meeting run: stop the probes once probing is over, and say when
        the session settled.
        """
        gone = self._running.get(running.session.keys.session_id) is not running
        prober = running.stop_probing(gone)
        if prober is not None:
            self.log.info(
                "stopped probing {host} after {sent} of {budget} PUNCHes",
                host=prober.host,
                sent=prober.sent,
                budget=prober.budget,
            )
        running.settle(gone)


def _route(mux: UDPMultiplexer, protocol: DatagramProtocol) -> object:
    return mux.add_stun(protocol, [control.PUNCH])
