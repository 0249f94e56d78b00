"""
The sender and the receiver of a transfer, wired together by in-memory
streams on a C{task.Clock}: their whole conversation, and a hostile or
broken other side (protocol violations, a full disk).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_nat.streams.stream import PeerAddress
from twisted_nat.transfer import disk
from twisted_nat.transfer.protocol import DataHeader, FileEntry, Offer, encode
from twisted_nat.transfer.receiver import MAX_ACTIVE, Receiver
from twisted_nat.transfer.report import Outcome, Reporter
from twisted_nat.transfer.sender import Sender
from twisted_nat.transfer.sources import collect
from twisted_nat.trust import Identity

SENDER = PeerAddress("alice", Identity.generate().public)


class End:
    """One end of an in-memory stream: what a protocol sees as its transport."""

    def __init__(self, clock: Clock, protocol: IProtocol, peer: PeerAddress) -> None:
        self.clock = clock
        self.protocol = protocol
        self.peer = peer
        self.other: End | None = None
        self.write_closed = False
        self.lost = False
        self.producer: Any = None

    def write(self, data: bytes) -> None:
        if not self.write_closed and not self.lost:
            self.clock.callLater(0, self._deliver, bytes(data))

    def _deliver(self, data: bytes) -> None:
        assert self.other is not None
        if not self.other.lost:
            self.other.protocol.dataReceived(data)

    def loseWriteConnection(self) -> None:
        if not self.write_closed:
            self.write_closed = True
            self.clock.callLater(0, self._fin)

    def _fin(self) -> None:
        assert self.other is not None
        if not self.other.lost:
            half = IHalfCloseableProtocol(self.other.protocol, None)
            if half is not None:
                half.readConnectionLost()
            else:
                self.other.lose()

    def loseConnection(self) -> None:
        self.loseWriteConnection()
        self.clock.callLater(0, self.lose)

    def abortConnection(self) -> None:
        self.lose()
        assert self.other is not None
        self.clock.callLater(0, self.other.lose)

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def getPeer(self) -> PeerAddress:
        return self.peer


class Wire:
    """Streams the sender opens arrive at the receiver (or at C{accept}, for a fake one)."""

    def __init__(self, clock: Clock, receiver: Receiver) -> None:
        self.clock = clock
        self.receiver = receiver
        self.opened = 0

    def open_stream(self, protocol: IProtocol) -> Deferred[IProtocol]:
        self.opened += 1
        theirs = self.receiver.buildProtocol(SENDER)
        assert theirs is not None
        ours_end = End(self.clock, protocol, PeerAddress("bob", None))
        their_end = End(self.clock, theirs, SENDER)
        ours_end.other, their_end.other = their_end, ours_end
        theirs.makeConnection(their_end)  # type: ignore[arg-type]
        protocol.makeConnection(ours_end)  # type: ignore[arg-type]
        return succeed(protocol)


def in_thread(function: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(function, *args)


def reporter(clock: Clock) -> Reporter:
    return Reporter(clock, io.StringIO(), io.StringIO(), as_json=True, terminal=False)


def run(clock: Clock, *waiting: Deferred[Any]) -> None:
    for _ in range(10_000):
        if all(d.called for d in waiting):
            return
        clock.advance(0)
    raise AssertionError("the transfer did not end")


def result(d: Deferred[Outcome]) -> Outcome:
    results: list[Outcome] = []
    d.addCallback(results.append)
    [outcome] = results
    return outcome


def make_files(root: Path) -> list[Path]:
    (root / "d").mkdir(parents=True)
    files = [root / "d" / "small", root / "d" / "big", root / "d" / "empty"]
    files[0].write_bytes(b"hello")
    files[1].write_bytes(os.urandom(700_000))
    files[2].write_bytes(b"")
    return files


def transfer(tmp_path: Path, answer: bool = True, overwrite: bool = False):
    clock = Clock()
    if not (tmp_path / "src").exists():
        make_files(tmp_path / "src")
    output = tmp_path / "out"
    output.mkdir(exist_ok=True)
    asked: list[Offer] = []

    def ask(peer: PeerAddress, offer: Offer) -> Deferred[bool]:
        assert peer == SENDER
        asked.append(offer)
        return succeed(answer)

    receiver = Receiver(str(output), overwrite, ask, in_thread, reporter(clock))
    sources = collect([str(tmp_path / "src" / "d")])
    hashes = [disk.hash_file(s.path).hexdigest() for s in sources]
    wire = Wire(clock, receiver)
    sender = Sender(clock, sources, hashes, wire.open_stream, in_thread, reporter(clock))
    sent = sender.run()
    run(clock, sent, receiver.done)
    return result(sent), result(receiver.done), output, asked, wire


def test_every_file_arrives_and_both_sides_say_so(tmp_path):
    sent, received, output, asked, wire = transfer(tmp_path)
    assert sent == received == Outcome(3, 3, None)
    for name in ("small", "big", "empty"):
        assert (output / "d" / name).read_bytes() == (tmp_path / "src" / "d" / name).read_bytes()
    assert [entry.name for entry in asked[0].files] == ["d/big", "d/empty", "d/small"]
    assert wire.opened == 4


def test_a_refusal_ends_both_sides(tmp_path):
    sent, received, output, _, wire = transfer(tmp_path, answer=False)
    assert received == Outcome(3, 0, "the receiver refused the transfer")
    assert sent == Outcome(3, 0, "refused: the receiver refused the transfer")
    assert list(output.iterdir()) == [] and wire.opened == 1


def test_a_second_run_sends_nothing_held_already(tmp_path):
    transfer(tmp_path)
    sent, received, _, _, wire = transfer(tmp_path)
    assert sent == received == Outcome(3, 3, None)
    assert wire.opened == 1


def test_a_full_disk_ends_both_with_one_reason_and_no_file(tmp_path, monkeypatch):
    real_write = os.write
    written = [0]

    def full(fd: int, data: Any) -> int:
        if written[0] > 100_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    sent, received, output, _, _ = transfer(tmp_path)
    assert received.error is not None
    assert received.error.startswith("cannot write d/big: No space left on device")
    assert sent.error is not None
    assert sent.error.startswith("the receiver stopped: the receiver cannot write d/big")
    assert not (output / "d" / "big").exists()
    assert (output / "d" / ".big.tn-part").exists()


def offer_of(*entries: FileEntry) -> bytes:
    return encode(Offer(entries))


class Hostile:
    """A sender that writes what it likes: raw bytes on streams it opens to the receiver."""

    def __init__(self, tmp_path: Path, answer: bool = True) -> None:
        self.clock = Clock()
        self.output = tmp_path / "out"
        self.output.mkdir()
        self.receiver = Receiver(
            str(self.output), False, lambda p, o: succeed(answer), in_thread, reporter(self.clock)
        )
        self.ends: list[End] = []

    def open(self, *chunks: bytes, end: bool = False) -> End:
        protocol = self.receiver.buildProtocol(SENDER)
        assert protocol is not None
        theirs = End(self.clock, protocol, SENDER)
        ours = End(self.clock, _Sink(), PeerAddress("bob", None))
        theirs.other, ours.other = ours, theirs
        protocol.makeConnection(theirs)  # type: ignore[arg-type]
        for chunk in chunks:
            ours.write(chunk)
        if end:
            ours.loseWriteConnection()
        self.ends.append(theirs)
        for _ in range(100):
            self.clock.advance(0)
        return theirs


class _Sink(Protocol):
    """What the hostile sender's side of a stream does with what comes back: keeps it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.data += data


