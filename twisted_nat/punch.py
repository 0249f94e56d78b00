"""
UDP hole punching: the PUNCH -> PUNCH_ACK -> PUNCH_CONFIRM handshake.

Both peers send PUNCH to every candidate of the other, in rank order, every
C{interval}, at the same time: the first PUNCH out of each NAT opens it for
the answers.  A PUNCH_ACK proves a path works both ways.  The offering peer
controls the choice (as ICE's controlling agent does): after its first
working path it waits a moment for a better-ranked one, then names its
choice with PUNCH_CONFIRM; the answering peer takes the path the CONFIRM
arrived on.  A PUNCH from an address that is no candidate (a symmetric
NAT's fresh mapping) becomes a peer-reflexive candidate and is punched at
once, which is what lets a symmetric NAT connect to a cone.

L{PunchSession} makes every decision and does no I/O: events in, actions
out, time passed in.  L{HolePuncher} is the thin protocol that sits on the
shared socket's multiplexer, turns datagrams into events and actions into
writes and timers, and keeps answering late PUNCHes after success, since
the peer may still be waiting for its CONFIRM.

A pair is a I{base} of ours and a candidate of the peer's.  The base is
the shared socket (C{None}) or another local transport: a TURN
allocation's relayed address (L{HolePuncher.add_base}).  A PUNCH is
answered on the base it arrived on, as ICE answers on the candidate's
base, so a peer that punched our relayed address is answered through the
relay.  Relayed pairs (through our relay, or to the peer's) rank below
every direct pair: the controlling peer takes a relay only when no direct
pair has worked for L{PunchSettings.relay_grace}, and keeps punching the
direct pairs until the timeout; a direct pair that works later replaces
the relay (L{Connected} again, with the better path).

Behind a symmetric NAT with random ports, facing a port-restricted cone,
the birthday method (L{twisted_nat.birthday}) adds two things to a
session.  On the symmetric side, I{spray} bases: extra sockets of this
session alone, paired with the peer's server-reflexive candidates, each
sending a few PUNCHes until it hears from the peer, and punching back at
once when it does.  On the cone side, a L{Prober}: PUNCHes to random
ports of the peer's public address, paced, until a direct pair answers.
Neither keeps anything once the session settles: their transaction ids
live apart from the ordinary ones and go with the choosing state.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat import control
from twisted_nat.address import format_address
from twisted_nat.birthday import SPRAY_PUNCHES, Prober
from twisted_nat.candidates import Candidate, CandidateType, candidate_priority, rank
from twisted_nat.control import Destination, SessionKeys
from twisted_nat.errors import ConfigurationError, TwistedNATError
from twisted_nat.keepalive import KeepAliveMachine, Schedule, TimerQueue
from twisted_nat.stun.attributes import XorMappedAddress
from twisted_nat.stun.message import Message, MessageClass

Address = tuple[str, int]

Base = str | None
"""Where a pair's datagrams leave from: None for the shared socket, else a name."""

PairKey = tuple[Base, Address]

RELAY_PAIRED_KINDS = frozenset(
    {CandidateType.SERVER_REFLEXIVE, CandidateType.PEER_REFLEXIVE, CandidateType.RELAYED}
)
"""
The peer's candidates a relay base punches: a TURN server relays to any
permitted address, and a peer's private host address, meaningless from
the server, could be someone else's machine on the server's own network.
"""


@attrs.frozen
class PunchSettings:
    """
    @ivar interval: time between rounds of PUNCHes (the design's 200 ms).
    @ivar timeout: give up after this long.
    @ivar max_retries: PUNCHes sent to one candidate at most.
    @ivar grace: how long the controlling peer waits, after its first
        working path, for a better-ranked one to work too.
    @ivar relay_grace: how long it waits when the first working path is
        relayed: a direct path often needs a few rounds more (each NAT
        opens only once its own peer punched), and connecting on the relay
        only to leave it a moment later costs the application a path change.
    """

    interval: float = 0.2
    timeout: float = 10.0
    max_retries: int = 30
    grace: float = 0.03
    relay_grace: float = 0.5


FIRST_ROUND = 0.02
"""Delay before the second round of PUNCHes; it doubles up to the interval."""


@functools.lru_cache(maxsize=32)
def _settings(interval: float, timeout: float, max_retries: int) -> PunchSettings:
    """
    One L{PunchSettings} per distinct configuration: a connected session
    keeps its settings for as long as it lasts, and they are nearly always
    the same for all of a node's sessions.
    """
    return PunchSettings(interval=interval, timeout=timeout, max_retries=max_retries)


@attrs.frozen
class PairReport:
    """What one candidate pair saw: the substance of a failure's message."""

    remote: Candidate
    punches_sent: int
    punches_received: int
    acks_received: int
    base: Base = None

    def describe(self) -> str:
        via = f" via {self.base}" if self.base is not None else ""
        return (
            f"{self.remote.kind.value} {format_address(self.remote.address)}{via}: sent "
            f"{self.punches_sent}, got {self.punches_received} punches and "
            f"{self.acks_received} acks"
        )


@attrs.frozen
class PunchResult:
    """
    The path a punch found.

    @ivar base: which base of ours the path leaves from (None: the shared
        socket; else a name given to L{HolePuncher.add_base}).
    @ivar relayed: whether the path goes through a TURN relay, ours or the
        peer's.
    """

    remote: Candidate
    local_kind: CandidateType | None
    rtt: float | None
    elapsed: float
    pairs: tuple[PairReport, ...]
    base: Base = None
    relayed: bool = False


