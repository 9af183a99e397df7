"""What the job's sshd parses in a client message, checked before the message goes on.

sshd ends its whole connection -- every client's sessions on that leg -- on a message it
cannot parse or one longer than its packet limit once re-padded for the leg's cipher, so
the relay refuses such a message first and drops only its sender.
"""

from __future__ import annotations

from relayd.common.errors import ProtocolViolation
from relayd.relay.wire import (
    CHANNEL_CLOSE,
    CHANNEL_DATA,
    CHANNEL_EOF,
    CHANNEL_EXTENDED_DATA,
    CHANNEL_FAILURE,
    CHANNEL_OPEN,
    CHANNEL_OPEN_CONFIRMATION,
    CHANNEL_OPEN_FAILURE,
    CHANNEL_REQUEST,
    CHANNEL_SUCCESS,
    CHANNEL_WINDOW_ADJUST,
    DATA_MESSAGES,
    GLOBAL_REQUEST,
    Reader,
)
from relayd.ssh.packetcrypto import MAX_PAYLOAD

# What the job's sshd (OpenSSH 9) reads from a client message, field by field: u uint32,
# b boolean, s string, c string without NUL (sshd's cstring), m pty-req's terminal modes.
# sshd ends its whole connection -- every client's sessions on that leg -- on a message
# it cannot parse, so the relay refuses such a message first and drops only its sender.
_CLIENT_FIELDS = {
    CHANNEL_WINDOW_ADJUST: "uu", CHANNEL_DATA: "us", CHANNEL_EXTENDED_DATA: "uus", CHANNEL_EOF: "u",
    CHANNEL_CLOSE: "u", CHANNEL_SUCCESS: "u", CHANNEL_FAILURE: "u", CHANNEL_OPEN_CONFIRMATION: "uuuu",
    CHANNEL_OPEN_FAILURE: "uucs",
}
_OPEN_FIELDS = {b"session": "", b"direct-tcpip": "cucu", b"direct-streamlocal@openssh.com": "ccu",
                b"tun@openssh.com": "uu"}
_REQUEST_FIELDS = {
    b"shell": "", b"exec": "c", b"subsystem": "c", b"env": "cc", b"x11-req": "bccu", b"pty-req": "cuuuum",
    b"auth-agent-req@openssh.com": "", b"window-change": "uuuu", b"break": "u", b"signal": "c",
    b"eow@openssh.com": "",
}
GLOBAL_FIELDS = {b"tcpip-forward": "cu", b"cancel-tcpip-forward": "cu", b"streamlocal-forward@openssh.com": "c",
                  b"cancel-streamlocal-forward@openssh.com": "c"}


def check_client_message(msgnum: int, payload: bytes) -> None:
    """Raise ProtocolViolation for a client message the job's sshd could not parse.

    Only the fields sshd reads are checked: it answers unknown open, request and global
    request types without reading past their common fields.
    """
    reader = Reader(payload)
    if msgnum == CHANNEL_OPEN:
        common, specific = "uuu", _OPEN_FIELDS.get(reader.cstring())
    elif msgnum == CHANNEL_REQUEST:
        reader.u32()
        common, specific = "b", _REQUEST_FIELDS.get(reader.cstring())
    elif msgnum == GLOBAL_REQUEST:
        common, specific = "b", GLOBAL_FIELDS.get(reader.cstring())
    else:
        common, specific = "", _CLIENT_FIELDS.get(msgnum)
    for code in common + (specific or ""):
        _READ_FIELD[code](reader)
    if specific is not None:
        reader.end()


def check_tty_modes(reader: Reader) -> None:
    """sshd's parse of pty-req's encoded modes: opcodes 1-159 take a uint32; 0 or 160+ end it."""
    modes = Reader(reader.string())
    while modes.pos < len(modes.data):
        opcode = modes.data[modes.pos]
        modes.pos += 1
        if opcode == 0 or opcode >= 160:
            return
        modes.u32()


_READ_FIELD = {"u": Reader.u32, "b": Reader.boolean, "s": Reader.skip_string, "c": Reader.cstring,
               "m": check_tty_modes}


def check_size(msgnum: int, payload: bytes) -> None:
    """Raise ProtocolViolation for a message the other leg's peer would refuse once re-padded
    for that leg's cipher; channel data is split instead (at the receiver's packet size)."""
    if len(payload) > MAX_PAYLOAD and msgnum not in DATA_MESSAGES:
        raise ProtocolViolation(f"message {msgnum} of {len(payload) + 1} bytes is longer than the other side "
                                f"takes ({MAX_PAYLOAD + 1})")


def forward_key(name: bytes, request: Reader) -> tuple[bytes, int] | bytes:
    """What a (cancel-)forward request's fields name: (address, port) or a socket path."""
    if name in (b"tcpip-forward", b"cancel-tcpip-forward"):
        return request.string(), request.u32()
    return request.string()

