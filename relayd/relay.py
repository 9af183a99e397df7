"""The relay core: many client SSH connections share one upstream connection's channels.

Sans-IO: a `Relay` is fed connection-layer messages (RFC 4254, numbers 80-100) from each
side and calls `send` functions; it never touches a socket, so it is tested on its own.

Channel ids are translated, nothing else is rewritten: windows, packet sizes and data pass
through untouched, so flow control stays end to end between ssh and the job's sshd and the
relay never holds more than the two peers allow. Each channel gets one relay id that is
used on both legs (unique per upstream, hence unique within each client connection).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

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

OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2
OPEN_UNKNOWN_CHANNEL_TYPE = 3

# Messages whose first field is the recipient channel and that are routed by it.
_CHANNEL_MESSAGES = frozenset(range(CHANNEL_WINDOW_ADJUST, CHANNEL_FAILURE + 1))

# Global requests the relay answers itself instead of passing them on.
_LOCAL_GLOBAL_REQUESTS = {b"keepalive@openssh.com", b"no-more-sessions@openssh.com"}


class ProtocolViolation(Exception):
    """A peer sent a message that breaks RFC 4254; the sender's connection must go."""


def _u32(value: int) -> bytes:
    return struct.pack(">L", value)


def _string(value: bytes) -> bytes:
    return struct.pack(">L", len(value)) + value


class _Reader:
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

    def rest(self) -> bytes:
        return self.data[self.pos :]


class ClientLink(Protocol):
    """What the relay needs from one client connection."""

    def send(self, msgnum: int, payload: bytes) -> None: ...

    def disconnect(self, reason: str) -> None: ...


@dataclass(eq=False)
class Channel:
    relay_id: int
    kind: bytes
    client: Client
    client_id: int | None  # the id the client knows it by (None until it confirms)
    server_id: int | None  # the id the job's sshd knows it by (None until it confirms)
    client_closed: bool = False
    server_closed: bool = False


@dataclass(eq=False)
class Client:
    """One client connection attached to the relay."""

    link: ClientLink
    channels: set[int] = field(default_factory=set)
    attached: bool = True
    no_more_sessions: bool = False
    wants_agent: bool = False
    wants_x11: bool = False


@dataclass(frozen=True)
class _PendingReply:
    client: Client
    name: bytes
    data: bytes


