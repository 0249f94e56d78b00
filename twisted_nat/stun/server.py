"""
The STUN server: Binding responses on one socket, or RFC 5780 behaviour
discovery on four.

A plain server answers on the socket a request arrived on.  Given a second
address and a second port, a L{STUNServerGroup} listens on all four
combinations; a request's CHANGE-REQUEST then picks the socket the answer
leaves from, and every answer names the socket it left from
(RESPONSE-ORIGIN) and the one that differs in both address and port
(OTHER-ADDRESS).  RFC 3489 clients, which send no magic cookie, get the
attributes they know: MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS.

Every datagram is hostile until decoded: garbage gets no answer at all, a
malformed request gets 400 and one with an unknown comprehension-required
attribute 420, and nothing raised while parsing reaches the reactor.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator

import attrs
from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat.address import Address
from twisted_nat.errors import STUNDecodeError
from twisted_nat.stun.attributes.address import (
    ChangedAddress,
    MappedAddress,
    OtherAddress,
    ResponseOrigin,
    SourceAddress,
    XorMappedAddress,
    pack_xor_address,
)
from twisted_nat.stun.attributes.base import MAGIC_COOKIE_BYTES, Attribute
from twisted_nat.stun.attributes.error import UnknownAttributes
from twisted_nat.stun.attributes.integrity import Fingerprint
from twisted_nat.stun.attributes.rfc5780 import ChangeRequest, ResponsePort
from twisted_nat.stun.attributes.text import Software
from twisted_nat.stun.message.codec import decode, encode
from twisted_nat.stun.message.value import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    Message,
    MessageClass,
    Method,
    error_response,
    response_to,
    split_message_type,
)
from twisted_nat.stun.sourcelimit import SourceLimit

SOFTWARE = "twisted-nat"
_HEAD = struct.Struct("!HH4s12s")
_ATTR_HEAD = struct.Struct("!HH")
_FINGERPRINT_HEAD = struct.Struct("!HHI")
_U32 = struct.Struct("!I")


@attrs.define
class ServerStats:
    """What the server did with each datagram."""

    answered: int = 0
    bad_request: int = 0
    unknown_attribute: int = 0
    dropped_garbage: int = 0
    dropped_not_request: int = 0
    send_errors: int = 0
    rate_limited: int = 0


class BindingServer(DatagramProtocol):
    """
    Answers Binding requests arriving on one socket.

    Alone, it is a plain STUN server.  As a member of a L{STUNServerGroup} it
    knows its place (C{address_index}, C{port_index}) among the four sockets
    and asks the group for the socket a CHANGE-REQUEST wants.  Given a
    L{SourceLimit} (a group's members share the group's), datagrams from a
    source IP over its rate are dropped before they are read.
    """

    log = Logger()
    noisy = False  # the service logs one line per socket itself

    def __init__(
        self,
        software: str | None = SOFTWARE,
        group: STUNServerGroup | None = None,
        address_index: int = 0,
        port_index: int = 0,
        limit: SourceLimit | None = None,
    ) -> None:
        self.software = software
        self.group = group
        self.limit = group.limit if group is not None else limit
        self.address_index = address_index
        self.port_index = port_index
        self.stats = group.stats if group is not None else ServerStats()
        self.local: Address = ("0.0.0.0", 0)
        self._software_attributes: tuple[Attribute, ...] = (Software(software),) if software else ()
        # RFC 3489 required text attributes to be a multiple of four bytes
        # long, and its clients (pystun3) do not skip padding: pad the text.
        legacy = software + " " * (-len(software.encode("utf-8")) % 4) if software else ""
        self._legacy_software: tuple[Attribute, ...] = (Software(legacy),) if legacy else ()
        self._plain_tail = b""
        self._sendto: Callable[[bytes, Address], object] | None = None

    def startProtocol(self) -> None:
        assert self.transport is not None
        host = self.transport.getHost()
        self.local = (host.host, host.port)
        self._plain_tail = self._encoded_tail()
        # A real UDP port's socket: answers go to addresses that recvfrom
        # just produced, so Port.write's per-datagram address validation is
        # skipped.  Test doubles and simulated networks have no socket and
        # use write().
        raw = getattr(self.transport, "socket", None)
        self._sendto = getattr(raw, "sendto", None)

    def _encoded_tail(self) -> bytes:
        """
        The attributes every plain answer from this socket carries after
        XOR-MAPPED-ADDRESS (RESPONSE-ORIGIN, OTHER-ADDRESS, SOFTWARE): the
        same bytes for every client, so they are encoded once, by the codec.
        """
        tail: list[Attribute] = []
        if self.group is not None:
            tail.append(ResponseOrigin(*self.local))
            tail.append(OtherAddress(*self.group.other_address(self)))
        tail.extend(self._software_attributes)
        return encode(Message(Method.BINDING, MessageClass.SUCCESS, bytes(12), tuple(tail)))[20:]

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        if self.limit is not None and not self.limit.allow(addr[0]):
            self.stats.rate_limited += 1
            return
        try:
            reply = self.handle(datagram, addr)
        except Exception:
            # The codec raises only STUNDecodeError, which handle() catches;
            # anything else is our bug, but still must not kill the reactor.
            self.log.failure("unexpected error answering {addr}", addr=addr)
            return
        if reply is not None:
            data, destination, sender = reply
            sender.send(data, destination)

    def send(self, data: bytes, destination: Address) -> None:
        if self._sendto is None:
            assert self.transport is not None
            self.transport.write(data, destination)
            return
        try:
            self._sendto(data, destination)
        except OSError as e:
            # A full socket buffer or an ICMP error from an earlier answer:
            # the client will retransmit, which is what UDP is for.
            self.stats.send_errors += 1
            self.log.debug("cannot answer {addr}: {error}", addr=destination, error=e)

    def handle(self, datagram: bytes, addr: Address) -> tuple[bytes, Address, BindingServer] | None:
        """
        Decide the answer to one datagram: C{(bytes, destination, socket)},
        or None for silence.  Pure apart from the counters.
        """
        plain = self.plain_binding_answer(datagram, addr)
        if plain is not None:
            self.stats.answered += 1
            return plain, addr, self
        return self.handle_any(datagram, addr)

    def plain_binding_answer(self, datagram: bytes, addr: Address) -> bytes | None:
        """
        The answer to the request nearly every client sends, a Binding
        request over IPv4 carrying at most SOFTWARE and FINGERPRINT, built
        without decoding it into objects; None for anything else, which
        L{handle_any} then treats in full.  Both produce the same bytes (a
        property test holds them to it); this one skips building objects,
        for the server's throughput.
        """
        size = len(datagram)
        if (
            size < HEADER_LENGTH
            or datagram[:2] != b"\x00\x01"
            or datagram[4:8] != MAGIC_COOKIE_BYTES
            or (datagram[2] << 8 | datagram[3]) != size - HEADER_LENGTH
            or size & 3
            or ":" in addr[0]
            or self.transport is None
        ):
            return None
        offset = HEADER_LENGTH
        while offset < size:
            if offset + 4 > size:
                return None
            atype, alen = _ATTR_HEAD.unpack_from(datagram, offset)
            end = offset + 4 + alen
            if atype == Software.TYPE:
                try:
                    datagram[offset + 4 : end].decode("utf-8")
                except UnicodeDecodeError:
                    return None
            elif atype == Fingerprint.TYPE:
                if alen != 4 or end != size:
                    return None
                crc = zlib.crc32(datagram[:offset]) ^ FINGERPRINT_XOR
                if _U32.unpack_from(datagram, offset + 4)[0] != crc:
                    return None
            else:
                return None
            offset = end + (-alen & 3)
        if offset != size:
            return None
        host, port = addr
        tid = datagram[8:20]
        tail = self._plain_tail
        body_length = 12 + len(tail) + 8
        answer = (
            _HEAD.pack(0x0101, body_length, MAGIC_COOKIE_BYTES, tid)
            + _ATTR_HEAD.pack(XorMappedAddress.TYPE, 8)
            + pack_xor_address(host, port, tid)
            + tail
        )
        crc = zlib.crc32(answer) ^ FINGERPRINT_XOR
        return answer + _FINGERPRINT_HEAD.pack(Fingerprint.TYPE, 4, crc)

    def handle_any(
        self, datagram: bytes, addr: Address
    ) -> tuple[bytes, Address, BindingServer] | None:
        """L{handle} for every datagram, through the full codec."""
        try:
            message = decode(datagram, allow_rfc3489=True)
        except STUNDecodeError as e:
            return self._malformed(datagram, addr, e)
        if message.message_class != MessageClass.REQUEST:
            self.stats.dropped_not_request += 1
            self.log.debug("dropped STUN {kind} from {addr}", kind=message.message_class, addr=addr)
            return None
        if message.method != Method.BINDING:
            self.stats.bad_request += 1
            return self._error(message, 400, addr)
        unknown = message.unknown_comprehension_required()
        change = message.get(ChangeRequest)
        if change is not None and self.group is None and (change.change_ip or change.change_port):
            unknown = (*unknown, ChangeRequest.TYPE)
        if unknown:
            self.stats.unknown_attribute += 1
            return self._error(message, 420, addr, UnknownAttributes(unknown))
        sender = self
        if change is not None and self.group is not None:
            sender = self.group.member(
                self.address_index ^ change.change_ip, self.port_index ^ change.change_port
            )
        destination = addr
        response_port = message.get(ResponsePort)
        if response_port is not None:
            destination = (addr[0], response_port.port)
        self.stats.answered += 1
        return encode(self._success(message, addr, sender)), destination, sender

    def _success(self, message: Message, addr: Address, sender: BindingServer) -> Message:
        host, port = addr
        other = self.group.other_address(sender) if self.group is not None else None
        attributes: list[Attribute]
        if message.is_rfc3489:
            attributes = [MappedAddress(host, port), SourceAddress(*sender.local)]
            if other is not None:
                attributes.append(ChangedAddress(*other))
            attributes.extend(self._legacy_software)
            return response_to(message, attributes)
        attributes = [XorMappedAddress(host, port)]
        if self.group is not None:
            attributes.append(ResponseOrigin(*sender.local))
            if other is not None:
                attributes.append(OtherAddress(*other))
        attributes.extend(self._software_attributes)
        attributes.append(Fingerprint())
        return response_to(message, attributes)

    def _error(
        self, message: Message, code: int, addr: Address, *extra: Attribute
    ) -> tuple[bytes, Address, BindingServer]:
        if message.is_rfc3489:
            attributes = [*extra, *self._legacy_software]
        else:
            attributes = [*extra, *self._software_attributes, Fingerprint()]
        return encode(error_response(message, code, *attributes)), addr, self

    def _malformed(
        self, datagram: bytes, addr: Address, error: STUNDecodeError
    ) -> tuple[bytes, Address, BindingServer] | None:
        """
        400 for what is recognisably a STUN request (cookie, and a length
        field that matches the datagram) with a broken body; silence for
        everything else, which may not be STUN at all.
        """
        if (
            len(datagram) < 20
            or datagram[0] >= 4
            or datagram[4:8] != MAGIC_COOKIE_BYTES
            or _HEAD.unpack_from(datagram)[1] != len(datagram) - 20
        ):
            self.stats.dropped_garbage += 1
            self.log.debug("dropped non-STUN datagram from {addr}", addr=addr)
            return None
        mtype, _, cookie, tid = _HEAD.unpack_from(datagram)
        method, message_class = split_message_type(mtype)
        if message_class != MessageClass.REQUEST:
            self.stats.dropped_garbage += 1
            return None
        self.stats.bad_request += 1
        self.log.debug("bad request from {addr}: {error}", addr=addr, error=error)
        request = Message(method, MessageClass.REQUEST, tid, (), cookie)
        return self._error(request, 400, addr)


class STUNServerGroup:
    """
    RFC 5780's four sockets: two addresses times two ports.

    C{primary} and C{alternate} are the two (address, port) pairs; the group
    listens on primary, (primary address, alternate port), (alternate
    address, primary port) and alternate.  The four share C{limit}, if any.
    """

    def __init__(
        self,
        primary: Address,
        alternate: Address,
        software: str | None = SOFTWARE,
        limit: SourceLimit | None = None,
    ) -> None:
        if primary[0] == alternate[0] or primary[1] == alternate[1]:
            raise ValueError("RFC 5780 needs two different addresses and two different ports")
        self.primary = primary
        self.alternate = alternate
        self.stats = ServerStats()
        self.limit = limit
        self.hosts = (primary[0], alternate[0])
        self.ports = (primary[1], alternate[1])
        self._members = {
            (a, p): BindingServer(software, self, a, p) for a in (0, 1) for p in (0, 1)
        }

    def member(self, address_index: int, port_index: int) -> BindingServer:
        return self._members[(int(address_index), int(port_index))]

    def members(self) -> Iterator[tuple[Address, BindingServer]]:
        for (a, p), server in self._members.items():
            yield (self.hosts[a], self.ports[p]), server

    def other_address(self, server: BindingServer) -> Address:
        """The socket differing from C{server}'s in both address and port."""
        return (self.hosts[1 - server.address_index], self.ports[1 - server.port_index])

    def listen(self, reactor: IReactorUDP) -> list[IListeningPort]:
        """
        Bind all four sockets; if one cannot be bound, close the others and
        let the C{CannotListenError} through.
        """
        ports: list[IListeningPort] = []
        try:
            for (host, port), server in self.members():
                ports.append(reactor.listenUDP(port, server, interface=host, maxPacketSize=8192))
        except BaseException:
            for bound in ports:
                bound.stopListening()
            raise
        return ports
