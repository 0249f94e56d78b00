"""
Keys for STUN's short-term and long-term credential mechanisms.

RFC 8489 prepares passwords and realms with the PRECIS OpaqueString profile
(RFC 8265); RFC 5389, which RFC 5769's test vectors follow, used SASLprep
(RFC 4013).  Both are here; every key function takes the preparation as a
parameter and defaults to RFC 8489's.  For plain ASCII the two agree.
"""

from __future__ import annotations

import hashlib
import stringprep
import unicodedata
from collections.abc import Callable

from twisted_nat.stun.attributes.integrity import PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256

Preparation = Callable[[str], str]

# Outside every class the FreeformClass admits (RFC 8264 9.11-9.18): the
# line and paragraph separators are not Spaces, which means Zs only.
_DISALLOWED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def opaque_string(value: str) -> str:
    """
    Prepare C{value} with the PRECIS OpaqueString profile (RFC 8265 4.2).

    Non-ASCII spaces become U+0020, the result is NFC-normalised, and
    characters outside the FreeformClass (controls, format and unassigned
    code points, surrogates, private use) are refused with C{ValueError}.
    """
    mapped = "".join(" " if unicodedata.category(c) == "Zs" else c for c in value)
    normalised = unicodedata.normalize("NFC", mapped)
    if not normalised:
        raise ValueError("empty string after OpaqueString preparation")
    for char in normalised:
        if unicodedata.category(char) in _DISALLOWED_CATEGORIES:
            raise ValueError(f"character U+{ord(char):04X} not allowed by OpaqueString")
    return normalised


def saslprep(value: str) -> str:
    """
    Prepare C{value} with SASLprep (RFC 4013), as RFC 5389 did.

    Unassigned code points are allowed (the "query" rules), so a client can
    send what a server of a later Unicode version may know.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in value if not stringprep.in_table_b1(c)
    )
    normalised = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    for char in normalised:
        if any(check(char) for check in prohibited):
            raise ValueError(f"character U+{ord(char):04X} prohibited by SASLprep")
    if any(stringprep.in_table_d1(c) for c in normalised):
        if any(stringprep.in_table_d2(c) for c in normalised):
            raise ValueError("mixed bidirectional text prohibited by SASLprep")
        if not (stringprep.in_table_d1(normalised[0]) and stringprep.in_table_d1(normalised[-1])):
            raise ValueError("RandALCat text must start and end with RandALCat")
    return normalised


def short_term_key(password: str, prep: Preparation = opaque_string) -> bytes:
    """The HMAC key of the short-term mechanism: the prepared password."""
    return prep(password).encode("utf-8")


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: int = PASSWORD_ALGORITHM_MD5,
    prep: Preparation = opaque_string,
) -> bytes:
    """
    The HMAC key of the long-term mechanism (RFC 8489 9.2.2):
    C{H(username ":" prep(realm) ":" prep(password))}, H being MD5 or SHA-256.
    """
    material = ":".join((username, prep(realm), prep(password))).encode("utf-8")
    if algorithm == PASSWORD_ALGORITHM_MD5:
        return hashlib.md5(material, usedforsecurity=False).digest()
    if algorithm == PASSWORD_ALGORITHM_SHA256:
        return hashlib.sha256(material).digest()
    raise ValueError(f"unknown password algorithm {algorithm:#06x}")


def userhash(username: str, realm: str, prep: Preparation = opaque_string) -> bytes:
    """USERHASH (RFC 8489 14.4): SHA-256(username ":" realm), both prepared."""
    return hashlib.sha256(f"{prep(username)}:{prep(realm)}".encode()).digest()
