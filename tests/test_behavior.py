"""NAT behaviour discovery: the classification rule, and runs over loopback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests.netutil import free_udp_ports, rfc5780_group
from tests.support.coturn import CoturnMode, require_tool, running_coturn
from twisted_nat.errors import (
    ConfigurationError,
    DiscoveryError,
    STUNErrorResponse,
    STUNTimeout,
)
from twisted_nat.nat import (
    FilteringBehavior,
    MappingBehavior,
    NATBehavior,
    NATType,
    classify,
    detect_nat,
    filtering_behavior,
    mapping_across_servers,
    mapping_behavior,
    usable_other_address,
)
from twisted_nat.stun.attributes import OtherAddress, ResponseOrigin, XorMappedAddress
from twisted_nat.stun.client import Response
from twisted_nat.stun.message import request, response_to
from twisted_nat.stun.server import BindingServer, STUNServerGroup

reactor: Any = global_reactor
REPO = Path(__file__).resolve().parent.parent

EI = MappingBehavior.ENDPOINT_INDEPENDENT
F_EI = FilteringBehavior.ENDPOINT_INDEPENDENT
F_AD = FilteringBehavior.ADDRESS_DEPENDENT
F_APD = FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT
F_UNKNOWN = FilteringBehavior.UNKNOWN


@pytest.mark.parametrize(
    ("answered", "nat", "mapping", "filtering", "name"),
    [
        (False, None, MappingBehavior.UNKNOWN, F_UNKNOWN, NATType.UDP_BLOCKED),
        (True, False, EI, F_EI, NATType.OPEN_INTERNET),
        (True, False, EI, F_APD, NATType.FIREWALLED),
        (True, False, EI, F_AD, NATType.FIREWALLED),
        (True, False, MappingBehavior.UNKNOWN, F_UNKNOWN, NATType.NO_NAT),
        (True, True, EI, F_EI, NATType.FULL_CONE),
        (True, True, EI, F_AD, NATType.RESTRICTED_CONE),
        (True, True, EI, F_APD, NATType.PORT_RESTRICTED_CONE),
        (True, True, EI, F_UNKNOWN, NATType.CONE),
        (True, True, MappingBehavior.ADDRESS_DEPENDENT, F_APD, NATType.SYMMETRIC),
        (True, True, MappingBehavior.ADDRESS_AND_PORT_DEPENDENT, F_EI, NATType.SYMMETRIC),
        (True, True, MappingBehavior.DESTINATION_DEPENDENT, F_UNKNOWN, NATType.SYMMETRIC),
        (True, True, MappingBehavior.UNKNOWN, F_EI, NATType.UNKNOWN),
        (True, None, EI, F_EI, NATType.UNKNOWN),
    ],
)
def test_classic_names(answered, nat, mapping, filtering, name):
    assert classify(answered, nat, mapping, filtering) is name


def test_behavior_value_derives_presence_and_name():
    behavior = NATBehavior(
        local=("192.0.2.5", 4000),
        public=("203.0.113.9", 62000),
        mapping=EI,
        filtering=F_AD,
        hairpinning=False,
        server=("203.0.113.1", 3478),
        other_address=("203.0.113.2", 3479),
        rtt=0.0123,
        elapsed=0.25,
        problems=("something odd",),
    )
    assert behavior.nat_present is True
    assert behavior.nat_type is NATType.RESTRICTED_CONE
    as_json = behavior.as_json()
    assert as_json["nat_type"] == "restricted cone"
    assert as_json["public"] == "203.0.113.9:62000"
    assert as_json["rtt_ms"] == 12.3
    assert as_json["problems"] == ["something odd"]
    json.dumps(as_json)
    text = behavior.describe()
    assert "restricted cone" in text
    assert "hairpinning:  no" in text
    assert "problem:      something odd" in text


# --- what the answers mean (pure) ---

SERVER = ("203.0.113.1", 3478)
OTHER = ("203.0.113.2", 3479)
PUBLIC = ("198.51.100.1", 40000)


def answer(source, mapped=None, other=None, origin=None):
    attributes = [
        *([XorMappedAddress(*mapped)] if mapped else []),
        *([OtherAddress(*other)] if other else []),
        *([ResponseOrigin(*origin)] if origin else []),
    ]
    return Response(response_to(request(), attributes), source, source, 1, 0.01, 0.01)


def timeout(server):
    return STUNTimeout(server, 3, 0.5)


def test_other_address_is_checked_not_trusted():
    found = usable_other_address(answer(SERVER, PUBLIC, OTHER), SERVER)
    assert found.value == OTHER and found.problems == ()
    shared = usable_other_address(answer(SERVER, PUBLIC, (SERVER[0], 3479)), SERVER)
    assert shared.value is None
    assert shared.problems == (
        "203.0.113.1:3478: OTHER-ADDRESS 203.0.113.1:3479 does not differ from the primary "
        "address in both address and port",
    )
    plain = usable_other_address(answer(SERVER, PUBLIC, origin=("203.0.113.9", 1)), SERVER)
    assert plain.value is None
    assert plain.problems == (
        "203.0.113.1:3478: RESPONSE-ORIGIN 203.0.113.9:1 but the answer came from 203.0.113.1:3478",
        "203.0.113.1:3478 offers no OTHER-ADDRESS (not an RFC 5780 server)",
    )


def test_mapping_tests_are_read_with_the_port_step():
    alternate_address = (OTHER[0], SERVER[1])
    same = mapping_behavior(
        SERVER, OTHER, PUBLIC, answer(alternate_address, PUBLIC), answer(OTHER, PUBLIC)
    )
    assert (same.mapping, same.port_delta, same.problems) == (EI, None, ())
    assert not same.wants_second_look
    sequential = mapping_behavior(
        SERVER,
        OTHER,
        PUBLIC,
        answer(alternate_address, (PUBLIC[0], 40001)),
        answer(OTHER, (PUBLIC[0], 40002)),
    )
    assert sequential.mapping is MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
    assert sequential.port_delta == 1 and not sequential.wants_second_look
    misrouted = mapping_behavior(
        SERVER,
        OTHER,
        PUBLIC,
        answer(alternate_address, (PUBLIC[0], 41000)),
        answer(alternate_address, (PUBLIC[0], 41000)),
    )
    assert misrouted.mapping is MappingBehavior.DESTINATION_DEPENDENT
    assert misrouted.problems == ("the answer for 203.0.113.2:3479 came from 203.0.113.2:3478",)
    unknown = mapping_behavior(SERVER, OTHER, PUBLIC, answer(OTHER, PUBLIC), answer(OTHER, PUBLIC))
    assert unknown.mapping is MappingBehavior.UNKNOWN
    assert unknown.problems == ("the answer for 203.0.113.2:3478 came from 203.0.113.2:3479",)
    lost = mapping_behavior(
        SERVER,
        OTHER,
        PUBLIC,
        answer(alternate_address, (PUBLIC[0], 41000)),
        answer(OTHER, (PUBLIC[0], 41000)),
    )
    assert lost.mapping is MappingBehavior.ADDRESS_DEPENDENT
    assert lost.port_delta is None and lost.wants_second_look
    silent = mapping_behavior(
        SERVER, OTHER, PUBLIC, answer(alternate_address, (PUBLIC[0], 41000)), timeout(OTHER)
    )
    assert silent.mapping is MappingBehavior.DESTINATION_DEPENDENT
    assert silent.problems[0].startswith("no answer from 203.0.113.2:3479: ")
    assert not silent.wants_second_look


def test_filtering_tests_are_read_and_misbehaviour_reported():
    def read(both, port):
        return filtering_behavior(SERVER, OTHER, both, port)

    assert read(answer(OTHER), timeout(SERVER)).value is F_EI
    assert read(timeout(SERVER), answer((SERVER[0], OTHER[1]))).value is F_AD
    assert read(timeout(SERVER), timeout(SERVER)).value is F_APD
    ignored = read(answer(SERVER), timeout(SERVER))
    assert ignored.value is F_UNKNOWN
    assert ignored.problems == (
        "203.0.113.1:3478 ignored CHANGE-REQUEST: asked for an answer from 203.0.113.2:3479, "
        "got one from 203.0.113.1:3478",
    )
    refused = read(timeout(SERVER), STUNErrorResponse(SERVER, 420, "Unknown Attribute", None))
    assert refused.value is F_UNKNOWN
    assert refused.problems == (
        "203.0.113.1:3478 refused CHANGE-REQUEST with 420 (Unknown Attribute)",
    )


def test_plain_servers_show_mapping_but_never_filtering():
    one, two = ("203.0.113.1", 3478), ("203.0.113.1", 3479)
    same = mapping_across_servers({one: answer(one, PUBLIC), two: answer(two, PUBLIC)})
    assert same.value is EI
    assert same.problems == ("filtering is unknown without an RFC 5780 server",)
    differ = mapping_across_servers(
        {one: answer(one, PUBLIC), two: answer(two, (PUBLIC[0], 40001))}
    )
    assert differ.value is MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
    alone = mapping_across_servers({one: answer(one, PUBLIC)})
    assert alone.value is MappingBehavior.UNKNOWN
    assert alone.problems == (
        "one plain STUN server cannot show mapping or filtering",
        "filtering is unknown without an RFC 5780 server",
    )


@pytest.fixture
def rfc5780_server():
    with rfc5780_group(reactor) as group:
        yield group


@pytest_twisted.ensureDeferred
async def test_loopback_is_open_internet(rfc5780_server):
    behavior = await detect_nat(reactor, [rfc5780_server.primary])
    assert behavior.nat_type is NATType.OPEN_INTERNET, behavior.describe()
    assert behavior.nat_present is False
    assert behavior.public == behavior.local
    assert behavior.public is not None and behavior.public[0] == "127.0.0.1"
    assert behavior.mapping is EI
    assert behavior.filtering is F_EI
    assert behavior.hairpinning is True
    assert behavior.other_address == rfc5780_server.alternate
    assert behavior.problems == ()


@pytest_twisted.ensureDeferred
async def test_against_coturn_rfc5780():
    require_tool("turnserver")
    with running_coturn(CoturnMode.RFC5780) as coturn:
        behavior = await detect_nat(reactor, [coturn.address])
    assert behavior.nat_type is NATType.OPEN_INTERNET, behavior.describe()
    assert behavior.other_address == coturn.alternate_address


def listen_plain(port: int = 0) -> tuple[Any, tuple[str, int]]:
    listening = reactor.listenUDP(port, BindingServer(), interface="127.0.0.1")
    return listening, ("127.0.0.1", listening.getHost().port)


@pytest_twisted.ensureDeferred
async def test_plain_server_gives_what_it_can_and_says_so():
    listening, address = listen_plain()
    try:
        behavior = await detect_nat(reactor, [address])
    finally:
        listening.stopListening()
    assert behavior.nat_present is False
    assert behavior.mapping is MappingBehavior.UNKNOWN
    assert behavior.filtering is F_UNKNOWN
    assert behavior.nat_type is NATType.NO_NAT
    assert any("no OTHER-ADDRESS" in p for p in behavior.problems)
    assert any("filtering is unknown" in p for p in behavior.problems)


@pytest_twisted.ensureDeferred
async def test_several_plain_servers_show_mapping_consistency():
    one, first = listen_plain()
    two, second = listen_plain()
    try:
        behavior = await detect_nat(reactor, [first, second])
    finally:
        one.stopListening()
        two.stopListening()
    assert behavior.mapping is EI
    assert behavior.filtering is F_UNKNOWN


class IgnoresChangeRequest(STUNServerGroup):
    """A broken RFC 5780 server: answers every CHANGE-REQUEST from the primary socket."""

    def member(self, address_index: int, port_index: int) -> BindingServer:
        return super().member(0, 0)


class SameOtherAddress(STUNServerGroup):
    """A broken RFC 5780 server: OTHER-ADDRESS shares the primary's address."""

    def other_address(self, server: BindingServer) -> tuple[str, int]:
        return (self.hosts[0], self.ports[1])


