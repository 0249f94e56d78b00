"""
A peer is not a packet cannon: a stranger's offer naming addresses that
never answer costs a small fixed budget, whatever NAT the peer is behind.
"""

from __future__ import annotations

import pytest

from tests.support.hostile import VICTIMS, cost_of_offers

BUDGET_DATAGRAMS = 100
BUDGET_BYTES = 12_000


@pytest.mark.parametrize("victim", list(VICTIMS))
def test_one_offer_costs_at_most_the_budget(victim: str) -> None:
    """
    Before: 960 datagrams for any peer, 3,008 behind a port-restricted
    cone, 64 and 256 extra sockets behind symmetric NATs.
    """
    cost = cost_of_offers(victim)
    assert cost.datagrams <= BUDGET_DATAGRAMS, cost
    assert cost.payload_bytes <= BUDGET_BYTES, cost