KEEPALIVE_TIMER_RESOLUTION = 0.25
"""
Keep-alive timers fire up to this late (see L{TimerQueue}), and never later
than a twentieth of the shortest of the interval, timeout and retry
interval that L{HolePuncher.maintain_binding} was given.  Nothing measured
depends on when a probe leaves, only on when its ACK comes back; a binding
is refreshed at most 1 % later than the 25 s interval asks, well inside the
30 s the most impatient NATs allow; and coarser steps batch more work per
turn of the reactor (10,000 connections cost about a tenth less CPU than
with 50 ms steps).
"""


def _timer_resolution(
    interval: float, timeout: float, retry_interval: float | None = None
) -> float:
    shortest = min(interval, timeout, retry_interval or timeout)
    resolution = min(KEEPALIVE_TIMER_RESOLUTION, shortest / 20)
    # Bad settings are the machine's to refuse, with its own message.
    return resolution if 0 < resolution < math.inf else KEEPALIVE_TIMER_RESOLUTION


class BindingLost(TwistedNATError):
    """Keep-alive got no answer for too long: the NAT binding (or the peer) is gone."""


class PunchFailed(TwistedNATError):
    """No candidate pair worked before the timeout; C{pairs} says what each saw."""

    def __init__(self, elapsed: float, pairs: tuple[PairReport, ...]) -> None:
        detail = "; ".join(p.describe() for p in pairs) or "no candidates"
        super().__init__(f"hole punching failed after {elapsed:.1f}s ({detail})")
        self.elapsed = elapsed
        self.pairs = pairs


# --- actions: what the session asks its owner to do ---------------------------


@attrs.frozen
class Send:
    data: bytes
    to: Address
    base: Base = None


@attrs.frozen
class StartGrace:
    delay: float


@attrs.frozen
class Connected:
    result: PunchResult


@attrs.frozen
class Failed:
    error: PunchFailed


Action = Send | StartGrace | Connected | Failed


SPRAY_PAIRED_KINDS = frozenset({CandidateType.SERVER_REFLEXIVE})
"""
The peer's candidates a spray base punches: the address the peer's easy
NAT shows everyone.  A host candidate would be reached from the shared
socket anyway, and a relay needs no guessing.
"""


@attrs.define
class _Pair:
    remote: Candidate
    base: Base = None
    relayed: bool = False
    sent: int = 0
    punches_received: int = 0
    acks_received: int = 0
    rtt: float | None = None
    last_sent: float = -math.inf

    @property
    def key(self) -> PairKey:
        return (self.base, self.remote.address)

    def rank(self) -> tuple[bool, int]:
        """Direct pairs before relayed ones, then by the peer's priority."""
        return (not self.relayed, self.remote.priority)

    def report(self) -> PairReport:
        return PairReport(
            self.remote, self.sent, self.punches_received, self.acks_received, self.base
        )


class _Birthday:
    """
    A session's part in a birthday punch, while it chooses.

    @ivar bases: our spray bases (the hard side's extra sockets).
    @ivar prober: the easy side's probes, until a direct pair answers.
    @ivar sent: when each spray PUNCH or probe left, and where to, by
        transaction id: kept apart from L{_Choosing.sent}, so that a
        settled session keeps the ids of its ordinary PUNCHes only.
    """

    __slots__ = ("bases", "prober", "sent")

    def __init__(self, bases: frozenset[str], prober: Prober | None) -> None:
        self.bases = bases
        self.prober = prober
        self.sent: dict[bytes, tuple[float, PairKey]] = {}


class _Choosing:
    """
    What a session needs only while it chooses a path: dropped when it
    settles on a direct one (see L{PunchSession}).

    @ivar local: our candidates, a tuple scanned (a peer has a handful, and
        a PUNCH naming one arrives a few times per session).
    @ivar relays: the names of our bases that are TURN relays.
    @ivar pairs: one per base and remote candidate.
    @ivar sent: when each PUNCH left, by transaction id, for the RTT of its ACK.
    @ivar valid: the pairs that have worked both ways, in order.
    @ivar local_kind: which of our candidates the peer reached, once known.
    @ivar birthday: the birthday method's state, in a session that uses it.
    """

    __slots__ = ("birthday", "local", "local_kind", "pairs", "relays", "sent", "valid")

    def __init__(
        self,
        local: tuple[Candidate, ...],
        relays: frozenset[str],
        pairs: dict[PairKey, _Pair],
        birthday: _Birthday | None = None,
    ) -> None:
        self.local = local
        self.relays = relays
        self.pairs = pairs
        self.sent: dict[bytes, float] = {}
        self.valid: tuple[PairKey, ...] = ()
        self.local_kind: CandidateType | None = None
        self.birthday = birthday

    def sprays(self, pair: _Pair) -> bool:
        """Whether C{pair} leaves from a spray base."""
        return self.birthday is not None and pair.base in self.birthday.bases

    def unheard_spray(self, pair: _Pair) -> bool:
        """A spray pair the peer has not reached yet: a guess, punched sparingly."""
        return self.sprays(pair) and not (pair.punches_received or pair.acks_received)

    def stop_probing(self) -> None:
        """A direct path works (or is about to): the guessing is over."""
        if self.birthday is not None:
            self.birthday.prober = None

    def kind_of_local(self, address: Address) -> CandidateType | None:
        """The kind of our candidate at C{address} (the last given, as a dict would keep)."""
        kind = None
        for candidate in self.local:
            if candidate.address == address:
                kind = candidate.kind
        return kind

    def pair(self, base: Base, remote: Candidate) -> _Pair:
        relayed = base in self.relays or remote.kind is CandidateType.RELAYED
        return _Pair(remote, base, relayed)

    def best_valid(self, direct_only: bool = False) -> PairKey | None:
        pairs = self.pairs
        candidates = [k for k in self.valid if not (direct_only and pairs[k].relayed)]
        if not candidates:
            return None
        return max(candidates, key=lambda k: pairs[k].rank())


