"""
L{INameRegistry}: which peer key holds each name at a rendezvous server,
kept across disconnections and restarts.

The first key to claim a free name holds it until that key releases it, so
a name keeps meaning the same peer however often the peer reconnects, and
nobody can take it over while the peer is away.  L{MemoryRegistry} keeps
the bindings in a dict, for tests and the loopback demo; L{SQLiteRegistry}
keeps them in an SQLite file, through an L{adbapi.ConnectionPool} so that
the reactor never waits for the disk.  L{open_registry} picks one.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from twisted_nat.errors import RegistryError
from twisted_nat.trust.keys import PeerKey
from twisted_nat.trust.names import MAX_NAME_LENGTH

SERVER_ID_SIZE = 16

SCHEMA_VERSION = 1
"""
The layout of the tables, kept in the file as C{PRAGMA user_version}: a
later layout recognises older files by it and migrates them.
"""

APPLICATION_ID = int.from_bytes(b"tnNR", "big")
"""
The file's C{PRAGMA application_id}: tells a name registry from another
program's SQLite database, which must not be written into.
"""

_T = TypeVar("_T")


class INameRegistry(Interface):
    """
    The durable name -> key bindings of a rendezvous server.

    Every operation is atomic by itself, with no state kept between calls,
    so that several server nodes can share one store (a database, Redis)
    and get the answers one node with a dict would.  Failures of the store
    arrive as L{RegistryError}; a name that is not a string of 1 to
    L{MAX_NAME_LENGTH} characters, or a key that is not a L{PeerKey}, as
    C{ValueError} or C{TypeError}.
    """

    def server_id() -> Deferred[bytes]:
        """
        The 16 random bytes naming this store, made when it was created and
        kept with it, so the same after a restart.  Peers sign them in their
        registrations: a registration made for one server is no good at
        another.
        """

    def claim(name: str, key: PeerKey) -> Deferred[bool]:
        """
        Bind C{name} to C{key} if the name is free.

        @return: a Deferred firing with C{True} if C{name} is now bound to
            C{key} (just now or from before), C{False} if another key holds
            it.  Of concurrent claims of a free name by different keys,
            exactly one gets C{True}.
        """

    def lookup(name: str) -> Deferred[PeerKey | None]:
        """The key holding C{name}, or C{None} if it is free."""

    def names_of(key: PeerKey) -> Deferred[list[str]]:
        """The names C{key} holds, sorted."""

    def release(name: str, key: PeerKey) -> Deferred[bool]:
        """
        Free C{name} if C{key} holds it.

        @return: a Deferred firing with C{True} if C{key} held it (it is
            free now), C{False} if it was free or another key's (it is left
            as it was).
        """

    def close() -> Deferred[None]:
        """
        Let the operations under way finish, then let go of the store (its
        threads, files, connections).  Operations asked for afterwards fail
        with L{RegistryError}.
        """


def require_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"a peer name is a string, not {type(name).__name__}")
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"a peer name has 1 to {MAX_NAME_LENGTH} characters")


def require_key(key: PeerKey) -> None:
    if not isinstance(key, PeerKey):
        raise TypeError(f"a peer key is a PeerKey, not {type(key).__name__}")


@implementer(INameRegistry)
class MemoryRegistry:
    """
    Bindings in a dict, lost when the process ends: for tests and the
    loopback demo.  Its Deferreds have already fired when it returns them;
    L{names_of} looks through every binding.
    """

    def __init__(self) -> None:
        self._id = os.urandom(SERVER_ID_SIZE)
        self._keys: dict[str, PeerKey] = {}
        self._closed = False

    def _call(self, operation: Callable[..., _T], *args: Any) -> Deferred[_T]:
        if self._closed:
            return defer.fail(RegistryError("the name registry is closed"))
        return defer.maybeDeferred(operation, *args)

    def server_id(self) -> Deferred[bytes]:
        return self._call(lambda: self._id)

    def claim(self, name: str, key: PeerKey) -> Deferred[bool]:
        return self._call(self._claim, name, key)

    def _claim(self, name: str, key: PeerKey) -> bool:
        require_name(name)
        require_key(key)
        return self._keys.setdefault(name, key) == key

    def lookup(self, name: str) -> Deferred[PeerKey | None]:
        return self._call(self._lookup, name)

    def _lookup(self, name: str) -> PeerKey | None:
        require_name(name)
        return self._keys.get(name)

    def names_of(self, key: PeerKey) -> Deferred[list[str]]:
        return self._call(self._names_of, key)

    def _names_of(self, key: PeerKey) -> list[str]:
        require_key(key)
        return sorted(name for name, holder in self._keys.items() if holder == key)

    def release(self, name: str, key: PeerKey) -> Deferred[bool]:
        return self._call(self._release, name, key)

    def _release(self, name: str, key: PeerKey) -> bool:
        require_name(name)
        require_key(key)
        if self._keys.get(name) != key:
            return False
        del self._keys[name]
        return True

    def close(self) -> Deferred[None]:
        self._closed = True
        return defer.succeed(None)


def _one_line(error: object) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _scalar(txn: adbapi.Transaction, sql: str, *args: object) -> Any:
    txn.execute(sql, args)
    row = txn.fetchone()
    return None if row is None else row[0]


@implementer(INameRegistry)
class SQLiteRegistry:
    """
    Bindings in an SQLite file, which survive restarts and crashes (the
    file is in WAL mode, and each change is committed before its Deferred
    fires).

    All file access happens in one thread of an L{adbapi.ConnectionPool}:
    one connection makes the operations of this process one queue, and
    SQLite's locks make each one atomic towards other processes using the
    file.  The file is opened, and its tables made, by the first operation;
    if that fails (not a database, another program's, from a newer
    twisted-nat, unreadable) every operation fails with a L{RegistryError}
    saying so, until one succeeds.  A server calls L{server_id} when it
    starts, which reports such a file at once.

    The pool's thread starts when the reactor does, or now if it is
    running: not before, so that C{twistd} can fork first.

    @ivar path: the file's path.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            path,
            check_same_thread=False,
            isolation_level=None,
            cp_min=1,
            cp_max=1,
        )
        self._id: bytes | None = None
        self._busy = 0
        self._closed = False
        self._released = False
        self._closing: list[Deferred[None]] = []

    def _run(self, operation: Callable[..., _T], *args: Any) -> Deferred[_T]:
        if self._closed:
            return defer.fail(RegistryError(f"the name registry {self.path} is closed"))
        self._busy += 1
        d: Deferred[_T] = self._pool.runInteraction(self._interact, operation, *args)
        return d.addErrback(self._connect_failed).addBoth(self._finished)

    def _connect_failed(self, failure: Failure) -> Failure:
        """Errors of C{sqlite3.connect}, which come before L{_interact} runs."""
        if not failure.check(sqlite3.Error):
            return failure
        reason = _one_line(failure.value)
        return Failure(RegistryError(f"cannot open the name registry {self.path}: {reason}"))

    def _finished(self, result: _T) -> _T:
        self._busy -= 1
        self._release_pool()
        return result

    def _interact(self, txn: adbapi.Transaction, operation: Callable[..., _T], *args: Any) -> _T:
        """In the pool's thread: open the file if no operation has yet, then run C{operation}."""
        if self._id is None:
            try:
                self._id = self._open(txn)
            except sqlite3.Error as e:
                raise RegistryError(
                    f"cannot open the name registry {self.path}: {_one_line(e)}"
                ) from e
        try:
            return operation(txn, *args)
        except sqlite3.Error as e:
            raise RegistryError(f"name registry {self.path}: {_one_line(e)}") from e

    def _open(self, txn: adbapi.Transaction) -> bytes:
        return _open_file(txn, self.path)

    def server_id(self) -> Deferred[bytes]:
        return self._run(self._server_id)

    def _server_id(self, txn: adbapi.Transaction) -> bytes:
        assert self._id is not None, "_interact opens the file first"
        return self._id

    def claim(self, name: str, key: PeerKey) -> Deferred[bool]:
        return self._run(self._claim, name, key)

    @staticmethod
    def _claim(txn: adbapi.Transaction, name: str, key: PeerKey) -> bool:
        require_name(name)
        require_key(key)
        txn.execute("BEGIN IMMEDIATE")
        txn.execute("INSERT OR IGNORE INTO names (name, key) VALUES (?, ?)", (name, key.raw))
        holder: bytes = _scalar(txn, "SELECT key FROM names WHERE name = ?", name)
        return holder == key.raw

    def lookup(self, name: str) -> Deferred[PeerKey | None]:
        return self._run(self._lookup, name)

    @staticmethod
    def _lookup(txn: adbapi.Transaction, name: str) -> PeerKey | None:
        require_name(name)
        raw = _scalar(txn, "SELECT key FROM names WHERE name = ?", name)
        return None if raw is None else PeerKey(raw)

    def names_of(self, key: PeerKey) -> Deferred[list[str]]:
        return self._run(self._names_of, key)

    @staticmethod
    def _names_of(txn: adbapi.Transaction, key: PeerKey) -> list[str]:
        require_key(key)
        txn.execute("SELECT name FROM names WHERE key = ?", (key.raw,))
        return sorted(name for (name,) in txn.fetchall())

    def release(self, name: str, key: PeerKey) -> Deferred[bool]:
        return self._run(self._release, name, key)

    @staticmethod
    def _release(txn: adbapi.Transaction, name: str, key: PeerKey) -> bool:
        require_name(name)
        require_key(key)
        txn.execute("DELETE FROM names WHERE name = ? AND key = ?", (name, key.raw))
        return bool(txn.rowcount == 1)

    def close(self) -> Deferred[None]:
        if self._released:
            return defer.succeed(None)
        self._closed = True
        d: Deferred[None] = Deferred()
        self._closing.append(d)
        self._release_pool()
        return d

    def _release_pool(self) -> None:
        """Once closed and idle: stop the pool's thread and close its connection."""
        if not self._closed or self._busy or self._released:
            return
        self._released = True
        self._pool.close()
        waiting, self._closing = self._closing, []
        for d in waiting:
            d.callback(None)


