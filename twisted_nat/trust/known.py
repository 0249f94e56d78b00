"""
The known peers: which key each peer name is pinned to, and whom we answer.

Like SSH's C{known_hosts}, a name is pinned to the first key seen for it
and a later, different key for the same name is refused with
L{KeyMismatch} until a person edits the file: a rendezvous server that
lies about who "bob" is can then fool us at most once, on first contact.

The file is for people to read and edit, one pin a line::

    # name   key
    alice    tn-...
    bob      tn-...

Blank lines and C{#} comments are ignored.  Names go through
L{normalise_name}, so "Bob" and "bob" are one name.  The file holds public
keys only; it needs no secrecy, only the care any configuration file gets.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable

from twisted.logger import Logger

from twisted_nat.errors import ConfigurationError, KeyMismatch
from twisted_nat.trust.keys import PeerKey
from twisted_nat.trust.names import normalise_name

__all__ = ["Accept", "AcceptPolicy", "KnownPeers"]


class Accept(enum.Enum):
    """Whom L{KnownPeers.accepts}: the two policies that need no code."""

    ANYONE = "anyone"
    """Any peer whose key does not contradict a pin (trust on first use)."""

    KNOWN = "known"
    """Only peers whose name is already pinned to the key they offer."""


AcceptPolicy = Accept | Callable[[str, PeerKey], bool]
"""
An L{Accept} value, or a function of a normalised name and a key that
returns C{True} to accept that peer.
"""


class KnownPeers:
    """
    The pins of peer names to keys, kept in a file or only in memory, and
    the policy for whom to accept.

    @ivar path: the known peers file, or C{None} if pins are not saved.
    @ivar accept: the policy L{accepts} applies.
    """

    log = Logger()

    def __init__(self, path: str | None = None, accept: AcceptPolicy = Accept.ANYONE) -> None:
        """
        @param path: the known peers file, read now if it exists and
            created on the first L{pin} if not; C{None} keeps the pins in
            memory only.
        @param accept: L{Accept.ANYONE}, L{Accept.KNOWN}, or a function of
            (name, key) returning C{True} for peers to accept.
        @raise ConfigurationError: the file cannot be read, or a line of it
            is not a valid pin.
        """
        if not isinstance(accept, Accept) and not callable(accept):
            raise TypeError(f"accept must be an Accept or a callable, not {accept!r}")
        self.path = path
        self.accept = accept
        self._keys: dict[str, PeerKey] = {}
        self._names: dict[PeerKey, str] = {}
        if path is not None:
            self._load(path)

    def _load(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as e:
            raise ConfigurationError(f"cannot read known peers file {path}: {e.strerror}") from None
        for number, raw in enumerate(data.split(b"\n"), start=1):
            where = f"known peers file {path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigurationError(f"{where}: not UTF-8 text") from None
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ConfigurationError(
                    f"{where}: expected 'NAME KEY', found {len(fields)} fields"
                )
            try:
                name = normalise_name(fields[0])
                key = PeerKey.parse(fields[1])
            except ValueError as e:  # BadKey is a ValueError too
                raise ConfigurationError(f"{where}: {e}") from None
            pinned = self._keys.get(name)
            if pinned is not None and pinned != key:
                raise ConfigurationError(
                    f"{where}: {name} is pinned again, to another key (keep one of its lines)"
                )
            self._remember(name, key)

    def _remember(self, name: str, key: PeerKey) -> None:
        self._keys[name] = key
        self._names.setdefault(key, name)

    def key_for(self, name: str) -> PeerKey | None:
        """The key C{name} is pinned to; C{None} if none is (or C{name} is not a valid name)."""
        try:
            return self._keys.get(normalise_name(name))
        except ValueError:
            return None

    def name_for(self, key: PeerKey) -> str | None:
        """The (first) name pinned to C{key}; C{None} if none is."""
        return self._names.get(key)

    def pinned(self) -> dict[str, PeerKey]:
        """A copy of every pin, by normalised name, in the order they were made."""
        return dict(self._keys)

    def _mismatch(self, name: str, pinned: PeerKey, offered: PeerKey) -> KeyMismatch:
        if self.path is None:
            remedy = "that pin was made in this process and is not saved"
        else:
            remedy = f"edit or remove the line in {self.path} if {name} really has a new key"
        return KeyMismatch(
            f"the key of peer {name} has changed: it is pinned to {pinned.text} "
            f"but offered {offered.text}; {remedy}"
        )

    def check(self, name: str, key: PeerKey) -> None:
        """
        Refuse C{key} for C{name} if the name is pinned to another key.
        Pins nothing.

        @raise KeyMismatch: C{name} is pinned to another key.
        @raise ValueError: C{name} is not a valid peer name.
        """
        name = normalise_name(name)
        pinned = self._keys.get(name)
        if pinned is not None and pinned != key:
            raise self._mismatch(name, pinned, key)

    def pin(self, name: str, key: PeerKey) -> None:
        """
        Pin C{name} to C{key}, saving the pin in the file, unless it is
        pinned to C{key} already.

        @raise KeyMismatch: C{name} is pinned to another key.
        @raise ValueError: C{name} is not a valid peer name.
        @raise ConfigurationError: the file cannot be written; nothing is pinned.
        """
        if not isinstance(key, PeerKey):
            raise TypeError(f"a pin is to a PeerKey, not {type(key).__name__}")
        name = normalise_name(name)
        pinned = self._keys.get(name)
        if pinned == key:
            return
        if pinned is not None:
            raise self._mismatch(name, pinned, key)
        if self.path is not None:
            self._append(self.path, f"{name} {key.text}\n".encode())
        self._remember(name, key)
        self.log.info("pinned peer {name} to {key}", name=name, key=key.text)

    def _append(self, path: str, line: bytes) -> None:
        """
        Add C{line} to the file in a single write in append mode, so that
        lines written close together, even by two processes, never mix.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ConfigurationError(f"cannot open known peers file {path}: {e.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A person saved the file without a final newline.
                line = b"\n" + line
            if os.write(fd, line) != len(line):
                raise OSError(0, "short write (disk full?)")
        except OSError as e:
            raise ConfigurationError(
                f"cannot write known peers file {path}: {e.strerror}"
            ) from None
        finally:
            os.close(fd)

    def accepts(self, name: str, key: PeerKey) -> bool:
        """
        Whether to answer the peer C{name} offering C{key}, by the policy
        L{accept}.  An invalid name is never accepted; a policy function
        that raises refuses the peer, and its failure is logged.
        """
        try:
            name = normalise_name(name)
        except ValueError:
            return False
        if self.accept is Accept.ANYONE:
            pinned = self._keys.get(name)
            return pinned is None or pinned == key
        if self.accept is Accept.KNOWN:
            return self._keys.get(name) == key
        try:
            verdict = self.accept(name, key)
        except Exception:
            self.log.failure(
                "accept policy {policy!r} failed for peer {name}; refusing it",
                policy=self.accept,
                name=name,
            )
            return False
        if verdict is not True and verdict is not False:
            self.log.error(
                "accept policy {policy!r} returned {verdict!r}, not a bool; refusing peer {name}",
                policy=self.accept,
                verdict=verdict,
                name=name,
            )
            return False
        return verdict

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else self.path
        return f"<KnownPeers {where}: {len(self._keys)} pinned, accept={self.accept!r}>"
