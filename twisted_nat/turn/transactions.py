"""
The requests of a TURN client (Allocate, Refresh, CreatePermission,
ChannelBind), run as transactions of a L{STUNClient}.

Each request carries the long-term credential (L{Credentials}): the first
Allocate goes without, and a 438 (stale nonce) brings a fresh nonce with
which the request is retried once, whatever the method.  A failure becomes
the TURN error it means (L{turn_error}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twisted_nat.address import Address
from twisted_nat.errors import (
    STUNErrorResponse,
    STUNTimeout,
    TransactionCancelled,
    TURNAuthenticationError,
    TURNError,
    TURNQuotaError,
    TURNUnavailable,
)
from twisted_nat.stun.attributes import Attribute, Software
from twisted_nat.stun.client import Response, RetransmissionSchedule, STUNClient
from twisted_nat.stun.message import Message, Method, request
from twisted_nat.turn.attributes import TURN_ATTRIBUTES, Lifetime
from twisted_nat.turn.credentials import Credentials
from twisted_nat.turn.stats import TURNStats

TURN_METHODS = (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)
"""The request methods whose answers the multiplexer must route to the TURN client's STUN client."""

STREAM_SCHEDULE = RetransmissionSchedule(rto=39.5, rc=1, rm=1)
"""
Over a reliable stream a request is sent once and answered within Ti =
39.5 s or never (RFC 8489 6.2.2): one transmission, the same overall wait
as the UDP schedule.
"""

STALE_RELEASE_PAUSES = (0.25, 0.5, 1.0, 2.0)
"""Pauses before each Allocate after releasing a stale allocation (3.75 s in all)."""


def turn_error(error: BaseException, server: Address | None) -> BaseException:
    """
    The TURN error a STUN transaction failure means.

    401 and 441 become L{TURNAuthenticationError}, 486 L{TURNQuotaError},
    any other code L{TURNError}; no answer, or a transaction abandoned
    because the client stopped, L{TURNUnavailable}.  Anything else (a local
    cancellation, a bug) passes unchanged.
    """
    if isinstance(error, STUNErrorResponse):
        kind: type[TURNError] = TURNError
        if error.code in (401, 441):
            kind = TURNAuthenticationError
        elif error.code == 486:
            kind = TURNQuotaError
        return kind(error.code, error.reason.rstrip("\x00"), server, error.response)
    if isinstance(error, STUNTimeout | TransactionCancelled):
        unavailable = TURNUnavailable(str(error), server)
        unavailable.__cause__ = error
        return unavailable
    return error