class PunchSession:
    """
    The decisions of one punch, for one peer.  No I/O, no clock: every
    method takes the time and returns the actions to carry out.

    A connected session is kept for as long as its connection lasts, to
    answer late PUNCHes and ACKs (the peer may still be waiting for its
    CONFIRM), and a node may hold thousands.  So what only choosing a path
    needs (L{_Choosing}: the candidates, the pairs and their counters, the
    working paths, when each PUNCH left) is dropped once the path is
    settled, and what is kept is the keys, the chosen path, and the
    transaction ids of the PUNCHes sent, which a late ACK is checked
    against.  L{reports} of a settled session are those of the moment it
    connected, as in its L{result}.

    A session connected over a relay is not settled: it keeps punching the
    direct pairs until the timeout, and moves to one that works (a second
    L{Connected}).

    @param relays: the names of our bases that are TURN relays; they pair
        with the peer's public candidates (L{RELAY_PAIRED_KINDS}).
    @param spray: the names of our spray bases, this session's alone: they
        pair with the peer's server-reflexive candidates
        (L{SPRAY_PAIRED_KINDS}), or with C{spray_to} only when given, and
        send L{SPRAY_PUNCHES} each until the peer reaches one.  Their first
        PUNCHes leave before any other, in the order of C{spray}: a NAT
        that allocates in sequence gives them consecutive ports
        (L{twisted_nat.meeting}).
    @param spray_to: the peer's addresses the spray bases punch, when not
        its server-reflexive candidates: the port its own run of sockets
        will hold (L{twisted_nat.meeting}), which no candidate names.
    @param prober: probes to send (L{probe}) until a direct pair answers.
    """

    __slots__ = (
        "_choosing",
        "_chosen",
        "_sent_ids",
        "controlling",
        "keys",
        "result",
        "settings",
        "started",
        "state",
    )

    def __init__(
        self,
        keys: SessionKeys,
        controlling: bool,
        local_candidates: Sequence[Candidate],
        remote_candidates: Sequence[Candidate],
        settings: PunchSettings,
        now: float,
        relays: Sequence[str] = (),
        spray: Sequence[str] = (),
        prober: Prober | None = None,
        spray_to: Sequence[Candidate] | None = None,
    ) -> None:
        self.keys = keys
        self.controlling = controlling
        self.settings = settings
        self.started = now
        self.state = "punching"
        self.result: PunchResult | None = None
        birthday = _Birthday(frozenset(spray), prober) if spray or prober is not None else None
        choosing = _Choosing(tuple(local_candidates), frozenset(relays), {}, birthday)
        self._choosing: _Choosing | None = choosing
        for remote in rank(list(remote_candidates)):
            bases: list[Base] = [None]
            if remote.kind in RELAY_PAIRED_KINDS:
                bases += sorted(choosing.relays)
            if remote.kind in SPRAY_PAIRED_KINDS and spray_to is None:
                bases += spray
            for base in bases:
                pair = choosing.pair(base, remote)
                choosing.pairs[pair.key] = pair
        for remote in spray_to or ():
            for base in spray:
                pair = choosing.pair(base, remote)
                choosing.pairs.setdefault(pair.key, pair)
        # Once settled: the ids of the PUNCHes sent, all 12 bytes, end to
        # end (12 bytes each, rather than 56 for an object in a tuple).
        self._sent_ids = b""
        self._chosen: PairKey | None = None

    def _choices(self) -> _Choosing:
        choosing = self._choosing
        assert choosing is not None, "a settled session has chosen"
        return choosing

    @property
    def chosen(self) -> PairKey | None:
        """The base and remote address of the path in use, once connected."""
        return self._chosen

    # --- events ---

    def tick(self, now: float) -> list[Action]:
        """
        A round of PUNCHes, every C{interval}; also where time runs out.
        Connected over a relay, only the direct pairs are punched.
        """
        choosing = self._choosing
        if choosing is None or self.state == "failed":
            return []
        if now - self.started >= self.settings.timeout - 1e-9:  # float sums of delays
            if self.state == "connected":
                self._settle()
                return []
            return self._fail(now)
        direct_only = self.state == "connected"
        # Once a direct pair works, the guesses of the spray bases are moot.
        guessing = choosing.birthday is not None and not any(
            not choosing.pairs[k].relayed for k in choosing.valid
        )
        actions: list[Action] = []
        # Spray pairs first, then by rank (a stable sort keeps the order of
        # the spray bases): their PUNCHes open consecutive ports.
        spaced = now - self.settings.interval + 1e-9
        for pair in sorted(
            choosing.pairs.values(),
            key=lambda p: (choosing.sprays(p), p.rank()),
            reverse=True,
        ):
            limit = self.settings.max_retries
            if choosing.birthday is not None and choosing.unheard_spray(pair):
                # A guess's few PUNCHes go a whole interval apart, not at the
                # quicker pace of the first rounds: a peer whose own run
                # starts a rendezvous trip later must still find one of them.
                limit = SPRAY_PUNCHES if guessing and pair.last_sent <= spaced else 0
            if pair.sent < limit and not (direct_only and pair.relayed):
                actions.append(self._punch(pair, now))
        return actions

    def probe(self, now: float) -> list[Action]:
        """The probes due at C{now}, if this session probes and still needs to."""
        choosing = self._choosing
        birthday = choosing.birthday if choosing is not None else None
        prober = birthday.prober if birthday is not None else None
        if birthday is None or prober is None or self.state == "failed":
            return []
        actions: list[Action] = []
        for address in prober.due(now):
            tid, data = control.punch(self.keys, address)
            birthday.sent[tid] = (now, (None, address))
            actions.append(Send(data, address))
        return actions

    @property
    def next_probe(self) -> float | None:
        """When L{probe} has more to send; None once probing is over."""
        choosing = self._choosing
        if choosing is None or choosing.birthday is None or self.state == "failed":
            return None
        prober = choosing.birthday.prober
        return prober.next_at if prober is not None else None

    @property
    def searching(self) -> bool:
        """Still punching: not yet connected, or connected over a relay only."""
        return self._choosing is not None and self.state != "failed"

    def punch_received(
        self, now: float, message: Message, source: Address, base: Base = None
    ) -> list[Action]:
        """A valid PUNCH: answer it, and punch back at an address we did not know."""
        actions: list[Action] = [
            Send(control.punch_ack(self.keys, message.transaction_id, source), source, base)
        ]
        key = (base, source)
        choosing = self._choosing
        if choosing is not None:
            destination = message.get(Destination)
            if destination is not None and choosing.local_kind is None:
                choosing.local_kind = choosing.kind_of_local(destination.address)
            pair = choosing.pairs.get(key)
            if pair is None:
                pair = choosing.pairs[key] = choosing.pair(base, self._reflexive(source))
                if self.state == "punching" or not pair.relayed:
                    actions.append(self._punch(pair, now))
                if not pair.relayed:
                    # The peer reached us from an address we did not know:
                    # a direct path in, and our PUNCH back completes it.
                    choosing.stop_probing()
            elif choosing.birthday is not None and choosing.unheard_spray(pair):
                # A probe found this socket's mapping: punch back at once
                # (ICE's triggered check), as its spray PUNCHes are spent.
                actions.append(self._punch(pair, now))
            pair.punches_received += 1
        # Connected: the peer has not heard our CONFIRM, or not its ACK yet.
        if self._chosen == key and self.controlling:
            actions.append(Send(control.punch_confirm(self.keys), source, base))
        return actions

    def ack_received(
        self, now: float, message: Message, source: Address, base: Base = None
    ) -> list[Action]:
        """A PUNCH_ACK for one of ours: that path works both ways."""
        key = (base, source)
        choosing = self._choosing
        if choosing is None:  # settled: only a CONFIRM again, if this is the path
            if not self._sent_before(message.transaction_id):
                return []
            if self.controlling and self._chosen == key:
                return [Send(control.punch_confirm(self.keys), source, base)]
            return []
        when = choosing.sent.get(message.transaction_id)
        if when is None and choosing.birthday is not None:
            guess = choosing.birthday.sent.get(message.transaction_id)
            when = guess[0] if guess is not None else None
        if when is None:
            return []
        pair = choosing.pairs.get(key)
        if pair is None:  # answered from elsewhere than we sent to: use where it came from
            pair = choosing.pairs[key] = choosing.pair(base, self._reflexive(source))
        pair.acks_received += 1
        if pair.rtt is None:
            pair.rtt = now - when
        reflexive = message.get(XorMappedAddress)
        if reflexive is not None and choosing.local_kind is None:
            choosing.local_kind = choosing.kind_of_local(reflexive.address)
        if key not in choosing.valid:
            choosing.valid += (key,)
        if not pair.relayed:
            choosing.stop_probing()
        if not self.controlling:
            return []
        if self.state == "connected":
            if self._chosen == key:
                return [Send(control.punch_confirm(self.keys), source, base)]
            if not pair.relayed:
                # Connected over a relay, and a direct pair works now: move.
                return self._nominate(key, now)
            return []
        if len(choosing.valid) == 1 or (
            not pair.relayed and all(choosing.pairs[k].relayed for k in choosing.valid[:-1])
        ):
            # Long enough for a better-ranked path, which is usually also the
            # shorter one, to answer too; never longer than the setting.  A
            # relay waits longer, for a direct pair to come.
            delay = min(self.settings.grace, max(0.005, 2 * pair.rtt))
            if pair.relayed:
                delay = self.settings.relay_grace
            return [StartGrace(delay)]
        return []

    def grace_over(self, now: float) -> list[Action]:
        """The controlling peer names the best path that works."""
        if self.state != "punching":
            return []
        best = self._choices().best_valid()
        if best is None:
            return []
        return self._nominate(best, now)

    def confirm_received(self, now: float, source: Address, base: Base = None) -> list[Action]:
        """The controlling peer named this path: use it."""
        key = (base, source)
        choosing = self._choosing
        if self.controlling or choosing is None or key == self._chosen:
            return []
        pair = choosing.pairs.get(key)
        if pair is None:
            pair = choosing.pairs[key] = choosing.pair(base, self._reflexive(source))
        if self.state == "connected" and pair.relayed:
            return []  # on a relay already; only a direct path is worth a move
        if self.state == "failed":
            return []
        return self._connect(key, now)

    # --- helpers ---

    @staticmethod
    def _reflexive(source: Address) -> Candidate:
        """A peer-reflexive candidate: an address the peer's packets really came from."""
        return Candidate(
            CandidateType.PEER_REFLEXIVE,
            source[0],
            source[1],
            candidate_priority(CandidateType.PEER_REFLEXIVE),
        )

    def _sent_before(self, transaction_id: bytes) -> bool:
        """Whether a settled session sent a PUNCH with this id."""
        ids, size = self._sent_ids, len(transaction_id)
        if not size:
            return False
        found = ids.find(transaction_id)
        while found >= 0:
            if found % size == 0:
                return True
            found = ids.find(transaction_id, found + 1)
        return False

    def _punch(self, pair: _Pair, now: float) -> Send:
        tid, data = control.punch(self.keys, pair.remote.address)
        choosing = self._choices()
        if choosing.birthday is not None and choosing.sprays(pair):
            choosing.birthday.sent[tid] = (now, pair.key)
        else:
            choosing.sent[tid] = now
        pair.sent += 1
        pair.last_sent = now
        return Send(data, pair.remote.address, pair.base)

    def _nominate(self, key: PairKey, now: float) -> list[Action]:
        base, address = key
        return [Send(control.punch_confirm(self.keys), address, base), *self._connect(key, now)]

    def _connect(self, key: PairKey, now: float) -> list[Action]:
        choosing = self._choices()
        self.state = "connected"
        pair = choosing.pairs[key]
        # Equal to the key, but made of the candidate's strings, which the
        # connection keeps anyway, rather than of one datagram's.
        self._chosen = (pair.base, pair.remote.address)
        self.result = PunchResult(
            remote=pair.remote,
            local_kind=choosing.local_kind,
            rtt=pair.rtt,
            elapsed=now - self.started,
            pairs=self.reports(),
            base=pair.base,
            relayed=pair.relayed,
        )
        if not pair.relayed:
            self._settle()
        return [Connected(self.result)]

    def _settle(self) -> None:
        """Nothing better will come: keep only what answering late messages needs."""
        choosing = self._choices()
        ids = b"".join(choosing.sent)
        if choosing.birthday is not None:
            # Of the guesses, only those on the chosen path can be answered late.
            chosen = self._chosen
            ids += b"".join(t for t, (_, k) in choosing.birthday.sent.items() if k == chosen)
        self._sent_ids = ids
        self._choosing = None

    def _fail(self, now: float) -> list[Action]:
        self.state = "failed"
        return [Failed(PunchFailed(now - self.started, self.reports()))]

    def reports(self) -> tuple[PairReport, ...]:
        """
        What each pair saw.  The spray pairs the peer never reached are
        summed into one report: hundreds of reports alike would say no
        more, and a connected session keeps its reports in its result.
        """
        choosing = self._choosing
        if choosing is None:
            assert self.result is not None
            return self.result.pairs
        reports: list[PairReport] = []
        unheard: dict[Address, tuple[Candidate, int, int]] = {}
        for pair in choosing.pairs.values():
            if choosing.birthday is not None and choosing.unheard_spray(pair):
                remote, sockets, sent = unheard.get(pair.remote.address, (pair.remote, 0, 0))
                unheard[pair.remote.address] = (remote, sockets + 1, sent + pair.sent)
            else:
                reports.append(pair.report())
        for remote, sockets, sent in unheard.values():
            reports.append(PairReport(remote, sent, 0, 0, f"{sockets} extra sockets"))
        return tuple(reports)

    def owns(self, transaction_id: bytes) -> bool:
        choosing = self._choosing
        if choosing is not None:
            birthday = choosing.birthday
            return transaction_id in choosing.sent or (
                birthday is not None and transaction_id in birthday.sent
            )
        return self._sent_before(transaction_id)


