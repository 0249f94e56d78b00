"""Received files on disk: part files, resume, symbolic links, conflicts; and the sender's walk."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from twisted_nat.errors import TransferError, UnsafeName
from twisted_nat.transfer import disk
from twisted_nat.transfer.protocol import FileEntry, Have
from twisted_nat.transfer.sources import Source, collect

DATA = bytes(range(256)) * 40


def entry(name: str, data: bytes = DATA) -> FileEntry:
    return FileEntry(name, len(data), hashlib.sha256(data).hexdigest())


def receive(root, name, data=DATA, offset=0, prefix=None, overwrite=False, sent=None):
    part = disk.PartFile(str(root), name.split("/"), entry(name, data), offset, prefix, overwrite)
    part.write(data[offset:] if sent is None else sent)
    return part.finish()


def test_a_file_is_renamed_to_its_name_only_when_whole_and_right(tmp_path):
    assert receive(tmp_path, "d/e/f.bin") is None
    assert (tmp_path / "d/e/f.bin").read_bytes() == DATA
    assert os.listdir(tmp_path / "d/e") == ["f.bin"]


def test_wrong_bytes_leave_no_file_and_no_part(tmp_path):
    assert receive(tmp_path, "f", sent=b"x" * len(DATA)) == "SHA-256 differs from the sender's"
    assert os.listdir(tmp_path) == []


def test_a_short_file_stays_a_part_file_for_a_resume(tmp_path):
    assert receive(tmp_path, "f", sent=DATA[:1000]) == f"1000 bytes of {len(DATA)}"
    assert os.listdir(tmp_path) == [".f.tn-part"]
    [have] = disk.survey(str(tmp_path), [entry("f")], [("f",)]).have
    assert have == Have(0, 1000, hashlib.sha256(DATA[:1000]).hexdigest())


def test_a_resume_appends_to_the_part_and_checks_the_whole(tmp_path):
    receive(tmp_path, "f", sent=DATA[:1000])
    found = disk.survey(str(tmp_path), [entry("f")], [("f",)])
    assert receive(tmp_path, "f", offset=1000, prefix=found.prefixes[0]) is None
    assert (tmp_path / "f").read_bytes() == DATA


def test_a_resume_from_zero_truncates_the_part(tmp_path):
    (tmp_path / ".f.tn-part").write_bytes(b"junk" * 5000)
    assert receive(tmp_path, "f", offset=0) is None
    assert (tmp_path / "f").read_bytes() == DATA


def test_more_bytes_than_offered_are_an_error(tmp_path):
    part = disk.PartFile(str(tmp_path), ["f"], entry("f", b"abc"), 0, None, False)
    with pytest.raises(TransferError, match="more bytes"):
        part.write(b"abcd")
    part.close()


BIG = os.urandom(3 * disk.BATCH + 12345)
"""A file of several batches and a part batch."""


def in_frames(data: bytes, size: int = 1400) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_a_file_of_many_frames_arrives_whole_in_batches(tmp_path, monkeypatch):
    writes: list[int] = []
    write = os.write

    def counted(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return write(fd, data)

    monkeypatch.setattr(os, "write", counted)
    part = disk.PartFile(str(tmp_path), ["f"], entry("f", BIG), 0, None, False)
    for frame in in_frames(BIG):
        part.write(frame)
    assert part.finish() is None
    assert (tmp_path / "f").read_bytes() == BIG
    assert len(writes) == 4 and min(writes[:3]) >= disk.BATCH


def test_one_corrupted_byte_in_a_batch_is_found(tmp_path):
    spoiled = bytearray(BIG)
    spoiled[disk.BATCH + 7] ^= 1
    part = disk.PartFile(str(tmp_path), ["f"], entry("f", BIG), 0, None, False)
    for frame in in_frames(bytes(spoiled)):
        part.write(frame)
    assert part.finish() == "SHA-256 differs from the sender's"
    assert os.listdir(tmp_path) == []


def test_an_interrupted_file_keeps_its_gathered_bytes_and_resumes(tmp_path):
    cut = 2 * disk.BATCH + 5000
    part = disk.PartFile(str(tmp_path), ["f"], entry("f", BIG), 0, None, False)
    for frame in in_frames(BIG[:cut]):
        part.write(frame)
    part.close()
    assert (tmp_path / ".f.tn-part").read_bytes() == BIG[:cut]
    found = disk.survey(str(tmp_path), [entry("f", BIG)], [("f",)])
    assert found.have == (Have(0, cut, hashlib.sha256(BIG[:cut]).hexdigest()),)
    part = disk.PartFile(str(tmp_path), ["f"], entry("f", BIG), cut, found.prefixes[0], False)
    for frame in in_frames(BIG[cut:]):
        part.write(frame)
    assert part.finish() is None
    assert (tmp_path / "f").read_bytes() == BIG


def test_a_refused_write_leaves_a_part_file_a_resume_can_trust(tmp_path, monkeypatch):
    write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 1000:
            return write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    part = disk.PartFile(str(tmp_path), ["f"], entry("f", BIG), 0, None, False)
    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        for frame in in_frames(BIG):
            part.write(frame)
    monkeypatch.setattr(os, "write", write)
    on_disk = (tmp_path / ".f.tn-part").read_bytes()
    assert part.written == len(on_disk) > 0 and BIG.startswith(on_disk)
    part.close()
    assert part.finish() == f"{len(on_disk)} bytes of {len(BIG)}"
    found = disk.survey(str(tmp_path), [entry("f", BIG)], [("f",)])
    assert found.have == (Have(0, len(on_disk), hashlib.sha256(on_disk).hexdigest()),)


def test_the_survey_finds_whole_files_conflicts_and_parts(tmp_path):
    (tmp_path / "same").write_bytes(DATA)
    (tmp_path / "other").write_bytes(b"different")
    (tmp_path / ".part.tn-part").write_bytes(DATA[:10])
    (tmp_path / ".big.tn-part").write_bytes(DATA + b"extra")
    entries = [entry(n) for n in ("same", "other", "part", "big", "new")]
    found = disk.survey(str(tmp_path), entries, [(e.name,) for e in entries])
    assert found.complete == (0,)
    assert found.conflicts == ("other",)
    assert [h.index for h in found.have] == [2]


def test_a_symbolic_link_on_the_way_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    (root / "d").symlink_to(outside)
    with pytest.raises(UnsafeName, match="symbolic link"):
        disk.survey(str(root), [entry("d/f")], [("d", "f")])
    with pytest.raises(UnsafeName, match="symbolic link"):
        receive(root, "d/f")
    assert list(outside.iterdir()) == []


def test_a_planted_part_link_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    root = tmp_path / "out"
    root.mkdir()
    (root / ".f.tn-part").symlink_to(victim)
    with pytest.raises(UnsafeName, match="not a plain file"):
        disk.survey(str(root), [entry("f")], [("f",)])
    with pytest.raises(OSError) as raised:
        receive(root, "f")
    assert raised.value.errno == errno.ELOOP
    assert victim.read_bytes() == b"precious"


def test_a_final_link_is_a_conflict_and_replaced_not_followed_with_overwrite(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    root = tmp_path / "out"
    root.mkdir()
    (root / "f").symlink_to(victim)
    assert disk.survey(str(root), [entry("f")], [("f",)]).conflicts == ("f",)
    assert receive(root, "f", overwrite=True) is None
    assert not (root / "f").is_symlink() and (root / "f").read_bytes() == DATA
    assert victim.read_bytes() == b"precious"


def test_a_file_in_the_way_of_a_directory_is_refused(tmp_path):
    (tmp_path / "d").write_bytes(b"x")
    with pytest.raises(UnsafeName, match="no directory"):
        disk.survey(str(tmp_path), [entry("d/f")], [("d", "f")])
    (tmp_path / "e").mkdir()
    with pytest.raises(UnsafeName, match="is a directory"):
        disk.survey(str(tmp_path), [entry("e")], [("e",)])


def test_a_file_that_appears_meanwhile_is_not_overwritten(tmp_path):
    part = disk.PartFile(str(tmp_path), ["f"], entry("f"), 0, None, False)
    part.write(DATA)
    (tmp_path / "f").write_bytes(b"mine")
    assert part.finish() == "a file of that name appeared meanwhile"
    assert (tmp_path / "f").read_bytes() == b"mine"


def test_the_sender_walks_directories_without_following_links(tmp_path):
    top = tmp_path / "photos"
    (top / "2024").mkdir(parents=True)
    (top / "a.jpg").write_bytes(b"a")
    (top / "2024" / "b.jpg").write_bytes(b"bb")
    (top / "link").symlink_to(tmp_path)
    (top / "filelink").symlink_to(top / "a.jpg")
    single = tmp_path / "single.txt"
    single.write_bytes(b"ccc")
    skipped: list[str] = []
    sources = collect([str(top), str(single)], skipped.append)
    assert sources == [
        Source("photos/a.jpg", str(top / "a.jpg"), 1),
        Source("photos/2024/b.jpg", str(top / "2024" / "b.jpg"), 2),
        Source("single.txt", str(single), 3),
    ]
    assert sorted(skipped) == [str(top / "filelink"), str(top / "link")]


def test_the_sender_refuses_what_it_cannot_send(tmp_path):
    with pytest.raises(TransferError, match=r"cannot send .*missing"):
        collect([str(tmp_path / "missing")])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"")
    (tmp_path / "b" / "x").write_bytes(b"")
    with pytest.raises(TransferError, match="named twice"):
        collect([str(tmp_path / "a" / "x"), str(tmp_path / "b" / "x")])
    with pytest.raises(TransferError, match="no files"):
        collect([str(tmp_path / "empty")] if (tmp_path / "empty").mkdir() is None else [])
    (tmp_path / "bad\\name").write_bytes(b"")
    with pytest.raises(TransferError, match="backslash"):
        collect([str(tmp_path / "bad\\name")])


def test_the_sender_refuses_names_one_where_case_does_not_count(tmp_path):
    top = tmp_path / "photos"
    top.mkdir()
    (top / "IMG.jpg").write_bytes(b"a")
    (top / "img.jpg").write_bytes(b"b")
    with pytest.raises(TransferError, match="differ only in case"):
        collect([str(top)])
    (top / "img.jpg").unlink()
    (top / "NUL.jpg").write_bytes(b"b")
    with pytest.raises(TransferError, match="device name"):
        collect([str(top)])
