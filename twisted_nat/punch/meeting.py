"""
Meeting runs: a direct path between two NATs that both map every
destination to a fresh public port, handed out in sequence (symmetric,
sequential allocation).

Each side's punch must leave from the very port the other side's punch
goes to, and each NAT admits only the endpoint its own mapping sent to.
Port prediction (L{twisted_nat.nat.prediction}) gets that right only when
nothing else opens a port on either NAT between the prediction and the
punch.  A run takes the shift out of the question: each side names a
I{meeting port} C{meet = latest + L * delta} (C{latest} the port its NAT
handed out last, C{delta} the NAT's step, C{L} the run's length) and, once
it knows the peer's, opens C{L} extra sockets and sends from each, in
order, to the peer's meeting port.  Its NAT hands the run consecutive
ports from wherever its counter stands, so any shift of up to C{L - 1}
ports since the prediction still puts one socket of the run exactly on
C{meet}, and the two mappings meet.

The answering side runs at once, the offering side when the answer
arrives, a rendezvous round trip after its prediction: C{L} must cover the
flows other hosts open on the offerer's NAT in that time.  Two NATs with
random ports, or one random and one sequential, cannot meet this way.
"""

from __future__ import annotations

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
