"""
Speed of the STUN codec against aioice's, on the message an ICE agent sends
most: a Binding request with USERNAME, PRIORITY, ICE-CONTROLLING,
MESSAGE-INTEGRITY and FINGERPRINT.

Run with C{python -m benchmarks.bench_codec [--json PATH]}.  Both codecs do
the whole job a peer does: the sender builds the message from values and
signs it, the receiver parses it, checks the FINGERPRINT and verifies the
HMAC.  Before timing anything the two are made to read each other's output,
so a broken or short-circuited side cannot post a flattering number.

Each figure is the best of several repeats of a C{perf_counter} loop, with
the garbage collector off (as C{timeit} does): the best repeat is the one
least disturbed by the rest of the machine.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import inspect
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from aioice import stun as aioice_stun

from twisted_nat.errors import IntegrityError
from twisted_nat.stun.attributes import (
    Fingerprint,
    IceControlling,
    MessageIntegrity,
    Priority,
    Username,
)
from twisted_nat.stun.message import (
    Message,
    MessageClass,
    Method,
    decode,
    encode,
    verify_integrity,
)

TARGET = 1.5
"""How many times aioice's round-trip speed ours should reach."""

KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
USERNAME = "evtj:h6vY"
PRIORITY = 0x6E0001FF
TIE_BREAKER = 0x932FF9B151263B36
TRANSACTION_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# Placeholders that encode() fills in from the key: immutable and carrying
# nothing of the message, so an application builds them once, as it would
# any constant (aioice has no objects for them at all).
INTEGRITY = MessageIntegrity()
FINGERPRINT = Fingerprint()

# aioice 0.13 made parse_message() leave the HMAC to
# Message.check_message_integrity() and add_message_integrity() append the
# FINGERPRINT itself; older releases took parse_message(data, integrity_key=)
# and needed add_fingerprint().  Use whichever this aioice has, so that each
# side does the same work once.
_aioice_parse: Callable[..., Any] = aioice_stun.parse_message
_AIOICE_PARSE_TAKES_KEY = "integrity_key" in inspect.signature(_aioice_parse).parameters


def ours_encode() -> bytes:
    return encode(
        Message(
            Method.BINDING,
            MessageClass.REQUEST,
            TRANSACTION_ID,
            (
                Username(USERNAME),
                Priority(PRIORITY),
                IceControlling(TIE_BREAKER),
                INTEGRITY,
                FINGERPRINT,
            ),
        ),
        key=KEY,
    )


def ours_decode(data: bytes) -> Message:
    message = decode(data)
    verify_integrity(message, KEY)
    return message


def aioice_encode() -> bytes:
    message = aioice_stun.Message(
        aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST, TRANSACTION_ID
    )
    message.attributes["USERNAME"] = USERNAME
    message.attributes["PRIORITY"] = PRIORITY
    message.attributes["ICE-CONTROLLING"] = TIE_BREAKER
    message.add_message_integrity(KEY)
    if "FINGERPRINT" not in message.attributes:
        message.add_fingerprint()
    return bytes(message)


def aioice_decode(data: bytes) -> Any:
    if _AIOICE_PARSE_TAKES_KEY:
        return _aioice_parse(data, integrity_key=KEY)
    message = aioice_stun.parse_message(data)
    if not message.check_message_integrity(KEY):
        raise ValueError("aioice: MESSAGE-INTEGRITY does not verify")
    return message


def _aioice_verifies(data: bytes, key: bytes) -> bool:
    try:
        if _AIOICE_PARSE_TAKES_KEY:
            _aioice_parse(data, integrity_key=key)
            return True
        return bool(aioice_stun.parse_message(data).check_message_integrity(key))
    except ValueError:
        return False


def _ours_verifies(data: bytes, key: bytes) -> bool:
    try:
        verify_integrity(decode(data), key)
    except IntegrityError:
        return False
    return True


