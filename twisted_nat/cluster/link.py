"""
A rendezvous node's link to the Redis server the nodes share: one
connection for commands and one subscribed to this node's channel, each
kept by C{txredisapi}, which reconnects through Twisted's C{ClientService}
with exponential backoff.

The link is I{up} while both connections are ready.  Calls made while it is
down fail at once with L{RedisUnavailable} rather than wait (txredisapi's
own handler would queue them until Redis returned), and a call under way
fails the same way when its connection drops or Redis does not answer
within the reply timeout.  Whoever owns the link hears when it goes up
(again) and down, to reconcile and to say so.

txredisapi schedules its own timers (reconnection, reply timeouts) on the
global reactor, which is therefore the one a link runs on; C{reactor} here
makes the endpoint and times round trips.

What Redis sends is bounded: a reply or a message of more than
L{MAX_REPLY} bytes, or an array of more than L{MAX_ITEMS} items, closes the
connection before it is read (the link reconnects), so anyone who can
publish on Redis cannot make a node buffer more than that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.cluster.address import RedisAddress
from twisted_nat.errors import ConfigurationError, RedisUnavailable, RegistryError
from twisted_nat.timing import Latencies

MAX_REPLY = 128 * 1024
"""The most bytes one reply or message from Redis may have: an offer is under 8 KB."""

MAX_ITEMS = 1024
"""The most items of one array Redis sends: ours have up to a few."""

DEFAULT_REPLY_TIMEOUT = 5.0


def _oversized(line: str) -> bool:
    """Whether a RESP length line announces more than we read."""
    if line[:1] not in ("$", "*"):
        return False
    try:
        length = int(line[1:])
    except ValueError:
        return False  # txredisapi reports it as an invalid response
    return length > (MAX_REPLY if line[0] == "$" else MAX_ITEMS)


class _Bounded:
    """Closes the connection at a length line over our limits, before the data comes."""

    factory: Any
    transport: Any

    def lineReceived(self, line: str) -> Any:
        if _oversized(line):
            self.factory.link._oversized(line)
            self.transport.abortConnection()
            return None
        return super().lineReceived(line)  # type: ignore[misc]


class _CommandProtocol(_Bounded, txredisapi.RedisProtocol):  # type: ignore[misc]
    pass


class _SubscriberProtocol(_Bounded, txredisapi.SubscriberProtocol):  # type: ignore[misc]
    def messageReceived(self, pattern: object, channel: object, message: object) -> None:
        self.factory.link._message(message)


class _Commands(txredisapi.RedisFactory):  # type: ignore[misc]
    protocol = _CommandProtocol

    def __init__(self, link: RedisLink, database: int, reply_timeout: float) -> None:
        super().__init__(
            None, database, 1, isLazy=True, convertNumbers=False, replyTimeout=reply_timeout
        )
        self.link = link

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.link._commands_ready(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.link._commands_lost(conn)


class _Subscriber(txredisapi.SubscriberFactory):  # type: ignore[misc]
    protocol = _SubscriberProtocol

    def __init__(self, link: RedisLink) -> None:
        super().__init__(isLazy=True)
        self.link = link

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.link._subscriber_ready(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.link._subscriber_lost(conn)


def _translate(failure: Failure, what: str) -> Failure:
    """txredisapi's failures as ours: Redis gone or slow, or Redis refusing a command."""
    if failure.check(txredisapi.ConnectionError):  # TimeoutError is one
        return Failure(RedisUnavailable(f"Redis did not answer {what}: {failure.value}"))
    if failure.check(txredisapi.RedisError):
        return Failure(RegistryError(f"Redis refused {what}: {failure.value}"))
    return failure