class _Running:
    """
    A session with its timers and the Deferred its caller waits on, which
    is let go once fired: a connected session is kept for as long as its
    connection lasts, and nobody waits on it any more.
    """

    __slots__ = ("deferred", "grace", "on_better_path", "rounds", "session", "ticker")

    def __init__(
        self,
        session: PunchSession,
        on_better_path: Callable[[PunchResult], object] | None = None,
    ) -> None:
        self.session = session
        self.rounds = 0
        self.deferred: Deferred[PunchResult] | None = Deferred()
        self.ticker: IDelayedCall | None = None
        self.grace: IDelayedCall | None = None
        self.on_better_path = on_better_path


class _KeepAlive:
    """
    One connection's keep-alive: its machine, the Deferred its owner holds,
    and the machine's callbacks.  They are methods rather than closures
    made in L{HolePuncher.maintain_binding}: three closures and their
    cells cost three times as much, once per connection.
    """

    __slots__ = ("base", "deferred", "keys", "machine", "puncher", "remote", "session_id")

    def __init__(
        self,
        puncher: HolePuncher,
        session_id: bytes,
        keys: SessionKeys,
        remote: Address,
        base: Base,
        **machine_options: Any,
    ) -> None:
        self.puncher = puncher
        self.session_id = session_id
        self.keys = keys
        self.remote = remote
        self.base = base
        self.deferred: Deferred[None] = Deferred()
        self.machine = KeepAliveMachine(
            send_probe=self.send_probe, on_warning=self.warn, on_lost=self.lost, **machine_options
        )

    def send_probe(self) -> bytes:
        tid, data = control.keepalive(self.keys)
        self.puncher.write(data, self.remote, self.base)
        return tid

    def warn(self, failures: int) -> None:
        self.puncher.log.warn(
            "no answer from {peer} to {failures} keep-alives in a row",
            peer=format_address(self.remote),
            failures=failures,
        )

    def lost(self) -> None:
        del self.puncher._keepalives[self.session_id]
        self.puncher.log.warn("lost the path to {peer}", peer=format_address(self.remote))
        self.deferred.errback(BindingLost(f"no answer from {format_address(self.remote)}"))


