"""
The hairpinning test: a Binding request sent to our own public endpoint,
which comes back only if the NAT loops traffic between its own mappings.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol

from twisted_nat.address import Address
from twisted_nat.errors import TwistedNATError
from twisted_nat.stun.message import decode, encode, request


class HairpinListener(DatagramProtocol):
    """
    Receives Binding requests on the mapping socket: one of ours coming
    back through the NAT's public address proves hairpinning.
    """

    noisy = False

    def __init__(self) -> None:
        self._waiting: dict[bytes, Deferred[bool]] = {}

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        try:
            message = decode(datagram)
        except TwistedNATError:
            return
        waiting = self._waiting.pop(message.transaction_id, None)
        if waiting is not None:
            waiting.callback(True)

    def probe(
        self, clock: IReactorTime, target: Address, window: float, sends: int = 7
    ) -> Deferred[bool]:
        """Send a Binding request to C{target} until it comes back or C{window} passes."""
        assert self.transport is not None
        transport = self.transport
        data = encode(request())
        tid = data[8:20]
        result: Deferred[bool] = Deferred()
        self._waiting[tid] = result
        step = window / (sends + 1)
        calls = [clock.callLater(i * step, transport.write, data, target) for i in range(sends)]

        def give_up() -> None:
            if self._waiting.pop(tid, None) is not None:
                result.callback(False)

        calls.append(clock.callLater(window, give_up))

        def cancel_timers(outcome: bool) -> bool:
            for call in calls:
                if call.active():
                    call.cancel()
            return outcome

        return result.addBoth(cancel_timers)
