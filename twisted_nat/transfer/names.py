"""
The names of sent files, checked before anything touches the disk.

A sender names each file by a relative path with C{/} between its parts.
The receiver writes only where such a name, checked here, puts it below
its output directory: no absolute names, no C{..} or C{.}, no drive
letters or backslashes (which would mean something else on Windows), no
control characters, and bounded lengths.  Symbolic links on the way are
the disk's business (L{twisted_nat.transfer.disk}); this module is pure.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted_nat.errors import UnsafeName

MAX_FILES = 10_000
"""Files in one transfer at most."""
MAX_NAME_BYTES = 4096
"""Bytes (UTF-8) of one whole relative name at most, as PATH_MAX on Linux."""
MAX_PART_BYTES = 240
"""
Bytes (UTF-8) of one part of a name at most: NAME_MAX (255) on most file
systems, less room for the hidden name of the file while it is received.
"""
MAX_DEPTH = 64
"""Parts of one name at most."""
PART_SUFFIX = ".tn-part"
"""Ends the name of a file being received; names ending so are refused, they are ours."""


def split_name(name: object) -> tuple[str, ...]:
    """
    The parts of a sender's relative file name, or L{UnsafeName} saying
    why it cannot be written below an output directory.
    """
    if not isinstance(name, str):
        raise UnsafeName("a file name must be text")
    shown = _shown(name)
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeName(f"{shown}: not valid UTF-8") from None
    if not name:
        raise UnsafeName("an empty file name")
    if len(encoded) > MAX_NAME_BYTES:
        raise UnsafeName(f"{shown}: longer than {MAX_NAME_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafeName(f"{shown}: control characters (NUL, newline, ...) in a name")
    if "\\" in name:
        raise UnsafeName(f"{shown}: a backslash in a name")
    if ":" in name:
        raise UnsafeName(f"{shown}: a colon in a name (a drive letter on Windows)")
    if name.startswith("/"):
        raise UnsafeName(f"{shown}: an absolute name")
    parts = tuple(name.split("/"))
    if len(parts) > MAX_DEPTH:
        raise UnsafeName(f"{shown}: more than {MAX_DEPTH} levels deep")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeName(f"{shown}: empty, '.' or '..' parts")
        if len(part.encode("utf-8")) > MAX_PART_BYTES:
            raise UnsafeName(f"{shown}: a part longer than {MAX_PART_BYTES} bytes")
    if parts[-1].endswith(PART_SUFFIX):
        raise UnsafeName(f"{shown}: names ending {PART_SUFFIX} are the receiver's own")
    return parts


def check_names(names: Sequence[object]) -> list[tuple[str, ...]]:
    """
    Every name split (L{split_name}), and the set checked as a whole: at
    most L{MAX_FILES}, none twice, and none both a file and a directory
    above another (C{a} and C{a/b}).
    """
    if len(names) > MAX_FILES:
        raise UnsafeName(f"{len(names)} files, more than the {MAX_FILES} one transfer may hold")
    split = [split_name(name) for name in names]
    files = set()
    for parts in split:
        if parts in files:
            raise UnsafeName(f"{_shown('/'.join(parts))} is named twice")
        files.add(parts)
    directories = {parts[:i] for parts in split for i in range(1, len(parts))}
    clash = files & directories
    if clash:
        first = "/".join(min(clash))
        raise UnsafeName(f"{_shown(first)} is both a file and a directory")
    return split


def _shown(name: str) -> str:
    """A name as it may be printed: quoted, control characters escaped, cut short."""
    text = repr(name[:80] + ("..." if len(name) > 80 else ""))
    return text
