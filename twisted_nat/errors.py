"""
Exception types of twisted-nat.

Every failure a caller can see through a Deferred is one of these, so an
application can trap the family (L{TwistedNATError}) or one precise cause.
"""

from __future__ import annotations


class TwistedNATError(Exception):
    """Base of every error twisted-nat raises on purpose."""


class ConfigurationError(TwistedNATError):
    """A user-supplied setting (address, port, server) cannot be used."""


class RegistryError(ConfigurationError):
    """
    The rendezvous server's name registry cannot be used: its database file
    is unreadable, corrupt, another program's or of a newer schema, or the
    registry is closed.  The message is one line, fit for an operator.
    """


class RedisUnavailable(RegistryError):
    """
    The Redis server that rendezvous nodes share cannot be reached now (or
    did not answer in time).  The node keeps serving the peers it holds and
    reconnects by itself.
    """


class STUNDecodeError(TwistedNATError, ValueError):
    """
    Bytes are not a well-formed STUN message.

    This is the only exception the decoder raises, whatever the input, so
    protocol code can drop hostile datagrams with a single C{except}.
    """


class IntegrityError(TwistedNATError):
    """A MESSAGE-INTEGRITY(-SHA256) attribute is missing or does not verify."""


class STUNTimeout(TwistedNATError):
    """A STUN transaction got no response within its retransmission schedule."""

    def __init__(self, server: tuple[str, int], attempts: int | None, elapsed: float) -> None:
        sent = f" to {attempts} transmissions" if attempts else ""
        super().__init__(f"no STUN response from {server[0]}:{server[1]}{sent} in {elapsed:.1f}s")
        self.server = server
        self.attempts = attempts
        self.elapsed = elapsed


class STUNErrorResponse(TwistedNATError):
    """The server answered with an error response (class 0b11)."""

    def __init__(self, server: tuple[str, int], code: int, reason: str, response: object) -> None:
        super().__init__(f"STUN error {code} ({reason}) from {server[0]}:{server[1]}")
        self.server = server
        self.code = code
        self.reason = reason
        self.response = response


class TransactionCancelled(TwistedNATError):
    """The transaction was abandoned locally (client stopped or caller cancelled)."""


class DiscoveryError(TwistedNATError):
    """No STUN server gave a usable answer; C{failures} says what each one did."""

    def __init__(self, failures: dict[tuple[str, int], BaseException]) -> None:
        detail = "; ".join(f"{h}:{p}: {exc}" for (h, p), exc in failures.items()) or "no servers"
        super().__init__(f"public address discovery failed ({detail})")
        self.failures = failures


class RendezvousError(TwistedNATError):
    """
    Base of the rendezvous (signalling) errors.

    These cross the wire as AMP error descriptions, which arrive as bytes;
    the constructor accepts them so that C{str()} of an error reads the same
    on both ends.
    """

    def __init__(self, message: str | bytes = "") -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        super().__init__(message)


class UnknownPeer(RendezvousError):
    """No peer is registered under the name an offer was addressed to."""


class DuplicateName(RendezvousError):
    """The name is bound to another key at the rendezvous server, for good."""


class RegistrationRefused(RendezvousError):
    """
    The rendezvous server refused a registration or release: its signature
    does not verify, or no challenge was asked for first.
    """


class NotRegistered(RendezvousError):
    """A connection tried to send an offer before registering a name."""


class PeerUnavailable(RendezvousError):
    """The peer was found but did not answer: its handler failed, refused or timed out."""


class RendezvousBusy(RendezvousError):
    """
    The rendezvous server holds as much as it allows for now: offers waiting
    for answers (ours, the peer's, or in all), or registrations from our
    address.  Retrying later may work.
    """


class RendezvousUnavailable(RendezvousError):
    """
    There is no usable connection to the rendezvous server right now, or it
    was lost while a call was waiting for its answer.  Retrying later may
    work: the client reconnects by itself.
    """


class RegisteredElsewhere(RendezvousUnavailable):
    """
    The rendezvous server closed our connection because a newer connection
    registered our key: another process holds our key.  The client does
    not reconnect, so that the two do not take the name from each other
    in turn.
    """


class MalformedSignal(RendezvousError, ValueError):
    """A signalling message (name, offer, answer) is not well-formed."""