def _open_file(txn: Any, path: str) -> bytes:
    """
    Check the file is a registry (making it one if it is empty); its server
    id.  C{txn} is a cursor of a connection in autocommit mode.
    """
    _into_wal(txn)
    txn.execute("PRAGMA synchronous = FULL")
    txn.execute("BEGIN IMMEDIATE")
    application = _scalar(txn, "PRAGMA application_id")
    version = _scalar(txn, "PRAGMA user_version")
    if application == 0 and not _scalar(txn, "SELECT count(*) FROM sqlite_master"):
        txn.execute(
            "CREATE TABLE IF NOT EXISTS registry "
            "(item TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)"
        )
        txn.execute(
            "CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY NOT NULL, "
            "key BLOB NOT NULL CHECK (typeof(key) = 'blob' AND length(key) = 32))"
        )
        txn.execute("CREATE INDEX IF NOT EXISTS names_by_key ON names (key)")
        txn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        txn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    elif application != APPLICATION_ID:
        raise RegistryError(f"{path} is not a twisted-nat name registry")
    elif version != SCHEMA_VERSION:
        raise RegistryError(
            f"the name registry {path} has schema version {version}; "
            f"this twisted-nat reads version {SCHEMA_VERSION}"
        )
    txn.execute(
        "INSERT OR IGNORE INTO registry (item, value) VALUES ('server_id', ?)",
        (os.urandom(SERVER_ID_SIZE),),
    )
    server_id = _scalar(txn, "SELECT value FROM registry WHERE item = 'server_id'")
    txn.execute("COMMIT")
    if not isinstance(server_id, bytes) or len(server_id) != SERVER_ID_SIZE:
        raise RegistryError(f"the name registry {path} has a damaged server id")
    return server_id


OPEN_ATTEMPTS = 100
"""Tries to switch a file another connection is opening to WAL, 20 ms apart."""


def _into_wal(txn: Any) -> None:
    """
    Switch to write-ahead logging.  Another connection making the same
    switch holds a lock that SQLite does not wait for here ("database is
    locked" at once), so this waits, in the pool's thread, and tries again.
    """
    for attempt in range(OPEN_ATTEMPTS):
        try:
            txn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.02)


def check_registry(path: str) -> None:
    """
    Open the registry file C{path} now, blocking, and raise L{RegistryError}
    (one line) if it cannot serve: for start-up, before the reactor runs,
    so that a bad file ends the server at once.
    """
    try:
        connection = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as e:
        raise RegistryError(f"cannot open the name registry {path}: {_one_line(e)}") from None
    try:
        _open_file(connection.cursor(), path)
    except sqlite3.Error as e:
        raise RegistryError(f"cannot open the name registry {path}: {_one_line(e)}") from None
    finally:
        connection.close()


def open_registry(path: str | None) -> INameRegistry:
    """
    The name registry kept in the SQLite file C{path} (made if missing), or
    one in memory if C{path} is C{None}.
    """
    if path is None:
        return MemoryRegistry()
    return SQLiteRegistry(path)