@attrs.define
class PuncherStats:
    """Counters of the control traffic; every dropped datagram lands in one."""

    received: int = 0
    dropped_malformed: int = 0
    dropped_unknown_session: int = 0
    dropped_bad_mac: int = 0
    dropped_wrong_path: int = 0
    unsendable: int = 0
    probes_sent: int = 0


class _BaseReceiver(DatagramProtocol):
    """
    The puncher's protocol on another base's multiplexer: it hands what
    arrives there to the puncher, named by its base, so that the answer
    leaves the way the question came.
    """

    noisy = False

    def __init__(self, puncher: HolePuncher, base: str) -> None:
        self.puncher = puncher
        self.base = base

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        self.puncher.received(datagram, addr, self.base)


class HolePuncher(DatagramProtocol):
    """
    The punch handshake and keep-alive on the shared socket: attach it to
    the multiplexer (L{attach}), call L{punch_hole}, then
    L{maintain_binding} for the connection made.

    Sessions stay registered after they connect, so that late PUNCHes and
    the peer's KEEP_ALIVEs are still answered, until L{forget} is called
    when the connection closes.
    """

    log = Logger()
    noisy = False

    def __init__(self, reactor: IReactorTime | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        assert reactor is not None
        self._reactor: IReactorTime = reactor
        self._running: dict[bytes, _Running] = {}
        self._keepalives: dict[bytes, _KeepAlive] = {}
        self._bases: dict[str, Any] = {}
        self._relays: set[str] = set()
        # Every keep-alive machine's one timer lives in a queue shared on the
        # reactor (see TimerQueue): thousands of connections cost a few turns
        # of the reactor a second, not a turn per timer.  Machines share
        # these bound methods (one schedule per resolution) rather than each
        # making its own.
        self._schedules: dict[float, Schedule] = {}
        self._now = reactor.seconds
        self.stats = PuncherStats()
        # Only the few sessions using the birthday method are in these, and
        # only until they stop probing, or settle.
        self._probing: dict[bytes, tuple[IDelayedCall | None, Prober]] = {}
        self._settling: dict[bytes, Callable[[Base], object]] = {}

    def attach(self, mux: Any) -> None:
        """Route PUNCH and KEEPALIVE messages of every class from C{mux} to this protocol."""
        mux.add_stun(self, [control.PUNCH, control.KEEPALIVE])

    def add_base(self, name: str, mux: Any, relayed: bool) -> None:
        """
        Punch and keep alive from another local transport too: C{mux} is
        the multiplexer of a TURN allocation (C{relayed}) or of another
        socket.  Sessions started from now on pair it with the peer's
        public candidates, and every PUNCH that arrives on it is answered
        on it.
        """
        if name in self._bases:
            raise ConfigurationError(f"the puncher has a base called {name!r} already")
        self._bases[name] = mux.add_stun(
            _BaseReceiver(self, name), [control.PUNCH, control.KEEPALIVE]
        )
        if relayed:
            self._relays.add(name)

    def remove_base(self, name: str) -> None:
        """Stop using a base (its allocation ended); its pairs fall silent."""
        self._bases.pop(name, None)
        self._relays.discard(name)

    def write(self, data: bytes, to: Address, base: Base = None) -> None:
        """
        Send on a base.  A base that is gone, or a relay that cannot send
        there (no permission yet), loses the datagram as a network would:
        counted, logged, and retried by whoever retries.
        """
        transport = self.transport if base is None else self._bases.get(base)
        if transport is None:
            self.stats.unsendable += 1
            self.log.debug("no base {base} to send to {to} from", base=base, to=to)
            return
        try:
            transport.write(data, to)
        except TwistedNATError as e:
            self.stats.unsendable += 1
            self.log.debug("could not send to {to} via {base}: {error}", to=to, base=base, error=e)

    def maintain_binding(
        self,
        connection: Any,
        remote_addr: Address,
        interval: float = 25.0,
        timeout: float = 5.0,
        *,
        base: Base = None,
        **options: Any,
    ) -> Deferred[None]:
        """
        Keep the NAT bindings of C{connection}'s path open with KEEP_ALIVE
        every C{interval} seconds, and measure the path while doing so.

        The connection gets a C{keepalive} attribute (the
        L{KeepAliveMachine}, whose C{quality()} is the link's RTT, loss and
        jitter).  C{options} go to the machine (C{warn_after},
        C{dead_after}, C{retry_interval}).

        @return: a Deferred that fires with None when keep-alive is stopped
            (L{stop_binding}, L{forget}), or fails with L{BindingLost} when
            the peer stopped answering.

        @param base: the base the path leaves from (L{PunchResult.base}).
        """
        session_id = connection.session_id
        if session_id not in self._running:
            raise ConfigurationError(f"no punched session {session_id.hex()} to keep alive")
        if session_id in self._keepalives:
            raise ConfigurationError(f"session {session_id.hex()} is already kept alive")
        session = self._running[session_id].session
        keys = session.keys
        theirs = getattr(connection, "keys", None)
        if isinstance(theirs, SessionKeys) and theirs is not keys and theirs == keys:
            # The connection derived the same keys again: keep one copy of
            # them, not two, for as long as the connection lasts.
            session.keys = keys = theirs
        entry = _KeepAlive(
            self,
            session_id,
            keys,
            remote_addr,
            base,
            interval=interval,
            timeout=timeout,
            schedule=self._timers(
                _timer_resolution(interval, timeout, options.get("retry_interval"))
            ),
            now=self._now,
            **options,
        )
        self._keepalives[session_id] = entry
        connection.keepalive = entry.machine
        entry.machine.start()
        return entry.deferred

    def _timers(self, resolution: float) -> Schedule:
        schedule = self._schedules.get(resolution)
        if schedule is None:
            queue = TimerQueue.shared(self._reactor, resolution)
            schedule = self._schedules[resolution] = queue.schedule
        return schedule

    def stop_binding(self, session_id: bytes) -> None:
        """Stop keeping a session's path alive (its Deferred fires with None)."""
        entry = self._keepalives.pop(session_id, None)
        if entry is not None:
            entry.machine.stop()
            entry.deferred.callback(None)

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
        bases: Sequence[str] = (),
        prober: Prober | None = None,
        on_settled: Callable[[Base], object] | None = None,
        spray_to: Sequence[Candidate] | None = None,
    ) -> Deferred[PunchResult]:
        """
        Punch towards C{remote_candidates} for session C{punch_id}.

        @param local_port: the shared socket's port; checked, since a punch
            from any other socket would open the wrong binding.
        @param secret: the session's 32-byte secret from the offer.
        @param controlling: True for the offering peer, which picks the path.
        @param on_better_path: called with a new L{PunchResult} when a
            session connected over a relay moves to a direct pair.
        @param bases: spray bases of this session alone (the birthday
            method's hard side): names given to L{add_base}, not relays;
            they pair with the peer's server-reflexive candidates only,
            and send a few PUNCHes each until the peer reaches one.
        @param spray_to: what the spray bases punch instead of the peer's
            server-reflexive candidates (the meeting method's one port).
        @param prober: the birthday method's easy side: probes sent as it
            paces them, until a direct pair answers.
        @param on_settled: called once, with the base of the path in use,
            when the session has stopped looking for a better one
            (connected directly, or the timeout ended a relayed
            connection's search), and with None when it failed or was
            forgotten first: when the spray bases can go.
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
        for name in bases:
            if name not in self._bases or name in self._relays:
                raise ConfigurationError(f"no direct base called {name!r} to punch from")
        keys = SessionKeys.derive(punch_id, secret, offerer=controlling)
        session = PunchSession(
            keys,
            controlling,
            local_candidates,
            remote_candidates,
            _settings(interval, timeout, max_retries),
            self._reactor.seconds(),
            sorted(self._relays),
            bases,
            prober,
            spray_to,
        )
        running = self._running[punch_id] = _Running(session, on_better_path)
        deferred = running.deferred
        assert deferred is not None
        if on_settled is not None:
            self._settling[punch_id] = on_settled
        if prober is not None:
            self._probing[punch_id] = (None, prober)
            self.log.info(
                "probing up to {budget} ports of {host} for {session}",
                budget=prober.budget,
                host=prober.host,
                session=punch_id.hex(),
            )
            self._schedule_probe(punch_id, session)
        self._tick(punch_id)
        return deferred

    def forget(self, punch_id: bytes) -> None:
        """Stop answering for a session (its connection closed)."""
        self.stop_binding(punch_id)
        running = self._running.pop(punch_id, None)
        if running is not None:
            self._cancel_timers(running)
            deferred, running.deferred = running.deferred, None
            if deferred is not None and not deferred.called:
                deferred.errback(PunchFailed(self._reactor.seconds() - running.session.started, ()))
        self._follow_up(punch_id)

    def keys(self, punch_id: bytes) -> SessionKeys | None:
        running = self._running.get(punch_id)
        return running.session.keys if running is not None else None

    # --- the protocol ---

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        self.received(datagram, addr, None)

    def received(self, datagram: bytes, addr: Address, base: Base) -> None:
        """A control datagram that arrived on C{base}."""
        self.stats.received += 1
        # Keep-alives in our own layout, nearly all the traffic of a node
        # with many connections, skip the general decoder; anything else
        # goes through it, and is judged exactly as before.
        fields = control.keepalive_fields(datagram)
        if fields is not None:
            session_id, message_class, transaction_id = fields
            running = self._session(session_id, addr)
            if running is None:
                return
            keys = running.session.keys
            if not control.verify_keepalive(datagram, keys):
                self._bad_mac(addr)
                return
            self._keepalive_received(session_id, keys, message_class, transaction_id, addr, base)
            return
        claimed = control.session_of(datagram)
        if claimed is None:
            self.stats.dropped_malformed += 1
            self.log.debug("dropped malformed control datagram from {addr}", addr=addr)
            return
        message, session_id = claimed
        running = self._session(session_id, addr)
        if running is None:
            return
        session = running.session
        if not control.verify(message, session.keys):
            self._bad_mac(addr)
            return
        if message.method == control.KEEPALIVE:
            self._keepalive_received(
                session_id, session.keys, message.message_class, message.transaction_id, addr, base
            )
            return
        now = self._reactor.seconds()
        if message.message_class == MessageClass.REQUEST:
            actions = session.punch_received(now, message, addr, base)
        elif message.message_class == MessageClass.SUCCESS:
            actions = session.ack_received(now, message, addr, base)
        elif message.message_class == MessageClass.INDICATION:
            actions = session.confirm_received(now, addr, base)
        else:
            actions = []
        self._carry_out(session_id, actions)

    def _session(self, session_id: bytes, addr: Address) -> _Running | None:
        running = self._running.get(session_id)
        if running is None:
            self.stats.dropped_unknown_session += 1
            self.log.debug("dropped PUNCH for an unknown session from {addr}", addr=addr)
        return running

    def _bad_mac(self, addr: Address) -> None:
        self.stats.dropped_bad_mac += 1
        self.log.debug("dropped control message failing its MAC from {addr}", addr=addr)

    def _keepalive_received(
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
        entry = self._keepalives.get(session_id)
        if entry is not None and (addr != entry.remote or base != entry.base):
            self.stats.dropped_wrong_path += 1
            self.log.debug("ignored a keep-alive from {addr}, off the path", addr=addr)
            return
        if message_class == MessageClass.REQUEST:
            self.write(control.keepalive_ack(keys, transaction_id), addr, base)
            if entry is not None:
                entry.machine.probe_received()
        elif message_class == MessageClass.SUCCESS and entry is not None:
            entry.machine.ack_received(transaction_id)
            entry.machine.traffic_received()

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
        self._carry_out(punch_id, running.session.tick(self._reactor.seconds()))
        if running.session.searching and punch_id in self._running:
            # The first rounds come quicker (20, 40, 80, 160 ms): the peer
            # starts punching half a rendezvous round trip before we do, and
            # its first PUNCHes, sent before our session existed or before
            # our NAT was open, need not cost a whole interval.
            session = running.session
            delay = min(session.settings.interval, FIRST_ROUND * 2 ** min(running.rounds, 8))
            # ...and the last one comes when time is up, not an interval after.
            remaining = session.started + session.settings.timeout - self._reactor.seconds()
            delay = max(0.0, min(delay, remaining))
            running.rounds += 1
            running.ticker = self._reactor.callLater(delay, self._tick, punch_id)

    def _grace_over(self, punch_id: bytes) -> None:
        running = self._running.get(punch_id)
        if running is not None:
            running.grace = None
            self._carry_out(punch_id, running.session.grace_over(self._reactor.seconds()))

    def _carry_out(self, punch_id: bytes, actions: list[Action]) -> None:
        running = self._running[punch_id]
        for action in actions:
            if isinstance(action, Send):
                self.write(action.data, action.to, action.base)
            elif isinstance(action, StartGrace):
                self._start_grace(punch_id, running, action.delay)
            elif isinstance(action, Connected):
                if not running.session.searching:
                    self._cancel_timers(running)
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
            else:
                self._cancel_timers(running)
                del self._running[punch_id]
                deferred, running.deferred = running.deferred, None
                if deferred is not None:
                    deferred.errback(action.error)
        self._follow_up(punch_id)

    # --- the birthday method ---

    def _schedule_probe(self, punch_id: bytes, session: PunchSession) -> None:
        entry = self._probing.get(punch_id)
        due = session.next_probe
        if entry is None or due is None or punch_id not in self._running:
            self._follow_up(punch_id)
            return
        delay = max(0.0, due - self._reactor.seconds())
        self._probing[punch_id] = (self._reactor.callLater(delay, self._probe, punch_id), entry[1])

    def _probe(self, punch_id: bytes) -> None:
        running = self._running.get(punch_id)
        if running is None:
            return
        actions = running.session.probe(self._reactor.seconds())
        self.stats.probes_sent += len(actions)
        self._carry_out(punch_id, actions)
        self._schedule_probe(punch_id, running.session)

    def _follow_up(self, punch_id: bytes) -> None:
        """
        After each event of a session using the birthday method: stop the
        probe timer once probing is over, and say when the session settled.
        """
        if punch_id not in self._probing and punch_id not in self._settling:
            return
        running = self._running.get(punch_id)
        session = running.session if running is not None else None
        probing = self._probing.get(punch_id)
        if probing is not None and (session is None or session.next_probe is None):
            del self._probing[punch_id]
            timer, prober = probing
            if timer is not None and timer.active():
                timer.cancel()
            self.log.info(
                "stopped probing {host} after {sent} of {budget} PUNCHes",
                host=prober.host,
                sent=prober.sent,
                budget=prober.budget,
            )
        if punch_id in self._settling and (session is None or not session.searching):
            settled = self._settling.pop(punch_id)
            chosen = session.chosen if session is not None else None
            settled(chosen[0] if chosen is not None else None)

    def _start_grace(self, punch_id: bytes, running: _Running, delay: float) -> None:
        """A grace period, or a shorter one instead of a relay's longer one."""
        grace = running.grace
        if grace is not None and grace.active():
            if grace.getTime() <= self._reactor.seconds() + delay:
                return
            grace.cancel()
        running.grace = self._reactor.callLater(delay, self._grace_over, punch_id)

    def _cancel_timers(self, running: _Running) -> None:
        for timer in (running.ticker, running.grace):
            if timer is not None and timer.active():
                timer.cancel()
        running.ticker = running.grace = None
