"""
Run every benchmark in turn: C{python -m benchmarks} (from the repository
root, with the C{bench} and C{test} extras installed and coturn on the PATH; the
detection benchmark also needs root, for the NAT lab).

Results are printed and written as JSON under C{benchmarks/results/}.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks import (
    bench_aead,
    bench_codec,
    bench_detect,
    bench_failure,
    bench_scale,
    bench_server,
    bench_server_abuse,
    bench_streams,
    bench_streams_lab,
    bench_stun_amplification,
    bench_transfer,
    bench_turn,
)
from tests.support.natlab import lab_unavailable_reason

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    print("== STUN codec: ours against aioice ==", flush=True)
    status = bench_codec.main(["--json", str(RESULTS / "codec.json")])
    print("\n== Application datagrams: ChaCha20-Poly1305 against HMAC frames ==", flush=True)
    status |= bench_aead.main(["--json", str(RESULTS / "aead.json")])
    print("\n== STUN server: ours against coturn ==", flush=True)
    status |= bench_server.main(["--json", str(RESULTS / "server.json")])
    print("\n== STUN server as a reflector: amplification ==", flush=True)
    status |= bench_stun_amplification.main(["--json", str(RESULTS / "stun_amplification.json")])
    print("\n== TURN relay through coturn: ours against aioice ==", flush=True)
    status |= bench_turn.main(["--json", str(RESULTS / "turn.json")])
    print(
        "\n== QUIC streams on loopback: ours against stock aioquic, and through coturn ==",
        flush=True,
    )
    status |= bench_streams.main(["--json", str(RESULTS / "streams.json")])
    print("\n== 10,000 peer connections with keep-alive in one process ==", flush=True)
    status |= bench_scale.main(["--json", str(RESULTS / "scale.json")])
    print("\n== What one hostile client can make the rendezvous server hold ==", flush=True)
    status |= bench_server_abuse.main(["--json", str(RESULTS / "server_abuse.json")])
    print("\n== NAT detection on real NATs: ours against pystun3 ==", flush=True)
    reason = lab_unavailable_reason()
    if reason is None:
        status |= bench_detect.main(["--json", str(RESULTS / "detect.json")])
    else:
        print(f"skipped: {reason}")
    print("\n== QUIC streams between two real NATs: direct and through coturn ==", flush=True)
    if reason is None:
        status |= bench_streams_lab.main(["--json", str(RESULTS / "streams_lab.json")])
    else:
        print(f"skipped: {reason}")
    print("\n== 64 MiB between two real NATs: twisted-nat send against magic-wormhole ==")
    if reason is None:
        status |= bench_transfer.main(["--json", str(RESULTS / "transfer.json")])
    print(
        "\n== Recovery from a NAT reboot: liveness checks against keep-alive alone ==", flush=True
    )
    if reason is None:
        status |= bench_failure.main(["--json", str(RESULTS / "failure.json")])
    else:
        print(f"skipped: {reason}")
    return status


if __name__ == "__main__":
    sys.exit(main())
