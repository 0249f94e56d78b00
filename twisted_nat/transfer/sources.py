"""
The sender's files: the paths given on the command line, walked into the
relative names the receiver will see.

A file is sent under its own base name; a directory under its base name
with the relative names of the files below it.  Symbolic links named on
the command line are followed (the person chose them); links met while
walking a directory are not, and are left out, as are devices and pipes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence

import attrs

from twisted_nat.errors import TransferError, UnsafeName
from twisted_nat.transfer.names import check_names


@attrs.frozen
class Source:
    """A file to send: its name for the receiver, where it is here, and its size."""

    name: str
    path: str
    size: int


def collect(
    paths: Sequence[str], skipped: Callable[[str], object] = lambda path: None
) -> list[Source]:
    """
    The files under C{paths}; C{skipped} hears of every link or special
    file left out.  L{TransferError} for a path that cannot be read or a
    name the receiver would refuse.
    """
    sources: list[Source] = []
    for given in paths:
        path = os.path.abspath(given)
        base = os.path.basename(path.rstrip(os.sep))
        try:
            info = os.stat(path)
        except OSError as e:
            raise TransferError(f"cannot send {given}: {e.strerror}") from None
        if stat.S_ISREG(info.st_mode):
            sources.append(Source(base, path, info.st_size))
        elif stat.S_ISDIR(info.st_mode):
            sources.extend(_walk(path, base, skipped))
        else:
            raise TransferError(f"cannot send {given}: neither a file nor a directory")
    try:
        check_names([source.name for source in sources])
    except UnsafeName as e:
        raise TransferError(f"cannot send {e}") from None
    if not sources:
        raise TransferError("no files to send")
    return sources


def _walk(top: str, base: str, skipped: Callable[[str], object]) -> list[Source]:
    found: list[Source] = []

    def refuse(error: OSError) -> None:
        raise TransferError(f"cannot read {error.filename}: {error.strerror}")

    for directory, subdirectories, files in os.walk(top, onerror=refuse):
        subdirectories.sort()
        relative = os.path.relpath(directory, top)
        prefix = base if relative == "." else f"{base}/{relative.replace(os.sep, '/')}"
        for name in sorted(files):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                skipped(path)
                continue
            found.append(Source(f"{prefix}/{name}", path, info.st_size))
        for name in list(subdirectories):
            if os.path.islink(os.path.join(directory, name)):
                skipped(os.path.join(directory, name))
                subdirectories.remove(name)
    return found