@pytest_twisted.ensureDeferred
async def test_server_ignoring_change_request_is_reported_not_believed():
    """pystun3 called every NATed host "full cone" behind such a server; we must not."""
    with rfc5780_group(reactor, IgnoresChangeRequest) as group:
        behavior = await detect_nat(reactor, [group.primary])
    assert behavior.filtering is F_UNKNOWN
    assert behavior.nat_type is NATType.NO_NAT
    assert any("ignored CHANGE-REQUEST" in p for p in behavior.problems), behavior.problems


@pytest_twisted.ensureDeferred
async def test_other_address_not_differing_is_reported():
    with rfc5780_group(reactor, SameOtherAddress) as group:
        behavior = await detect_nat(reactor, [group.primary])
    assert behavior.filtering is F_UNKNOWN
    assert any("does not differ" in p for p in behavior.problems), behavior.problems


@pytest_twisted.ensureDeferred
async def test_no_answer_is_udp_blocked():
    [dead] = free_udp_ports(1, "127.0.0.1")
    behavior = await detect_nat(reactor, [("127.0.0.1", dead)], timeout=0.4)
    assert behavior.nat_type is NATType.UDP_BLOCKED
    assert behavior.public is None


@pytest_twisted.ensureDeferred
async def test_unresolvable_servers_fail_with_discovery_error():
    from twisted.internet import defer

    from twisted_nat.nat import BehaviorDiscovery

    # No name lookups leave this machine in tests: the resolver is replaced.
    discovery = BehaviorDiscovery(
        reactor, [("stun.example", 3478)], resolver=lambda name: defer.fail(OSError("no name"))
    )
    with pytest.raises(DiscoveryError):
        await discovery.run()


def test_no_servers_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        detect_nat(reactor, [])


@pytest_twisted.ensureDeferred
async def test_cli_detect_json(rfc5780_server):
    """The command line, in a child process, against our server in this one."""
    host, port = rfc5780_server.primary
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-m", "twisted_nat.cli", "detect", "--json", "--stun", f"{host}:{port}"],
        path=str(REPO),
        reactor=reactor,
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["nat_type"] == "open internet"
    assert answer["other_address"] == f"127.0.0.2:{rfc5780_server.alternate[1]}"
