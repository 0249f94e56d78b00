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
