"""
Interoperability on loopback with STUN implementations nobody here wrote.

Our server against Debian's C{stun} client, pystun3 and aioice; our client
against coturn.  The tools skip with a reason when missing, and fail under
C{CI=true}, where they must be installed.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests.netutil import free_udp_port, rfc5780_group
from tests.support.coturn import CoturnMode, require_tool, running_coturn
from twisted_nat.stun.attributes import ChangeRequest, OtherAddress, ResponseOrigin
from twisted_nat.stun.client import RetransmissionSchedule, STUNClient
from twisted_nat.stun.message import request
from twisted_nat.stun.server import STUNServerGroup

pytestmark = pytest.mark.interop


reactor: Any = global_reactor


@pytest.fixture
def our_rfc5780_server() -> Iterator[STUNServerGroup]:
    with rfc5780_group(reactor) as group:
        yield group


async def run_process(args: list[str], timeout: float) -> tuple[int, str, str]:
    """
    Run a peer as a child process without blocking the reactor that serves
    it; coreutils' C{timeout} kills it if it hangs (pystun3 loops forever on
    servers it misunderstands).
    """
    killer = shutil.which("timeout")
    assert killer is not None, "coreutils timeout is missing"
    out, err, code = await getProcessOutputAndValue(
        killer, ["-k", "2", str(timeout), *args], reactor=reactor
    )
    return code, out.decode(errors="replace"), err.decode(errors="replace")


@pytest_twisted.ensureDeferred
async def test_debian_stun_client_sees_open_internet(our_rfc5780_server):
    """
    Debian's C{stun} (RFC 3489) runs its tests I, II and III against our
    server (CHANGE-REQUEST for address, port, both) and classifies loopback
    as "Open".  Its exit status encodes the verdict: low nibble 0 or 1 is
    open internet (1 adds "preserves ports").
    """
    stun = require_tool("stun")
    host, port = our_rfc5780_server.primary
    source = free_udp_port("127.0.0.1")
    code, out, err = await run_process(
        [stun, f"{host}:{port}", "-v", "-p", str(source), "-i", "127.0.0.1"], timeout=20
    )
    assert "Primary: Open" in out, out + err
    assert code & 0x0E == 0, (code, out)
    assert our_rfc5780_server.stats.answered >= 3
    assert our_rfc5780_server.stats.bad_request == 0


PYSTUN3 = """
import json, sys, time, stun
start = time.monotonic()
nat, ip, port = stun.get_ip_info(
    source_ip="127.0.0.1", source_port=int(sys.argv[1]),
    stun_host="127.0.0.1", stun_port=int(sys.argv[2]))
print(json.dumps({"nat": nat, "ip": ip, "port": port, "seconds": time.monotonic() - start}))
"""


@pytest_twisted.ensureDeferred
async def test_pystun3_sees_open_internet(our_rfc5780_server):
    """pystun3 (RFC 3489 tests, legacy attributes) calls loopback open internet."""
    pytest.importorskip("stun")
    host, port = our_rfc5780_server.primary
    source = free_udp_port("127.0.0.1")
    code, out, err = await run_process(
        [sys.executable, "-c", PYSTUN3, str(source), str(port)], timeout=30
    )
    assert code == 0, err
    verdict = json.loads(out)
    assert verdict["nat"] == "Open Internet"
    assert (verdict["ip"], verdict["port"]) == ("127.0.0.1", source)


@pytest_twisted.ensureDeferred
async def test_aioice_client_gets_the_right_mapped_address(our_rfc5780_server):
    """aioice's STUN transaction code, run in a child process on asyncio."""
    pytest.importorskip("aioice")
    host, port = our_rfc5780_server.primary
    code, out, err = await run_process(
        [sys.executable, "-c", AIOICE_CLIENT, host, str(port)], timeout=30
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["mapped"] == ["127.0.0.1", answer["local"][1]]
    assert answer["other"] == ["127.0.0.2", our_rfc5780_server.alternate[1]]


AIOICE_CLIENT = """
import asyncio, json, sys
from aioice import stun

class Client(asyncio.DatagramProtocol):
    def __init__(self):
        self.transactions = {}
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        message = stun.parse_message(data)
        self.transactions[message.transaction_id].response_received(message, addr)
    def send_stun(self, message, addr):
        self.transport.sendto(bytes(message), addr)

async def main(host, port):
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    transaction = stun.Transaction(message, (host, port), client)
    client.transactions[message.transaction_id] = transaction
    response, _ = await transaction.run()
    print(json.dumps({
        "mapped": response.attributes["XOR-MAPPED-ADDRESS"],
        "other": response.attributes.get("OTHER-ADDRESS"),
        "local": transport.get_extra_info("sockname"),
    }))
    transport.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@pytest.fixture
def client() -> Iterator[tuple[STUNClient, tuple[str, int]]]:
    stun = STUNClient(timeout=5.0, schedule=RetransmissionSchedule(rto=0.1))
    port = reactor.listenUDP(0, stun, interface="127.0.0.1")
    yield stun, ("127.0.0.1", port.getHost().port)
    port.stopListening()


@pytest.fixture
def coturn_plain():
    require_tool("turnserver")
    with running_coturn(CoturnMode.STUN) as instance:
        yield instance


@pytest.fixture
def coturn_5780():
    require_tool("turnserver")
    with running_coturn(CoturnMode.RFC5780) as instance:
        yield instance


@pytest_twisted.ensureDeferred
async def test_our_client_against_coturn(coturn_plain, client):
    stun, local = client
    result = await stun.discover([("127.0.0.1", 9), coturn_plain.address])
    assert result.mapped == local
    assert result.server == coturn_plain.address


@pytest_twisted.ensureDeferred
async def test_our_client_change_request_against_coturn_rfc5780(coturn_5780, client):
    stun, local = client
    response = await stun.request(request(), coturn_5780.address)
    assert response.mapped_address == local
    assert response.message.get(OtherAddress).address == coturn_5780.alternate_address
    changed = await stun.request(
        request(attributes=[ChangeRequest(True, True)]), coturn_5780.address, match_source=False
    )
    assert changed.source == coturn_5780.alternate_address
    assert changed.message.get(ResponseOrigin).address == coturn_5780.alternate_address
