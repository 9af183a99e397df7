"""The SSH connection layer on the wire (RFC 4254): message numbers, the encoders, and a
reader that raises ProtocolViolation on a short or malformed message. One definition
each, for the relay core, its checks and the tests."""

from __future__ import annotations

import struct

from relayd.common.errors import ProtocolViolation

GLOBAL_REQUEST = 80
REQUEST_SUCCESS = 81
REQUEST_FAILURE = 82
CHANNEL_OPEN = 90
CHANNEL_OPEN_CONFIRMATION = 91
CHANNEL_OPEN_FAILURE = 92
CHANNEL_WINDOW_ADJUST = 93
CHANNEL_DATA = 94
CHANNEL_EXTENDED_DATA = 95
CHANNEL_EOF = 96
CHANNEL_CLOSE = 97
CHANNEL_REQUEST = 98
CHANNEL_SUCCESS = 99
CHANNEL_FAILURE = 100
EXTENDED_DATA_STDERR = 1

OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2
OPEN_RESOURCE_SHORTAGE = 4

# Messages whose first field is the recipient channel and that are routed by it.
CHANNEL_MESSAGES = frozenset(range(CHANNEL_WINDOW_ADJUST, CHANNEL_FAILURE + 1))
DATA_MESSAGES = (CHANNEL_DATA, CHANNEL_EXTENDED_DATA)


def u32(value: int) -> bytes:
    return struct.pack(">L", value)


def string(value: bytes) -> bytes:
    return struct.pack(">L", len(value)) + value


def readdressed(recipient: int, payload: bytes) -> bytes:
    """A channel message for another recipient id: one copy of what may be 32 KiB of data."""
    return b"".join((u32(recipient), memoryview(payload)[4:]))


def data_start(msgnum: int) -> int:
    """Where the data of a CHANNEL_DATA or CHANNEL_EXTENDED_DATA payload begins."""
    return 8 if msgnum == CHANNEL_DATA else 12


def open_failure(recipient: int, reason: int, text: bytes) -> bytes:
    return u32(recipient) + u32(reason) + string(text) + string(b"")


class Reader:
    """Reads SSH wire fields from a payload, raising ProtocolViolation when short."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ProtocolViolation("message too short")
        (value,) = struct.unpack_from(">L", self.data, self.pos)
        self.pos += 4
        return value

    def string(self) -> bytes:
        length = self.u32()
        if self.pos + length > len(self.data):
            raise ProtocolViolation("string runs past the end of the message")
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def boolean(self) -> bool:
        if self.pos >= len(self.data):
            raise ProtocolViolation("message too short")
        self.pos += 1
        return self.data[self.pos - 1] != 0

    def cstring(self) -> bytes:
        """A string sshd reads as a C string: a NUL is allowed only as its last byte."""
        value = self.string()
        if b"\0" in value[:-1]:
            raise ProtocolViolation("NUL byte inside a string")
        return value

    def skip_string(self) -> None:
        length = self.u32()
        if self.pos + length > len(self.data):
            raise ProtocolViolation("string runs past the end of the message")
        self.pos += length

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolViolation("trailing bytes at the end of the message")

    def rest(self) -> bytes:
        return self.data[self.pos :]

