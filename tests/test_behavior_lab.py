"""
Behaviour discovery against real Linux NATs: every type of the lab,
twenty runs each, against our RFC 5780 server and against coturn, and again
with 10 % random loss on the NAT's outside link.

Detection runs inside each peer's namespace (L{tests.support.detect_runner},
twenty detections per process); the servers run in the lab's internet
namespace.  The figures printed are the detection call's own time.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.coturn import require_tool
from tests.support.lab_servers import COTURN, OURS, detect_from, start_servers
from tests.support.natlab import Lab, NatSpec, NatType, nat_lab, require_lab

pytestmark = pytest.mark.lab

RUNS = 20

NAMES = {
    NatType.NONE: "none",
    NatType.FULL_CONE: "full",
    NatType.RESTRICTED_CONE: "restricted",
    NatType.PORT_RESTRICTED_CONE: "portrestr",
    NatType.SYMMETRIC: "symmetric",
    NatType.SYMMETRIC_SEQUENTIAL: "symmetricseq",
}

EXPECTED = {
    NatType.NONE: "open internet",
    NatType.FULL_CONE: "full cone",
    NatType.RESTRICTED_CONE: "restricted cone",
    NatType.PORT_RESTRICTED_CONE: "port-restricted cone",
    NatType.SYMMETRIC: "symmetric",
    NatType.SYMMETRIC_SEQUENTIAL: "symmetric",
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_lab()
    coturn = require_tool("turnserver")
    # Twenty runs in a row open forty sockets on ephemeral ports, and the
    # kernel may hand a run a port a run before it used: with the NAT's
    # mapping of that port towards the alternate address still alive, a
    # port-restricted NAT would rightly let test II in, and look like a full
    # cone.  Mappings that outlive a run by seconds rather than the default
    # 30 s leave that to chance about ten times less often; no run leaves
    # a binding idle for 3 s.
    specs = [NatSpec(name=NAMES[kind], type=kind, udp_timeout=3) for kind in EXPECTED]
    with nat_lab(specs) as built, tempfile.TemporaryDirectory() as workdir:
        start_servers(built, coturn, workdir)
        yield built


def detect(lab: Lab, kind: NatType, port: int) -> list[Any]:
    runs = detect_from(lab, lab.nat(NAMES[kind]), port, RUNS)
    assert len(runs) == RUNS
    return runs


def report(label: str, runs: list[Any]) -> None:
    seconds = sorted(r["seconds"] for r in runs)
    print(
        f"{label}: median {statistics.median(seconds) * 1000:.0f} ms, "
        f"max {seconds[-1] * 1000:.0f} ms"
    )


def check(kind: NatType, runs: list[Any], lab: Lab) -> None:
    nat = lab.nat(NAMES[kind])
    names = [r["nat_type"] for r in runs]
    wrong = [r for r in runs if r["nat_type"] != EXPECTED[kind]]
    assert names == [EXPECTED[kind]] * RUNS, wrong
    for run in runs:
        assert run["problems"] == []
        public_host = run["public"].rsplit(":", 1)[0]
        if kind is NatType.NONE:
            assert public_host == nat.peer.address
        else:
            assert public_host == nat.public_address
            assert run["local"].rsplit(":", 1)[0] == nat.peer.address


@pytest.mark.parametrize("kind", list(EXPECTED), ids=lambda k: k.name.lower())
def test_classified_against_our_server(lab: Lab, kind: NatType) -> None:
    runs = detect(lab, kind, OURS)
    report(f"{kind.name} vs ours", runs)
    check(kind, runs, lab)
    assert statistics.median(r["seconds"] for r in runs) < 0.5


@pytest.mark.parametrize("kind", list(EXPECTED), ids=lambda k: k.name.lower())
def test_classified_against_coturn(lab: Lab, kind: NatType) -> None:
    runs = detect(lab, kind, COTURN)
    report(f"{kind.name} vs coturn", runs)
    check(kind, runs, lab)


@pytest.mark.parametrize("kind", list(EXPECTED), ids=lambda k: k.name.lower())
def test_classified_with_ten_percent_loss(lab: Lab, kind: NatType) -> None:
    nat = lab.nat(NAMES[kind])
    nat.set_loss(10)
    try:
        runs = detect(lab, kind, OURS)
    finally:
        nat.set_loss(0)
    report(f"{kind.name} vs ours, 10 % loss", runs)
    check(kind, runs, lab)