class TURNError(TwistedNATError):
    """
    A TURN request failed.

    @ivar code: the server's ERROR-CODE (e.g. 403, 437, 508), or C{None}
        when the failure is local (no answer, connection lost, closed).
    @ivar reason: the server's reason phrase, or what went wrong here.
    @ivar server: the TURN server's address, when known.
    @ivar response: the error response message, when there was one.
    """

    def __init__(
        self,
        code: int | None,
        reason: str,
        server: tuple[str, int] | None = None,
        response: object = None,
    ) -> None:
        if code is not None:
            where = f" from {server[0]}:{server[1]}" if server else ""
            message = f"TURN error {code} ({reason}){where}"
        else:
            message = f"{reason} (TURN server {server[0]}:{server[1]})" if server else reason
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.server = server
        self.response = response


class TURNAuthenticationError(TURNError):
    """
    The server refused our credentials: 401 to a request signed with them
    (a wrong user name or password), or 441 Wrong Credentials.
    """


class TURNQuotaError(TURNError):
    """486 Allocation Quota Reached: this user holds as many allocations as allowed."""


class TURNUnavailable(TURNError):
    """
    The TURN server could not be reached: a request got no answer (the
    underlying L{STUNTimeout} is the C{__cause__}), or the stream to it could
    not be opened or was lost.
    """

    def __init__(self, reason: str, server: tuple[str, int] | None = None) -> None:
        super().__init__(None, reason, server)


class TURNAllocationClosed(TURNError):
    """
    The allocation was closed (deallocated) on purpose; it is what an
    allocation's C{lost} Deferred fires with after C{close()}, and what using
    a closed allocation raises.
    """

    def __init__(
        self, reason: str = "the allocation was closed", server: tuple[str, int] | None = None
    ) -> None:
        super().__init__(None, reason, server)


class TURNNoPermission(TURNError):
    """
    Data for a peer the allocation has no permission for: the server would
    drop it silently, so it is refused here, where the caller can see why.
    """

    def __init__(self, peer: tuple[str, int], server: tuple[str, int] | None = None) -> None:
        super().__init__(None, f"no permission for peer {peer[0]}", server)
        self.peer = peer


class ChannelDataDecodeError(TwistedNATError, ValueError):
    """Bytes are not a well-formed TURN ChannelData message (RFC 8656 12.4)."""


class TrustError(TwistedNATError):
    """Base of the errors about peer keys and names."""


class BadKey(TrustError, ValueError):
    """
    A printed peer key that is not one: wrong prefix, length or alphabet,
    or a checksum that does not match (a typo).
    """


class KeyFileError(TrustError, ConfigurationError):
    """A key file that cannot be used: unreadable, malformed, or readable by others."""


class KeyMismatch(TrustError):
    """
    A peer presented another key than the one expected for it: pinned in
    the known peers, given by the application, or held by an existing
    connection.  The message says which name and which keys.
    """


class BadSignature(TrustError):
    """An offer, answer or registration whose signature does not verify."""


class PeerRefused(TrustError):
    """Our accept policy refused an offer from this peer (its key is not known)."""


class PortMappingError(TwistedNATError):
    """
    A gateway gave no port mapping: none answered, it refused, or what it
    answered could not be used.  The message is one line, fit for an
    operator; C{code} is the gateway's own error code when it sent one.
    """

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class StreamError(TwistedNATError):
    """A stream to a peer (QUIC over the punched path) ended other than by a clean close."""


class StreamReset(StreamError):
    """The peer reset the stream (RESET_STREAM), or stopped reading it (STOP_SENDING)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class PeerClosedStreams(StreamError):
    """The peer closed the QUIC connection that carried the stream."""


class StreamIdleTimeout(StreamError):
    """Nothing came from the peer for longer than the idle timeout: the path is dead."""


class PathLost(StreamError):
    """
    The path to the peer was lost, and no new one was found within the
    streams' C{path_lost_timeout}: the peer is gone (its process or its
    network), so its streams fail rather than wait out QUIC's idle timeout.
    """


class StreamsClosed(StreamError):
    """Our side closed the streams: the peer connection or the service stopped."""


class TransferError(TwistedNATError):
    """A file transfer (C{twisted-nat send} / C{receive}) failed; the message is one line."""


class UnsafeName(TransferError, ValueError):
    """A name in a sender's list of files that could leave the output directory, or harm it."""


class TransferRefused(TransferError):
    """The receiver (or the person at it) refused the transfer."""


class TransferProtocolError(TransferError):
    """The other side broke the transfer protocol: a malformed, oversized or unexpected message."""
