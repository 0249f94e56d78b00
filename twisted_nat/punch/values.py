"""
The values a punch is configured with and reports: its settings, what each
candidate pair saw, the path found, and the actions a session asks of its
owner.
"""

from __future__ import annotations

import functools

import attrs

from twisted_nat.address import Address, format_address
from twisted_nat.bases import SHARED, Base
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.errors import TwistedNATError
from twisted_nat.limits import positive
from twisted_nat.punch.preference import DEFAULT_PREFERENCE, FamilyPreference

PairKey = tuple[Base, Address]
"""A candidate pair: the base of ours a PUNCH leaves from, and the peer's address it goes to."""

RELAY_PAIRED_KINDS = frozenset(
    {
        CandidateType.SERVER_REFLEXIVE,
        CandidateType.MAPPED,
        CandidateType.PEER_REFLEXIVE,
        CandidateType.RELAYED,
    }
)
"""
The peer's candidates a relay base punches: a TURN server relays to any
permitted address, and a peer's private host address, meaningless from
the server, could be someone else's machine on the server's own network.
"""

SPRAY_PAIRED_KINDS = frozenset({CandidateType.SERVER_REFLEXIVE, CandidateType.MAPPED})
"""
The peer's candidates a spray base punches: the addresses the peer's NAT
shows everyone (a mapped one arrives from the wire as server-reflexive).
A host candidate is reached from the shared socket anyway, and a relay
needs no guessing.
"""


@attrs.frozen
class PunchSettings:
    """
    @ivar interval: time between rounds of PUNCHes.
    @ivar timeout: give up after this long.
    @ivar max_retries: PUNCHes sent to one candidate at most.
    @ivar grace: how long the controlling peer waits, after its first
        working path, for a better-ranked one to work too.
    @ivar relay_grace: how long it waits when the first working path is
        relayed: a direct path often needs a few rounds more (each NAT
        opens only once its own peer punched), and connecting on the relay
        only to leave it a moment later costs the application a path change.
        The service waits only C{grace} when both NATs' hints say no pair of
        their public addresses can work (L{twisted_nat.punch.plan.settings_for}).
    @ivar unanswered_budget: PUNCHes one session sends, in all, to pairs
        that have not answered (no ACK yet), so that an offer naming
        addresses that never answer costs a fixed budget (RFC 7675's
        consent: only an answering address gets more); as many again to
        pairs the peer's PUNCHes came from that have not answered either.
        The spray bases' guesses are budgeted by their technique instead.
    @ivar pace: RFC 8445's Ta: the rounds reach addresses not punched yet
        at one per C{pace} on average, after a first C{pace_burst}, so that
        a long list of candidates is checked at a bounded rate, not in one
        burst.  The best-ranked go first; an address already punched is
        punched again every round, and the spray bases' guesses keep their
        technique's own pace.
    @ivar families: which family's path to take when IPv6 and IPv4 pairs
        both work, and how long to wait for IPv6 once IPv4 works.
    """

    interval: float = 0.2
    timeout: float = 10.0
    max_retries: int = 30
    grace: float = 0.03
    relay_grace: float = 0.5
    unanswered_budget: int = 100
    pace: float = attrs.field(default=0.005, validator=positive)
    pace_burst: int = attrs.field(default=32, validator=positive)
    families: FamilyPreference = DEFAULT_PREFERENCE

    @staticmethod
    def of(interval: float, timeout: float, max_retries: int) -> PunchSettings:
        """
        One instance per distinct configuration: a connected session keeps
        its settings for as long as it lasts, and they are nearly always
        the same for all of a node's sessions.
        """
        return _shared_settings(interval, timeout, max_retries)


@functools.lru_cache(maxsize=32)
def _shared_settings(interval: float, timeout: float, max_retries: int) -> PunchSettings:
    return PunchSettings(interval=interval, timeout=timeout, max_retries=max_retries)


@attrs.frozen
class PairReport:
    """What one candidate pair saw: the substance of a failure's message."""

    remote: Candidate
    punches_sent: int
    punches_received: int
    acks_received: int
    base: Base = SHARED
    sockets: int = 0
    """When not 0, this report sums up the pairs of as many extra sockets, none of them reached."""

    def describe(self) -> str:
        if self.sockets:
            via = f" via {self.sockets} extra sockets"
        else:
            via = f" via {self.base}" if self.base is not SHARED else ""
        return (
            f"{self.remote.kind.value} {format_address(self.remote.address)}{via}: sent "
            f"{self.punches_sent}, got {self.punches_received} punches and "
            f"{self.acks_received} acks"
        )


@attrs.frozen
class PunchResult:
    """
    The path a punch found.

    @ivar base: which base of ours the path leaves from.
    @ivar relayed: whether the path goes through a TURN relay, ours or the
        peer's.
    """

    remote: Candidate
    local_kind: CandidateType | None
    rtt: float | None
    elapsed: float
    pairs: tuple[PairReport, ...]
    base: Base = SHARED
    relayed: bool = False


class PunchFailed(TwistedNATError):
    """No candidate pair worked before the timeout; C{pairs} says what each saw."""

    def __init__(self, elapsed: float, pairs: tuple[PairReport, ...]) -> None:
        detail = "; ".join(p.describe() for p in pairs) or "no candidates"
        super().__init__(f"hole punching failed after {elapsed:.1f}s ({detail})")
        self.elapsed = elapsed
        self.pairs = pairs

    def brief(self) -> str:
        """The failure in one short line, for a log: how many pairs, how many heard from."""
        if not self.pairs:
            return str(self)
        heard = sum(1 for p in self.pairs if p.punches_received or p.acks_received)
        return (
            f"hole punching failed after {self.elapsed:.1f}s: {len(self.pairs)} pairs tried,"
            f" {heard or 'none'} heard from"
        )


class PunchError(PunchFailed):
    """The punch ended on an error of ours, not the network's: C{error} says which."""

    def __init__(self, elapsed: float, error: Exception) -> None:
        super().__init__(elapsed, ())
        self.args = (f"hole punching ended by an error after {elapsed:.1f}s: {error!r}",)
        self.error = error


# --- actions: what a session asks its owner to do ---


@attrs.frozen
class Send:
    data: bytes
    to: Address
    base: Base = SHARED


@attrs.frozen
class StartGrace:
    delay: float


@attrs.frozen
class Connected:
    result: PunchResult


@attrs.frozen
class Failed:
    error: PunchFailed


@attrs.frozen
class Refused:
    """An authenticated message that proves nothing where it came from (a replay, say)."""

    reason: str


Action = Send | StartGrace | Connected | Failed | Refused
