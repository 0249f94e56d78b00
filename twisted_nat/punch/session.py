"""
The decisions of one punch: the PUNCH -> PUNCH_ACK -> PUNCH_CONFIRM handshake.

Both peers send PUNCH to every candidate of the other, in rank order, every
interval, at the same time: the first PUNCH out of each NAT opens it for
the answers.  A PUNCH_ACK proves a path works both ways.  The offering peer
controls the choice (as ICE's controlling agent does): after its first
working path it waits a moment for a better-ranked one, then names its
choice with PUNCH_CONFIRM; the answering peer takes the path the CONFIRM
arrived on.  A PUNCH from an address that is no candidate (a symmetric
NAT's fresh mapping) becomes a peer-reflexive candidate and is punched at
once, which is what lets a symmetric NAT connect to a cone.

Relayed pairs (through our relay, or to the peer's) rank below every direct
pair: the controlling peer takes a relay only when no direct pair has worked
for L{PunchSettings.relay_grace}, keeps punching the direct pairs until the
timeout, and moves to one that works later (L{Connected} again).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from twisted_nat import control
from twisted_nat.address import Address
from twisted_nat.bases import SHARED, Base
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.control import Destination, SessionKeys
from twisted_nat.punch.birthday import Prober
from twisted_nat.punch.choosing import Choosing, Pair
from twisted_nat.punch.sent import SentIds
from twisted_nat.punch.values import (
    Action,
    Connected,
    Failed,
    PairKey,
    PairReport,
    PunchFailed,
    PunchResult,
    PunchSettings,
    Refused,
    Send,
    StartGrace,
)
from twisted_nat.stun.attributes import XorMappedAddress
from twisted_nat.stun.message import Message


class SessionState(enum.Enum):
    PUNCHING = "punching"
    CONNECTED = "connected"
    """Connected; still punching the direct pairs when the path is relayed."""
    FAILED = "failed"


class PunchSession:
    """
    The decisions of one punch, for one peer.  No I/O, no clock: every
    method takes the time and returns the actions to carry out.

    A connected session is kept for as long as its connection lasts, to
    answer late PUNCHes and ACKs (the peer may still be waiting for its
    CONFIRM), and a node may hold thousands.  So what only choosing a path
    needs (L{Choosing}: the candidates, the pairs and their counters, the
    working paths, when each PUNCH left) is dropped once the path is
    settled, and what is kept is the keys, the chosen path, and the
    transaction ids of the PUNCHes sent, which a late ACK is checked
    against.  L{reports} of a settled session are those of the moment it
    connected, as in its L{result}.

    A session connected over a relay is not settled: it keeps punching the
    direct pairs until the timeout, and moves to one that works (a second
    L{Connected}).

    The candidates and bases pair as L{Choosing.for_punch} says.
    @param family_in_use: the family of the path this punch replaces, if
        any, which the choice between families leans to.
    """

    __slots__ = (
        "_choosing",
        "_chosen",
        "_sent_ids",
        "controlling",
        "family_in_use",
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
        relays: Sequence[Base] = (),
        spray: Sequence[Base] = (),
        prober: Prober | None = None,
        spray_to: Sequence[Candidate] | None = None,
        family_in_use: int | None = None,
    ) -> None:
        self.keys = keys
        self.family_in_use = family_in_use
        self.controlling = controlling
        self.settings = settings
        self.started = now
        self.state = SessionState.PUNCHING
        self.result: PunchResult | None = None
        self._choosing: Choosing | None = Choosing.for_punch(
            local_candidates, remote_candidates, settings, now, relays, spray, prober, spray_to
        )
        self._sent_ids = SentIds()
        self._chosen: PairKey | None = None

    def _choices(self) -> Choosing:
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
        if choosing is None or self.state is SessionState.FAILED:
            return []
        if now - self.started >= self.settings.timeout - 1e-9:  # float sums of delays
            if self.state is SessionState.CONNECTED:
                self._settle()
                return []
            return self._fail(now)
        return self._round(choosing, now, new_only=False)

    def pace(self, now: float) -> list[Action]:
        """
        Between rounds, the addresses the last round's pace held back, as
        the pace lets them go (L{next_pace}).
        """
        choosing = self._choosing
        if choosing is None or self.state is SessionState.FAILED:
            return []
        return self._round(choosing, now, new_only=True)

    @property
    def next_pace(self) -> float | None:
        """When held-back addresses may go (L{pace}); None when none wait."""
        choosing = self._choosing
        if choosing is None or not choosing.held or self.state is SessionState.FAILED:
            return None
        return choosing.paced_at()

    def _round(self, choosing: Choosing, now: float, new_only: bool) -> list[Action]:
        direct_only = self.state is SessionState.CONNECTED
        due = choosing.due(now, self.settings, direct_only=direct_only, new_only=new_only)
        return [self._punch(pair, now) for pair in due]

    def probe(self, now: float) -> list[Action]:
        """The probes due at C{now}, if this session probes and still needs to."""
        choosing = self._choosing
        if choosing is None or choosing.guesses is None or self.state is SessionState.FAILED:
            return []
        return choosing.guesses.probe(self.keys, now)

    @property
    def next_probe(self) -> float | None:
        """When L{probe} has more to send; None once probing is over."""
        choosing = self._choosing
        if choosing is None or choosing.guesses is None or self.state is SessionState.FAILED:
            return None
        prober = choosing.guesses.prober
        return prober.next_at if prober is not None else None

    @property
    def searching(self) -> bool:
        """Still punching: not yet connected, or connected over a relay only."""
        return self._choosing is not None and self.state is not SessionState.FAILED

    def punch_received(
        self, now: float, message: Message, source: Address, base: Base = SHARED
    ) -> list[Action]:
        """
        A valid PUNCH: answer it, and punch back at an address we did not
        know (a peer-reflexive candidate, learnt only from a request) or,
        controlled, on a pair that has not worked for us yet.
        """
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
            new = pair is None
            if pair is None:
                pair = choosing.pairs[key] = choosing.pair(
                    base, Candidate(CandidateType.PEER_REFLEXIVE, *source)
                )
            unheard_spray = choosing.guesses is not None and choosing.unheard_spray(pair)
            # Counted first: a PUNCH back draws on the budget of pairs heard from.
            pair.punches_received += 1
            if new:
                if (self.state is SessionState.PUNCHING or not pair.relayed) and choosing.affords(
                    pair
                ):
                    actions.append(self._punch(pair, now))
                if not pair.relayed:
                    # The peer reached us from an address we did not know:
                    # a direct path in, and our PUNCH back completes it.
                    choosing.stop_probing()
            elif unheard_spray:
                # A probe found this socket's mapping: punch back at once
                # (ICE's triggered check), as its spray PUNCHes are spent.
                actions.append(self._punch(pair, now))
            elif not self.controlling and key not in choosing.valid and self._may_take(pair):
                # ICE's triggered check: the controlled peer takes a CONFIRM
                # only on a pair that worked for it, so it checks this one
                # now, before the CONFIRM comes.
                actions += self._trigger(pair, now)
            if (
                self.controlling
                and self.state is SessionState.PUNCHING
                and pair.punches_received == 1
                and choosing.at_once(pair)
            ):
                # It worked for us before the peer's PUNCH came by it: the
                # grace may end now that our ACK goes ahead of the CONFIRM.
                actions.append(StartGrace(0.0))
        # Connected: the peer has not heard our CONFIRM, or not its ACK yet.
        if self._chosen == key and self.controlling:
            actions.append(Send(control.punch_confirm(self.keys), source, base))
        return actions

    def ack_received(
        self, now: float, message: Message, source: Address, base: Base = SHARED
    ) -> list[Action]:
        """
        A PUNCH_ACK for one of ours: that path works both ways.  It counts
        only from where its PUNCH went (RFC 8445 section 7.2.5.2.1): one
        from elsewhere is a replay, or a path the peer's own PUNCHes will
        show us.
        """
        key = (base, source)
        choosing = self._choosing
        if choosing is None:  # settled: only a CONFIRM again, if this is the path
            if message.transaction_id not in self._sent_ids:
                return []
            if self.controlling and self._chosen == key:
                return [Send(control.punch_confirm(self.keys), source, base)]
            return []
        sent = choosing.sent.get(message.transaction_id)
        if sent is None and choosing.guesses is not None:
            sent = choosing.guesses.sent.get(message.transaction_id)
        if sent is None:
            return []
        when, sent_to = sent
        if sent_to != key:
            return [Refused("a PUNCH_ACK from elsewhere than its PUNCH went")]
        pair = choosing.pairs.get(key)
        if pair is None:  # a probe's answer: the probe went there
            pair = choosing.pairs[key] = choosing.pair(
                base, Candidate(CandidateType.PEER_REFLEXIVE, *source)
            )
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
            if pair.nominated and self._may_take(pair):
                return self._connect(key, now)  # named before it worked for us
            return []
        if self.state is SessionState.CONNECTED:
            if self._chosen == key:
                return [Send(control.punch_confirm(self.keys), source, base)]
            if not pair.relayed:
                # Connected over a relay, and a direct pair works now: move.
                return self._nominate(key, now)
            return []
        delay = choosing.grace(pair, self.settings)
        return [] if delay is None else [StartGrace(delay)]

    def grace_over(self, now: float) -> list[Action]:
        """The controlling peer names the best path that works."""
        if self.state is not SessionState.PUNCHING:
            return []
        best = self._choices().best_valid(
            families=self.settings.families, current=self.family_in_use
        )
        if best is None:
            return []
        return self._nominate(best, now)

    def confirm_received(self, now: float, source: Address, base: Base = SHARED) -> list[Action]:
        """
        The controlling peer named this path: use it, once it has worked
        for us too (an ACK to our own PUNCH there); until then it is
        remembered and checked at once, as ICE nominates only valid pairs.
        """
        key = (base, source)
        choosing = self._choosing
        if self.controlling or choosing is None or key == self._chosen:
            return []
        if self.state is SessionState.FAILED:
            return []
        pair = choosing.pairs.get(key)
        if pair is None:
            return [Refused("a PUNCH_CONFIRM from an address that never sent a PUNCH")]
        if not self._may_take(pair):
            return []  # on a relay already; only a direct path is worth a move
        if key not in choosing.valid:
            pair.nominated = True
            return self._trigger(pair, now)
        return self._connect(key, now)

    # --- helpers ---

    def _may_take(self, pair: Pair) -> bool:
        """Whether the controlled peer may take C{pair} now: any, or a direct one after a relay."""
        return self.state is SessionState.PUNCHING or (
            self.state is SessionState.CONNECTED and not pair.relayed
        )

    def _trigger(self, pair: Pair, now: float) -> list[Action]:
        """A PUNCH at once in answer to the peer, at most C{max_retries} per pair."""
        if pair.triggered >= self.settings.max_retries or not self._choices().affords(pair):
            return []
        pair.triggered += 1
        return [self._punch(pair, now)]

    @property
    def remembered(self) -> int:
        """How many PUNCHes a settled session remembers, to check late ACKs against."""
        return len(self._sent_ids)

    def _punch(self, pair: Pair, now: float) -> Send:
        tid, data = control.punch(self.keys, pair.remote.address)
        choosing = self._choices()
        if choosing.guesses is not None and choosing.sprays(pair):
            choosing.guesses.sent[tid] = (now, pair.key)
        else:
            choosing.sent[tid] = (now, pair.key)
        choosing.punched.add(pair.remote.address)
        pair.sent += 1
        pair.last_sent = now
        return Send(data, pair.remote.address, pair.base)

    def _nominate(self, key: PairKey, now: float) -> list[Action]:
        base, address = key
        return [Send(control.punch_confirm(self.keys), address, base), *self._connect(key, now)]

    def _connect(self, key: PairKey, now: float) -> list[Action]:
        choosing = self._choices()
        self.state = SessionState.CONNECTED
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
        ids = list(choosing.sent)
        if choosing.guesses is not None:
            # Of the guesses, only those on the chosen path can be answered late.
            chosen = self._chosen
            ids += [t for t, (_, k) in choosing.guesses.sent.items() if k == chosen]
        self._sent_ids = SentIds(ids)
        self._choosing = None

    def _fail(self, now: float) -> list[Action]:
        self.state = SessionState.FAILED
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
        return choosing.reports()

    def owns(self, transaction_id: bytes) -> bool:
        choosing = self._choosing
        if choosing is not None:
            guesses = choosing.guesses
            return transaction_id in choosing.sent or (
                guesses is not None and transaction_id in guesses.sent
            )
        return transaction_id in self._sent_ids