class RedisLink(Service):
    """
    The commands connection and the subscription to C{channel}.

    @param reactor: for the connections (it provides what the endpoint needs).
    @param address: where Redis is.
    @param channel: the channel this node hears on; each message goes to
        C{on_message} as it came (C{str}, or C{bytes} when not UTF-8).
    @param reply_timeout: seconds a command may wait for its answer before
        the connection is dropped and the command fails.
    @param retry: the first and the longest wait before reconnecting, in
        seconds (txredisapi grows it by e each attempt, with jitter).
    @ivar round_trips: how long the commands answered took.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        address: RedisAddress,
        channel: str,
        on_message: Callable[[str | bytes], None],
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
        retry: tuple[float, float] = (1.0, 10.0),
    ) -> None:
        try:
            self._endpoint = clientFromString(reactor, address.endpoint)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigurationError(f"bad Redis endpoint {address.text!r}: {e}") from None
        self._clock = reactor
        self.address = address
        self.channel = channel
        self.round_trips = Latencies()
        self._on_message = on_message
        self._reply_timeout = reply_timeout
        self._retry = retry
        self._commands: Any = None
        self._subscribed: Any = None
        self._factories: list[Any] = []
        self._watchers: list[tuple[Callable[[], None], Callable[[], None]]] = []
        self.was_up = False
        self.oversized = 0
        self.malformed = 0

    @property
    def up(self) -> bool:
        """Whether both connections are ready now."""
        return self._commands is not None and self._subscribed is not None

    def watch(self, on_up: Callable[[], None], on_down: Callable[[], None]) -> None:
        """Call C{on_up} each time the link comes up, C{on_down} each time it goes down."""
        self._watchers.append((on_up, on_down))

    # --- the service ---

    def startService(self) -> None:
        super().startService()
        commands = _Commands(self, self.address.database, self._reply_timeout)
        subscriber = _Subscriber(self)
        for factory in (commands, subscriber):
            factory.initialDelay, factory.maxDelay = self._retry
            factory.startConnecting(self._endpoint)
        self._factories = [commands, subscriber]

    def stopService(self) -> Deferred[None]:
        super().stopService()
        factories, self._factories = self._factories, []
        stopping = [factory.disconnect() for factory in factories]
        return defer.gatherResults(stopping, consumeErrors=True).addBoth(lambda _: None)

    # --- commands ---

    def call(self, *command: object) -> Deferred[Any]:
        """Run one Redis command; fails with L{RedisUnavailable} at once while down."""
        conn = self._commands
        if conn is None or not self.up:
            return defer.fail(RedisUnavailable(f"no connection to Redis at {self.address.text}"))
        what = str(command[0])
        try:
            d: Deferred[Any] = conn.execute_command(*command)
        except txredisapi.RedisError as e:
            return defer.fail(RedisUnavailable(f"Redis did not take {what}: {e}"))
        return self._timed(d).addErrback(_translate, what)

    def eval(self, script: str, keys: list[str], args: list[object]) -> Deferred[Any]:
        """Run a Lua script (by its hash once Redis knows it), atomically in Redis."""
        conn = self._commands
        if conn is None or not self.up:
            return defer.fail(RedisUnavailable(f"no connection to Redis at {self.address.text}"))
        try:
            d: Deferred[Any] = conn.eval(script, keys, args)
        except txredisapi.RedisError as e:
            return defer.fail(RedisUnavailable(f"Redis did not take a script: {e}"))
        return self._timed(d).addErrback(_translate, "a script")

    def _timed(self, d: Deferred[Any]) -> Deferred[Any]:
        """Record C{d}'s round trip in L{round_trips} when it answers."""
        sent = self._clock.seconds()

        def answered(result: object) -> object:
            self.round_trips.record(self._clock.seconds() - sent)
            return result

        return d.addCallback(answered)

    def publish(self, channel: str, message: str) -> Deferred[int]:
        """Send C{message} to C{channel}; fires with how many nodes heard it."""
        return self.call("PUBLISH", channel, message).addCallback(_count)

    # --- connection events (from the factories) ---

    def _commands_ready(self, conn: Any) -> None:
        self._commands = conn
        self._maybe_up()

    def _commands_lost(self, conn: Any) -> None:
        if conn is self._commands:
            self._went_down()
            self._commands = None

    def _subscriber_ready(self, conn: Any) -> None:
        def subscribed(result: object) -> None:
            if conn.connected:
                self._subscribed = conn
                self._maybe_up()

        def failed(failure: Failure) -> None:
            self.log.warn(
                "Cannot subscribe to {channel} at Redis {address}: {error}",
                channel=self.channel,
                address=self.address.text,
                error=failure.getErrorMessage(),
            )
            conn.transport.loseConnection()

        conn.subscribe(self.channel).addCallbacks(subscribed, failed)

    def _subscriber_lost(self, conn: Any) -> None:
        if conn is self._subscribed:
            self._went_down()
            self._subscribed = None

    def _maybe_up(self) -> None:
        if not self.up or not self.running:
            return
        if self.was_up:
            self.log.info("Redis at {address} is back", address=self.address.text)
        else:
            self.log.info("Connected to Redis at {address}", address=self.address.text)
        self.was_up = True
        for on_up, _ in list(self._watchers):
            on_up()

    def _went_down(self) -> None:
        if not self.up:
            return
        if self.running:
            self.log.warn(
                "Lost Redis at {address}: serving the peers connected here only, until it is back",
                address=self.address.text,
            )
        for _, on_down in list(self._watchers):
            on_down()

    def _message(self, message: object) -> None:
        if isinstance(message, str | bytes):
            self._on_message(message)
        else:
            self.malformed += 1

    def _oversized(self, line: str) -> None:
        self.oversized += 1
        self.log.warn(
            "Redis at {address} sent a reply over our limits ({line}); reconnecting",
            address=self.address.text,
            line=line[:40],
        )


def _count(value: object) -> int:
    return value if isinstance(value, int) else int(str(value))
