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
    """Another live connection has already registered this name."""


class NotRegistered(RendezvousError):
    """A connection tried to send an offer before registering a name."""


class PeerUnavailable(RendezvousError):
    """The peer was found but did not answer: its handler failed, refused or timed out."""


class RendezvousUnavailable(RendezvousError):
    """
    There is no usable connection to the rendezvous server right now, or it
    was lost while a call was waiting for its answer.  Retrying later may
    work: the client reconnects by itself.
    """


class MalformedSignal(RendezvousError, ValueError):
    """A signalling message (name, offer, answer) is not well-formed."""
