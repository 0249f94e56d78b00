"""The offer gate's limits, decision by decision, with the time given."""

from __future__ import annotations

import pytest

from twisted_nat.errors import ConfigurationError
from twisted_nat.service.gate import GateSettings, OfferGate
from twisted_nat.trust.keys import Identity

ALICE, MALLORY = Identity.generate().public, Identity.generate().public


def test_one_key_gets_its_burst_then_its_rate() -> None:
    gate = OfferGate(GateSettings(offer_rate=0.5, offer_burst=5), 0.0)
    assert [gate.offer(MALLORY, 0.0, 0) for _ in range(5)] == [None] * 5
    assert gate.offer(MALLORY, 0.0, 0) == "too many offers from this key"
    assert gate.offer(ALICE, 0.0, 0) is None, "another key is not held back"
    assert gate.offer(MALLORY, 2.0, 0) is None, "one more every 2 s"


def test_all_keys_together_are_limited_too() -> None:
    """Keys cost nothing to make: a new one per offer meets the total limit."""
    gate = OfferGate(GateSettings(total_offer_rate=10, total_offer_burst=30), 0.0)
    keys = [Identity.generate().public for _ in range(31)]
    verdicts = [gate.offer(key, 0.0, 0) for key in keys]
    assert verdicts == [None] * 30 + ["too many offers"]


def test_a_peer_searching_for_many_paths_is_busy() -> None:
    gate = OfferGate(GateSettings(max_searching=64), 0.0)
    assert gate.offer(ALICE, 0.0, 63) is None
    assert gate.offer(ALICE, 0.0, 64) == "busy: searching for too many paths already"


def test_expensive_techniques_one_at_a_time_per_key_and_few_in_all() -> None:
    gate = OfferGate(GateSettings(max_expensive=2, expensive_burst=3), 0.0)
    assert gate.expensive(MALLORY, b"1", 0.0) is None
    assert gate.expensive(MALLORY, b"2", 0.0) == "one is running for this key already"
    assert gate.expensive(ALICE, b"3", 0.0) is None
    assert gate.expensive(Identity.generate().public, b"4", 0.0) == "2 are running already"
    gate.expensive_over(b"1")
    gate.expensive_over(b"unknown")
    assert gate.expensive(MALLORY, b"5", 0.0) is None


def test_a_key_has_a_few_expensive_punches_a_minute() -> None:
    gate = OfferGate(GateSettings(expensive_rate=3 / 60, expensive_burst=3), 0.0)
    for i in range(3):
        assert gate.expensive(MALLORY, bytes([i]), 0.0) is None
        gate.expensive_over(bytes([i]))
    assert gate.expensive(MALLORY, b"x", 1.0) == "this key had its share this minute"
    assert gate.expensive(MALLORY, b"x", 21.0) is None


@pytest.mark.parametrize("field", ["offer_rate", "max_searching", "expensive_rate"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigurationError):
        GateSettings(**{field: 0})
