"""
The long-term credential of TURN requests (RFC 8489 9.2).

The first Allocate goes without; the server's 401 names the realm and a
nonce, and everything after is signed with C{MD5(username:realm:password)}
(or SHA-256 when the server offers PASSWORD-ALGORITHMS).  A 438 (stale
nonce) brings a fresh nonce.  No I/O here: L{Credentials} reads challenges
and signs messages.
"""

from __future__ import annotations

import attrs

from twisted_nat.errors import TURNError
from twisted_nat.stun.attributes import (
    PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
    Attribute,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithms,
    Realm,
    Username,
)
from twisted_nat.stun.credentials import long_term_key
from twisted_nat.stun.message import Message, with_integrity

NONCE_COOKIE = "obMatJos2"
"""RFC 8489 9.2: a NONCE starting so carries the server's security feature bits."""


@attrs.frozen
class Credentials:
    """
    What signs a request after the server's 401: the long-term key and the
    attributes that go with it.  A 438 replaces the nonce (L{with_nonce}).

    @ivar algorithms: the server's PASSWORD-ALGORITHMS, echoed back with our
        choice in PASSWORD-ALGORITHM, as RFC 8489 9.2.4 requires, so that a
        man in the middle cannot downgrade the algorithm unnoticed.
    @ivar sha256: also sign with MESSAGE-INTEGRITY-SHA256 (an RFC 8489
        server, recognised by its PASSWORD-ALGORITHMS).
    """

    username: str
    realm: str
    nonce: str
    key: bytes = attrs.field(repr=False)
    algorithms: PasswordAlgorithms | None = None
    algorithm: PasswordAlgorithm | None = None
    sha256: bool = False

    @classmethod
    def from_challenge(cls, challenge: Message, username: str, password: str) -> Credentials:
        """
        The credentials answering C{challenge}, a 401 error response.

        @raise TURNError: the 401 lacks REALM or NONCE, or offers only
            password algorithms we do not know.
        """
        realm, nonce = challenge.get(Realm), challenge.get(Nonce)
        if realm is None or nonce is None:
            raise TURNError(401, "401 without REALM and NONCE: not a long-term credential server")
        offered = challenge.get(PasswordAlgorithms)
        if offered is None or not nonce.value.startswith(NONCE_COOKIE):
            key = long_term_key(username, realm.value, password)
            return cls(username, realm.value, nonce.value, key)
        for number, parameters in offered.algorithms:
            if number in (PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256):
                key = long_term_key(username, realm.value, password, algorithm=number)
                chosen = PasswordAlgorithm(number, parameters)
                return cls(username, realm.value, nonce.value, key, offered, chosen, sha256=True)
        raise TURNError(401, "the server offers no password algorithm we know")

    def with_nonce(self, stale: Message) -> Credentials | None:
        """These credentials with the nonce (and realm) of a 438 answer, or None without one."""
        nonce, realm = stale.get(Nonce), stale.get(Realm)
        if nonce is None:
            return None
        return attrs.evolve(
            self, nonce=nonce.value, realm=realm.value if realm is not None else self.realm
        )

    def sign(self, message: Message) -> Message:
        """
        C{message} with USERNAME, REALM, NONCE (and the password algorithms)
        and empty MESSAGE-INTEGRITY attributes, which C{encode} computes from
        the key.
        """
        extra: list[Attribute] = [Username(self.username), Realm(self.realm), Nonce(self.nonce)]
        if self.algorithms is not None and self.algorithm is not None:
            extra += [self.algorithms, self.algorithm]
        signed = attrs.evolve(message, attributes=message.attributes + tuple(extra))
        return with_integrity(signed, sha1=True, sha256=self.sha256)
