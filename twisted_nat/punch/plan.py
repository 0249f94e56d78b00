"""
The strategy of a punch: which technique, if any, goes beyond the ordinary
handshake, decided from what both NATs do.

Both peers decide from the same two hints (the one the offerer sent, the
one the answerer sent), so they always pick matching parts: a meeting run
on both sides, the birthday method's sockets on one side and its probes on
the other, or nothing special on either.  A peer whose part is switched
off says so in its hint (L{hint_for}), and the other spares its own.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import attrs

from twisted_nat.address import family_of
from twisted_nat.candidates import Candidate, CandidateType, candidate_priority
from twisted_nat.errors import ConfigurationError
from twisted_nat.nat import PREDICTED_PREFERENCE, FilteringBehavior, NATBehavior
from twisted_nat.punch.birthday import DEFAULT_PROBES, DEFAULT_RATE
from twisted_nat.punch.birthday import DEFAULT_SOCKETS as BIRTHDAY_SOCKETS
from twisted_nat.punch.meeting import DEFAULT_SOCKETS as MEETING_SOCKETS
from twisted_nat.punch.meeting import meeting_port
from twisted_nat.punch.values import SPRAY_PAIRED_KINDS, PunchSettings
from twisted_nat.rendezvous.hint import NATHint

MEETING_PREFERENCE = PREDICTED_PREFERENCE - 256
"""
The local preference given to the peer's meeting port: below every port
its prediction offered (L{twisted_nat.nat.prediction}).
"""

_NEEDS_PROBES = frozenset({FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT, FilteringBehavior.UNKNOWN})
"""
The easy side's filtering that the birthday method is for.  One that admits
any port of an address it has sent to already lets the hard side's PUNCHes
in once it punched the hard side's server-reflexive candidate.
"""


def _not_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ConfigurationError(f"{attribute.name} cannot be negative ({value})")


def _rate(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"{attribute.name} must be positive and finite ({value})")


@attrs.frozen
class SymmetricSettings:
    """
    How much a peer spends on direct paths through symmetric NATs; 0
    switches a technique off (and the hints say so to the peer).

    @ivar birthday_sockets: behind a symmetric NAT with random ports, extra
        sockets opened for a punch with a port-restricted cone.
    @ivar birthday_probes: behind a cone, random ports of such a peer's
        address probed at most.
    @ivar birthday_rate: probes a second.
    @ivar meeting_sockets: behind a symmetric NAT with ports in sequence,
        extra sockets run at a peer behind another such NAT.
    """

    birthday_sockets: int = attrs.field(default=BIRTHDAY_SOCKETS, validator=_not_negative)
    birthday_probes: int = attrs.field(default=DEFAULT_PROBES, validator=_not_negative)
    birthday_rate: float = attrs.field(default=DEFAULT_RATE, validator=_rate)
    meeting_sockets: int = attrs.field(default=MEETING_SOCKETS, validator=_not_negative)


class Technique(enum.Enum):
    ORDINARY = "ordinary"
    """The handshake alone, over the candidates both sides offered."""
    MEETING = "meeting run"
    """Run extra sockets at the peer's meeting port."""
    BIRTHDAY_SOCKETS = "birthday sockets"
    """Our NAT is the hard side: punch the peer from many extra sockets."""
    BIRTHDAY_PROBES = "birthday probes"
    """Our NAT is the easy side: probe random ports of the peer's address."""


@attrs.frozen
class PunchPlan:
    """
    What one punch does beyond the ordinary handshake.

    @ivar sockets: extra sockets to open and punch from (spray bases).
    @ivar spray_to: what the spray bases punch, when not the peer's
        server-reflexive candidates (a meeting run's one port).
    @ivar probe_host: the address whose random ports to probe.
    """

    technique: Technique = Technique.ORDINARY
    sockets: int = 0
    spray_to: tuple[Candidate, ...] | None = None
    probe_host: str | None = None


ORDINARY = PunchPlan()


