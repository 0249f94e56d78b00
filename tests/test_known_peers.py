"""L{twisted_nat.trust.known}: the pins of peer names to keys, and whom we accept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from twisted.logger import LogLevel, capturedLogs

from twisted_nat.errors import ConfigurationError, KeyMismatch, TrustError
from twisted_nat.trust import Accept, Identity, KnownPeers, PeerKey

ALICE = Identity.generate().public
BOB = Identity.generate().public
MALLORY = Identity.generate().public


def known_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "known_peers"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_refusal(path: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        KnownPeers(path)
    message = str(caught.value)
    assert "\n" not in message
    assert path in message
    return message


def test_in_memory_pins() -> None:
    known = KnownPeers()
    assert known.key_for("alice") is None
    assert known.name_for(ALICE) is None
    known.pin("Alice", ALICE)
    assert known.key_for("alice") == ALICE
    assert known.key_for("ALICE") == ALICE
    assert known.name_for(ALICE) == "alice"
    assert known.pinned() == {"alice": ALICE}


def test_pinned_is_a_copy() -> None:
    known = KnownPeers()
    known.pin("alice", ALICE)
    copy = known.pinned()
    copy["bob"] = BOB
    copy["alice"] = MALLORY
    assert known.pinned() == {"alice": ALICE}
    assert known.key_for("bob") is None


def test_pin_writes_the_file_and_a_new_store_reads_it(tmp_path: Path) -> None:
    path = str(tmp_path / "known_peers")
    known = KnownPeers(path)
    assert not os.path.exists(path)
    known.pin("alice", ALICE)
    known.pin("Bob", BOB)
    assert Path(path).read_text() == f"alice {ALICE.text}\nbob {BOB.text}\n"
    again = KnownPeers(path)
    assert again.pinned() == {"alice": ALICE, "bob": BOB}
    assert again.name_for(BOB) == "bob"


def test_pinning_the_same_key_again_writes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "known_peers")
    known = KnownPeers(path)
    known.pin("alice", ALICE)
    known.pin("ALICE", ALICE)
    assert Path(path).read_text() == f"alice {ALICE.text}\n"


def test_a_changed_key_is_refused_and_says_what_changed(tmp_path: Path) -> None:
    path = str(tmp_path / "known_peers")
    known = KnownPeers(path)
    known.pin("bob", BOB)
    for attempt in (known.pin, known.check):
        with pytest.raises(KeyMismatch) as caught:
            attempt("Bob", MALLORY)
        assert str(caught.value) == (
            f"the key of peer bob has changed: it is pinned to {BOB.text} but offered "
            f"{MALLORY.text}; edit or remove the line in {path} if bob really has a new key"
        )
    assert known.key_for("bob") == BOB
    assert Path(path).read_text() == f"bob {BOB.text}\n"


def test_a_changed_key_in_memory() -> None:
    known = KnownPeers()
    known.pin("bob", BOB)
    with pytest.raises(KeyMismatch, match="not saved"):
        known.pin("bob", MALLORY)


def test_key_mismatch_is_a_trust_error() -> None:
    assert issubclass(KeyMismatch, TrustError)


def test_check_never_pins(tmp_path: Path) -> None:
    path = str(tmp_path / "known_peers")
    known = KnownPeers(path)
    known.check("alice", ALICE)
    known.check("alice", BOB)
    assert known.pinned() == {}
    assert not os.path.exists(path)
    known.pin("alice", ALICE)
    known.check("alice", ALICE)


def test_invalid_names() -> None:
    known = KnownPeers()
    with pytest.raises(ValueError, match="mixes Latin and Cyrillic"):
        known.pin("b\u043eb", BOB)
    with pytest.raises(ValueError):
        known.check("a b", BOB)
    assert known.key_for("a b") is None
    assert not known.accepts("a b", BOB)
    assert known.pinned() == {}


def test_pin_wants_a_peer_key() -> None:
    with pytest.raises(TypeError):
        KnownPeers().pin("alice", ALICE.text)  # type: ignore[arg-type]


def test_one_key_may_have_two_names() -> None:
    known = KnownPeers()
    known.pin("laptop", ALICE)
    known.pin("alice", ALICE)
    assert known.key_for("laptop") == known.key_for("alice") == ALICE
    assert known.name_for(ALICE) == "laptop"


def test_file_format(tmp_path: Path) -> None:
    path = known_file(
        tmp_path,
        "# peers we know\n"
        "\n"
        f"  Alice\t{ALICE.text.upper()}   # her laptop\n"
        f"\uff22\uff2f\uff22 {BOB.text}\n"
        f"alice {ALICE.text}\n"
        "   \n",
    )
    known = KnownPeers(path)
    assert known.pinned() == {"alice": ALICE, "bob": BOB}


def test_a_hand_edited_file_without_a_final_newline(tmp_path: Path) -> None:
    path = known_file(tmp_path, f"alice {ALICE.text}")
    KnownPeers(path).pin("bob", BOB)
    assert Path(path).read_text() == f"alice {ALICE.text}\nbob {BOB.text}\n"
    assert KnownPeers(path).pinned() == {"alice": ALICE, "bob": BOB}


def test_new_file_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "known_peers"
        KnownPeers(str(path)).pin("alice", ALICE)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("alice\n", "line 1: expected 'NAME KEY', found 1 fields"),
        (f"# ok\nalice {ALICE.text} extra\n", "line 2: expected 'NAME KEY', found 3 fields"),
        ("alice tn-notakey\n", "line 1: 'tn-notakey' is not a peer key"),
        (f"a/b {ALICE.text}\n", "line 1: 'a/b' contains '/'"),
        (f"tn-x {ALICE.text}\n", "line 1: 'tn-x' starts with 'tn-'"),
        (f"{ALICE.text} alice\n", "line 1: 'tn-"),  # the columns swapped
        (
            f"bob {BOB.text}\n\nBOB {MALLORY.text}\n",
            "line 3: bob is pinned again, to another key (keep one of its lines)",
        ),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, complaint: str) -> None:
    path = known_file(tmp_path, text)
    assert complaint in load_refusal(path)


def test_a_typo_in_a_key_is_refused_with_its_line(tmp_path: Path) -> None:
    body = BOB.text
    typo = body[:20] + ("a" if body[20] != "a" else "b") + body[21:]
    path = known_file(tmp_path, f"alice {ALICE.text}\nbob {typo}\n")
    assert "line 2: " in load_refusal(path)
    assert "checksum is wrong" in load_refusal(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "known_peers"
    path.write_bytes(f"alice {ALICE.text}\n".encode() + b"b\xffb " + BOB.text.encode() + b"\n")
    assert "line 2: not UTF-8 text" in load_refusal(str(path))


def test_unreadable_file(tmp_path: Path) -> None:
    # A directory where the file should be cannot be read as one.
    path = tmp_path / "known_peers"
    path.mkdir()
    assert "cannot read known peers file" in load_refusal(str(path))


def test_unwritable_file_pins_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "missing-directory" / "known_peers")
    known = KnownPeers(path)
    with pytest.raises(ConfigurationError, match="cannot open known peers file"):
        known.pin("alice", ALICE)
    assert known.key_for("alice") is None


def test_many_quick_pins_stay_whole_lines(tmp_path: Path) -> None:
    path = str(tmp_path / "known_peers")
    first = KnownPeers(path)
    second = KnownPeers(path)  # a second store on the same file, as another process has
    keys = {f"peer{i}": Identity.generate().public for i in range(200)}
    for i, (name, key) in enumerate(keys.items()):
        (first if i % 2 else second).pin(name, key)
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 200
    assert KnownPeers(path).pinned() == keys


def test_accept_anyone() -> None:
    known = KnownPeers()
    assert known.accept is Accept.ANYONE
    assert known.accepts("alice", ALICE)
    known.pin("alice", ALICE)
    assert known.accepts("Alice", ALICE)
    assert not known.accepts("alice", MALLORY)
    assert known.accepts("bob", MALLORY)
    assert known.pinned() == {"alice": ALICE}  # accepting pins nothing


def test_accept_known() -> None:
    known = KnownPeers(accept=Accept.KNOWN)
    assert not known.accepts("alice", ALICE)
    known.pin("alice", ALICE)
    assert known.accepts("ALICE", ALICE)
    assert not known.accepts("alice", MALLORY)
    assert not known.accepts("bob", ALICE)


def test_accept_values() -> None:
    assert Accept("anyone") is Accept.ANYONE
    assert Accept("known") is Accept.KNOWN


def test_accept_callable() -> None:
    asked: list[tuple[str, PeerKey]] = []

    def only_bob(name: str, key: PeerKey) -> bool:
        asked.append((name, key))
        return name == "bob"

    known = KnownPeers(accept=only_bob)
    assert known.accepts("BOB", BOB)
    assert not known.accepts("alice", ALICE)
    assert asked == [("bob", BOB), ("alice", ALICE)]


def test_accept_callable_that_raises_refuses_and_logs() -> None:
    def broken(name: str, key: PeerKey) -> bool:
        raise RuntimeError("policy bug")

    known = KnownPeers(accept=broken)
    with capturedLogs() as events:
        assert not known.accepts("alice", ALICE)
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["log_level"] is LogLevel.critical
    assert failures[0]["log_failure"].check(RuntimeError)
    assert failures[0]["name"] == "alice"


def test_accept_callable_must_return_a_bool() -> None:
    known = KnownPeers(accept=lambda name, key: "yes")  # type: ignore[arg-type,return-value]
    with capturedLogs() as events:
        assert not known.accepts("alice", ALICE)
    assert [e["log_level"] for e in events] == [LogLevel.error]
    assert events[0]["verdict"] == "yes"


def test_accept_must_be_a_policy() -> None:
    with pytest.raises(TypeError):
        KnownPeers(accept="anyone")  # type: ignore[arg-type]


def test_pinning_is_logged() -> None:
    with capturedLogs() as events:
        KnownPeers().pin("alice", ALICE)
    assert [(e["log_level"], e["name"], e["key"]) for e in events] == [
        (LogLevel.info, "alice", ALICE.text)
    ]


def test_repr() -> None:
    known = KnownPeers()
    known.pin("alice", ALICE)
    assert repr(known) == "<KnownPeers in memory: 1 pinned, accept=<Accept.ANYONE: 'anyone'>>"
