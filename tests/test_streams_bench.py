"""
The stream benchmark's processes, on a small transfer: every kind moves
every byte, in processes of their own on loopback (twisted-nat against
twisted-nat, stock aioquic against stock aioquic, and twisted-nat through
coturn), so that C{python -m benchmarks.bench_streams} keeps working.  No
figure is asserted: speed is the benchmark's to report.
"""

from __future__ import annotations

import pytest

from benchmarks import bench_streams
from tests.support.coturn import require_tool

pytestmark = pytest.mark.interop

MIB = 1


def test_every_kind_moves_every_byte() -> None:
    require_tool("turnserver")
    results = bench_streams.measure(MIB, 1)
    assert set(results) == set(bench_streams.KINDS)
    for kind, [run] in results.items():
        assert run["seconds"] > 0, kind
        assert run["sender_cpu_per_mib"] > 0 and run["receiver_cpu_per_mib"] > 0, kind
    assert results["ours relayed"][0]["relayed"] is True
    assert results["ours"][0]["relayed"] is False


def test_a_short_transfer_is_refused_as_a_result() -> None:
    """A receiver that saw fewer bytes than were sent fails the run rather than timing it."""
    sent = {"event": "sent", "bytes": 2 * MIB << 20, "seconds": 1.0, "cpu": 0.5}
    received = {"event": "received", "bytes": MIB << 20, "seconds": 1.0, "cpu": 0.5}
    with pytest.raises(RuntimeError, match="arrived"):
        bench_streams.result_of(sent, received)
