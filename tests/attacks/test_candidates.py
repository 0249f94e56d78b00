"""A stranger's candidates cannot point our PUNCHes at what is not a peer."""

from __future__ import annotations

import pytest

from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.punch.admission import admit

OURS = [
    Candidate(CandidateType.HOST, "192.168.1.20", 5000),
    Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.7", 40000),
]


def srflx(host: str, port: int = 40000) -> Candidate:
    return Candidate(CandidateType.SERVER_REFLEXIVE, host, port)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "127.0.0.1",
        "127.8.9.10",
        "169.254.10.10",
        "::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
        "ff02::1",
    ],
)
def test_unusable_addresses_are_skipped_with_a_reason(host: str) -> None:
    admitted = admit([srflx(host), srflx("203.0.113.9")], OURS)
    assert [c.host for c in admitted.kept] == ["203.0.113.9"]
    [(candidate, reason)] = admitted.skipped
    assert candidate.host == host and reason


def test_private_and_public_peers_are_kept() -> None:
    remote = [srflx("10.1.2.3"), srflx("192.168.1.30"), srflx("100.64.0.9"), srflx("8.8.4.4")]
    assert admit(remote, OURS).kept == tuple(remote)


def test_loopback_only_when_we_are_on_loopback_too() -> None:
    """The demo and the tests run every party on this machine: there loopback is a peer."""
    ours = [*OURS, Candidate(CandidateType.SERVER_REFLEXIVE, "127.0.0.1", 40001)]
    assert admit([srflx("127.0.0.1")], ours).kept == (srflx("127.0.0.1"),)


def test_link_local_only_on_our_own_link_local_network() -> None:
    ours = [*OURS, Candidate(CandidateType.HOST, "169.254.3.4", 5000)]
    assert admit([srflx("169.254.9.9")], ours).kept == (srflx("169.254.9.9"),)
