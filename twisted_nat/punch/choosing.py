"""
What a punch session keeps only while it chooses a path: its candidate
pairs and their counters, the pairs that work, and when each PUNCH left.
A session drops all of it once it settles (L{twisted_nat.punch.session}).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from twisted_nat import control
from twisted_nat.address import Address, family_of
from twisted_nat.bases import SHARED, Base, shared_base
from twisted_nat.candidates import Candidate, CandidateType, rank
from twisted_nat.control import SessionKeys
from twisted_nat.limits import TokenBucket
from twisted_nat.punch.birthday import SPRAY_PUNCHES, Prober
from twisted_nat.punch.preference import DEFAULT_PREFERENCE, FamilyPreference
from twisted_nat.punch.values import (
    RELAY_PAIRED_KINDS,
    SPRAY_PAIRED_KINDS,
    Action,
    PairKey,
    PairReport,
    PunchSettings,
    Send,
)


@attrs.define
class Pair:
    """One base of ours and one candidate of the peer's, with what they saw."""

    remote: Candidate
    base: Base
    relayed: bool = False
    sent: int = 0
    punches_received: int = 0
    acks_received: int = 0
    rtt: float | None = None
    last_sent: float = -math.inf
    nominated: bool = False
    """The controlling peer named this pair before it worked for us (ICE's USE-CANDIDATE)."""
    triggered: int = 0
    """PUNCHes sent at once in answer to the peer, beyond the rounds' own."""

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


class Guesses:
    """
    A session's part in a birthday punch or a meeting run, while it chooses.

    @ivar bases: our spray bases (extra sockets of this session alone).
    @ivar prober: the probes of the birthday method's easy side, until a
        direct pair answers.
    @ivar sent: when each spray PUNCH or probe left, and where to, by
        transaction id: kept apart from L{Choosing.sent}, so that a settled
        session keeps the ids of its ordinary PUNCHes only.
    """

    __slots__ = ("bases", "prober", "sent")

    def __init__(self, bases: frozenset[Base], prober: Prober | None) -> None:
        self.bases = bases
        self.prober = prober
        self.sent: dict[bytes, tuple[float, PairKey]] = {}

    def probe(self, keys: SessionKeys, now: float) -> list[Action]:
        """The probes due at C{now}, while probing lasts, each remembered in L{sent}."""
        actions: list[Action] = []
        for address in self.prober.due(now) if self.prober is not None else ():
            tid, data = control.punch(keys, address)
            self.sent[tid] = (now, (SHARED, address))
            actions.append(Send(data, address))
        return actions