class Relay:
    """Routes connection-layer messages between attached clients and one upstream."""

    def __init__(self, send_upstream: Callable[[int, bytes], None]) -> None:
        self._send_upstream = send_upstream
        self._clients: list[Client] = []
        self._channels: dict[int, Channel] = {}
        self._next_id = 0
        self._pending_replies: deque[_PendingReply] = deque()
        # tcpip-forward (address, port) and streamlocal-forward paths -> the client that asked
        self._forwards: dict[tuple[bytes, int] | bytes, Client] = {}

    # -- bookkeeping -------------------------------------------------------------------

    @property
    def clients(self) -> int:
        return sum(1 for c in self._clients if c.attached)

    @property
    def channels(self) -> int:
        return len(self._channels)

    def attach(self, link: ClientLink) -> Client:
        client = Client(link)
        self._clients.append(client)
        return client

    def detach(self, client: Client) -> None:
        """The client connection is gone: close its channels towards the job."""
        if not client.attached:
            return
        client.attached = False
        self._clients.remove(client)
        for key in [k for k, c in self._forwards.items() if c is client]:
            del self._forwards[key]
            self._cancel_forward(key)
        for relay_id in list(client.channels):
            channel = self._channels[relay_id]
            if channel.server_id is None:
                continue  # open still pending at the job: closed when it answers
            if channel.client_id is None:
                # the job opened it towards this client, which never answered
                self._send_upstream(
                    CHANNEL_OPEN_FAILURE,
                    _u32(channel.server_id) + _u32(OPEN_CONNECT_FAILED) + _string(b"client went away") + _string(b""),
                )
                self._forget(channel)
            elif not channel.client_closed:
                channel.client_closed = True
                self._send_upstream(CHANNEL_CLOSE, _u32(channel.server_id))
                self._forget_if_done(channel)

    def _cancel_forward(self, key: tuple[bytes, int] | bytes) -> None:
        """Stop the job listening for a client that is gone (no reply wanted)."""
        if isinstance(key, tuple):
            request = _string(b"cancel-tcpip-forward") + b"\0" + _string(key[0]) + _u32(key[1])
        else:
            request = _string(b"cancel-streamlocal-forward@openssh.com") + b"\0" + _string(key)
        self._send_upstream(GLOBAL_REQUEST, request)

    def shutdown(self, reason: str) -> None:
        """The upstream is gone: every client connection ends with the reason."""
        clients, self._clients = self._clients, []
        self._channels.clear()
        self._forwards.clear()
        self._pending_replies.clear()
        for client in clients:
            client.attached = False
            client.channels.clear()
            client.link.disconnect(reason)

    def _allocate(self, kind: bytes, client: Client, client_id: int | None, server_id: int | None) -> Channel:
        while self._next_id in self._channels:
            self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        channel = Channel(self._next_id, kind, client, client_id, server_id)
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        self._channels[channel.relay_id] = channel
        client.channels.add(channel.relay_id)
        return channel

    def _forget(self, channel: Channel) -> None:
        self._channels.pop(channel.relay_id, None)
        channel.client.channels.discard(channel.relay_id)

    def _forget_if_done(self, channel: Channel) -> None:
        if channel.client_closed and channel.server_closed:
            self._forget(channel)

    def _channel(self, recipient: int) -> Channel:
        channel = self._channels.get(recipient)
        if channel is None:
            raise ProtocolViolation(f"message for unknown channel {recipient}")
        return channel

    # -- from a client -----------------------------------------------------------------

    def from_client(self, client: Client, msgnum: int, payload: bytes) -> None:
        """Handle one connection-layer message from a client connection."""
        if not client.attached:
            return
        if msgnum in _CHANNEL_MESSAGES:
            self._client_channel_message(client, msgnum, payload)
        elif msgnum == CHANNEL_OPEN:
            self._client_open(client, payload)
        elif msgnum == CHANNEL_OPEN_CONFIRMATION:
            self._client_open_confirmation(client, payload)
        elif msgnum == CHANNEL_OPEN_FAILURE:
            self._client_open_failure(client, payload)
        elif msgnum == GLOBAL_REQUEST:
            self._client_global_request(client, payload)
        elif msgnum in (REQUEST_SUCCESS, REQUEST_FAILURE):
            pass  # replies to global requests the relay never sends to clients
        else:
            raise ProtocolViolation(f"unexpected message {msgnum}")

    def _owned(self, client: Client, recipient: int) -> Channel:
        channel = self._channel(recipient)
        if channel.client is not client:
            raise ProtocolViolation(f"channel {recipient} belongs to another connection")
        return channel

    def _client_channel_message(self, client: Client, msgnum: int, payload: bytes) -> None:
        reader = _Reader(payload)
        channel = self._owned(client, reader.u32())
        if channel.server_id is None or channel.client_id is None:
            raise ProtocolViolation(f"message {msgnum} on channel {channel.relay_id} before it was open")
        if msgnum == CHANNEL_REQUEST:
            self._note_client_request(client, reader.string())
        elif msgnum == CHANNEL_CLOSE:
            if channel.client_closed:
                return
            channel.client_closed = True
        self._send_upstream(msgnum, _u32(channel.server_id) + payload[4:])
        if msgnum == CHANNEL_CLOSE:
            self._forget_if_done(channel)

    @staticmethod
    def _note_client_request(client: Client, name: bytes) -> None:
        if name == b"auth-agent-req@openssh.com":
            client.wants_agent = True
        elif name == b"x11-req":
            client.wants_x11 = True

    def _client_open(self, client: Client, payload: bytes) -> None:
        reader = _Reader(payload)
        kind = reader.string()
        sender = reader.u32()
        if kind == b"session" and client.no_more_sessions:
            client.link.send(
                CHANNEL_OPEN_FAILURE,
                _u32(sender) + _u32(OPEN_ADMINISTRATIVELY_PROHIBITED) + _string(b"no more sessions") + _string(b""),
            )
            return
        channel = self._allocate(kind, client, client_id=sender, server_id=None)
        self._send_upstream(CHANNEL_OPEN, _string(kind) + _u32(channel.relay_id) + reader.rest())

    def _client_open_confirmation(self, client: Client, payload: bytes) -> None:
        reader = _Reader(payload)
        channel = self._owned(client, reader.u32())
        if channel.client_id is not None or channel.server_id is None:
            raise ProtocolViolation(f"confirmation for channel {channel.relay_id} that was not being opened")
        channel.client_id = reader.u32()
        self._send_upstream(CHANNEL_OPEN_CONFIRMATION, _u32(channel.server_id) + _u32(channel.relay_id) + reader.rest())

    def _client_open_failure(self, client: Client, payload: bytes) -> None:
        reader = _Reader(payload)
        channel = self._owned(client, reader.u32())
        if channel.client_id is not None or channel.server_id is None:
            raise ProtocolViolation(f"open failure for channel {channel.relay_id} that was not being opened")
        self._forget(channel)
        self._send_upstream(CHANNEL_OPEN_FAILURE, _u32(channel.server_id) + reader.rest())

    def _client_global_request(self, client: Client, payload: bytes) -> None:
        reader = _Reader(payload)
        name = reader.string()
        want_reply = reader.boolean()
        if name in _LOCAL_GLOBAL_REQUESTS:
            if name == b"no-more-sessions@openssh.com":
                client.no_more_sessions = True
            if want_reply:
                # sshd answers keepalives with a failure too; the client only wants an answer
                client.link.send(REQUEST_FAILURE, b"")
            return
        if want_reply:
            self._pending_replies.append(_PendingReply(client, name, reader.rest()))
        self._send_upstream(GLOBAL_REQUEST, payload)

    # -- from the upstream -------------------------------------------------------------

    def from_upstream(self, msgnum: int, payload: bytes) -> None:
        """Handle one connection-layer message from the job's sshd."""
        if msgnum in _CHANNEL_MESSAGES:
            self._upstream_channel_message(msgnum, payload)
        elif msgnum == CHANNEL_OPEN_CONFIRMATION:
            self._upstream_open_confirmation(payload)
        elif msgnum == CHANNEL_OPEN_FAILURE:
            self._upstream_open_failure(payload)
        elif msgnum == CHANNEL_OPEN:
            self._upstream_open(payload)
        elif msgnum == GLOBAL_REQUEST:
            reader = _Reader(payload)
            reader.string()
            if reader.boolean():  # e.g. keepalive; hostkeys-00 must not reach clients
                self._send_upstream(REQUEST_FAILURE, b"")
        elif msgnum in (REQUEST_SUCCESS, REQUEST_FAILURE):
            self._upstream_global_reply(msgnum, payload)
        else:
            raise ProtocolViolation(f"unexpected message {msgnum} from the job")

    def _upstream_channel_message(self, msgnum: int, payload: bytes) -> None:
        channel = self._channel(_Reader(payload).u32())
        if msgnum == CHANNEL_CLOSE:
            channel.server_closed = True
        if channel.client.attached and channel.client_id is not None:
            channel.client.link.send(msgnum, _u32(channel.client_id) + payload[4:])
        if msgnum == CHANNEL_CLOSE:
            if not channel.client.attached:
                channel.client_closed = True
            self._forget_if_done(channel)

    def _upstream_open_confirmation(self, payload: bytes) -> None:
        reader = _Reader(payload)
        channel = self._channel(reader.u32())
        if channel.server_id is not None:
            raise ProtocolViolation(f"second confirmation for channel {channel.relay_id}")
        channel.server_id = reader.u32()
        if not channel.client.attached:
            channel.client_closed = True
            self._send_upstream(CHANNEL_CLOSE, _u32(channel.server_id))
            return
        assert channel.client_id is not None
        channel.client.link.send(
            CHANNEL_OPEN_CONFIRMATION, _u32(channel.client_id) + _u32(channel.relay_id) + reader.rest()
        )

    def _upstream_open_failure(self, payload: bytes) -> None:
        reader = _Reader(payload)
        channel = self._channel(reader.u32())
        if channel.server_id is not None:
            raise ProtocolViolation(f"open failure for channel {channel.relay_id} that is open")
        self._forget(channel)
        if channel.client.attached and channel.client_id is not None:
            channel.client.link.send(CHANNEL_OPEN_FAILURE, _u32(channel.client_id) + reader.rest())

    def _upstream_open(self, payload: bytes) -> None:
        reader = _Reader(payload)
        kind = reader.string()
        sender = reader.u32()
        reader.u32(), reader.u32()  # window and packet size pass through in payload
        client = self._route_server_open(kind, _Reader(reader.rest()))
        if client is None:
            self._send_upstream(
                CHANNEL_OPEN_FAILURE,
                _u32(sender)
                + _u32(OPEN_ADMINISTRATIVELY_PROHIBITED)
                + _string(b"no client for this " + kind + b" channel")
                + _string(b""),
            )
            return
        channel = self._allocate(kind, client, client_id=None, server_id=sender)
        client.link.send(CHANNEL_OPEN, _string(kind) + _u32(channel.relay_id) + payload[len(kind) + 8 :])

    def _route_server_open(self, kind: bytes, extra: _Reader) -> Client | None:
        """Pick the client a channel opened by the job's sshd belongs to."""
        if kind == b"forwarded-tcpip":
            address, port = extra.string(), extra.u32()
            return self._forwards.get((address, port))
        if kind == b"forwarded-streamlocal@openssh.com":
            return self._forwards.get(extra.string())
        wanted = "wants_agent" if kind == b"auth-agent@openssh.com" else "wants_x11" if kind == b"x11" else None
        if wanted is None:
            return None
        candidates = [c for c in self._clients if getattr(c, wanted)]
        return candidates[-1] if candidates else None

    def _upstream_global_reply(self, msgnum: int, payload: bytes) -> None:
        if not self._pending_replies:
            raise ProtocolViolation("global request reply with no request outstanding")
        pending = self._pending_replies.popleft()
        if msgnum == REQUEST_SUCCESS:
            self._note_forward(pending, payload)
        if pending.client.attached:
            pending.client.link.send(msgnum, payload)

    def _note_forward(self, pending: _PendingReply, reply: bytes) -> None:
        request = _Reader(pending.data)
        if pending.name == b"tcpip-forward":
            address, port = request.string(), request.u32()
            if port == 0 and len(reply) >= 4:
                port = _Reader(reply).u32()
            self._forwards[(address, port)] = pending.client
        elif pending.name == b"cancel-tcpip-forward":
            self._forwards.pop((request.string(), request.u32()), None)
        elif pending.name == b"streamlocal-forward@openssh.com":
            self._forwards[request.string()] = pending.client
        elif pending.name == b"cancel-streamlocal-forward@openssh.com":
            self._forwards.pop(request.string(), None)
