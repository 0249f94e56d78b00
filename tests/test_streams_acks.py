"""
Acknowledgements (L{twisted_nat.streams._aioquic.MutualQuicConnection}):
a packet is acknowledged in the pass that read it, not a timer later, and
each side tells the other so (C{max_ack_delay}), which shortens the
other's probe timeout after a tail loss.  Two connections in memory, no
clock and no socket: datagrams are handed across by hand.
"""

from __future__ import annotations

from aioquic import tls
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicDeliveryState

from twisted_nat.streams import _aioquic
from twisted_nat.streams.settings import quic_configuration
from twisted_nat.trust.keys import Identity

PEER = ("peer", 0)


def _exchange(sender: QuicConnection, receiver: QuicConnection, now: float) -> int:
    datagrams = sender.datagrams_to_send(now=now)
    for datagram, _ in datagrams:
        receiver.receive_datagram(datagram, PEER, now=now)
    return len(datagrams)


def handshaken() -> tuple[QuicConnection, QuicConnection]:
    client = _aioquic.MutualQuicConnection(
        configuration=quic_configuration(Identity.generate(), is_client=True)
    )
    server = _aioquic.MutualQuicConnection(
        configuration=quic_configuration(Identity.generate(), is_client=False),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    client.connect(PEER, now=0.0)
    for _ in range(10):
        if not _exchange(client, server, 0.0) + _exchange(server, client, 0.0):
            break
    assert client._handshake_complete and server._handshake_complete
    return client, server


def test_each_side_announces_and_learns_the_short_ack_delay() -> None:
    client, server = handshaken()
    expected = _aioquic.MAX_ACK_DELAY / 1000
    assert client._loss.max_ack_delay == expected
    assert server._loss.max_ack_delay == expected


def test_a_packet_is_acknowledged_in_the_pass_that_read_it() -> None:
    client, server = handshaken()
    # What the handshake left to say (acknowledgements, connection ids).
    for now in (0.1, 0.2, 0.3):
        _exchange(client, server, now)
        _exchange(server, client, now)
    now = 1.0
    stream = client.get_next_available_stream_id()
    client.send_stream_data(stream, b"x" * 1000)
    assert _exchange(client, server, now) == 1
    *_, packet = client._spaces[tls.Epoch.ONE_RTT].sent_packets.values()
    acked: list[object] = []
    packet.delivery_handlers.append((acked.append, ()))
    # The same moment: no timer has run, and the ACK is there already.
    assert _exchange(server, client, now) == 1
    assert acked == [QuicDeliveryState.ACKED]
