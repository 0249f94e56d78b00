"""
Where received files go, and how they get there.

Each file is written to a hidden part file beside its final name
(C{.NAME.tn-part}) and renamed to NAME only once its size and SHA-256 are
the offered ones: a file under its own name is always whole and checked.
A part file left by an interrupted transfer is resumed by the next one.

Names are checked already (L{twisted_nat.transfer.names}); here the disk
is: no directory on the way may be a symbolic link (the output directory
itself may be), part files are opened with C{O_NOFOLLOW}, and an existing
file is replaced only when the person asked for it.  These functions
block (they hash whole files): run them in a thread.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from typing import Any

import attrs

from twisted_nat.errors import TransferError, UnsafeName
from twisted_nat.transfer.names import PART_SUFFIX
from twisted_nat.transfer.protocol import FileEntry, Have

CHUNK = 1 << 16
"""Bytes read at once when hashing."""
BATCH = 1 << 18
"""
Bytes a part file gathers before one write and one hash update: a stream
hands over the bytes of each QUIC frame (about a datagram's worth), and a
system call and a hash call for each cost more than the copy.
"""


def final_path(root: str, parts: Sequence[str]) -> str:
    return os.path.join(root, *parts)


def part_path(root: str, parts: Sequence[str]) -> str:
    return os.path.join(root, *parts[:-1], f".{parts[-1]}{PART_SUFFIX}")


def hash_file(path: str, limit: int | None = None) -> Any:
    """The SHA-256 object of the file at C{path} (of its first C{limit} bytes only, if given)."""
    digest = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest


def _check_directories(root: str, parts: Sequence[str], make: bool) -> None:
    """
    The directories above a file: none may be a symbolic link or other
    than a directory; made (if C{make}) where missing.
    """
    path = root
    for part in parts[:-1]:
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if not make:
                return
            os.mkdir(path, 0o777)
            continue
        if stat.S_ISLNK(mode):
            raise UnsafeName(f"{'/'.join(parts)}: {part} is a symbolic link here")
        if not stat.S_ISDIR(mode):
            raise UnsafeName(f"{'/'.join(parts)}: {part} is no directory here")


@attrs.frozen
class Survey:
    """
    What the receiver holds of an offer: files whole already (not sent
    again), part files to resume (with a hash object of their bytes), and
    files in the way (refused without C{overwrite}).
    """

    complete: tuple[int, ...]
    have: tuple[Have, ...]
    prefixes: dict[int, Any]
    conflicts: tuple[str, ...]


def survey(root: str, entries: Sequence[FileEntry], split: Sequence[Sequence[str]]) -> Survey:
    """
    Look at what C{root} holds of the offered files.  L{UnsafeName} if a
    name leads through a symbolic link or into something that is no
    directory, or a part file is not a plain file.
    """
    complete: list[int] = []
    have: list[Have] = []
    prefixes: dict[int, Any] = {}
    conflicts: list[str] = []
    for index, (entry, parts) in enumerate(zip(entries, split, strict=True)):
        _check_directories(root, parts, make=False)
        final = final_path(root, parts)
        try:
            info = os.lstat(final)
        except FileNotFoundError:
            info = None
        if info is not None:
            if stat.S_ISDIR(info.st_mode):
                raise UnsafeName(f"{entry.name} is a directory here")
            if (
                stat.S_ISREG(info.st_mode)
                and info.st_size == entry.size
                and hash_file(final).hexdigest() == entry.sha256
            ):
                complete.append(index)
                continue
            conflicts.append(entry.name)
        part = part_path(root, parts)
        try:
            info = os.lstat(part)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeName(f"{part} is not a plain file")
        if 0 < info.st_size <= entry.size:
            prefix = hash_file(part, info.st_size)
            prefixes[index] = prefix
            have.append(Have(index, info.st_size, prefix.hexdigest()))
    return Survey(tuple(complete), tuple(have), prefixes, tuple(conflicts))


class PartFile:
    """
    One file being received: its part file, open, and the SHA-256 of what
    it holds.  Bytes are gathered up to L{BATCH} before they are written
    and hashed; L{close} and L{finish} write what is gathered first.
    L{finish} renames the part file to its own name if whole and right.
    """

    def __init__(
        self,
        root: str,
        parts: Sequence[str],
        entry: FileEntry,
        offset: int,
        prefix: Any | None,
        overwrite: bool,
    ) -> None:
        self.entry = entry
        self._final = final_path(root, parts)
        self._part = part_path(root, parts)
        self._overwrite = overwrite
        _check_directories(root, parts, make=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(self._part, flags, 0o666)
        if offset == 0 or prefix is None:
            offset = 0
            self._digest = hashlib.sha256()
        else:
            self._digest = prefix.copy()
        os.ftruncate(self._fd, offset)
        os.lseek(self._fd, offset, os.SEEK_SET)
        self._gathered: list[bytes] = []
        self._gathered_size = 0
        self.written = offset
        """Bytes taken so far: on disk and hashed, or gathered to be."""

    def write(self, data: bytes) -> None:
        """Append C{data}; C{OSError} (disk full, ...) as the system raised it."""
        if self._fd is None:
            return
        if self.written + len(data) > self.entry.size:
            raise TransferError(f"{self.entry.name}: more bytes than offered")
        self._gathered.append(data)
        self._gathered_size += len(data)
        self.written += len(data)
        if self._gathered_size >= BATCH:
            self._flush()

    def _flush(self) -> None:
        """
        Write and hash what is gathered.  When the system refuses, the
        digest and L{written} still describe exactly the bytes on disk (a
        part file that a resume can trust); the rest is dropped.
        """
        fd, gathered = self._fd, self._gathered
        if fd is None or not gathered:
            return
        block = gathered[0] if len(gathered) == 1 else b"".join(gathered)
        self._gathered, self._gathered_size = [], 0
        view = memoryview(block)
        try:
            while view:
                done = os.write(fd, view)
                self._digest.update(view[:done])
                view = view[done:]
        except OSError:
            self.written -= len(view)
            raise

    def finish(self) -> str | None:
        """
        Check and place the file: None when it is in place, else why not
        (the part file is removed when its bytes are wrong).
        """
        self.close()
        if self.written != self.entry.size:
            return f"{self.written} bytes of {self.entry.size}"
        if self._digest.hexdigest() != self.entry.sha256:
            os.unlink(self._part)
            return "SHA-256 differs from the sender's"
        if not self._overwrite and os.path.lexists(self._final):
            return "a file of that name appeared meanwhile"
        os.replace(self._part, self._final)
        return None

    def close(self) -> None:
        """Write what is gathered and close the part file, keeping it for a later resume."""
        if self._fd is None:
            return
        try:
            self._flush()
        finally:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
