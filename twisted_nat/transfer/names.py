"""
The names of sent files, checked before anything touches the disk.

A sender names each file by a relative path with C{/} between its parts.
The receiver writes only where such a name, checked here, puts it below
its output directory.  The rule is the same on every system, the
strictest of them (Windows, macOS, Linux), so a transfer that works
between two Linux machines works to any: no absolute names, no C{..} or
C{.}, no drive letters, backslashes or other characters Windows refuses,
no device names (C{CON}, C{NUL.txt}), no part ending in a dot or space,
no control characters or bidirectional overrides, and bounded lengths.
Names are written in Unicode NFC, and two names of one offer that a
case-insensitive file system would take for one are refused.  Symbolic
links on the way are the disk's business (L{twisted_nat.transfer.disk});
this module is pure.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from twisted_nat.errors import UnsafeName

MAX_FILES = 10_000
"""Files in one transfer at most."""
MAX_NAME_BYTES = 4096
"""
Length of one whole relative name at most (as for a part), as PATH_MAX on
Linux.
"""
MAX_PART_BYTES = 240
"""
Length of one part of a name at most, in UTF-8 bytes and in UTF-16 units
decomposed (NFD, as HFS+ stores it): NAME_MAX (255) on most file systems,
less room for the hidden name of the file while it is received.
"""
MAX_DEPTH = 64
"""Parts of one name at most."""
PART_SUFFIX = ".tn-part"
"""
Ends the name of a file being received; names with a part ending so, in
any case, are refused: they are ours.
"""

WINDOWS_FORBIDDEN = frozenset('<>:"|?*\\')
"""Characters Windows refuses in a name, beside control characters."""
WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"]
)
"""Names Windows takes for devices, whatever their case or extension."""
_CONTROLS = frozenset(["Cc", "Zl", "Zp"])
"""C0 and C1 controls, DEL, and the line and paragraph separators: none is printed as itself."""
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Embeddings, overrides and isolates, which can show C{exe.jpg} for C{gpj.exe}."""
_UNITS = "bytes (UTF-8, or UTF-16 decomposed)"


def split_name(name: object) -> tuple[str, ...]:
    """
    The parts of a sender's relative file name, in NFC, or L{UnsafeName}
    saying why it cannot be written below an output directory.
    """
    if not isinstance(name, str):
        raise UnsafeName("a file name must be text")
    shown = _shown(name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeName(f"{shown}: not valid UTF-8") from None
    if not name:
        raise UnsafeName("an empty file name")
    name = unicodedata.normalize("NFC", name)
    if _length(name) > MAX_NAME_BYTES:
        raise UnsafeName(f"{shown}: longer than {MAX_NAME_BYTES} {_UNITS}")
    if any(unicodedata.category(c) in _CONTROLS for c in name):
        raise UnsafeName(f"{shown}: control characters (NUL, newline, ...) in a name")
    if _BIDI.intersection(name):
        raise UnsafeName(f"{shown}: bidirectional controls (they change how a name reads)")
    if "\\" in name:
        raise UnsafeName(f"{shown}: a backslash in a name")
    if ":" in name:
        raise UnsafeName(f"{shown}: a colon in a name (a drive letter on Windows)")
    forbidden = sorted(WINDOWS_FORBIDDEN.intersection(name))
    if forbidden:
        raise UnsafeName(f"{shown}: {''.join(forbidden)} in a name (Windows refuses them)")
    if name.startswith("/"):
        raise UnsafeName(f"{shown}: an absolute name")
    parts = tuple(name.split("/"))
    if len(parts) > MAX_DEPTH:
        raise UnsafeName(f"{shown}: more than {MAX_DEPTH} levels deep")
    for part in parts:
        _check_part(shown, part)
    if any(part.casefold().endswith(PART_SUFFIX) for part in parts):
        raise UnsafeName(f"{shown}: names ending {PART_SUFFIX} are the receiver's own")
    return parts


def _check_part(shown: str, part: str) -> None:
    if part in ("", ".", ".."):
        raise UnsafeName(f"{shown}: empty, '.' or '..' parts")
    if _length(part) > MAX_PART_BYTES:
        raise UnsafeName(f"{shown}: a part longer than {MAX_PART_BYTES} {_UNITS}")
    if part.endswith((".", " ")):
        raise UnsafeName(f"{shown}: a part ending in a dot or space (Windows drops them)")
    if part.split(".")[0].rstrip(" ").upper() in WINDOWS_DEVICES:
        raise UnsafeName(f"{shown}: a device name on Windows")


def check_names(names: Sequence[object]) -> list[tuple[str, ...]]:
    """
    Every name split (L{split_name}), and the set checked as a whole: at
    most L{MAX_FILES}, none twice, and none both a file and a directory
    above another (C{a} and C{a/b}), comparing names as a case-insensitive
    file system would (C{A.txt} and C{a.txt} are one name).
    """
    if len(names) > MAX_FILES:
        raise UnsafeName(f"{len(names)} files, more than the {MAX_FILES} one transfer may hold")
    split = [split_name(name) for name in names]
    files: dict[tuple[str, ...], tuple[str, ...]] = {}
    for parts in split:
        key = _folded(parts)
        if key in files:
            first = files[key]
            if first == parts:
                raise UnsafeName(f"{_shown('/'.join(parts))} is named twice")
            raise UnsafeName(
                f"{_shown('/'.join(first))} and {_shown('/'.join(parts))} differ only in"
                " case (one file where case does not count)"
            )
        files[key] = parts
    directories = {key[:i]: parts[:i] for key, parts in files.items() for i in range(1, len(key))}
    clash = files.keys() & directories.keys()
    if clash:
        both = "/".join(files[min(clash)])
        raise UnsafeName(f"{_shown(both)} is both a file and a directory")
    return split


def _folded(parts: tuple[str, ...]) -> tuple[str, ...]:
    """A name as a case-insensitive file system compares it (macOS, Windows)."""
    return tuple(unicodedata.normalize("NFC", part.casefold()) for part in parts)


def _length(text: str) -> int:
    """
    The length C{text} (in NFC) has on the strictest file system: bytes
    of UTF-8 (Linux, APFS), or UTF-16 units decomposed (HFS+ stores NFD).
    """
    decomposed = unicodedata.normalize("NFD", text).encode("utf-16-le")
    return max(len(text.encode("utf-8")), len(decomposed) // 2)


def _shown(name: str) -> str:
    """A name as it may be printed: quoted, control characters escaped, cut short."""
    text = repr(name[:80] + ("..." if len(name) > 80 else ""))
    return text