SHA_OF_ABC = hashlib.sha256(b"abc").hexdigest()


def test_a_broken_first_message_loses_its_stream_only(tmp_path):
    hostile = Hostile(tmp_path)
    broken = hostile.open(b"\x00\x00\x00\x05hello")
    huge = hostile.open(b"\xff\xff\xff\xff")
    assert broken.lost and huge.lost and not hostile.receiver.done.called
    hostile.open(offer_of(FileEntry("f", 3, SHA_OF_ABC)))
    hostile.open(encode(DataHeader(0, 0)) + b"abc", end=True)
    assert result(hostile.receiver.done) == Outcome(1, 1, None)
    assert (hostile.output / "f").read_bytes() == b"abc"


@pytest.mark.parametrize(
    "header, why",
    [
        (DataHeader(5, 0), "not awaited"),
        (DataHeader(0, 2), "offset we do not hold"),
    ],
)
def test_data_for_what_was_not_offered_is_refused(tmp_path, header, why):
    hostile = Hostile(tmp_path)
    control = hostile.open(offer_of(FileEntry("f", 3, SHA_OF_ABC)))
    data = hostile.open(encode(header) + b"abc", end=True)
    assert data.lost
    assert not hostile.receiver.done.called
    assert control.other is not None and not control.lost
    assert list(hostile.output.iterdir()) == []


