"""
Every pair connects: the whole matrix of the lab's NAT types, both orders,
with a TURN server (coturn) beside the STUN and rendezvous servers.

Each NAT type is in the lab twice, one peer behind each, so that a pair of
one type still crosses two NATs.  For every ordered pair (offerer's NAT,
answerer's NAT), at 0 % loss and (every pair with C{RELAY_LAB_FULL=1}, a
few in CI) at 10 %, the offerer connects C{RELAY_LAB_TRIALS} times (2 unless
set; at least 10 where a share must be direct; fresh sockets, fresh NAT
bindings, fresh allocations each time), and the test
checks the path each trial ends on against what physics allows:

  - direct in every trial for every pair without a symmetric side, and for
    a symmetric NAT (either allocation) with no NAT, a full cone or a
    restricted cone;
  - direct in every trial for two sequential symmetric NATs (meeting runs,
    L{twisted_nat.punch.meeting});
  - for a symmetric NAT with a port-restricted cone, direct in at least
    90 % of trials within 5 s (port prediction for the sequential NAT, the
    birthday method for the random one), relayed in the rest;
  - relayed where both sides are symmetric with random ports: neither
    side's next port can be known, nor probed for, from a side that is
    itself symmetric; a sequential with a random one likewise (see
    docs/architecture.md for why no budget of probes reaches it);
  - never a failure.

The matrix (pair, paths, median set-up time) is printed at the end, with
the set-up time of each path type; C{RELAY_LAB_MATRIX=FILE} also writes it
as markdown.  The README's matrix command runs 20 trials a pair:

    RELAY_LAB_FULL=1 RELAY_LAB_TRIALS=20 RELAY_LAB_MATRIX=benchmarks/relay-matrix.md \\
        python -m pytest -s tests/test_relay_lab.py
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator

import attrs
import pytest

from tests.support.lab_fixtures import LabWorld, Peers, lab_fixtures, loss_on
from tests.support.natlab import NatSpec, NatType
from tests.support.peer_runner import PeerProcess

pytestmark = pytest.mark.lab

TRIALS = int(os.environ.get("RELAY_LAB_TRIALS", "2"))

TYPES = {
    "none": NatType.NONE,
    "full": NatType.FULL_CONE,
    "restricted": NatType.RESTRICTED_CONE,
    "portrestr": NatType.PORT_RESTRICTED_CONE,
    "symmetric": NatType.SYMMETRIC,
    "sequential": NatType.SYMMETRIC_SEQUENTIAL,
}
SYMMETRIC = {"symmetric", "sequential"}
NATS = [NatSpec(f"{name}{i}", kind) for name, kind in TYPES.items() for i in (1, 2)]
PAIRS = [(a, b) for a in TYPES for b in TYPES]

FULL = os.environ.get("RELAY_LAB_FULL", "") not in ("", "0")
"""Every pair at 10 % loss too; otherwise (CI) only the pairs of L{LOSSY}."""

LOSSY = [
    ("portrestr", "symmetric"),
    ("symmetric", "portrestr"),
    ("portrestr", "sequential"),
    ("sequential", "portrestr"),
    ("portrestr", "portrestr"),
    ("full", "symmetric"),
    ("symmetric", "symmetric"),
    ("sequential", "sequential"),
]
"""
At 10 % loss in CI: the pairs held to 90 % direct (port prediction, the
birthday method), one of cones, one of a cone and a symmetric NAT, one
relayed, and the meeting runs of two sequential NATs.  With
C{RELAY_LAB_FULL=1} (the README's matrix command) every pair runs at 10 %
loss as well.
"""

CASES = [(a, b, loss) for a, b in PAIRS for loss in (0, 10) if loss == 0 or FULL or (a, b) in LOSSY]

MOSTLY_TRIALS = 10
"""Trials at least, where 90 % must be direct."""

DIRECT_WITHIN = 5.0
"""Seconds from the start of a set-up within which a path must be direct to count as such."""


def expected(offerer: str, answerer: str) -> str:
    """
    C{direct}, C{mostly-direct} (90 % within 5 s, by port prediction or the
    birthday method), C{relayed}, or C{connects} (either).
    """
    hard = {offerer, answerer} & SYMMETRIC
    if not hard or offerer == answerer == "sequential":
        return "direct"
    if offerer == answerer == "symmetric":
        return "relayed"
    if len(hard) == 2:
        # A sequential with a random one: relayed but for a lucky
        # prediction, so either path is right.
        return "connects"
    other = answerer if offerer in SYMMETRIC else offerer
    return "direct" if other != "portrestr" else "mostly-direct"


world, peers = lab_fixtures(NATS, turn=True)


@pytest.fixture(scope="module")
def matrix() -> Iterator[list[Row]]:
    rows: list[Row] = []
    yield rows
    if rows:
        text = render(rows)
        print("\n\n" + text)
        target = os.environ.get("RELAY_LAB_MATRIX")
        if target:
            with open(target, "w") as out:
                out.write(text)


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return f"{statistics.median(ordered):.1f} / {p95:.1f}"


def render(rows: list[Row]) -> str:
    """The matrix as a markdown table, then set-up time by path type."""
    lines = [
        f"# Every pair connects: {TRIALS} trials per pair "
        f"(at least {MOSTLY_TRIALS} where 90 % must be direct)",
        "",
        "Offerer's NAT -> answerer's NAT, at the loss given on both NATs' outside links.",
        "Set-up: from `connect()` to the connection, on the offerer (median / p95, ms).",
        "Direct after: when the path became direct, for trials that started on the relay.",
        "",
        "| offerer | answerer | loss | paths | set-up ms | direct after ms |",
        "|---|---|---|---|---|---|",
    ]
    by_path: dict[str, list[float]] = {}
    for row in rows:
        paths = ", ".join(
            f"{n} {path}"
            for path in ("direct", "relay->direct", "relayed")
            if (n := sum(t.path == path for t in row.trials))
        )
        moved = [
            t.direct_after_ms
            for t in row.trials
            if t.path == "relay->direct" and t.direct_after_ms is not None
        ]
        lines.append(
            f"| {row.offerer} | {row.answerer} | {row.loss} % | {paths} "
            f"| {_ms([t.setup_ms for t in row.trials])} | {_ms(moved)} |"
        )
        for trial in row.trials:
            key = f"{trial.path}, {row.loss} % loss"
            by_path.setdefault(key, []).append(
                trial.direct_after_ms
                if trial.path == "relay->direct" and trial.direct_after_ms is not None
                else trial.setup_ms
            )
    lines += ["", "| path | trials | set-up ms (median / p95) |", "|---|---|---|"]
    for key, values in sorted(by_path.items()):
        lines.append(f"| {key} | {len(values)} | {_ms(values)} |")
    return "\n".join(lines) + "\n"


@attrs.frozen
class Trial:
    """One set-up as the offerer saw it: the path it ended on, and when."""

    first_relayed: bool
    final_relayed: bool
    setup_ms: float
    direct_after_ms: float | None

    @property
    def path(self) -> str:
        if not self.final_relayed:
            return "direct" if not self.first_relayed else "relay->direct"
        return "relayed"


@attrs.frozen
class Row:
    offerer: str
    answerer: str
    loss: int
    trials: tuple[Trial, ...]


def trials_of(peer: PeerProcess) -> list[Trial]:
    found = []
    for connected in sorted(peer.of("connected"), key=lambda e: e["instance"]):
        moves = peer.of("moved", instance=connected["instance"])
        moves = [m for m in moves if m["session_id"] == connected["session_id"]]
        final = moves[-1]["path"] if moves else connected["path"]
        first = connected["path"]
        direct_after = None
        if not first["relayed"]:
            direct_after = connected["setup_ms"]
        else:
            direct = [m for m in moves if not m["path"]["relayed"]]
            if direct:
                direct_after = direct[0]["since_setup_ms"]
        found.append(Trial(first["relayed"], final["relayed"], connected["setup_ms"], direct_after))
    return found


@pytest.mark.parametrize(
    "offerer,answerer,loss", CASES, ids=[f"{a}-{b}-{loss}%loss" for a, b, loss in CASES]
)
def test_every_pair_connects(
    world: LabWorld,
    peers: Peers,
    matrix: list[Row],
    offerer: str,
    answerer: str,
    loss: int,
) -> None:
    lab = world.lab
    a_nat, b_nat = lab.nat(f"{offerer}1"), lab.nat(f"{answerer}2")
    name = f"{offerer[:4]}{answerer[:4]}{loss}"
    want = expected(offerer, answerer)
    # "At least 90 %" needs ten trials to allow for one miss.
    count = max(TRIALS, MOSTLY_TRIALS) if want == "mostly-direct" else TRIALS
    with loss_on([a_nat, b_nat], loss):
        bob = peers.start(b_nat.name, f"b{name}", instances=count)
        alice = peers.start(a_nat.name, f"a{name}", "--connect", f"b{name}", instances=count)
        done = alice.wait_for("done", timeout=60 + count * 15)[0]
        bob.wait_for("connected", count, timeout=15)
        if want != "relayed" and any(t.final_relayed for t in trials_of(alice)):
            # A trial that took the relay (when loss held the direct pairs
            # back past the relay's grace) still looks for a direct path:
            # give the last one the time the target allows.
            time.sleep(DIRECT_WITHIN)
    assert done["failed"] == 0 and alice.of("failed") == [], alice.of("failed")
    # Each side reports a move when it makes it: the answerer's comes a
    # moment after the offerer's (its CONFIRM has yet to arrive).
    settled = time.monotonic() + DIRECT_WITHIN
    while time.monotonic() < settled and [t.final_relayed for t in trials_of(alice)] != [
        t.final_relayed for t in trials_of(bob)
    ]:
        time.sleep(0.05)
    trials = trials_of(alice)
    answered = trials_of(bob)
    assert len(trials) == count == len(answered)
    for ours, theirs in zip(trials, answered, strict=True):
        assert ours.final_relayed == theirs.final_relayed, (ours, theirs)
    if want == "direct":
        assert not any(t.final_relayed for t in trials), trials
    elif want == "mostly-direct":
        direct = [
            t
            for t in trials
            if not t.final_relayed
            and t.direct_after_ms is not None
            and t.direct_after_ms <= DIRECT_WITHIN * 1000
        ]
        assert len(direct) >= 0.9 * count, trials
    elif want == "relayed":
        assert all(t.final_relayed for t in trials), trials
    matrix.append(Row(offerer, answerer, loss, tuple(trials)))


def test_a_dead_direct_path_falls_back_to_the_relay_and_returns(
    world: LabWorld, peers: Peers
) -> None:
    """
    A direct connection between a port-restricted cone and a full cone;
    then the two sites lose each other (an nftables drop on one NAT's
    outside link, for the other NAT's address only: the servers stay
    reachable).  Keep-alive declares the path lost, the offerer punches
    again, and with no direct pair answering the new session takes the
    relay, which carries the application's data.  When the sites see each
    other again, the relayed session, still punching its direct pairs,
    moves back to a direct path.
    """
    lab = world.lab
    a_nat, b_nat = lab.nat("portrestr1"), lab.nat("full2")
    keepalive = ["--keepalive-interval", "1", "--keepalive-timeout", "0.5"]
    bob = peers.start(b_nat.name, "bfallback", "--echo", *keepalive)
    alice = peers.start(a_nat.name, "afallback", "--connect", "bfallback", *keepalive)
    first = alice.wait_for("connected", timeout=30)[0]
    assert not first["path"]["relayed"], first
    try:
        a_nat.block(b_nat.public_address)
        alice.wait_for("lost", timeout=20)
        again = alice.wait_for("connected", 2, timeout=30)[-1]
        assert again["repunch"] and again["path"]["relayed"], again
        answered = bob.wait_for("connected", 2, timeout=10)[-1]
        assert answered["session_id"] == again["session_id"] and answered["path"]["relayed"]
        alice.command("send bfallback 3")
        alice.wait_for("data", 3, timeout=10, kind="echo")
    finally:
        a_nat.block()
    moved = alice.wait_for(
        "moved",
        timeout=15,
        where=lambda e: e["session_id"] == again["session_id"] and not e["path"]["relayed"],
    )[0]
    assert moved["path"]["remote_address"].rsplit(":", 1)[0] == b_nat.public_address
    before = len(alice.of("data", kind="echo"))
    alice.command("send bfallback 3")
    alice.wait_for("data", before + 3, timeout=10, kind="echo")
    print(f"\nfallback: direct, lost, relayed, direct again after {moved['since_setup_ms']:.0f} ms")
