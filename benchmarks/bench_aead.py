"""
Application datagrams: ChaCha20-Poly1305 frames against the HMAC-SHA256
frames they replaced.

Run with C{python -m benchmarks.bench_aead [--json PATH]}.  One operation
is what one datagram costs the two peers together: the sender frames it,
the receiver checks and opens it.  Both frames have the same layout and
overhead, C{0x04 | sequence (8) | payload | tag (16)}; the old one tags the
payload in clear with a truncated HMAC-SHA256, the new one encrypts it
(L{twisted_nat.control.encrypt_frame}).  The old construction is written
out below as it was, the comparison peer in the same run.

A third column makes the ChaCha20-Poly1305 object anew for every
datagram, as a connection that kept none would have to: each object holds
OpenSSL cipher state, whose resident memory is measured too, since a
connection keeps one per direction once it carries data.

Each figure is the best of several repeats of a C{perf_counter} loop with
the garbage collector off, as in C{bench_codec}: the best repeat is the one
least disturbed by the rest of the machine.  Before timing, each side must
open what it framed and refuse a wrong key and a changed byte.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import importlib.metadata
import os
import platform
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from benchmarks.bench_codec import report_main
from benchmarks.bench_scale import rss_bytes
from twisted_nat import control
from twisted_nat.control import SessionKeys

SIZES = (100, 1200)
OBJECTS = 20000
"""How many ChaCha20-Poly1305 objects the memory figure is taken over."""

_SEQUENCE = struct.Struct("!Q")
_TAG = 16


def hmac_frame(key: bytes, sequence: int, payload: bytes) -> bytes:
    """The frame before ChaCha20-Poly1305: the payload in clear, an HMAC-SHA256 tag cut to 16."""
    head = bytes((control.APP_DATA,)) + _SEQUENCE.pack(sequence) + payload
    return head + hmac.new(key, head, hashlib.sha256).digest()[:_TAG]


def hmac_open(key: bytes, frame: bytes) -> tuple[int, bytes] | None:
    """(sequence, payload) of an HMAC frame whose tag verifies, else None."""
    if len(frame) < 1 + _SEQUENCE.size + _TAG or frame[0] != control.APP_DATA:
        return None
    head, tag = frame[:-_TAG], frame[-_TAG:]
    if not hmac.compare_digest(hmac.new(key, head, hashlib.sha256).digest()[:_TAG], tag):
        return None
    return _SEQUENCE.unpack_from(head, 1)[0], head[1 + _SEQUENCE.size :]


Operation = Callable[[], object]


def operations(payload: bytes) -> dict[str, Operation]:
    """One datagram framed by the sender and opened by the receiver, three ways."""
    session, secret = os.urandom(16), os.urandom(32)
    sender = SessionKeys.derive(session, secret, offerer=True)
    receiver = SessionKeys.derive(session, secret, offerer=False)
    encrypting, decrypting = sender.send_cipher(), receiver.receive_cipher()
    send_key, receive_key = sender.send, receiver.receive
    encrypt, decrypt = control.encrypt_frame, control.decrypt_frame

    def old() -> object:
        return hmac_open(receive_key, hmac_frame(send_key, 1, payload))

    def aead() -> object:
        return decrypt(decrypting, encrypt(encrypting, 1, payload))

    def aead_made_each_time() -> object:
        frame = encrypt(ChaCha20Poly1305(send_key), 1, payload)
        return decrypt(ChaCha20Poly1305(receive_key), frame)

    return {"hmac": old, "aead": aead, "aead_new_objects": aead_made_each_time}


def sanity_check() -> None:
    """Refuse to time a side that does not do the job."""
    payload = os.urandom(SIZES[0])
    session, secret = os.urandom(16), os.urandom(32)
    sender = SessionKeys.derive(session, secret, offerer=True)
    receiver = SessionKeys.derive(session, secret, offerer=False)
    frame = hmac_frame(sender.send, 7, payload)
    _require(hmac_open(receiver.receive, frame) == (7, payload), "HMAC: the frame does not open")
    _require(hmac_open(receiver.send, frame) is None, "HMAC: a wrong key opens it")
    _require(hmac_open(receiver.receive, _flip(frame)) is None, "HMAC: a changed byte opens")
    frame = control.encrypt_frame(sender.send_cipher(), 7, payload)
    opening = receiver.receive_cipher()
    _require(len(frame) == len(payload) + control.FRAME_OVERHEAD, "AEAD: not the same overhead")
    _require(payload not in frame, "AEAD: the payload is in clear")
    _require(control.decrypt_frame(opening, frame) == (7, payload), "AEAD: it does not open")
    _require(
        control.decrypt_frame(receiver.send_cipher(), frame) is None, "AEAD: a wrong key opens"
    )
    _require(control.decrypt_frame(opening, _flip(frame)) is None, "AEAD: a changed byte opens")
    for operation in operations(payload).values():
        _require(operation() == (1, payload), "an operation does not return the payload")


def _flip(frame: bytes) -> bytes:
    return frame[:20] + bytes([frame[20] ^ 1]) + frame[21:]


def _require(condition: bool, failure: str) -> None:
    """C{assert}, minus the way C{python -O} would skip it."""
    if not condition:
        raise SystemExit(f"sanity check failed: {failure}")


def best_rate(operation: Operation, number: int, repeat: int) -> float:
    """Operations per second in the fastest of C{repeat} loops of C{number}."""
    best = float("inf")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(number):
                operation()
            best = min(best, time.perf_counter() - started)
    finally:
        if gc_was_enabled:
            gc.enable()
    return number / best


def cipher_memory(count: int) -> float | None:
    """Resident bytes per ChaCha20-Poly1305 object, its 32-byte key included."""
    gc.collect()
    before = rss_bytes()
    kept = [ChaCha20Poly1305(os.urandom(32)) for _ in range(count)]
    gc.collect()
    after = rss_bytes()
    del kept
    if before is None or after is None:
        return None
    return (after - before) / count


def run(number: int, repeat: int) -> dict[str, Any]:
    sanity_check()
    results: dict[str, dict[str, float]] = {}
    for size in SIZES:
        cases = operations(os.urandom(size))
        for operation in cases.values():  # warm up every side before timing any
            best_rate(operation, number // 10 or 1, 1)
        rates = {name: best_rate(operation, number, repeat) for name, operation in cases.items()}
        row: dict[str, float] = {}
        for name, rate in rates.items():
            row[f"{name}_ops_per_s"] = round(rate, 1)
            row[f"{name}_us"] = round(1e6 / rate, 3)
        row["aead_over_hmac"] = round(rates["aead"] / rates["hmac"], 3)
        row["aead_new_objects_over_hmac"] = round(rates["aead_new_objects"] / rates["hmac"], 3)
        results[str(size)] = row
    per_object = cipher_memory(OBJECTS)
    return {
        "benchmark": "one application datagram framed and opened: ChaCha20-Poly1305 against "
        "HMAC-SHA256 (the frame before)",
        "python": platform.python_version(),
        "cryptography": importlib.metadata.version("cryptography"),
        "number": number,
        "repeat": repeat,
        "results": results,
        "rss_bytes_per_cipher_object": None if per_object is None else round(per_object),
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'payload':>8} {'HMAC ops/s':>11} {'us':>6} {'AEAD ops/s':>11} {'us':>6}"
        f" {'AEAD/HMAC':>10} {'AEAD, objects each time':>24}",
        "-" * 82,
    ]
    for size, row in report["results"].items():
        lines.append(
            f"{size + ' B':>8} {row['hmac_ops_per_s']:>11,.0f} {row['hmac_us']:>6.2f}"
            f" {row['aead_ops_per_s']:>11,.0f} {row['aead_us']:>6.2f}"
            f" {row['aead_over_hmac']:>9.2f}x"
            f" {row['aead_new_objects_us']:>9.2f} us ({row['aead_new_objects_over_hmac']:.2f}x)"
        )
    per_object = report["rss_bytes_per_cipher_object"]
    if per_object is not None:
        lines.append(f"resident memory per ChaCha20Poly1305 object: {per_object:,} B")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return report_main(argv, __doc__, run, format_table, 50000)


if __name__ == "__main__":
    sys.exit(main())
