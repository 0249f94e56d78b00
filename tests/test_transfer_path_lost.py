"""
A receiver whose sender's path is lost mid-transfer (its streams fail
with L{PathLost}) ends with one line that says so, keeping the part file
for the next run to resume.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.test_transfer_sessions import (
    End,
    Wire,
    in_thread,
    make_files,
    reporter,
    result,
    run,
)
from twisted_nat.errors import PathLost
from twisted_nat.transfer import disk
from twisted_nat.transfer.receiver import Receiver
from twisted_nat.transfer.sender import Sender
from twisted_nat.transfer.sources import collect


class DyingWire(Wire):
    """
    A L{Wire} whose path is lost for good once C{budget} bytes have
    reached the receiver: every stream of the receiver's fails with
    L{PathLost}, as QUIC's do when the sender's process dies.
    """

    def __init__(self, clock: Clock, receiver: Receiver, budget: int) -> None:
        super().__init__(clock, receiver)
        self.budget = budget
        self.theirs: list[IProtocol] = []
        self.lost = False

    def open_stream(self, protocol: IProtocol) -> Deferred[IProtocol]:
        opened = super().open_stream(protocol)
        end = getattr(protocol, "transport", None)
        assert isinstance(end, End) and end.other is not None
        theirs = end.other.protocol
        self.theirs.append(theirs)
        deliver = theirs.dataReceived

        def received(data: bytes) -> None:
            if self.lost:
                return
            if self.budget < len(data):
                self.die()
                return
            self.budget -= len(data)
            deliver(data)

        theirs.dataReceived = received  # type: ignore[method-assign]
        return opened

    def die(self) -> None:
        self.lost = True
        lost = Failure(PathLost("the path to alice was lost and not found again in 20 s"))
        for protocol in self.theirs:
            protocol.connectionLost(lost)


def test_a_sender_whose_path_is_lost_ends_the_receiver_with_one_line_and_a_part_file(
    tmp_path: Path,
) -> None:
    clock = Clock()
    make_files(tmp_path / "src")
    output = tmp_path / "out"
    output.mkdir()
    receiver = Receiver(str(output), False, lambda *_: succeed(True), in_thread, reporter(clock))
    sources = collect([str(tmp_path / "src" / "d")])
    hashes = [disk.hash_file(s.path).hexdigest() for s in sources]
    wire = DyingWire(clock, receiver, 300_000)
    Sender(clock, sources, hashes, wire.open_stream, in_thread, reporter(clock)).run()
    run(clock, receiver.done)
    assert wire.lost
    outcome = result(receiver.done)
    assert outcome.error is not None
    assert outcome.error.startswith(
        "the sender went away: the path to alice was lost and not found again in 20 s ("
    ), outcome.error
    assert "run the same command again to resume" in outcome.error
    assert "\n" not in outcome.error
    part = output / "d" / ".big.tn-part"
    assert part.stat().st_size > 0 and not (output / "d" / "big").exists()