class Choosing:
    """
    What a session needs only while it chooses a path.

    @ivar local: our candidates, a tuple scanned (a peer has a handful, and
        a PUNCH naming one arrives a few times per session).
    @ivar pairs: one per base and remote candidate.
    @ivar sent: when each PUNCH left and to which pair, by transaction id:
        for the RTT of its ACK, and to take the ACK only from there.
    @ivar valid: the pairs that have worked both ways, in order.
    @ivar local_kind: which of our candidates the peer reached, once known.
    @ivar guesses: the spray bases and probes, in a session that uses them.
    @ivar punched: the peer's addresses punched so far, from any base.
    @ivar held: whether the pace held back an address in the last round.
    @param budget: PUNCHes to pairs that have not answered, in all
        (L{twisted_nat.punch.values.PunchSettings.unanswered_budget}).
    @param pacing: the pace at which the rounds reach addresses not in
        L{punched} (L{twisted_nat.punch.values.PunchSettings.pace}).
    """

    __slots__ = (
        "_heard_left",
        "_pacing",
        "_unanswered_left",
        "guesses",
        "held",
        "local",
        "local_kind",
        "pairs",
        "punched",
        "sent",
        "valid",
    )

    def __init__(
        self,
        local: tuple[Candidate, ...],
        budget: int,
        pacing: TokenBucket,
        guesses: Guesses | None = None,
    ) -> None:
        self.local = local
        self._unanswered_left = self._heard_left = budget
        self._pacing = pacing
        self.punched: set[Address] = set()
        self.held = False
        self.pairs: dict[PairKey, Pair] = {}
        self.sent: dict[bytes, tuple[float, PairKey]] = {}
        self.valid: tuple[PairKey, ...] = ()
        self.local_kind: CandidateType | None = None
        self.guesses = guesses

    def sprays(self, pair: Pair) -> bool:
        """Whether C{pair} leaves from a spray base."""
        return self.guesses is not None and pair.base in self.guesses.bases

    def unheard_spray(self, pair: Pair) -> bool:
        """A spray pair the peer has not reached yet: a guess, punched sparingly."""
        return self.sprays(pair) and not (pair.punches_received or pair.acks_received)

    def stop_probing(self) -> None:
        """A direct path works (or is about to): the guessing is over."""
        if self.guesses is not None:
            self.guesses.prober = None

    def kind_of_local(self, address: Address) -> CandidateType | None:
        """The kind of our candidate at C{address} (the last given, as a dict would keep)."""
        kind = None
        for candidate in self.local:
            if candidate.address == address:
                kind = candidate.kind
        return kind

    @classmethod
    def for_punch(
        cls,
        local: Sequence[Candidate],
        remote: Sequence[Candidate],
        settings: PunchSettings,
        now: float,
        relays: Sequence[Base] = (),
        spray: Sequence[Base] = (),
        prober: Prober | None = None,
        spray_to: Sequence[Candidate] | None = None,
    ) -> Choosing:
        """
        The pairs of a new punch, within a family: every remote candidate
        from the shared socket of its family, and as follows from the other
        bases of that family.

        @param relays: our relayed bases; they pair with the peer's public
            candidates (L{RELAY_PAIRED_KINDS}).
        @param spray: our spray bases, this session's alone: they
            pair with the peer's server-reflexive candidates
            (L{SPRAY_PAIRED_KINDS}), or with C{spray_to} only when given, and
            send L{SPRAY_PUNCHES} each until the peer reaches one.  Their first
            PUNCHes leave before any other, in the order of C{spray}: a NAT
            that allocates in sequence gives them consecutive ports
            (L{twisted_nat.punch.meeting}).
        @param spray_to: the peer's addresses the spray bases punch, when not
            its server-reflexive candidates: the port its own run of sockets
            will hold (L{twisted_nat.punch.meeting}), which no candidate names.
        @param prober: probes to send (L{Guesses.probe}) until a direct pair answers.
        """
        guesses = Guesses(frozenset(spray), prober) if spray or prober is not None else None
        pacing = TokenBucket(1.0 / settings.pace, settings.pace_burst, now)
        choosing = cls(tuple(local), settings.unanswered_budget, pacing, guesses)
        for candidate in rank(list(remote)):
            # Pairs form within a family: the shared socket of the
            # candidate's, and the relays and spray sockets of that family.
            family = family_of(candidate.host)
            bases: list[Base] = [shared_base(family)]
            if candidate.kind in RELAY_PAIRED_KINDS:
                bases += relays
            if candidate.kind in SPRAY_PAIRED_KINDS and spray_to is None:
                bases += spray
            for base in bases:
                if base.family == family:
                    pair = choosing.pair(base, candidate)
                    choosing.pairs[pair.key] = pair
        for candidate in spray_to or ():
            for base in spray:
                if base.family == family_of(candidate.host):
                    pair = choosing.pair(base, candidate)
                    choosing.pairs.setdefault(pair.key, pair)
        return choosing

    @staticmethod
    def pair(base: Base, remote: Candidate) -> Pair:
        return Pair(remote, base, base.relayed or remote.kind is CandidateType.RELAYED)

    def learn(self, base: Base, source: Address) -> Pair:
        """A new pair to a peer-reflexive candidate: where the peer's packets really came from."""
        pair = self.pairs[(base, source)] = self.pair(
            base, Candidate(CandidateType.PEER_REFLEXIVE, *source)
        )
        return pair

    def best_valid(
        self,
        direct_only: bool = False,
        families: FamilyPreference = DEFAULT_PREFERENCE,
        current: int | None = None,
    ) -> PairKey | None:
        """
        The pair to name: direct before relayed; between direct pairs of
        both families, the family C{families} prefers by their RTTs (for a
        connection on the family C{current}, if any); then the best-ranked.
        """
        pairs = self.pairs
        candidates = [k for k in self.valid if not (direct_only and pairs[k].relayed)]
        if not candidates:
            return None
        best = max(candidates, key=lambda k: pairs[k].rank())
        if pairs[best].relayed:
            return best
        by_family: dict[int, PairKey] = {}
        for key in candidates:
            pair = pairs[key]
            family = pair.base.family
            if not pair.relayed and (
                family not in by_family or pair.rank() > pairs[by_family[family]].rank()
            ):
                by_family[family] = key
        if len(by_family) < 2:
            return best
        rtt6, rtt4 = pairs[by_family[6]].rtt, pairs[by_family[4]].rtt
        return by_family[families.choose(rtt6, rtt4, current)]

    def grace(self, pair: Pair, settings: PunchSettings) -> float | None:
        """
        How long the controlling peer waits for better pairs once C{pair},
        the last of L{valid}, works (None: as long as it waits already).
        """
        assert pair.rtt is not None
        earlier = [self.pairs[k] for k in self.valid[:-1]]
        # Long enough for a better-ranked path, which is usually also the
        # shorter one, to answer too; never longer than the setting.
        delay = min(settings.grace, max(0.005, 2 * pair.rtt))
        if not earlier or (not pair.relayed and all(p.relayed for p in earlier)):
            if pair.relayed:
                # A relay waits longer, for a direct pair to come.
                return settings.relay_grace
            if pair.base.family == 4 and self.waits_for_ipv6():
                # The race of the families: IPv6 gets a moment to work too.
                return max(delay, settings.families.wait)
            return 0.0 if self.at_once(pair) else delay
        if (
            not pair.relayed
            and pair.base.family == 6
            and not any(p.base.family == 6 and not p.relayed for p in earlier)
        ):
            # Both families work now: the race is decided, and the wait for
            # IPv6 is cut short to the ordinary grace.
            return delay
        return None

    def at_once(self, pair: Pair) -> bool:
        """
        Whether C{pair}, the one pair that works, is named without a grace:
        nothing better can come (no other pair ranks above it, and no
        direct pair of the other family is left to race it: a peer with a
        public address, or IPv6 without NAT), and the peer's PUNCH came by
        it, so our ACK is on its way ahead of the CONFIRM and the pair
        works for the peer when the CONFIRM arrives (else the peer would
        check it first, and drop what we send meanwhile).
        """
        if pair.relayed or pair.punches_received == 0 or self.valid != (pair.key,):
            return False
        rank, family = pair.rank(), pair.base.family
        return not any(
            other.rank() > rank or (not other.relayed and other.base.family != family)
            for other in self.pairs.values()
            if other is not pair
        )

    def waits_for_ipv6(self) -> bool:
        """
        Whether a direct IPv6 pair is still being punched while none has
        worked: the controlling peer then waits a little for it.
        """
        pairs = self.pairs
        if any(pairs[k].base.family == 6 and not pairs[k].relayed for k in self.valid):
            return False
        return any(p.base.family == 6 and not p.relayed for p in pairs.values())

    def paced(self, pair: Pair, now: float) -> bool:
        """
        Whether a round may punch C{pair} at C{now}: an address punched
        before, a spray pair, or a new address within the pace.
        """
        if pair.remote.address in self.punched or self.sprays(pair):
            return True
        if self._pacing.take(now):
            return True
        self.held = True
        return False

    def paced_at(self) -> float:
        """When the pace lets the next new address go."""
        return self._pacing.ready_at()

    def due(
        self, now: float, settings: PunchSettings, direct_only: bool, new_only: bool
    ) -> list[Pair]:
        """
        The pairs a round punches at C{now}, spray pairs first, then by
        rank (a stable sort keeps the order of the spray bases: their
        PUNCHes open consecutive ports).  C{direct_only} once connected
        over a relay; C{new_only} for what the pace held back
        (L{PunchSettings.pace}).  What they cost is taken from the budgets.
        """
        # Once a direct pair works, the guesses of the spray bases are moot.
        guessing = self.guesses is not None and not any(
            not self.pairs[k].relayed for k in self.valid
        )
        self.held = False
        before = frozenset(self.punched) if new_only else frozenset()
        spaced = now - settings.interval + 1e-9
        due: list[Pair] = []
        for pair in sorted(
            self.pairs.values(), key=lambda p: (self.sprays(p), p.rank()), reverse=True
        ):
            if new_only and (pair.remote.address in before or self.sprays(pair)):
                continue
            limit = settings.max_retries
            if self.unheard_spray(pair):
                # A guess's few PUNCHes go a whole interval apart, not at the
                # quicker pace of the first rounds: a peer whose own run
                # starts a rendezvous trip later must still find one of them.
                limit = SPRAY_PUNCHES if guessing and pair.last_sent <= spaced else 0
            if (
                pair.sent < limit
                and not (direct_only and pair.relayed)
                and self.paced(pair, now)
                and self.affords(pair)
            ):
                due.append(pair)
        return due

    def affords(self, pair: Pair) -> bool:
        """
        Whether a PUNCH to C{pair} is within the budget (and if so, spend
        it).  A pair that has answered is not counted.  Pairs the peer's
        own PUNCHes came from have a budget of their own, so that addresses
        that never sent anything cannot spend what a path that is about
        to work needs; a source can be forged, so that one is bounded too.
        """
        if pair.acks_received or self.sprays(pair):
            return True
        if pair.punches_received:
            if self._heard_left <= 0:
                return False
            self._heard_left -= 1
            return True
        if self._unanswered_left <= 0:
            return False
        self._unanswered_left -= 1
        return True

    def reports(self) -> tuple[PairReport, ...]:
        """
        What each pair saw.  The spray pairs the peer never reached are
        summed into one report: hundreds of reports alike would say no
        more.
        """
        reports: list[PairReport] = []
        unheard: dict[Address, tuple[Candidate, int, int]] = {}
        for pair in self.pairs.values():
            if self.guesses is not None and self.unheard_spray(pair):
                remote, sockets, sent = unheard.get(pair.remote.address, (pair.remote, 0, 0))
                unheard[pair.remote.address] = (remote, sockets + 1, sent + pair.sent)
            else:
                reports.append(pair.report())
        for remote, sockets, sent in unheard.values():
            reports.append(PairReport(remote, sent, 0, 0, sockets=sockets))
        return tuple(reports)