class TURNTransactions:
    """
    The TURN requests of one socket or stream, signed and mapped to TURN
    errors.

    @param stun: the STUN client that runs them.
    @param reactor: the clock of the pauses between Allocate attempts.
    @param stats: the counters of stale nonces and stale allocations.
    @param schedule: the retransmission schedule of every request (the STUN
        client's own when None).
    @param software: the SOFTWARE attribute of every request, or None.
    """

    log = Logger()

    def __init__(
        self,
        stun: STUNClient,
        reactor: IReactorTime,
        stats: TURNStats,
        schedule: RetransmissionSchedule | None,
        software: str | None,
    ) -> None:
        self.stun = stun
        self.schedule = schedule
        self.software = software
        self._reactor = reactor
        self._stats = stats
        self._gone: TURNError | None = None

    def abandon(self, reason: TURNError) -> None:
        """
        The socket or stream went away for C{reason}: a transaction
        cancelled from now on fails with it rather than with a bare
        cancellation.  The first reason stays.
        """
        if self._gone is None:
            self._gone = reason

    async def allocate(
        self, server: Address, username: str, password: str, attributes: list[Attribute]
    ) -> tuple[Response, Credentials | None]:
        """
        Allocate on C{server}, releasing first a stale allocation that the
        server still holds for our address (437).

        @return: the success response and the credentials it was signed
            with (None for a server that asked for none).
        @raise TURNError: as L{turn_error} maps the failure.
        """
        try:
            return await self._allocate_once(server, username, password, attributes)
        except TURNError as e:
            if e.code != 437:
                raise
            await self._release_stale(server, username, password)
            return await self._allocate_after_release(server, username, password, attributes)

    async def _allocate_once(
        self, server: Address, username: str, password: str, attributes: list[Attribute]
    ) -> tuple[Response, Credentials | None]:
        """An Allocate, and again with the credential if the server asks for one (401)."""
        try:
            response = await self.stun.request(
                request(Method.ALLOCATE, [*attributes, *self._software()]),
                server,
                schedule=self.schedule,
                table=TURN_ATTRIBUTES,
            )
        except STUNErrorResponse as e:
            if e.code != 401:
                raise self._error(e, server) from e
            credentials = Credentials.from_challenge(cast(Message, e.response), username, password)
            return await self.signed(server, Method.ALLOCATE, attributes, credentials)
        except (STUNTimeout, TransactionCancelled) as e:
            raise self._error(e, server) from e
        return response, None

    async def _allocate_after_release(
        self, server: Address, username: str, password: str, attributes: list[Attribute]
    ) -> tuple[Response, Credentials | None]:
        """
        Allocate again once the stale allocation is released: coturn keeps
        the released allocation's session for about a second and answers
        437 until then, so the attempts come after growing pauses.
        """
        for pause in STALE_RELEASE_PAUSES:
            await task.deferLater(self._reactor, pause, lambda: None)
            try:
                return await self._allocate_once(server, username, password, attributes)
            except TURNError as e:
                if e.code != 437 or pause == STALE_RELEASE_PAUSES[-1]:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _release_stale(self, server: Address, username: str, password: str) -> None:
        """
        After a 437 (allocation mismatch) to a fresh Allocate: the server
        still holds an allocation for this very socket address, an earlier
        run's whose deallocation never arrived (an application restarted on
        its port; a NAT that handed out the same public port again).  It is
        ours to release, under the same credential: a Refresh with LIFETIME
        0 (unsigned first, for the realm and nonce its 401 brings).  Should
        the release fail, the next Allocate says why.
        """
        self.log.info("{server} holds a stale allocation for us: releasing it", server=server)
        self._stats.stale_allocations += 1
        credentials: Credentials | None = None
        try:
            await self.stun.request(
                request(Method.REFRESH, [Lifetime(0), *self._software()]),
                server,
                schedule=self.schedule,
                table=TURN_ATTRIBUTES,
            )
            return
        except STUNErrorResponse as e:
            if e.code != 401:
                self.log.debug("releasing the stale allocation: {error}", error=e)
                return
            credentials = Credentials.from_challenge(cast(Message, e.response), username, password)
        except (STUNTimeout, TransactionCancelled) as e:
            self.log.debug("releasing the stale allocation: {error}", error=e)
            return
        try:
            await self.signed(server, Method.REFRESH, [Lifetime(0)], credentials)
        except TURNError as e:
            self.log.debug("releasing the stale allocation: {error}", error=e)

    def _software(self) -> list[Attribute]:
        return [Software(self.software)] if self.software else []

    async def signed(
        self,
        server: Address,
        method: int,
        attributes: Sequence[Attribute],
        credentials: Credentials | None,
    ) -> tuple[Response, Credentials | None]:
        """
        Send a request signed with C{credentials} (unsigned without: a
        server that did not ask for any), retrying once with the fresh nonce
        of a 438.

        @return: the response and the credentials it was signed with.
        @raise TURNError: as L{turn_error} maps the failure.
        """
        for attempt in (1, 2):
            message = request(method, [*attributes, *self._software()])
            key = None
            if credentials is not None:
                message, key = credentials.sign(message), credentials.key
            try:
                response = await self.stun.request(
                    message, server, key=key, schedule=self.schedule, table=TURN_ATTRIBUTES
                )
            except STUNErrorResponse as e:
                if e.code == 438 and attempt == 1 and credentials is not None:
                    fresh = credentials.with_nonce(cast(Message, e.response))
                    if fresh is not None:
                        self._stats.stale_nonces += 1
                        self.log.debug("stale nonce from {server}: retrying", server=server)
                        credentials = fresh
                        continue
                raise self._error(e, server) from e
            except (STUNTimeout, TransactionCancelled) as e:
                raise self._error(e, server) from e
            return response, credentials
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _error(self, error: BaseException, server: Address) -> BaseException:
        """
        L{turn_error}, except that a transaction abandoned because the
        socket or stream went away says why it went away.
        """
        if isinstance(error, TransactionCancelled) and self._gone is not None:
            unavailable = TURNUnavailable(self._gone.reason, server)
            unavailable.__cause__ = error
            return unavailable
        return turn_error(error, server)
