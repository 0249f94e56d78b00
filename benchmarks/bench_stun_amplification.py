"""
The STUN server as a reflector: how many bytes it sends for each byte
someone sends it.

Run with C{python -m benchmarks.bench_stun_amplification [--json PATH]}.
A request with a forged source address makes the server answer the
forger's victim, so the figure that matters is the amplification factor:
the largest answer over the smallest request that gets it.  For each kind
of answer the server gives (success, RFC 3489 success, 400, 420, from a
plain server and from an RFC 5780 group, to IPv4 and IPv6 clients) the
smallest request that gets it is built and answered by the real
L{BindingServer}, and both sizes are measured; the UDP payload, and the
datagram with its IP and UDP headers.

A seeded search then sends the server mutated requests (bytes flipped,
attributes added, cut short) and keeps the largest ratio it finds, as a
check that the table missed no larger answer.
"""

from __future__ import annotations

import platform
import random
import struct
import sys
from typing import Any

from benchmarks.bench_codec import report_main
from tests.fakes import RecordingUDPTransport
from twisted_nat.address import Address
from twisted_nat.stun.attributes import ChangeRequest, ErrorCode, UnknownAttribute
from twisted_nat.stun.message import Message, MessageClass, Method, decode, encode, request
from twisted_nat.stun.server import BindingServer, STUNServerGroup

CLIENTS: dict[str, Address] = {"IPv4": ("198.51.100.5", 40001), "IPv6": ("2001:db8::5", 40001)}
HEADERS = {"IPv4": 20 + 8, "IPv6": 40 + 8}
TID = bytes(range(12))


def plain() -> BindingServer:
    server = BindingServer()
    server.makeConnection(RecordingUDPTransport("192.0.2.1", 3478))
    return server


def grouped() -> BindingServer:
    group = STUNServerGroup(("192.0.2.1", 3478), ("192.0.2.2", 3479))
    for (host, port), member in group.members():
        member.makeConnection(RecordingUDPTransport(host, port))
    return group.member(0, 0)


def smallest_requests() -> dict[str, bytes]:
    """The smallest request that gets each kind of answer."""
    return {
        "Binding": encode(request(transaction_id=TID)),
        "Binding, CHANGE-REQUEST": encode(
            request(attributes=[ChangeRequest(True, True)], transaction_id=TID)
        ),
        "RFC 3489 Binding": encode(
            Message(Method.BINDING, MessageClass.REQUEST, TID, (), b"\x01\x02\x03\x04")
        ),
        "other method": encode(request(Method.ALLOCATE, transaction_id=TID)),
        "broken attribute": bytes.fromhex("00010004") + encode(request())[4:20] + b"\0\0\0\5",
        "unknown attribute": encode(
            request(attributes=[UnknownAttribute(0x7777, b"")], transaction_id=TID)
        ),
    }


def answer_size(server: BindingServer, data: bytes, client: Address) -> int | None:
    reply = server.handle(data, client)
    return None if reply is None else len(reply[0])


def answer_kind(server: BindingServer, data: bytes, client: Address) -> str:
    """The answer's class, and its error code if it is an error."""
    reply = server.handle(data, client)
    assert reply is not None
    answer = decode(reply[0], allow_rfc3489=True)
    error = answer.get(ErrorCode)
    return "success" if error is None else str(error.code)


def table() -> list[dict[str, Any]]:
    rows = []
    for mode, make in (("plain", plain), ("RFC 5780", grouped)):
        for family, client in CLIENTS.items():
            for kind, data in smallest_requests().items():
                size = answer_size(make(), data, client)
                if size is None:
                    continue
                header = HEADERS[family]
                rows.append(
                    {
                        "server": mode,
                        "client": family,
                        "request": kind,
                        "answer": answer_kind(make(), data, client),
                        "request_bytes": len(data),
                        "answer_bytes": size,
                        "factor": round(size / len(data), 2),
                        "factor_on_wire": round((size + header) / (len(data) + header), 2),
                    }
                )
    return rows


def mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif choice < 0.7:
            attr_type = rng.choice([0x0003, 0x0027, 0x7777, 0x8022, rng.randrange(0x10000)])
            value = rng.randbytes(rng.choice([0, 4, 8]))
            data += struct.pack("!HH", attr_type, len(value)) + value
            struct.pack_into("!H", data, 2, (len(data) - 20) & 0xFFFF)
        else:
            del data[rng.randrange(len(data) + 1) :]
    return bytes(data)


def search(iterations: int, seed: int = 0) -> dict[str, Any]:
    """The largest answer/request ratio over mutated requests, from both kinds of server."""
    rng = random.Random(seed)
    seeds = list(smallest_requests().values())
    servers = [plain(), grouped()]
    best: dict[str, Any] = {"factor": 0.0}
    for _ in range(iterations):
        data = mutate(rng, rng.choice(seeds))
        if not data:
            continue
        client = rng.choice(list(CLIENTS.values()))
        for server in servers:
            size = answer_size(server, data, client)
            if size is not None and size / len(data) > best["factor"]:
                best = {
                    "factor": round(size / len(data), 2),
                    "request_bytes": len(data),
                    "answer_bytes": size,
                    "request_hex": data.hex(),
                }
    return best


def run(number: int, repeat: int) -> dict[str, Any]:
    rows = table()
    worst = max(rows, key=lambda row: row["factor"])
    return {
        "python": platform.python_version(),
        "rows": rows,
        "largest": worst,
        "search": {"iterations": number * repeat, **search(number * repeat)},
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [
        "| server | client | request | answer | request (B) | answer (B) | factor "
        "| with IP+UDP headers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['server']} | {row['client']} | {row['request']} | {row['answer']} "
            f"| {row['request_bytes']} "
            f"| {row['answer_bytes']} | {row['factor']:.2f}x | {row['factor_on_wire']:.2f}x |"
        )
    found = report["search"]
    lines.append(
        f"\nlargest: {report['largest']['factor']:.2f}x; search over "
        f"{found['iterations']} mutated requests: {found['factor']:.2f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return report_main(argv, __doc__, run, format_table, 20000)


if __name__ == "__main__":
    sys.exit(main())