def plan(
    ours: NATHint | None,
    theirs: NATHint | None,
    settings: SymmetricSettings,
    remote: Sequence[Candidate],
) -> PunchPlan:
    """
    The plan for a punch towards C{remote}, from the hints both sides sent
    (C{ours} as sent, not as known now, so that both sides decide alike).
    """
    # The hints describe our IPv4 NATs: the techniques aim at IPv4 only.
    public = [c for c in remote if c.kind in SPRAY_PAIRED_KINDS and family_of(c.host) == 4]
    if not public or ours is None or theirs is None:
        return ORDINARY
    if settings.meeting_sockets and _meets(ours, theirs):
        assert theirs.meet is not None
        # The peer's run holds its meeting port towards ours: ranked as the
        # last of its predicted ports, below every port it offered.
        meeting_point = Candidate(
            CandidateType.SERVER_REFLEXIVE,
            public[0].host,
            theirs.meet,
            candidate_priority(CandidateType.SERVER_REFLEXIVE, MEETING_PREFERENCE),
        )
        return PunchPlan(Technique.MEETING, settings.meeting_sockets, spray_to=(meeting_point,))
    if not (ours.birthday and theirs.birthday):
        return ORDINARY
    if _hard_meets_easy(ours, theirs) and settings.birthday_sockets:
        return PunchPlan(Technique.BIRTHDAY_SOCKETS, settings.birthday_sockets)
    if _hard_meets_easy(theirs, ours) and settings.birthday_probes:
        return PunchPlan(Technique.BIRTHDAY_PROBES, probe_host=public[0].host)
    return ORDINARY


def settings_for(
    settings: PunchSettings, ours: NATHint | None, theirs: NATHint | None, chosen: PunchPlan
) -> PunchSettings:
    """
    C{settings} for a punch whose plan is C{chosen}.  When both NATs map
    per destination and no technique runs to get around it, no pair of
    their public addresses can work: the relay is taken after the
    ordinary C{grace}, not after L{PunchSettings.relay_grace}, which would
    only wait for a pair that cannot come (a host, IPv6 or mapped pair
    that works later still takes the connection over).
    """
    if (
        chosen.technique is not Technique.ORDINARY
        or ours is None
        or theirs is None
        or ours.endpoint_independent
        or theirs.endpoint_independent
    ):
        return settings
    return attrs.evolve(settings, relay_grace=min(settings.relay_grace, settings.grace))


def hint_for(
    behavior: NATBehavior | None, settings: SymmetricSettings, latest: int | None = None
) -> NATHint | None:
    """
    What we tell the peer about our NAT: nothing until discovery found out;
    whether we take our part in the birthday method; our meeting port when
    the NAT allocates in sequence and this punch's prediction saw
    C{latest}, the port it handed out last.
    """
    if behavior is None:
        return None
    hint = NATHint.of(behavior)
    if hint.unpredictable:
        return attrs.evolve(hint, birthday=settings.birthday_sockets > 0)
    if hint.endpoint_independent:
        return attrs.evolve(hint, birthday=settings.birthday_probes > 0)
    if latest is not None and behavior.port_delta is not None:
        meet = meeting_port(latest, behavior.port_delta, settings.meeting_sockets)
        return attrs.evolve(hint, meet=meet)
    return hint


def _meets(ours: NATHint, theirs: NATHint) -> bool:
    """Whether both peers run (each named a meeting port)."""
    return (
        ours.meet is not None
        and theirs.meet is not None
        and ours.sequential
        and (theirs.sequential)
    )


def _hard_meets_easy(hard: NATHint, easy: NATHint) -> bool:
    return hard.unpredictable and easy.endpoint_independent and easy.filtering in _NEEDS_PROBES


def confine(
    chosen: PunchPlan, remote: Sequence[Candidate], seen_from: str | None
) -> PunchPlan | str:
    """
    C{chosen}, aimed only at C{seen_from}, the address the rendezvous
    server saw the peer connect from; or why it cannot be.  A peer's
    candidates are its claim, and keys cost nothing: an expensive technique
    aimed anywhere else would spend our sockets and probes on whatever
    address a stranger names.
    """
    if chosen.technique is Technique.ORDINARY:
        return chosen
    if seen_from is None:
        return "the rendezvous did not say where the peer connects from"
    if chosen.technique is Technique.BIRTHDAY_SOCKETS:
        there = tuple(c for c in remote if c.kind in SPRAY_PAIRED_KINDS and c.host == seen_from)
        if there:
            return attrs.evolve(chosen, spray_to=there)
    elif chosen.technique is Technique.MEETING:
        assert chosen.spray_to is not None
        if all(c.host == seen_from for c in chosen.spray_to):
            return chosen
    elif chosen.probe_host == seen_from:
        return chosen
    return f"the peer's public address is not {seen_from}, where the rendezvous saw it"
