"""The records the relay core keeps: clients, legs, channels and each channel's two flows,
and what it needs from a client connection and from a leg (ClientLink, LegLink)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

# Flow control (see relayd.relay.core).
# Flow control (see the module docstring).
CHANNEL_WINDOW = 2 * 1024 * 1024
JOB_WINDOW = 32 * 1024 * 1024
QUEUE_SLACK = 64 * 1024
RESERVE = 32 * 1024


class ClientLink(Protocol):
    """What the relay needs from one client connection."""

    def send(self, msgnum: int, payload: bytes) -> None: ...

    def hold_reading(self, held: bool) -> None:
        """Stop (or resume) reading from the client: a leg it writes to is congested."""

    def disconnect(self, reason: str, closing: int = 0) -> None:
        """End the connection; `closing` channels were just closed and await the client's close."""


class LegLink(Protocol):
    """What the relay needs from one upstream connection to the job."""

    def send(self, msgnum: int, payload: bytes) -> None: ...


@dataclass(eq=False)
class Client:
    """One client connection attached to the relay."""

    link: ClientLink
    channels: set[int] = field(default_factory=set)
    attached: bool = True
    no_more_sessions: bool = False


@dataclass(eq=False)
class Leg:
    """One upstream connection as the relay sees it."""

    link: LegLink
    capacity: int  # session channels this connection takes (sshd's MaxSessions)
    channels: set[int] = field(default_factory=set)
    sessions: int = 0
    pending_replies: deque[tuple[Client, bytes, bytes]] = field(default_factory=deque)
    # tcpip-forward (address, port) and streamlocal-forward paths -> the client that asked
    forwards: dict[tuple[bytes, int] | bytes, Client] = field(default_factory=dict)
    owner: Client | None = None  # the client whose agent/X11 forwarding sessions alone it carries


@dataclass(eq=False)
class Flow:
    """One direction of a channel, from its sender through the relay to its receiver."""

    window: int = 0  # the receiver's window: what the relay may still send it
    max_packet: int = 1  # the receiver's maximum packet size
    limit: int = 0  # the most the relay grants the sender: min(CHANNEL_WINDOW, the receiver's largest window)
    granted: int = 0  # what the sender may still send
    queue: deque[tuple[int, bytes, int]] = field(default_factory=deque)  # (msgnum, payload, data sent so far)
    queued: int = 0  # data bytes in the queue
    extra: int = 0  # bytes of other messages in the queue

    def receiver_window(self, window: int, max_packet: int) -> None:
        self.window, self.max_packet = window, max(1, max_packet)
        self.limit = min(CHANNEL_WINDOW, window)


@dataclass(eq=False)
class Channel:
    relay_id: int
    kind: bytes
    client: Client
    leg: Leg | None  # None while a session open waits for a leg
    client_id: int | None  # the id the client knows it by (None until it confirms)
    server_id: int | None  # the id the job's sshd knows it by (None until it confirms)
    client_closed: bool = False
    server_closed: bool = False
    open_rest: bytes = b""  # window, packet size and type data of a pending client open
    moved: bool = False  # a refused session open is tried once more elsewhere
    client_eof: bool = False
    pty_requested: bool = False
    # a session the relay confirmed itself: the client's messages until the job confirms it
    held: list[tuple[int, bytes]] | None = None
    held_bytes: int = 0
    forwarding: bool = False  # its client asked for agent or X11 forwarding before its leg was picked
    leg_picked: bool = False
    up: Flow = field(default_factory=Flow)  # from the client to the job
    down: Flow = field(default_factory=Flow)  # from the job to the client

