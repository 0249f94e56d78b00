"""
A gateway's announcements of a restart: the bytes taken (PCP ANNOUNCE,
NAT-PMP's address announcement) and refused, the listener taking them from
the gateway alone, and the mapper asking the gateway again soon after, at
most once per spacing.
"""

from __future__ import annotations

import random
import struct

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from tests.test_portmap_mapper import mapper
from twisted_nat.errors import PortMappingError
from twisted_nat.limits import DropLog
from twisted_nat.portmap.announce import (
    ANNOUNCE_SPACING,
    ANNOUNCE_SPREAD,
    AnnouncementListener,
    announced_epoch,
)
from twisted_nat.portmap.values import Mode, Protocol

GATEWAY = "192.168.1.1"

MINIUPNPD_ANNOUNCE = bytes.fromhex("0280" + "00" * 22)
"""What Debian's miniupnpd multicast on starting, on the lab: epoch 0."""


def pcp_announce(epoch: int, result: int = 0, opcode: int = 0x80, size: int = 24) -> bytes:
    return struct.pack("!BBBBII", 2, opcode, 0, result, 0, epoch) + b"\0" * (size - 12)


def natpmp_address(epoch: int, result: int = 0, opcode: int = 128) -> bytes:
    return struct.pack("!BBHI4s", 0, opcode, result, epoch, bytes([203, 0, 113, 5]))


@pytest.mark.parametrize(
    ("data", "epoch"),
    [
        (MINIUPNPD_ANNOUNCE, 0),
        (pcp_announce(86400), 86400),
        (pcp_announce(7, size=28), 7),
        (natpmp_address(1234), 1234),
    ],
    ids=["miniupnpd", "pcp", "pcp-with-padding", "natpmp"],
)
def test_an_announcement_gives_the_gateways_epoch(data: bytes, epoch: int) -> None:
    assert announced_epoch(data) == epoch


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x80",
        pcp_announce(1, result=8),
        pcp_announce(1, opcode=0x00),  # a request, not a response
        pcp_announce(1, opcode=0x81),  # a MAP response
        pcp_announce(1, size=26),
        pcp_announce(1, size=1104),
        natpmp_address(1, result=3),
        natpmp_address(1, opcode=0),
        natpmp_address(1) + b"\0",
        struct.pack("!BBHHHII", 0, 129, 0, 1, 4567, 40000, 7200),  # a NAT-PMP mapping
        b"\x01" + MINIUPNPD_ANNOUNCE[1:],
    ],
    ids=[
        "empty",
        "short",
        "pcp-failure",
        "pcp-request",
        "pcp-map",
        "pcp-odd-size",
        "pcp-too-long",
        "natpmp-failure",
        "natpmp-request",
        "natpmp-long",
        "natpmp-map",
        "version-1",
    ],
)
def test_anything_else_is_no_announcement(data: bytes) -> None:
    assert announced_epoch(data) is None


def test_no_bytes_raise() -> None:
    rng = random.Random(6887)
    for _ in range(5000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.choice([12, 24, 28, rng.randrange(64)])))
        epoch = announced_epoch(data)
        assert epoch is None or 0 <= epoch < 2**32


def listener() -> tuple[AnnouncementListener, list[int], DropLog]:
    heard: list[int] = []
    drops = DropLog(Logger(), Clock())
    return AnnouncementListener(lambda: GATEWAY, heard.append, drops), heard, drops


def test_the_listener_takes_the_gateways_announcements() -> None:
    taker, heard, drops = listener()
    taker.datagramReceived(pcp_announce(3), (GATEWAY, 5351))
    taker.datagramReceived(natpmp_address(4), (GATEWAY, 5351))
    assert heard == [3, 4] and not drops.counts


def test_the_listener_drops_what_others_send_and_what_is_malformed() -> None:
    taker, heard, drops = listener()
    taker.datagramReceived(pcp_announce(3), ("192.168.1.66", 5351))
    taker.datagramReceived(pcp_announce(3), (GATEWAY, 40000))
    taker.datagramReceived(b"\x02\x80garbage", (GATEWAY, 5351))
    assert heard == []
    assert drops.counts == {"announcement not from the gateway": 2, "malformed announcement": 1}


def test_an_announcement_brings_the_renewal_forward() -> None:
    made, clock, clients, _ = mapper(Mode.PCP)
    client = clients[Protocol.PCP]
    client.answers = [lambda: client.grant(lifetime=7200), lambda: client.grant(restarted=True)]
    made.start()
    clock.advance(0)
    first = made.mapping
    assert first is not None and client.maps == [None]
    clock.advance(100)
    made.announced()
    assert made.announcements == 1
    clock.advance(ANNOUNCE_SPREAD)
    assert client.maps == [None, first], "renewed within the spread, not at half the lease"
    assert made.restores == 1
    assert made.status()["announced"] == 1


def test_announcements_within_the_spacing_ask_once() -> None:
    made, clock, clients, _ = mapper(Mode.PCP)
    client = clients[Protocol.PCP]
    client.answers = [lambda: client.grant(lifetime=7200)]
    client.answers += [client.grant] * 10
    made.start()
    clock.advance(0)
    for _ in range(20):
        made.announced()
        clock.advance(ANNOUNCE_SPACING / 40)
    clock.advance(ANNOUNCE_SPREAD)
    assert len(client.maps) == 2 and made.announcements == 1
    clock.advance(ANNOUNCE_SPACING)
    made.announced()
    clock.advance(ANNOUNCE_SPREAD)
    assert len(client.maps) == 3 and made.announcements == 2


def test_an_announcement_while_no_gateway_maps_searches_again() -> None:
    made, clock, clients, _ = mapper(Mode.PCP)
    client = clients[Protocol.PCP]
    client.answers = [PortMappingError("no answer"), client.grant]
    made.start()
    clock.advance(0)
    assert made.mapping is None and len(client.maps) == 1
    made.announced()
    clock.advance(ANNOUNCE_SPREAD)
    assert made.mapping is not None and len(client.maps) == 2, "not an hour later"


def test_a_stopped_mapper_ignores_announcements() -> None:
    made, clock, clients, _ = mapper(Mode.PCP)
    made.stop()
    made.announced()
    clock.advance(ANNOUNCE_SPREAD)
    assert clients[Protocol.PCP].maps == [] and made.announcements == 0
