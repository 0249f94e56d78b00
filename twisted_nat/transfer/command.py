"""
C{twisted-nat send} and C{twisted-nat receive}: a peer for one transfer,
its output for a person or a script, and the exit status (0 only when
every file arrived and its SHA-256 checked).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, cast

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.defer import TimeoutError as TimedOut
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from twisted_nat.errors import TransferError, TwistedNATError
from twisted_nat.service import KeepAliveSettings, NATTraversalService, PeerSettings
from twisted_nat.streams import QuicLink, StreamSettings
from twisted_nat.streams.stream import PeerAddress
from twisted_nat.transfer.disk import hash_file
from twisted_nat.transfer.options import ConnectionOptions, ReceiveOptions, SendOptions
from twisted_nat.transfer.protocol import Offer
from twisted_nat.transfer.receiver import Receiver
from twisted_nat.transfer.report import Outcome, Reporter
from twisted_nat.transfer.sender import Sender
from twisted_nat.transfer.sources import collect
from twisted_nat.trust.keyfile import load_or_create_identity
from twisted_nat.trust.keys import Identity
from twisted_nat.trust.known import KnownPeers
from twisted_nat.trust.names import normalise_name

TRANSFER_STREAMS = StreamSettings(
    high_water=1 << 21, low_water=1 << 19, max_stream_data=1 << 22, max_data=1 << 24
)
"""Wider windows than the default: a transfer is one long burst."""
LINGER = 3.0
"""Seconds the receiver waits, after the last file, for the sender to hear of it."""


def config_home() -> str:
    """Where the commands keep their keys and pins: C{$XDG_CONFIG_HOME/twisted-nat}."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "twisted-nat")


def _identity(options: ConnectionOptions, default: str) -> Identity:
    """
    Our key: C{--key}, or C{default} in L{config_home}, so that a name keeps
    its key from one run to the next (the rendezvous server binds a name to
    the first key that takes it, and senders pin it).
    """
    path = options["key"]
    if path is None:
        os.makedirs(config_home(), mode=0o700, exist_ok=True)
        path = os.path.join(config_home(), default)
    identity, _ = load_or_create_identity(path)
    return identity


def _service(
    reactor: IReactorTime,
    options: ConnectionOptions,
    name: str,
    identity: Identity,
    known_peers: str | None,
    receiver: Receiver | None,
) -> NATTraversalService:
    settings = PeerSettings(
        local_port=options["port"],
        interface=options["interface"],
        turn_servers=options["turn"],
        streams=TRANSFER_STREAMS,
        keepalive=KeepAliveSettings(interval=options["keepalive-interval"]),
    )
    return NATTraversalService(
        options["stun"],
        reactor=reactor,
        name=name,
        rendezvous=options["rendezvous"],
        stream_factory=receiver,
        settings=settings,
        identity=identity,
        known_peers=KnownPeers(known_peers),
    )


async def _start(reactor: IReactorTime, service: NATTraversalService, timeout: float) -> None:
    service.startService()
    assert service.signaling is not None
    registered = Deferred.fromCoroutine(_registered(service))
    registered.addTimeout(timeout, reactor)
    try:
        await registered
    except TimedOut:
        raise TransferError("cannot reach the rendezvous server (is it running?)") from None


async def _registered(service: NATTraversalService) -> None:
    await service.ready()
    assert service.signaling is not None
    await service.signaling.when_registered()


async def _stop(reactor: IReactorTime, service: NATTraversalService) -> None:
    """
    Close QUIC first, while the connections can still carry its closing
    packet, so that the peer learns at once we are gone; then the service.
    The outcome that brings us here may fire inside a QUIC event, whose
    driver sends only once the event is handled: the reactor runs once
    before anything is closed.
    """
    await deferLater(reactor, 0, lambda: None)
    for connection in list(service.connections.values()):
        if isinstance(connection.streams, QuicLink):
            connection.streams.close()
    stopping = Deferred.fromCoroutine(_await(service.stopService()))
    stopping.addTimeout(2.0, reactor)
    stopping.addErrback(lambda _: None)
    await stopping


async def _await(result: Any) -> None:
    if isinstance(result, Deferred):
        await result


def _reporter(reactor: IReactorTime, options: ConnectionOptions) -> Reporter:
    return Reporter(reactor, sys.stdout, sys.stderr, options["json"], sys.stderr.isatty())


