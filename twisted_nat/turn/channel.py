"""
TURN ChannelData framing (RFC 8656 section 12) and the framing of a stream
that carries STUN messages and ChannelData back to back (RFC 8656 12.5).

A ChannelData message is a 4-byte header (channel number, length of the
application data) and the data: 4 bytes of overhead instead of a Send
indication's 36, which is why a busy relay path wants a channel.  Over UDP
the datagram boundary ends the message, so padding is optional and ignored
when present; over a stream (TCP, TLS) nothing else marks where the next
message starts, so the data is padded to a multiple of 4 bytes there.

A stream is told apart byte by byte as the multiplexer tells datagrams
apart: a first byte 0-3 starts a STUN message (20-byte header, its length
field counting the rest), 64-79 a ChannelData message.  Anything else means
we lost the framing, which on a stream cannot be recovered.

No I/O here: encoders and decoders are plain functions, and the stream
framer is fed bytes and returns messages.
"""

from __future__ import annotations

import struct

import attrs

from twisted_nat.errors import ChannelDataDecodeError

CHANNEL_NUMBERS = range(0x4000, 0x5000)
"""The channel numbers a client may bind (RFC 8656 12: 0x4000 through 0x4FFF)."""

CHANNEL_DATA_HEADER = 4
MAX_CHANNEL_DATA = 0xFFFF
"""The length field is 16 bits: no ChannelData message carries more."""

STUN_HEADER = 20

_HEADER = struct.Struct("!HH")


@attrs.frozen
class ChannelData:
    """One ChannelData message: the channel it came on and the application data."""

    channel: int
    data: bytes


def encode_channel_data(channel: int, data: bytes, pad: bool = False) -> bytes:
    """
    Frame C{data} for C{channel}.

    @param pad: pad to a multiple of 4 bytes, as a stream requires; over
        UDP padding only costs bytes, so it is off by default.
    @raise ValueError: the channel number is outside 0x4000-0x4FFF or the
        data does not fit the 16-bit length field.
    """
    if channel not in CHANNEL_NUMBERS:
        raise ValueError(f"channel number {channel:#06x} outside 0x4000-0x4FFF")
    if len(data) > MAX_CHANNEL_DATA:
        raise ValueError(f"{len(data)} bytes do not fit in one ChannelData message")
    framed = _HEADER.pack(channel, len(data)) + data
    if pad and len(data) & 3:
        framed += b"\x00" * (4 - (len(data) & 3))
    return framed


def decode_channel_data(datagram: bytes) -> ChannelData:
    """
    Parse one ChannelData message that starts C{datagram}.

    Bytes after the data are ignored: over UDP they are optional padding,
    and RFC 8656 12.5 tells the receiver to drop them.

    @raise ChannelDataDecodeError: the header is incomplete, the first two
        bits are not 01, the channel number is reserved (0x5000-0x7FFF), or
        the length field claims more data than there is.
    """
    if len(datagram) < CHANNEL_DATA_HEADER:
        raise ChannelDataDecodeError("shorter than a ChannelData header")
    channel, length = _HEADER.unpack_from(datagram)
    if channel not in CHANNEL_NUMBERS:
        raise ChannelDataDecodeError(f"channel number {channel:#06x} outside 0x4000-0x4FFF")
    end = CHANNEL_DATA_HEADER + length
    if end > len(datagram):
        raise ChannelDataDecodeError(
            f"length field {length} exceeds the {len(datagram) - CHANNEL_DATA_HEADER} bytes there"
        )
    return ChannelData(channel, bytes(datagram[CHANNEL_DATA_HEADER:end]))


def is_channel_data(data: bytes) -> bool:
    """Whether C{data} starts like ChannelData (first byte 64-79, as RFC 7983 sorts them)."""
    return bool(data) and 0x40 <= data[0] <= 0x4F


def pad_for_stream(frame: bytes) -> bytes:
    """
    C{frame} as it must go on a stream: ChannelData padded to 4 bytes.

    STUN messages are multiples of 4 already; anything else passes as is.
    """
    if is_channel_data(frame) and len(frame) & 3:
        return frame + b"\x00" * (4 - (len(frame) & 3))
    return frame


class StreamFramer:
    """
    Cuts a byte stream into STUN messages and ChannelData messages.

    L{feed} returns the complete messages so far, each exactly as long as
    its own header says: ChannelData comes without its padding, so the
    result reads like a UDP datagram and the same code handles both.

    @ivar max_buffer: refuse a stream that buffers more than this without
        completing a message (no message can be longer than 65555 bytes).
    """

    max_buffer = 0x10000 + STUN_HEADER

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data} and return the messages it completes.

        @raise ChannelDataDecodeError: a message starts with a byte that is
            neither STUN's (0-3) nor ChannelData's (64-79), or a STUN length
            is not a multiple of 4: the stream has lost its framing, and the
            connection must be dropped.  Messages completed before the bad
            byte are lost with it.
        """
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        offset = 0
        while len(buffer) - offset >= CHANNEL_DATA_HEADER:
            first = buffer[offset]
            length = _HEADER.unpack_from(buffer, offset)[1]
            if first < 4:
                if length & 3:
                    raise ChannelDataDecodeError(f"STUN length {length} on the stream is not 4n")
                size = used = STUN_HEADER + length
            elif 0x40 <= first <= 0x4F:
                size = CHANNEL_DATA_HEADER + length
                used = (size + 3) & ~3
            else:
                raise ChannelDataDecodeError(
                    f"byte {first:#04x} starts neither STUN nor ChannelData: framing lost"
                )
            if len(buffer) - offset < used:
                break
            frames.append(bytes(buffer[offset : offset + size]))
            offset += used
        del buffer[:offset]
        if len(buffer) > self.max_buffer:
            raise ChannelDataDecodeError(f"{len(buffer)} bytes buffered without a whole message")
        return frames
