"""The rendezvous server's limits as pure decisions: sources, admission, offers waiting."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from twisted_nat.rendezvous.quotas import Admission, PendingOffers, ServerLimits, source_of


@pytest.mark.parametrize(
    ("address", "source"),
    [
        (IPv4Address("TCP", "192.0.2.7", 5000), "192.0.2.7"),
        (IPv6Address("TCP", "2001:db8:1:2:3:4:5:6", 5000), "2001:db8:1:2::/64"),
        (IPv6Address("TCP", "fe80::1%eth0", 5000), "fe80::/64"),
        (IPv6Address("TCP", "::ffff:192.0.2.7", 5000), "192.0.2.7"),
        (UNIXAddress(b"/run/rendezvous.sock"), None),
    ],
)
def test_a_source_is_an_ipv4_address_or_an_ipv6_64(address, source) -> None:
    assert source_of(address) == source


def test_admission_counts_in_all_and_per_source() -> None:
    admission = Admission(max_connections=3, max_per_source=2)
    assert [admission.admit("a") for _ in range(3)][:2] == [None, None]
    assert admission.held_by("a") == 2
    assert admission.admit(None) is None  # not an IP: only the total counts
    assert admission.admit("b") is not None  # 3 in all
    admission.leave("a")
    assert admission.admit("b") is None
    for source in ("a", "b", None):
        admission.leave(source)
    assert admission.total == 0
    assert admission.held_by("a") == 0


def test_pending_offers_are_capped_per_sender_per_recipient_and_in_all() -> None:
    pending = PendingOffers(max_per_connection=2, max_total=3)
    assert pending.reserve("s1", "r1") is None
    assert pending.reserve("s2", "r1") is None
    assert pending.reserve("s1", "r2") is None
    assert "most offers" in (pending.reserve("s3", "r3") or "")
    pending.release("s1", "r2")
    assert "the peer has 2" in (pending.reserve("s3", "r1") or "")
    assert pending.reserve("s1", "r3") is None
    pending.release("s2", "r1")
    assert "you have 2" in (pending.reserve("s1", "r4") or "")
    for sender, recipient in (("s1", "r1"), ("s1", "r3")):
        pending.release(sender, recipient)
    assert pending.total == 0
    assert pending.sent_by("s1") == pending.waiting_for("r1") == 0


def test_limits_refuse_nonsense() -> None:
    for bad in ({"max_connections": 0}, {"register_rate": 0.0}, {"idle_timeout": -1.0}):
        with pytest.raises(ValueError):
            ServerLimits(**bad)