def sanity_check() -> None:
    """
    Refuse to time codecs that do not do the job: each side must read the
    other's message with every attribute intact, accept the right key and
    refuse a wrong one.  With the same transaction id, attribute order and
    zero padding, the two encoders must even agree byte for byte.
    """
    ours, theirs = ours_encode(), aioice_encode()
    _require(ours == theirs, f"encoders disagree:\n ours   {ours.hex()}\n aioice {theirs.hex()}")
    for data in (ours, theirs):
        message = ours_decode(data)
        _require(message.get(Username) == Username(USERNAME), "ours: USERNAME")
        _require(message.get(Priority) == Priority(PRIORITY), "ours: PRIORITY")
        _require(
            message.get(IceControlling) == IceControlling(TIE_BREAKER), "ours: ICE-CONTROLLING"
        )
        _require(message.get(Fingerprint) is not None, "ours: FINGERPRINT")
        parsed = aioice_decode(data)
        _require(parsed.attributes.get("USERNAME") == USERNAME, "aioice: USERNAME")
        _require(parsed.attributes.get("PRIORITY") == PRIORITY, "aioice: PRIORITY")
        _require(parsed.attributes.get("ICE-CONTROLLING") == TIE_BREAKER, "aioice: ICE-CONTROLLING")
        _require("FINGERPRINT" in parsed.attributes, "aioice: FINGERPRINT")
        _require(_ours_verifies(data, KEY), "ours refuses the right key")
        _require(_aioice_verifies(data, KEY), "aioice refuses the right key")
        _require(not _ours_verifies(data, KEY[:-1]), "ours accepts a wrong key")
        _require(not _aioice_verifies(data, KEY[:-1]), "aioice accepts a wrong key")


def _require(condition: bool, failure: str) -> None:
    """C{assert}, minus the way C{python -O} would skip it."""
    if not condition:
        raise SystemExit(f"sanity check failed: {failure}")


def best_rate(operation: Callable[[], object], number: int, repeat: int) -> float:
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


def run(number: int, repeat: int) -> dict[str, Any]:
    sanity_check()
    ours_data, aioice_data = ours_encode(), aioice_encode()
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "encode": (ours_encode, aioice_encode),
        "decode+verify": (lambda: ours_decode(ours_data), lambda: aioice_decode(aioice_data)),
        "round trip": (
            lambda: ours_decode(ours_encode()),
            lambda: aioice_decode(aioice_encode()),
        ),
    }
    results: dict[str, dict[str, float]] = {}
    for name, (ours, theirs) in cases.items():
        # Warm up both (caches, specialisation) before timing either.
        best_rate(ours, number // 10 or 1, 1)
        best_rate(theirs, number // 10 or 1, 1)
        ours_rate = best_rate(ours, number, repeat)
        aioice_rate = best_rate(theirs, number, repeat)
        results[name] = {
            "ours_ops_per_s": round(ours_rate, 1),
            "aioice_ops_per_s": round(aioice_rate, 1),
            "ratio": round(ours_rate / aioice_rate, 3),
        }
    return {
        "benchmark": "STUN Binding request: USERNAME, PRIORITY, ICE-CONTROLLING, "
        "MESSAGE-INTEGRITY, FINGERPRINT",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "aioice": importlib.metadata.version("aioice"),
        "number": number,
        "repeat": repeat,
        "results": results,
        "target_ratio": TARGET,
        "meets_target": results["round trip"]["ratio"] >= TARGET,
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'operation':<15} {'ours ops/s':>12} {'aioice ops/s':>13} {'ours/aioice':>12}",
        "-" * 55,
    ]
    for name, row in report["results"].items():
        lines.append(
            f"{name:<15} {row['ours_ops_per_s']:>12,.0f} {row['aioice_ops_per_s']:>13,.0f}"
            f" {row['ratio']:>11.2f}x"
        )
    verdict = "meets" if report["meets_target"] else "MISSES"
    lines.append(f"round trip {verdict} the {report['target_ratio']}x target")
    return "\n".join(lines)


def report_main(
    argv: list[str] | None,
    doc: str | None,
    run: Callable[[int, int], dict[str, Any]],
    format_table: Callable[[dict[str, Any]], str],
    number: int,
) -> int:
    """
    The command line of a micro-benchmark: C{--number} operations a repeat,
    the best of C{--repeat}; the table, then the JSON report (also to
    C{--json PATH}).
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--json", metavar="PATH", help="also write the JSON report to PATH")
    parser.add_argument("--number", type=int, default=number, help="operations per repeat")
    parser.add_argument("--repeat", type=int, default=7, help="repeats; the best counts")
    args = parser.parse_args(argv)
    report = run(args.number, args.repeat)
    print(format_table(report))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return report_main(argv, __doc__, run, format_table, 20000)


if __name__ == "__main__":
    sys.exit(main())
