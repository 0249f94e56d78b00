"""
What the answers of behaviour discovery mean (RFC 5780 sections 4.3 and
4.4), and what plain answers from several servers show when no server
offers RFC 5780.  Answers in, a behaviour and the problems seen out; the
I/O that gets the answers is L{twisted_nat.nat.discovery}'s.

The server is never trusted blindly: OTHER-ADDRESS must differ from the
primary address in both address and port, and each CHANGE-REQUEST answer
must come from the address and port it asked for.  A server that fails
either is reported as a problem, and the behaviour it could not measure is
C{UNKNOWN}, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

import attrs

from twisted_nat.address import Address, format_address
from twisted_nat.errors import STUNErrorResponse, STUNTimeout
from twisted_nat.nat.behavior import FilteringBehavior, MappingBehavior, port_delta
from twisted_nat.stun.client import Response

Outcome = Response | Exception
"""What one test gave: the answer, or why there was none."""

T = TypeVar("T")

_NEW_PORT_PER_DESTINATION = frozenset(
    {MappingBehavior.ADDRESS_DEPENDENT, MappingBehavior.ADDRESS_AND_PORT_DEPENDENT}
)


@attrs.frozen
class Finding(Generic[T]):
    """What some answers show, and what went wrong with the server or the path."""

    value: T
    problems: tuple[str, ...] = ()


@attrs.frozen
class MappingFinding:
    """
    The mapping behaviour the tests show, with the allocation step of the
    three ports they saw when those look sequential (L{port_delta}).
    """

    mapping: MappingBehavior
    port_delta: int | None = None
    problems: tuple[str, ...] = ()

    @property
    def wants_second_look(self) -> bool:
        """
        Whether the NAT gives each destination a new port, but the tests'
        ports did not look sequential.  The tests open their flows a round
        trip or more apart, and on a busy NAT other flows may take hundreds
        of ports in between; flows opened at once show the step better.
        """
        return self.port_delta is None and self.mapping in _NEW_PORT_PER_DESTINATION


def usable_other_address(first: Response, server: Address) -> Finding[Address | None]:
    """The alternate address of C{server}'s first answer, if RFC 5780 can use it."""
    other = first.other_address
    name = format_address(server)
    origin = first.response_origin
    problems: list[str] = []
    if origin is not None and origin != first.source:
        problems.append(
            f"{name}: RESPONSE-ORIGIN {format_address(origin)} but the answer came from "
            f"{format_address(first.source)}"
        )
    if other is None:
        problems.append(f"{name} offers no OTHER-ADDRESS (not an RFC 5780 server)")
        return Finding(None, tuple(problems))
    if other[0] == server[0] or other[1] == server[1]:
        problems.append(
            f"{name}: OTHER-ADDRESS {format_address(other)} does not differ from the "
            "primary address in both address and port"
        )
        return Finding(None, tuple(problems))
    return Finding(other, tuple(problems))


def mapping_behavior(
    server: Address,
    other: Address,
    public: Address | None,
    to_alternate_address: Outcome,
    to_alternate: Outcome,
) -> MappingFinding:
    """
    RFC 5780 4.3: the same public endpoint towards the alternate address
    (test II) as towards the primary (C{public}, test I) means
    endpoint-independent; otherwise the same towards the alternate address
    and port (test III) as towards the alternate address means
    address-dependent, else both-dependent.
    """
    second = _mapped(to_alternate_address, (other[0], server[1]))
    if public is None or second.value is None:
        return MappingFinding(MappingBehavior.UNKNOWN, problems=second.problems)
    if second.value == public:
        return MappingFinding(MappingBehavior.ENDPOINT_INDEPENDENT, problems=second.problems)
    third = _mapped(to_alternate, other)
    problems = second.problems + third.problems
    if third.value is None:
        return MappingFinding(MappingBehavior.DESTINATION_DEPENDENT, problems=problems)
    delta = port_delta([public[1], second.value[1], third.value[1]])
    if third.value == second.value:
        return MappingFinding(MappingBehavior.ADDRESS_DEPENDENT, delta, problems)
    return MappingFinding(MappingBehavior.ADDRESS_AND_PORT_DEPENDENT, delta, problems)


