"""
Port prediction: the shape of the predicted candidates (pure), and the
latest port of a sequential NAT asked for on the simulated internet.
"""

from __future__ import annotations

import pytest

from twisted_nat import testing as sim
from twisted_nat.candidates import Candidate, CandidateType, candidate_priority
from twisted_nat.nat import (
    PREDICTED_PORTS,
    PREDICTED_PREFERENCE,
    PREDICTION_WAIT,
    FilteringBehavior,
    MappingBehavior,
    NATBehavior,
    latest_port,
    predicted_candidates,
    prediction_step,
)
from twisted_nat.stun.server import BindingServer

SRFLX = CandidateType.SERVER_REFLEXIVE
PUBLIC = "198.51.100.1"
LATEST = (PUBLIC, 40000)
OURS = [
    Candidate(CandidateType.HOST, "192.0.2.20", 5000),
    Candidate(SRFLX, PUBLIC, 39990),
]


def preference(rank: int) -> int:
    return candidate_priority(SRFLX, PREDICTED_PREFERENCE - rank)


def test_ports_after_those_the_punch_opens_first_come_first() -> None:
    """
    Two candidates rank above the predicted ones, so our punch opens two
    ports before its first predicted one: the ports from C{latest + 3} are
    offered first, then C{latest + 1} and C{latest + 2}, ranked last.
    """
    predicted = predicted_candidates(LATEST, 1, OURS)
    ahead = [40001, 40002]
    expected = [*range(40003, 40003 + PREDICTED_PORTS), *ahead]
    assert [c.port for c in predicted] == expected
    assert [c.priority for c in predicted] == [preference(r) for r in range(len(expected))]
    assert all(c.kind is SRFLX and c.host == PUBLIC for c in predicted)


def test_ahead_counts_only_what_ranks_above_the_predicted_ports() -> None:
    """
    Answering, the shape is the peer's offer: its own predicted ports, its
    meeting port and its relayed address do not open a port before ours.
    """
    offer = [
        *OURS,
        Candidate(SRFLX, "203.0.113.7", 50001, preference(0)),
        Candidate(SRFLX, "203.0.113.7", 50002, preference(1)),
        Candidate(SRFLX, "203.0.113.7", 50064, preference(256)),
        Candidate(CandidateType.RELAYED, "203.0.113.9", 49152),
    ]
    assert predicted_candidates(LATEST, 1, offer) == predicted_candidates(LATEST, 1, OURS)
    none_ahead = predicted_candidates(LATEST, 1, [])
    assert [c.port for c in none_ahead] == list(range(40001, 40001 + PREDICTED_PORTS))


def test_the_step_spaces_the_ports() -> None:
    predicted = predicted_candidates(LATEST, 4, OURS[:1])
    assert [c.port for c in predicted] == [
        *range(40008, 40008 + 4 * PREDICTED_PORTS, 4),
        40004,
    ]


def test_ports_past_the_end_are_left_out_and_keep_their_rank() -> None:
    predicted = predicted_candidates((PUBLIC, 65530), 1, [])
    assert [c.port for c in predicted] == [65531, 65532, 65533, 65534, 65535]
    assert [c.priority for c in predicted] == [preference(r) for r in range(5)]


def behavior(mapping: MappingBehavior, delta: int | None) -> NATBehavior:
    return NATBehavior(
        local=("192.0.2.20", 5000),
        public=(PUBLIC, 40000),
        mapping=mapping,
        filtering=FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
        hairpinning=None,
        server=("203.0.113.10", 3478),
        port_delta=delta,
    )


@pytest.mark.parametrize(
    ("mapping", "delta", "step"),
    [
        (MappingBehavior.ADDRESS_AND_PORT_DEPENDENT, 1, 1),
        (MappingBehavior.ADDRESS_DEPENDENT, 2, 2),
        (MappingBehavior.ADDRESS_AND_PORT_DEPENDENT, None, None),
        (MappingBehavior.ENDPOINT_INDEPENDENT, 1, None),
    ],
)
def test_only_a_sequential_destination_dependent_nat_is_predicted(
    mapping: MappingBehavior, delta: int | None, step: int | None
) -> None:
    assert prediction_step(behavior(mapping, delta)) == step


def sequential_world(server_up: bool = True) -> tuple[sim.SimulatedInternet, sim.SimulatedHost]:
    internet = sim.SimulatedInternet(seed=1, latency=0.005)
    server = internet.add_host("203.0.113.10")
    if server_up:
        server.listenUDP(3478, BindingServer())
    nat = internet.add_nat(
        PUBLIC,
        mapping=sim.MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
        filtering=sim.FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
        allocation=sim.PortAllocation.SEQUENTIAL,
    )
    return internet, internet.add_host("192.0.2.20", behind=nat)


def test_latest_port_is_the_newest_flows() -> None:
    internet, peer = sequential_world()
    first = internet.run_until(latest_port(peer, ("203.0.113.10", 3478)))
    second = internet.run_until(latest_port(peer, ("203.0.113.10", 3478)))
    assert first is not None and second is not None
    assert first[0] == second[0] == PUBLIC
    assert second[1] > first[1]


def test_no_answer_is_no_prediction() -> None:
    internet, peer = sequential_world(server_up=False)
    started = internet.clock.seconds()
    assert internet.run_until(latest_port(peer, ("203.0.113.10", 3478))) is None
    assert internet.clock.seconds() - started <= PREDICTION_WAIT + 0.5