def test_more_bytes_than_offered_end_the_transfer_without_a_file(tmp_path):
    hostile = Hostile(tmp_path)
    hostile.open(offer_of(FileEntry("f", 3, SHA_OF_ABC)))
    hostile.open(encode(DataHeader(0, 0)) + b"abcdef", end=True)
    outcome = result(hostile.receiver.done)
    assert outcome.error is not None and "more bytes than offered" in outcome.error
    assert not (hostile.output / "f").exists()


def test_wrong_bytes_fail_the_file_and_leave_nothing(tmp_path):
    hostile = Hostile(tmp_path)
    hostile.open(offer_of(FileEntry("f", 3, SHA_OF_ABC)))
    hostile.open(encode(DataHeader(0, 0)) + b"xyz", end=True)
    outcome = result(hostile.receiver.done)
    assert outcome == Outcome(1, 0, "1 files failed: f: SHA-256 differs from the sender's")
    assert list(hostile.output.iterdir()) == []


def test_too_many_files_at_once_are_refused(tmp_path):
    hostile = Hostile(tmp_path)
    count = MAX_ACTIVE + 1
    entries = [FileEntry(f"f{i}", 3, SHA_OF_ABC) for i in range(count)]
    hostile.open(offer_of(*entries))
    streams = [hostile.open(encode(DataHeader(i, 0)) + b"a") for i in range(count)]
    assert [s.lost for s in streams] == [False] * MAX_ACTIVE + [True]


def test_a_second_offer_or_another_peer_gets_nothing(tmp_path):
    hostile = Hostile(tmp_path, answer=True)
    hostile.open(offer_of(FileEntry("f", 3, SHA_OF_ABC)))
    second = hostile.open(offer_of(FileEntry("g", 3, SHA_OF_ABC)))
    assert second.lost
    other = PeerAddress("mallory", Identity.generate().public)
    assert hostile.receiver.buildProtocol(other) is None


def test_a_permission_error_ends_both_with_one_reason(tmp_path, monkeypatch):
    real_open = os.open

    def refused(path: Any, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".tn-part"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refused)
    sent, received, output, _, _ = transfer(tmp_path)
    assert received.error is not None
    assert received.error.startswith("cannot write d/")
    assert "Permission denied" in received.error
    assert sent.error is not None and "Permission denied" in sent.error
    assert [p for p in output.rglob("*") if p.is_file()] == []