async def send(reactor: IReactorTime, options: SendOptions) -> Outcome:
    report = _reporter(reactor, options)
    sources = collect(options["paths"], lambda path: report.say(f"left out {path}: not a file"))
    # Hashed in a thread while the peer connects.
    hashing = deferToThread(lambda: [hash_file(s.path).hexdigest() for s in sources])
    identity = _identity(options, "send.key")
    name = options["name"] or f"send-{identity.public.text[3:13]}"
    known = options["known-peers"] or os.path.join(config_home(), "known_peers")
    service = _service(reactor, options, name, identity, known, None)
    try:
        await _start(reactor, service, options["timeout"])
        target = options["to"]
        connecting = service.connect(target.name, target.key)
        connecting.addTimeout(options["timeout"], reactor)
        try:
            connection = await connecting
        except TimedOut:
            raise TransferError(f"cannot reach {target}") from None
        report.path_is(connection.relayed)
        connection.on_path_change(lambda c: report.path_is(c.relayed))
        key = connection.peer_key.text if connection.peer_key else "?"
        report.event("connected", peer=target.name, key=key, path=connection.describe_path())
        try:
            digests = await hashing
        except OSError as e:
            raise TransferError(f"cannot read {e.filename}: {e.strerror}") from None
        sender = Sender(reactor, sources, digests, connection.open_stream, deferToThread, report)
        report.offer(PeerAddress(target.name, connection.peer_key), sender.offer, incoming=False)
        outcome = await sender.run()
        report.finished(outcome)
        return outcome
    finally:
        hashing.addErrback(lambda _: None)  # a failure after another one goes unsaid
        await _stop(reactor, service)


async def receive(reactor: IReactorTime, options: ReceiveOptions) -> Outcome:
    report = _reporter(reactor, options)
    holder: list[NATTraversalService] = []

    def ask(peer: PeerAddress, offer: Offer) -> Deferred[bool]:
        _watch_path(holder[0], peer, report)
        if options["yes"]:
            return succeed(True)
        return _ask_person(reactor, peer, report, options["json"])

    receiver = Receiver(options["output"], options["overwrite"], ask, deferToThread, report)
    identity = _identity(options, f"receive-{normalise_name(options['name'])}.key")
    service = _service(
        reactor, options, options["name"], identity, options["known-peers"], receiver
    )
    holder.append(service)
    try:
        await _start(reactor, service, options["timeout"])
        name = service.signaling.peer_name if service.signaling else options["name"]
        report.event("waiting", name=name, key=service.key.text)
        report.say(f"waiting for a sender: twisted-nat send PATH... --to {name}={service.key.text}")
        outcome = await receiver.done
        report.finished(outcome)
        if outcome.error is None:
            receiver.closed.addTimeout(LINGER, reactor)
            with contextlib.suppress(TimedOut):
                await receiver.closed
        return outcome
    finally:
        await _stop(reactor, service)


def _watch_path(service: NATTraversalService, peer: PeerAddress, report: Reporter) -> None:
    for connection in service.connections.values():
        if connection.peer_key == peer.key:
            report.path_is(connection.relayed)
            connection.on_path_change(lambda c: report.path_is(c.relayed))
            return


def _ask_person(
    reactor: IReactorTime, peer: PeerAddress, report: Reporter, as_json: bool
) -> Deferred[bool]:
    """Ask on the terminal, reading standard input in a thread so the reactor runs on."""
    answer: Deferred[bool] = Deferred()
    if as_json:
        report.event("ask", key=peer.key.text if peer.key else None)
    else:
        sys.stderr.write("accept these files? [y/N] ")
        sys.stderr.flush()

    def read() -> None:
        try:
            line = sys.stdin.readline()
        except (OSError, ValueError):
            line = ""
        yes = line.strip().lower() in ("y", "yes")
        cast(IReactorFromThreads, reactor).callFromThread(answer.callback, yes)

    threading.Thread(target=read, name="answer", daemon=True).start()
    return answer


def exit_at_once(status: int) -> NoReturn:
    """
    End the process with C{status}, skipping the interpreter's teardown of
    every module and object: once L{run} has returned the transfer is over
    (files synced and closed, the peer told, the reactor's threads joined),
    and the teardown would only keep the person, or the script, waiting.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def run(main: Callable[[Any], Coroutine[Any, Any, Outcome]]) -> int:
    """Run C{main} on the reactor; the exit status, with one line on stderr for a failure."""
    from twisted.internet import reactor

    status = [1]
    finished = [False]

    def succeeded(outcome: Outcome) -> None:
        if outcome.error is not None:
            sys.stderr.write(f"twisted-nat: {outcome.error}\n")
        status[0] = 0 if outcome.error is None else 1

    def failed(failure: Failure) -> None:
        if failure.check(TwistedNATError, OSError):
            error = failure.value
            text = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) else error
            sys.stderr.write(f"twisted-nat: {text}\n")
        else:
            failure.printTraceback(file=sys.stderr)

    def stop(_: object) -> None:
        finished[0] = True
        if reactor.running:
            reactor.stop()

    def start() -> None:
        ensureDeferred(main(reactor)).addCallbacks(succeeded, failed).addBoth(stop)

    core = cast(IReactorCore, reactor)
    core.callWhenRunning(start)
    core.run()
    if not finished[0]:
        sys.stderr.write("twisted-nat: interrupted; run the same command again to resume\n")
    return status[0]
