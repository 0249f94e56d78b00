"""
The end-to-end key agreement of one session: a signed ephemeral
Diffie-Hellman exchange carried by the offer and the answer, as in SIGMA
(the "SIGn-and-MAc" design behind TLS 1.3 and IKEv2).

    offer   A -> B   A's name and key, B's name and/or key, session id,
                     e_A (fresh X25519), A's candidates and NAT hint,
                     sig_A(offer transcript)
    answer  B -> A   B's name and key, session id, e_B, B's candidates
                     and hint, sig_B(answer transcript)

The answer transcript begins with the hash of the offer transcript, so B's
signature covers both ephemeral keys, both names and keys, the session id
and both sets of candidates.  The session secret is

    HKDF-SHA256(salt = SHA-256(answer transcript),
                ikm  = X25519(e_A, e_B),
                info = "twisted-nat/1 session secret")

and every control key and data key of the session is derived from it
(L{twisted_nat.control.SessionKeys}).  The MAC half of SIGMA, the proof
that each side holds the secret, is the punch handshake: PUNCH and
PUNCH_ACK are MACed under keys only the two holders of e_A and e_B can
derive, and neither side uses a path before it has verified one.  Whoever
relays the offer and the answer sees public values only, and can drop
them, but any change makes a signature or the key agreement fail.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from twisted_nat.candidates import Candidate
from twisted_nat.errors import BadSignature, KeyMismatch
from twisted_nat.rendezvous.hint import NATHint
from twisted_nat.rendezvous.values import SESSION_ID_SIZE, Answer, Offer
from twisted_nat.trust.keys import Identity, PeerKey

_OFFER_LABEL = b"twisted-nat/1 offer\x00"
_ANSWER_LABEL = b"twisted-nat/1 answer\x00"
_SECRET_INFO = b"twisted-nat/1 session secret"


def _public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def offer_transcript(offer: Offer) -> bytes:
    """What the offerer signs."""
    return _OFFER_LABEL + offer.signed_part()


def answer_transcript(offer: Offer, answer: Answer) -> bytes:
    """What the answerer signs: the offer's transcript (hashed) and the answer."""
    return _ANSWER_LABEL + hashlib.sha256(offer_transcript(offer)).digest() + answer.signed_part()


def _secret(private: X25519PrivateKey, theirs: bytes, offer: Offer, answer: Answer) -> bytes:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(theirs))
    except ValueError:
        # A low-order point gives an all-zero secret, which cryptography refuses.
        raise BadSignature("the peer's ephemeral key is not usable") from None
    salt = hashlib.sha256(answer_transcript(offer, answer)).digest()
    return HKDF(hashes.SHA256(), 32, salt, _SECRET_INFO).derive(shared)


def check_offer(offer: Offer) -> None:
    """L{BadSignature} unless C{offer.from_key} signed C{offer}."""
    if not offer.from_key.verify(offer.signature, offer_transcript(offer)):
        raise BadSignature(
            f"the offer from {offer.from_name} does not carry a valid signature of "
            f"its key {offer.from_key.short}"
        )


def check_addressed(offer: Offer, our_name: str | None, our_key: PeerKey) -> None:
    """
    L{KeyMismatch} unless C{offer} is for us: an offer meant for another
    key (or, dialled by name only, another name) was routed to us by
    mistake or on purpose, and answering it would only help a relay that
    redirects offers.
    """
    if offer.to_key is not None and offer.to_key != our_key:
        raise KeyMismatch(
            f"the offer from {offer.from_name} is for key {offer.to_key.short}, not ours "
            f"({our_key.short})"
        )
    if offer.to_key is None and offer.to_name != our_name:
        raise KeyMismatch(
            f"the offer from {offer.from_name} is for {offer.to_name!r}, not us ({our_name!r})"
        )


class Offering:
    """
    The offerer's half of one handshake: it makes the signed offer and,
    from the answer, the session secret.  The ephemeral private key lives
    only here, for as long as the offer is outstanding.
    """

    __slots__ = ("_ephemeral", "offer")

    def __init__(
        self,
        identity: Identity,
        from_name: str,
        candidates: Iterable[Candidate],
        nat: NATHint | None = None,
        to_name: str | None = None,
        to_key: PeerKey | None = None,
    ) -> None:
        self._ephemeral = X25519PrivateKey.generate()
        unsigned = Offer(
            from_name,
            identity.public,
            to_name,
            to_key,
            os.urandom(SESSION_ID_SIZE),
            _public(self._ephemeral),
            candidates,
            nat,
        )
        self.offer = attrs.evolve(unsigned, signature=identity.sign(offer_transcript(unsigned)))

    def finish(self, answer: Answer) -> bytes:
        """
        The session secret, once C{answer} proves to come from the peer the
        offer was for (L{KeyMismatch} if another key, or another name,
        answered) and to answer this very offer (L{BadSignature}).
        """
        offer = self.offer
        if answer.session_id != offer.session_id:
            raise BadSignature("the answer is for another session")
        if offer.to_name is not None and answer.from_name != offer.to_name:
            raise KeyMismatch(
                f"{answer.from_name} ({answer.from_key.short}) answered an offer for "
                f"{offer.to_name}"
            )
        if offer.to_key is not None and answer.from_key != offer.to_key:
            raise KeyMismatch(
                f"{offer.to_name or offer.to_key.short} answered with key "
                f"{answer.from_key.short}, not {offer.to_key.short}"
            )
        if not answer.from_key.verify(answer.signature, answer_transcript(offer, answer)):
            raise BadSignature(
                f"the answer of {answer.from_name} does not carry a valid signature of "
                f"its key {answer.from_key.short}"
            )
        return _secret(self._ephemeral, answer.ephemeral, offer, answer)


def answer_offer(
    identity: Identity,
    our_name: str,
    offer: Offer,
    candidates: Iterable[Candidate],
    nat: NATHint | None = None,
) -> tuple[Answer, bytes]:
    """
    Our signed answer to C{offer} and the session secret.  The caller has
    checked the offer (L{check_offer}, L{check_addressed}) and decided to
    answer it.
    """
    ephemeral = X25519PrivateKey.generate()
    unsigned = Answer(
        offer.session_id, our_name, identity.public, _public(ephemeral), candidates, nat
    )
    answer = attrs.evolve(unsigned, signature=identity.sign(answer_transcript(offer, unsigned)))
    return answer, _secret(ephemeral, offer.ephemeral, offer, answer)