def test_a_file_that_cannot_be_read_midway_ends_both_with_one_reason(tmp_path, monkeypatch):
    from twisted_nat.transfer import streams

    class Failing(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= 65536:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return super().read(size)

    def failing_open(path: str, mode: str) -> io.BytesIO:
        return Failing(Path(path).read_bytes())

    monkeypatch.setattr(streams, "open", failing_open, raising=False)
    sent, received, output, _, _ = transfer(tmp_path)
    assert sent.error is not None
    assert sent.error.startswith("cannot read d/big: Input/output error")
    assert received.error is not None
    assert received.error.startswith("the sender stopped: the sender cannot read d/big")
    assert not (output / "d" / "big").exists()


def test_a_part_file_of_other_bytes_is_sent_again_whole(tmp_path):
    output = tmp_path / "out" / "d"
    output.mkdir(parents=True)
    (output / ".big.tn-part").write_bytes(b"not the sender's bytes" * 100)
    sent, received, out, _, _ = transfer(tmp_path)
    assert sent == received == Outcome(3, 3, None)
    assert (out / "d" / "big").read_bytes() == (tmp_path / "src" / "d" / "big").read_bytes()
    assert not (out / "d" / ".big.tn-part").exists()


def test_a_part_file_of_the_right_bytes_is_resumed(tmp_path):
    make_files(tmp_path / "src")
    big = (tmp_path / "src" / "d" / "big").read_bytes()
    output = tmp_path / "out" / "d"
    output.mkdir(parents=True)
    (output / ".big.tn-part").write_bytes(big[:300_000])
    moved: list[int] = []
    real = Reporter.moved

    def counting(self: Reporter, count: int) -> None:
        moved.append(count)
        real(self, count)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Reporter, "moved", counting)
        sent, received, out, _, _ = transfer(tmp_path)
    assert sent == received == Outcome(3, 3, None)
    assert (out / "d" / "big").read_bytes() == big
    # Each side counts what it moved: what the part lacked, and the small file.
    assert sum(moved) == 2 * (len(big) - 300_000 + len(b"hello"))


@pytest.mark.parametrize(
    "names, why",
    [
        (["README", "readme"], "differ only in case"),
        (["d/f", "D/F"], "differ only in case"),
        (["CON.txt"], "device name"),
        (["a<b"], "Windows refuses"),
        (["dir./f"], "dot or space"),
        (["a\\b"], "backslash"),
        (["../x"], "'..'"),
        (["/etc/x"], "absolute"),
    ],
)
def test_an_offer_of_names_not_portable_is_refused_before_the_disk(tmp_path, names, why):
    hostile = Hostile(tmp_path)
    control = hostile.open(offer_of(*(FileEntry(name, 3, SHA_OF_ABC) for name in names)))
    outcome = result(hostile.receiver.done)
    assert outcome.received == 0
    assert outcome.error is not None and outcome.error.startswith("cannot write ")
    assert why in outcome.error
    assert control.write_closed
    assert control.other is not None and isinstance(control.other.protocol, _Sink)
    said = bytes(control.other.protocol.data)
    assert b'"type":"refuse"' in said and why.encode() in said
    assert list(hostile.output.iterdir()) == []


def test_a_link_in_the_output_directory_is_not_followed_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile = Hostile(tmp_path)
    (hostile.output / "d").symlink_to(outside)
    hostile.open(offer_of(FileEntry("d/f", 3, SHA_OF_ABC)))
    outcome = result(hostile.receiver.done)
    assert outcome.received == 0
    assert outcome.error == "cannot write d/f: d is a symbolic link here"
    assert list(outside.iterdir()) == []


def test_a_link_under_a_file_name_is_neither_followed_nor_replaced(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    hostile = Hostile(tmp_path)
    (hostile.output / "f").symlink_to(victim)
    hostile.open(offer_of(FileEntry("f", 3, SHA_OF_ABC)))
    assert hostile.receiver.buildProtocol(SENDER) is None
    outcome = result(hostile.receiver.done)
    assert outcome.error == "f exists at the receiver (use --overwrite)"
    assert victim.read_bytes() == b"precious"
    assert (hostile.output / "f").is_symlink()
    assert sorted(p.name for p in hostile.output.iterdir()) == ["f"]


def test_a_name_too_long_below_the_output_directory_is_refused_in_one_short_line(tmp_path):
    deep = tmp_path / ("b" * 200)
    deep.mkdir()
    hostile = Hostile(deep)
    name = "/".join(["a" * 200] * 20)
    control = hostile.open(offer_of(FileEntry(name, 3, SHA_OF_ABC)))
    outcome = result(hostile.receiver.done)
    assert outcome.error == f"cannot read {name[:80]}...: File name too long"
    assert control.other is not None and isinstance(control.other.protocol, _Sink)
    assert str(tmp_path).encode() not in bytes(control.other.protocol.data)
