"""
Meeting runs: a direct path between two NATs that both map every
destination to a fresh public port, handed out in sequence (symmetric,
sequential allocation).

Each side's punch must leave from the very port the other side's punch
goes to, and each NAT admits only the endpoint its own mapping sent to.
Port prediction (L{twisted_nat.service}) offers the ports the shared
socket's punch will get, in the order it will get them, so that both
punches meet when nothing else opens a port on either NAT in between.  A
busy NAT breaks that: one flow of another host between the prediction
and the punch shifts every later port of that side, and no offer can
say by how much.

A run takes the shift out of the question.  Each side, knowing from its
prediction the port C{latest} its NAT handed out last, names a I{meeting
port} C{meet = latest + L * delta} (C{delta} the NAT's step, C{L} the
run's length) and, once it knows the peer's, opens C{L} extra sockets
and sends from each, in order, to the peer's meeting port.  Its NAT
hands the run consecutive ports from wherever its counter stands then:
any shift of up to C{L - 1} ports since the prediction (and any number of
ports taken inside the run) still puts one socket of the run exactly on
C{meet}.  That socket sends to the peer's meeting port; the peer's socket
on its meeting port sends to ours: the two mappings meet, and from then
on it is an ordinary punch on that pair of sockets.

So the answering side runs at once, before its answer leaves, and the
offering side when the answer arrives, a round trip after its prediction:
the offerer's shift is what C{L} must cover.  Each socket sends
L{twisted_nat.birthday.SPRAY_PUNCHES} PUNCHes, a punch interval (200 ms)
apart: the answerer's first arrive before the offerer's mapping exists
and are dropped, the offerer's first pass, and so does the answerer's
second.

The budget, with the default C{L} = 64: 64 sockets (file descriptors)
on each side for the punch's duration, 2 x 64 PUNCHes of 112 bytes
(18 kB with the headers) from each side, 64 ports of each NAT's pool
until they expire.  It fails (and the pair takes the relay, if there is
one) when more than C{L - 1} flows opened on the offerer's NAT during one
rendezvous round trip, or when another flow takes the meeting port itself
in the middle of the run.  Two NATs with random ports, or one random and
one sequential, cannot meet this way: a random side's run has no port to
aim at.
"""

from __future__ import annotations

from twisted_nat.rendezvous.values import NATHint

DEFAULT_SOCKETS = 64
"""Extra sockets in each side's run (C{L}): the shift the meeting survives, plus one."""


def meeting_port(latest: int, delta: int, sockets: int) -> int | None:
    """
    The port the last socket of a run of C{sockets} gets when nothing
    else opens a port first, after the NAT handed out C{latest}; None when
    that is no port, or there is no run.
    """
    if sockets <= 0 or delta == 0:
        return None
    port = latest + sockets * delta
    return port if 0 < port < 65536 else None


def meets(ours: NATHint | None, theirs: NATHint | None) -> bool:
    """Whether both peers run (each named a meeting port), from the hints they sent."""
    return (
        ours is not None
        and theirs is not None
        and ours.meet is not None
        and theirs.meet is not None
        and ours.sequential
        and theirs.sequential
    )
