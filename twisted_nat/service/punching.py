"""
Offers and answers, and the punch each of them starts: what we offer (our
candidates, the ports our NAT will hand out next, a hint of what it does),
and the technique the hints of both sides call for (L{plan}).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.address import family_of, format_address
from twisted_nat.bases import SHARED6, Base
from twisted_nat.candidates import Candidate, CandidateType, rank
from twisted_nat.connection import PeerConnection
from twisted_nat.errors import ConfigurationError, PeerUnavailable, TrustError
from twisted_nat.limits import DropLog
from twisted_nat.nat import latest_port, predicted_candidates, prediction_step
from twisted_nat.punch import (
    ExtraSockets,
    HolePuncher,
    Prober,
    PunchFailed,
    PunchResult,
    Technique,
    hint_for,
    plan,
)
from twisted_nat.punch.admission import FAMILIES, admit
from twisted_nat.punch.plan import ORDINARY, confine, settings_for
from twisted_nat.rendezvous import Answer, ISignaling, NATHint, Offer
from twisted_nat.rendezvous.values import MAX_CANDIDATES
from twisted_nat.service.addresses import Addresses
from twisted_nat.service.behavior import BehaviorWatch
from twisted_nat.service.connections import Connections
from twisted_nat.service.events import IPeerEvents
from twisted_nat.service.gate import OfferGate
from twisted_nat.service.relays import Relays
from twisted_nat.service.settings import PeerSettings
from twisted_nat.service.trust import PeerTrust
from twisted_nat.service.waiting import both, within
from twisted_nat.trust.handshake import Offering, answer_offer
from twisted_nat.trust.keys import PeerKey

REFRESH_WAIT = 2.0
"""
How long an answer waits for a rediscovery of our public address under
way: behaviour discovery, this and the prediction hold an answer back a
few seconds at most, well within what the offerer's rendezvous waits.
"""


class Punching:
    """
    The offers we make and answer, for one service.

    @param ready: fires once our candidates are gathered; an offer that
        arrives before must wait, or the answer lacks our public address.
    @param shared_port: the shared socket's local port.
    @param trust: whose offers we answer, and whose keys we expect.
    @param our_name: the name we are registered as now.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        settings: PeerSettings,
        puncher: HolePuncher,
        extra_sockets: ExtraSockets,
        parts: tuple[Addresses, BehaviorWatch, Relays, Connections],
        rng: random.Random,
        ready: Callable[[], Deferred[None]],
        shared_port: Callable[[], int],
        events: IPeerEvents,
        trust: PeerTrust,
        our_name: Callable[[], str | None],
    ) -> None:
        self._reactor = reactor
        self._settings = settings
        self._puncher = puncher
        self._extra_sockets = extra_sockets
        self._addresses, self._watch, self._relays, self._connections = parts
        self._rng = rng
        self._ready = ready
        self._shared_port = shared_port
        self._events = events
        self._trust = trust
        self._our_name = our_name
        self.prediction_listeners: list[Callable[[int], object]] = []
        """Called with the port our NAT handed out last, whenever a prediction sees it."""
        self.gate = OfferGate(settings.gate, reactor.seconds())
        self.refused = DropLog(self.log, reactor)
        """Offers refused by a limit, and techniques skipped, by reason."""
        self.failures = DropLog(self.log, reactor, what="failed")
        """Punches for offers that failed: a stranger may make many, so logged at a bounded rate."""

    async def connect(
        self, signaling: ISignaling, ours: str, name: str | None, key: PeerKey | None
    ) -> PeerConnection:
        """
        Offer a connection to the peer called C{name} and/or holding C{key}
        through C{signaling}, and punch it.
        """
        await self._ready()
        await self._watch.known()
        expected = self._trust.expected_key(name, key)
        candidates, latest = await self.candidates_for_punch()
        offering = Offering(
            self._trust.identity, ours, candidates, self._hint(latest), name, expected
        )
        offer = offering.offer
        self.log.info(
            "offering a connection to {peer}",
            peer=_who(name, expected),
        )
        answer = await signaling.connect(offer)
        try:
            secret = offering.finish(answer)
        except TrustError as e:
            self._trust.refused(e, answer.from_name, answer.from_key)
            raise
        self._trust.answered(answer)
        peer = answer.from_name
        self._connections.offered(peer, answer.from_key)
        result = await self.punch(
            offer.session_id,
            secret,
            answer.from_key,
            answer.candidates,
            controlling=True,
            ours=offer.nat,
            theirs=answer.nat,
            seen_from=answer.seen_from,
        )
        return self._connections.connected(
            peer,
            answer.from_key,
            offer.session_id,
            secret,
            result,
            controlling=True,
            peer_nat=_nat_name(answer.nat),
        )

    def on_offer(self, offer: Offer) -> Deferred[Answer]:
        """Answer an offer we accept with our candidates, and punch at once."""
        try:
            self._trust.check_offer(offer, self._our_name(), self._connections.check_key)
        except TrustError:
            # Why stays in our log: the sender may be an attacker, and the
            # reason names keys we pinned and where we keep them.
            return fail(PeerUnavailable("the peer refused the offer"))
        searching = sum(1 for s in self._puncher.sessions() if s.searching)
        why = self.gate.offer(offer.from_key, self._reactor.seconds(), searching)
        if why is not None:
            self.refused.drop(
                why, "refused an offer from {key}: {why}", key=offer.from_key.short, why=why
            )
            return fail(PeerUnavailable("the peer is busy: try again later"))
        self.log.info(
            "{peer} ({key}) offers a connection", peer=offer.from_name, key=offer.from_key.short
        )
        self._events.offer_received(offer.from_name)
        return Deferred.fromCoroutine(self._answer(offer))

    async def _answer(self, offer: Offer) -> Answer:
        await self._ready()
        await self._watch.known()
        existing = self._connections.by_peer.get(offer.from_name)
        if self._addresses.refreshing or (existing is not None and not existing.closed):
            # Answer with our new public address (and relays) if they come
            # in time.  A connected peer offering again lost its path:
            # perhaps because our NAT lost its bindings, and our public
            # address and relay allocations with them.
            relearning = both(self._addresses.refresh(), self._relays.verify())
            await within(self._reactor, Deferred.fromCoroutine(relearning), REFRESH_WAIT)
        candidates, latest = await self.candidates_for_punch(offer.candidates)
        hint = self._hint(latest)
        our_name = self._our_name()
        assert our_name is not None  # an offer reaches only a registered peer
        answer, secret = answer_offer(self._trust.identity, our_name, offer, candidates, hint)
        punching = self.punch(
            offer.session_id,
            secret,
            offer.from_key,
            offer.candidates,
            controlling=False,
            ours=hint,
            theirs=offer.nat,
            seen_from=offer.seen_from,
        )
        punching.addCallback(self._answered_connected, offer, secret)
        punching.addErrback(self._failed, offer.from_name)
        return answer

    def _answered_connected(self, result: PunchResult, offer: Offer, secret: bytes) -> None:
        self._trust.offer_connected(offer)
        self._connections.connected(
            offer.from_name,
            offer.from_key,
            offer.session_id,
            secret,
            result,
            controlling=False,
            peer_nat=_nat_name(offer.nat),
        )

    def _failed(self, failure: Failure, peer: str) -> None:
        error = failure.value
        brief = error.brief() if isinstance(error, PunchFailed) else str(error)
        self.failures.drop(
            "answer failed", "could not connect to {peer}: {error}", peer=peer, error=brief
        )
        self.log.debug("punch with {peer} failed: {error}", peer=peer, error=error)
        self._events.punch_failed(peer, False, failure)

    def _hint(self, latest: int | None) -> NATHint | None:
        return hint_for(self._watch.behavior, self._settings.symmetric, latest)

    async def candidates_for_punch(
        self, remote: Sequence[Candidate] | None = None
    ) -> tuple[list[Candidate], int | None]:
        """
        Our candidates for one punch: behind a NAT whose mapping depends on
        the destination and which allocates ports in sequence, with the
        ports it will hand out next (L{twisted_nat.nat.prediction}), shaped
        after C{remote} when answering an offer, after our own candidates
        when offering.

        @return: the candidates, and the port the NAT handed out last when
            the prediction saw it.
        """
        candidates = self._addresses.candidates
        if self._settings.relay_only:
            return [c for c in candidates if c.kind is CandidateType.RELAYED], None
        behavior = self._watch.behavior
        step = None if behavior is None else prediction_step(behavior)
        if behavior is None or step is None:
            return candidates, None
        reactor = cast(IReactorUDP, self._reactor)
        mapped = await latest_port(reactor, behavior.server, self._settings.interface)
        if mapped is None:
            return candidates, None
        latest = mapped[1]
        for listener in self.prediction_listeners:
            listener(latest)
        predicted = predicted_candidates(mapped, step, candidates if remote is None else remote)
        # Within an offer's limit by construction: the predictions are ours
        # to drop (the last ones first), the candidates we found are not.
        predicted = predicted[: max(0, MAX_CANDIDATES - len(candidates))]
        self.log.info(
            "our NAT allocates ports in sequence: offering ports {first}-{last} too",
            first=min((c.port for c in predicted), default=latest),
            last=max((c.port for c in predicted), default=latest),
        )
        return rank([*candidates, *predicted]), latest

    def punch(
        self,
        session_id: bytes,
        secret: bytes,
        peer: PeerKey,
        remote: Sequence[Candidate],
        controlling: bool,
        ours: NATHint | None = None,
        theirs: NATHint | None = None,
        seen_from: str | None = None,
    ) -> Deferred[PunchResult]:
        """
        Punch towards C{remote}, the candidates of the peer holding
        C{peer}, with the technique the hints both sides sent call for
        (C{ours} as sent, not as known now, so that both sides decide
        alike), if it is aimed at C{seen_from} (where the rendezvous saw
        the peer) and the gate lets it run now.
        """
        local = self._addresses.candidates
        # IPv6 only with an IPv6 socket and an IPv6 address of ours to be
        # reached at: a socket without one has no route, and its pairs would
        # only hold the choice back by the wait for IPv6.
        ipv6 = SHARED6 in self._puncher.bases and any(family_of(c.host) == 6 for c in local)
        admitted = admit(remote, local, frozenset({4, 6}) if ipv6 else FAMILIES)
        for candidate, reason in admitted.skipped:
            self.log.debug(
                "skipped the peer's candidate {address}: {reason}",
                address=format_address(candidate.address),
                reason=reason,
            )
        remote = admitted.kept
        self._relays.permit(remote, seen_from)
        chosen = plan(ours, theirs, self._settings.symmetric, remote)
        expensive = chosen.technique is not Technique.ORDINARY
        if expensive:
            confined = confine(chosen, remote, seen_from)
            if isinstance(confined, str):
                why: str | None = confined
            else:
                chosen = confined
                why = self.gate.expensive(peer, session_id, self._reactor.seconds())
            if why is not None:
                self.refused.drop(
                    "technique skipped",
                    "skipped the {technique} with {key} ({why}): a relay, if any, carries it",
                    technique=chosen.technique.value,
                    key=peer.short,
                    why=why,
                )
                chosen, expensive = ORDINARY, False
        bases: list[Base] = []
        prober: Prober | None = None
        if chosen.technique is Technique.MEETING:
            assert ours is not None and chosen.spray_to is not None
            bases = self._extra_sockets.open(session_id, chosen.sockets, "meeting")
            self.log.info(
                "both NATs allocate in sequence: running {count} sockets from our port {ours}"
                " to {peer}",
                count=len(bases),
                ours=ours.meet,
                peer=format_address(chosen.spray_to[0].address),
            )
        elif chosen.technique is Technique.BIRTHDAY_SOCKETS:
            bases = self._extra_sockets.open(session_id, chosen.sockets, "birthday")
            self.log.info(
                "our NAT is symmetric and the peer's a cone: punching from {count} more sockets",
                count=len(bases),
            )
        elif chosen.technique is Technique.BIRTHDAY_PROBES:
            assert chosen.probe_host is not None
            symmetric = self._settings.symmetric
            start = self._reactor.seconds()
            prober = Prober(
                chosen.probe_host,
                symmetric.birthday_probes,
                symmetric.birthday_rate,
                start,
                self._rng,
            )

        def settled(base: Base | None) -> None:
            self._extra_sockets.settle(session_id, base)
            self.gate.expensive_over(session_id)

        def better(result: PunchResult) -> None:
            self._connections.moved(session_id, result)

        settings = settings_for(self._settings.punch, ours, theirs, chosen)
        in_use = [
            c.base.family
            for c in self._connections.by_peer.values()
            if c.peer_key == peer and not c.closed and not c.base.relayed
        ]
        try:
            return self._puncher.punch_hole(
                self._shared_port(),
                remote,
                session_id,
                timeout=settings.timeout,
                max_retries=settings.max_retries,
                secret=secret,
                controlling=controlling,
                local_candidates=self._addresses.candidates,
                interval=settings.interval,
                on_better_path=better,
                bases=bases,
                prober=prober,
                on_settled=settled if expensive else None,
                spray_to=chosen.spray_to,
                settings=settings,
                family_in_use=in_use[0] if in_use else None,
            )
        except BaseException:
            settled(None)
            raise


def need_signaling(signaling: ISignaling | None, name: str | None) -> tuple[ISignaling, str]:
    if signaling is None or name is None:
        raise ConfigurationError("connecting needs a name of our own and a rendezvous")
    return signaling, name


def _who(name: str | None, key: PeerKey | None) -> str:
    if key is None:
        return str(name)
    return key.short if name is None else f"{name} ({key.short})"


def _nat_name(hint: NATHint | None) -> str | None:
    return None if hint is None else hint.nat_type.value
