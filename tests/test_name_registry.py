"""
The name registry: one behaviour, in memory and in SQLite; the SQLite
file's persistence, atomicity across connections, refusal of files that
are not registries, and its thread stopping on close.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface.verify import verifyObject

from twisted_nat.errors import ConfigurationError, RegistryError
from twisted_nat.rendezvous.registry import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    INameRegistry,
    MemoryRegistry,
    SQLiteRegistry,
    open_registry,
)
from twisted_nat.trust.keys import Identity

ALICE = Identity.generate().public
BOB = Identity.generate().public


async def failure_of(d: defer.Deferred[Any]) -> BaseException:
    try:
        result = await d
    except Exception as e:
        return e
    raise AssertionError(f"expected a failure, got {result!r}")


def threads_since(before: set[threading.Thread]) -> set[threading.Thread]:
    return set(threading.enumerate()) - before


@pytest_twisted.async_yield_fixture(params=["memory", "sqlite"])
async def registry(request: Any, tmp_path: Path) -> AsyncIterator[INameRegistry]:
    path = None if request.param == "memory" else str(tmp_path / "names.db")
    opened = open_registry(path)
    yield opened
    await opened.close()


@pytest_twisted.async_yield_fixture
async def closing() -> AsyncIterator[list[INameRegistry]]:
    """Registries a test opens itself, closed after it whatever happens."""
    opened: list[INameRegistry] = []
    yield opened
    for each in opened:
        await each.close()


def test_open_registry_picks_the_implementation(tmp_path: Path, closing) -> None:
    memory = open_registry(None)
    stored = open_registry(str(tmp_path / "names.db"))
    closing.append(stored)
    assert isinstance(memory, MemoryRegistry)
    assert isinstance(stored, SQLiteRegistry)
    assert verifyObject(INameRegistry, memory)
    assert verifyObject(INameRegistry, stored)


@pytest_twisted.ensureDeferred
async def test_server_id_is_16_bytes_and_stable(registry: INameRegistry) -> None:
    first = await registry.server_id()
    assert type(first) is bytes and len(first) == 16
    assert await registry.server_id() == first


@pytest_twisted.ensureDeferred
async def test_claim_lookup_and_names_of(registry: INameRegistry) -> None:
    assert await registry.lookup("alice") is None
    assert await registry.claim("alice", ALICE) is True
    assert await registry.claim("alice", ALICE) is True, "claiming one's own name again"
    assert await registry.claim("alice", BOB) is False
    assert await registry.lookup("alice") == ALICE
    assert await registry.claim("zed", ALICE) is True
    assert await registry.claim("al", ALICE) is True
    assert await registry.claim("bob", BOB) is True
    assert await registry.names_of(ALICE) == ["al", "alice", "zed"]
    assert await registry.names_of(BOB) == ["bob"]
    assert await registry.names_of(Identity.generate().public) == []


@pytest_twisted.ensureDeferred
async def test_names_are_exact_strings(registry: INameRegistry) -> None:
    name = "\u00e9t\u00e9-\U0001f600" + "x" * 58
    assert await registry.claim(name, ALICE) is True
    assert await registry.lookup(name) == ALICE
    assert await registry.lookup(name.upper()) is None
    assert await registry.names_of(ALICE) == [name]


@pytest_twisted.ensureDeferred
async def test_release_only_by_the_holder(registry: INameRegistry) -> None:
    await registry.claim("alice", ALICE)
    assert await registry.release("alice", BOB) is False
    assert await registry.lookup("alice") == ALICE
    assert await registry.release("alice", ALICE) is True
    assert await registry.lookup("alice") is None
    assert await registry.names_of(ALICE) == []
    assert await registry.release("alice", ALICE) is False, "already free"
    assert await registry.claim("alice", BOB) is True, "a released name is free for anyone"


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_have_one_winner(registry: INameRegistry) -> None:
    keys = [Identity.generate().public for _ in range(20)]
    claims = [registry.claim("contested", key) for key in keys]
    won = await defer.gatherResults(claims)
    assert won.count(True) == 1
    assert await registry.lookup("contested") == keys[won.index(True)]


@pytest_twisted.ensureDeferred
async def test_malformed_arguments_fail(registry: INameRegistry) -> None:
    assert isinstance(await failure_of(registry.claim("", ALICE)), ValueError)
    assert isinstance(await failure_of(registry.claim("x" * 65, ALICE)), ValueError)
    raw: Any = ALICE.raw
    assert isinstance(await failure_of(registry.claim("alice", raw)), TypeError)
    assert isinstance(await failure_of(registry.names_of(raw)), TypeError)
    assert await registry.lookup("alice") is None


@pytest_twisted.ensureDeferred
async def test_closed_registry_refuses_operations(registry: INameRegistry) -> None:
    await registry.close()
    await registry.close()
    assert isinstance(await failure_of(registry.lookup("alice")), RegistryError)
    assert isinstance(await failure_of(registry.server_id()), RegistryError)


@pytest_twisted.ensureDeferred
async def test_sqlite_bindings_survive_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "names.db")
    first = SQLiteRegistry(path)
    server_id = await first.server_id()
    await first.claim("alice", ALICE)
    await first.claim("bob", BOB)
    await first.release("bob", BOB)
    await first.close()

    again = SQLiteRegistry(path)
    try:
        assert await again.server_id() == server_id
        assert await again.lookup("alice") == ALICE
        assert await again.lookup("bob") is None
        assert await again.claim("alice", BOB) is False
    finally:
        await again.close()
    assert await MemoryRegistry().server_id() != server_id


@pytest_twisted.ensureDeferred
async def test_sqlite_file_is_versioned_and_keys_are_blobs(tmp_path: Path) -> None:
    path = tmp_path / "names.db"
    registry = SQLiteRegistry(str(path))
    await registry.claim("alice", ALICE)
    await registry.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT name, key FROM names").fetchall() == [("alice", ALICE.raw)]
    db.close()


@pytest_twisted.ensureDeferred
async def test_two_sqlite_connections_race_for_a_name(tmp_path: Path, closing) -> None:
    """
    Claims through separate connections to a new file (as from separate
    processes): the file is made once, and one claim wins.
    """
    path = str(tmp_path / "names.db")
    registries = [SQLiteRegistry(path) for _ in range(4)]
    closing.extend(registries)
    keys = [Identity.generate().public for _ in registries]
    won = await defer.gatherResults(
        [r.claim("contested", k) for r, k in zip(registries, keys, strict=True)]
    )
    assert won.count(True) == 1
    ids = await defer.gatherResults([r.server_id() for r in registries])
    assert len(set(ids)) == 1, "every connection reads the one server id"
    holder = keys[won.index(True)]
    assert await defer.gatherResults([r.lookup("contested") for r in registries]) == [holder] * 4


@pytest.mark.parametrize(
    "contents",
    [b"\x8b\x00garbage, not a database" * 200, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["garbage", "bad-header"],
)
@pytest_twisted.ensureDeferred
async def test_corrupt_file_is_a_one_line_configuration_error(
    tmp_path: Path, contents: bytes, closing
) -> None:
    path = tmp_path / "names.db"
    path.write_bytes(contents)
    registry = SQLiteRegistry(str(path))
    closing.append(registry)
    error = await failure_of(registry.server_id())
    assert isinstance(error, RegistryError)
    assert isinstance(error, ConfigurationError)
    message = str(error)
    assert message.startswith(f"cannot open the name registry {path}: ")
    assert "\n" not in message and "Traceback" not in message
    assert isinstance(await failure_of(registry.claim("alice", ALICE)), RegistryError)
    assert path.read_bytes() == contents, "a file that is not ours is left alone"


@pytest_twisted.ensureDeferred
async def test_unopenable_path_is_a_configuration_error(tmp_path: Path, closing) -> None:
    registry = SQLiteRegistry(str(tmp_path / "no such directory" / "names.db"))
    closing.append(registry)
    error = await failure_of(registry.lookup("alice"))
    assert isinstance(error, RegistryError)
    assert "cannot open the name registry" in str(error)


@pytest_twisted.ensureDeferred
async def test_another_programs_database_is_refused(tmp_path: Path, closing) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    db.close()
    registry = SQLiteRegistry(str(path))
    closing.append(registry)
    error = await failure_of(registry.server_id())
    assert str(error) == f"{path} is not a twisted-nat name registry"


@pytest_twisted.ensureDeferred
async def test_newer_schema_is_refused(tmp_path: Path, closing) -> None:
    path = tmp_path / "names.db"
    registry = SQLiteRegistry(str(path))
    await registry.server_id()
    await registry.close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    newer = SQLiteRegistry(str(path))
    closing.append(newer)
    error = await failure_of(newer.lookup("alice"))
    assert isinstance(error, RegistryError)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(error)


@pytest_twisted.ensureDeferred
async def test_close_waits_for_operations_and_stops_the_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    registry = SQLiteRegistry(str(tmp_path / "names.db"))
    assert threads_since(before), "the pool starts at once when the reactor is running"
    claims = [registry.claim(f"name{i}", ALICE) for i in range(20)]
    await registry.close()
    assert all(claim.called for claim in claims)
    assert await defer.gatherResults(claims) == [True] * 20
    assert threads_since(before) == set()


@pytest_twisted.ensureDeferred
async def test_close_without_operations_leaves_no_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    registry = SQLiteRegistry(str(tmp_path / "names.db"))
    await registry.close()
    assert threads_since(before) == set()
    assert not (tmp_path / "names.db").exists(), "nothing opened the file"