def _mapped(outcome: Outcome, target: Address) -> Finding[Address | None]:
    """The public endpoint an answer from C{target} shows."""
    name = format_address(target)
    if isinstance(outcome, Exception):
        return Finding(None, (f"no answer from {name}: {outcome}",))
    if outcome.source != target:
        return Finding(None, (f"the answer for {name} came from {format_address(outcome.source)}",))
    if outcome.mapped_address is None:
        return Finding(None, (f"the answer from {name} has no mapped address",))
    return Finding(outcome.mapped_address)


def filtering_behavior(
    server: Address, other: Address, change_both: Outcome, change_port: Outcome
) -> Finding[FilteringBehavior]:
    """
    RFC 5780 4.4: an answer from the alternate address and port (test II)
    means endpoint-independent; failing that, an answer from the primary
    address on the alternate port (test III) means address-dependent; no
    answer to either, address-and-port-dependent.  An answer from anywhere
    else means the server ignored CHANGE-REQUEST, and the filtering stays
    unknown.
    """
    both = _changed_answer(change_both, other, server)
    if both.value is None:
        return Finding(FilteringBehavior.UNKNOWN, both.problems)
    if both.value:
        return Finding(FilteringBehavior.ENDPOINT_INDEPENDENT, both.problems)
    port = _changed_answer(change_port, (server[0], other[1]), server)
    problems = both.problems + port.problems
    if port.value is None:
        return Finding(FilteringBehavior.UNKNOWN, problems)
    if port.value:
        return Finding(FilteringBehavior.ADDRESS_DEPENDENT, problems)
    return Finding(FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT, problems)


def _changed_answer(outcome: Outcome, expected: Address, server: Address) -> Finding[bool | None]:
    """True: answered from C{expected}; False: no answer; None: the server misbehaved."""
    if isinstance(outcome, STUNTimeout):
        return Finding(False)
    if isinstance(outcome, STUNErrorResponse):
        return Finding(
            None,
            (
                f"{format_address(server)} refused CHANGE-REQUEST with {outcome.code} "
                f"({outcome.reason})",
            ),
        )
    if isinstance(outcome, Exception):
        return Finding(None, (f"CHANGE-REQUEST failed: {outcome}",))
    if outcome.source != expected:
        return Finding(
            None,
            (
                f"{format_address(server)} ignored CHANGE-REQUEST: asked for an answer from "
                f"{format_address(expected)}, got one from {format_address(outcome.source)}",
            ),
        )
    return Finding(True)


def mapping_across_servers(answers: Mapping[Address, Response]) -> Finding[MappingBehavior]:
    """
    Without an RFC 5780 server: the public endpoints several servers saw
    for one socket.  The same everywhere is endpoint-independent mapping
    (as far as these destinations show); different towards the same
    address on another port is address-and-port-dependent; different
    otherwise is destination-dependent.  Filtering cannot be seen this way.
    """
    seen = {s: r.mapped_address for s, r in answers.items() if r.mapped_address is not None}
    problems: list[str] = []
    if len(seen) < 2:
        verdict = MappingBehavior.UNKNOWN
        problems.append("one plain STUN server cannot show mapping or filtering")
    elif len(set(seen.values())) == 1:
        verdict = MappingBehavior.ENDPOINT_INDEPENDENT
    else:
        same_host_differs = any(
            a[0] == b[0] and seen[a] != seen[b] for a in seen for b in seen if a != b
        )
        verdict = (
            MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
            if same_host_differs
            else MappingBehavior.DESTINATION_DEPENDENT
        )
    problems.append("filtering is unknown without an RFC 5780 server")
    return Finding(verdict, tuple(problems))
