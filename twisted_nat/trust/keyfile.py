"""
Our L{Identity} kept in a file, so that a peer keeps its key, and so the
name others pinned to it, from one run to the next.

The file is an unencrypted PKCS#8 private key in PEM, the format OpenSSL
and most tools read (C{openssl pkey -in FILE -pubout}).  Whoever reads it
can be us, so it is created readable by its owner only, never replaced,
and refused when its mode lets anyone else near it, as SSH does with its
private keys.  Every refusal is a L{KeyFileError} with a one-line message
naming the file and what to do about it.
"""

from __future__ import annotations

import os
import shlex
import stat

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from twisted_nat.errors import KeyFileError
from twisted_nat.trust.keys import Identity

__all__ = ["create_identity", "load_identity", "load_or_create_identity"]

_MAX_FILE_SIZE = 64 * 1024
"""A key file is a few hundred bytes; anything larger is not one, and is not read whole."""

_KEY_KINDS: tuple[tuple[type, str], ...] = (
    (rsa.RSAPrivateKey, "an RSA"),
    (ec.EllipticCurvePrivateKey, "an elliptic-curve (ECDSA)"),
    (dsa.DSAPrivateKey, "a DSA"),
    (ed448.Ed448PrivateKey, "an Ed448"),
    (x25519.X25519PrivateKey, "an X25519"),
    (x448.X448PrivateKey, "an X448"),
)


def _new_key_hint(path: str) -> str:
    return f"twisted-nat key new {shlex.quote(path)}"


def _read(path: str) -> bytes | None:
    """
    The bytes of the key file at C{path}, or C{None} if there is none.

    The mode is checked on the open file, so it is the mode of what is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file: give the path of a key")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            if mode & 0o044:
                what = "readable"
            elif mode & 0o022:
                what = "writable"
            else:
                what = "usable"
            raise KeyFileError(
                f"key file {path} is {what} by others (mode {mode:04o}): "
                f"chmod 600 {shlex.quote(path)}"
            )
        chunks = []
        size = 0
        while size <= _MAX_FILE_SIZE:
            chunk = os.read(fd, _MAX_FILE_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > _MAX_FILE_SIZE:
        raise KeyFileError(
            f"key file {path} is too large to be a private key: "
            f"create one with {_new_key_hint(path)!r} at another path"
        )
    return b"".join(chunks)


def _parse(path: str, data: bytes) -> Identity:
    """The L{Identity} whose private key C{data} holds, from the file C{path}."""
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(
            f"key file {path} is encrypted: twisted-nat needs an unencrypted key "
            "(openssl pkey -in OLD -out NEW writes one)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(
            f"key file {path} does not hold a PEM private key: "
            f"create one with {_new_key_hint(path)!r} at another path"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = next((name for cls, name in _KEY_KINDS if isinstance(key, cls)), "another kind of")
        raise KeyFileError(
            f"key file {path} holds {kind} key, not an Ed25519 one: "
            f"create one with {_new_key_hint(path)!r} at another path"
        )
    return Identity(key)


def load_identity(path: str) -> Identity:
    """
    The identity saved in the key file at C{path}.

    @raise KeyFileError: there is no such file, it cannot be read, others
        may read or write it, or it holds no Ed25519 private key.
    """
    data = _read(path)
    if data is None:
        raise KeyFileError(
            f"key file {path} does not exist: create it with {_new_key_hint(path)!r}"
        )
    return _parse(path, data)


def create_identity(path: str) -> Identity:
    """
    A new identity, saved in a new key file at C{path} that only its owner
    may read (mode 0600, or less under a stricter umask).

    An existing file is never replaced, whatever it holds: losing a key
    means losing the name others pinned to it.

    @raise KeyFileError: C{path} exists, or the file cannot be written.
    """
    identity = Identity.generate()
    pem = identity.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"key file {path} already exists: it is never overwritten "
            "(remove it first, or choose another path)"
        ) from None
    except OSError as e:
        raise KeyFileError(f"cannot create key file {path}: {e.strerror}") from None
    try:
        written = 0
        while written < len(pem):
            written += os.write(fd, pem[written:])
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        raise KeyFileError(f"cannot write key file {path}: {e.strerror}") from None
    os.close(fd)
    return identity


def load_or_create_identity(path: str) -> tuple[Identity, bool]:
    """
    The identity in the key file at C{path}, created there first if there
    is no such file; and whether it was just created.

    A file that exists but cannot be used is refused, never replaced.

    @raise KeyFileError: as L{load_identity} and L{create_identity} do.
    """
    data = _read(path)
    if data is not None:
        return _parse(path, data), False
    try:
        return create_identity(path), True
    except KeyFileError:
        # Another process may have created it since we looked: use theirs.
        data = _read(path)
        if data is None:
            raise
        return _parse(path, data), False
