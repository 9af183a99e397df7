"""The relay core: many client SSH connections share a job's upstream connections.

(One module of some 900 lines, on purpose: `Relay` is one state machine whose parts --
channel routing, per-channel flow control, held sessions and owned legs -- read and change
the same channel and leg records in one step; split across modules they would be coupled
through private state. The wire format, sshd's parse rules and the records live beside it:
relayd.relay.wire, .sshd_checks, .state.)

Sans-IO: a `Relay` is fed connection-layer messages (RFC 4254, numbers 80-100) from the
clients and from the job's upstream connections ("legs") and calls their `send`; it never
touches a socket, so it is tested on its own.

Channel ids are translated, and each channel gets one relay id, unique within the job,
used towards both the client and the leg it lives on. A client message that the job's
sshd would end the shared connection for is refused instead, and only that client is
dropped: one it could not parse, or one longer than it takes once re-padded for the leg's
cipher (`packetcrypto.MAX_PAYLOAD`).

Flow control is the relay's own, per direction of each channel (`Flow`): it grants the
sender a window of at most min(the receiver's window, CHANNEL_WINDOW = 2 MiB), queues what
the receiver's window cannot take yet, splits data at the receiver's maximum packet size,
and refills the sender's window as soon as data moves on, without waiting for the
receiver's adjust. So a channel holds at most 2 MiB of data (plus QUEUE_SLACK, 64 KiB, of
messages queued behind it), and a job at most JOB_WINDOW = 32 MiB over all its channels
plus RESERVE (32 KiB) for each channel beyond: a grant that would pass the job's budget
waits until data moves on, but every channel may always have RESERVE, since a window once
granted cannot be taken back and idle sessions would otherwise starve new ones. A sender
that sends past its window is dropped ("peer ignored channel window"), a client
connection or a leg, and only that one. While a receiver's transport has more than its
write buffer threshold waiting (`congested`, Twisted's pauseProducing), nothing more is
sent to it: what its senders send stays queued, within the window they were granted, and
refills none. A client that sends a leg messages outside channels (opens, global
requests) while that leg is congested is not read from until it drains. One slow client
so never stalls the other clients of a shared leg. A client connection has at most
MAX_CHANNELS_PER_CLIENT (512) channels open, whoever opened them; an open beyond that is
refused with "resource shortage", as OpenSSH refuses what it has no descriptors for.

A job's sshd allows `MaxSessions` (10) session channels per connection. When every leg is
full, session opens wait while the owner negotiates another leg (`need_leg`), so clients
never see the limit; a session that ends on a leg gives its room to the oldest waiting one.
Global requests and everything they cause (remote forwards) live on the first leg, which
is kept while any client is attached.

Agent and X11 forwarding cannot share a leg: the job's sshd sets up one agent socket per
connection (at its first auth-agent-req) and puts it in the environment of every later
session there, and neither agent nor x11 channels say which session they serve. So a
session asking for either lives on a leg owned by its client alone ("owned leg"): sshd's
agent and x11 channels on it go to the owner, no other client's channel goes there, and
it carries no global requests. It closes once it has no channels or its owner leaves: a
held sshd keeps the job's slot claimed, and a forwarding ssh has one session, so lingering
would rarely be reused (a later forwarding session of the same client negotiates again).
Sessions that forward nothing stay on the shared legs.

The forwarding requests come after the session is open, so the relay confirms a client's
session open itself, as sshd does (window 0, the session not started), and holds the
client's messages on it. The leg is picked at the first request that settles it: a
forwarding request (owned leg), a start (shell, exec, subsystem), any request whose answer
the client may be waiting for (asyncssh awaits its pty-req before asking to forward), or
once the held messages reach half their bound. The channel is then opened there and, once
the job confirms, the held messages follow in order, so sshd's replies reach the client in
the order it asked (the confirmation itself is consumed; its window, if any, becomes a
window adjust). A forwarding request that comes after its session went to a shared leg is
passed on under a name sshd refuses, so it is refused in order with the others. When no
leg can take the session, the client gets failure for the requests it awaits, the reason
on its stderr and the channel's close.
"""

from __future__ import annotations

from typing import Callable

from relayd.common.errors import ProtocolViolation
from relayd.relay.sshd_checks import GLOBAL_FIELDS, check_client_message, check_size, forward_key
from relayd.relay.state import (
    CHANNEL_WINDOW,
    JOB_WINDOW,
    QUEUE_SLACK,
    RESERVE,
    Channel,
    Client,
    ClientLink,
    Flow,
    Leg,
    LegLink,
)
from relayd.relay.wire import (
    CHANNEL_CLOSE,
    CHANNEL_DATA,
    CHANNEL_EOF,
    CHANNEL_EXTENDED_DATA,
    CHANNEL_FAILURE,
    CHANNEL_MESSAGES,
    CHANNEL_OPEN,
    CHANNEL_OPEN_CONFIRMATION,
    CHANNEL_OPEN_FAILURE,
    CHANNEL_REQUEST,
    CHANNEL_WINDOW_ADJUST,
    DATA_MESSAGES,
    EXTENDED_DATA_STDERR,
    GLOBAL_REQUEST,
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    OPEN_RESOURCE_SHORTAGE,
    REQUEST_FAILURE,
    REQUEST_SUCCESS,
    Reader,
    data_start,
    open_failure,
    readdressed,
    string,
    u32,
)

# Extra upstream connections negotiated at once for a burst of sessions: each is a round
# trip through the schedd and the starter, which other users share.
MAX_LEGS_IN_NEGOTIATION = 4

# The largest data packet the relay takes on any channel, whatever the receiver takes: it splits
# data at the receiver's own maximum (the job's sshd: 32 KiB). Bigger packets from the sender
# cost fewer Python steps per byte; this leaves room for any leg's framing within MAX_PAYLOAD.
RELAY_MAX_PACKET = 128 * 1024
# A session confirmed by the relay holds the client's messages until the job confirms it: at
# most this many messages and bytes (a client sending more first is dropped); the leg is
# picked at half of either.
# Channels one client connection may have open at once, whoever opened them: each costs
# the relay its records and up to RESERVE of queued data each way beyond the job's budget,
# so without a cap a client (or a job opening forwarded channels to it) could grow the
# daemon without bound. OpenSSH runs out of descriptors near 1,000 channels by default.
MAX_CHANNELS_PER_CLIENT = 512
MAX_HELD_MESSAGES = 64
MAX_HELD_BYTES = 64 * 1024
_FORWARDING_REQUESTS = frozenset({b"auth-agent-req@openssh.com", b"x11-req"})
# Requests OpenSSH sends before starting a session without awaiting them: they may precede
# a forwarding request, so they do not settle the leg.
_SETUP_REQUESTS = frozenset({b"pty-req", b"env"})
# What a forwarding request becomes on a leg its client does not own: sshd refuses unknown
# requests, answering in order with the channel's other requests.
_REFUSED_REQUEST = b"forwarding-refused@condor-relay"

# Global requests the relay answers itself instead of passing them on.
_TOO_MANY_CHANNELS = f"condor-relay: {MAX_CHANNELS_PER_CLIENT} channels open on this connection".encode()
_LOCAL_GLOBAL_REQUESTS = {b"keepalive@openssh.com", b"no-more-sessions@openssh.com"}


class Relay:
    """Routes connection-layer messages between attached clients and a job's legs.

    `need_leg(owner)` asks for another leg, shared (owner None) or owned by that client;
    it is answered by `add_leg(link, owner)` or `leg_failed(reason, owner)`. `leg_idle(leg)`
    says a leg has no channels left: a shared one may be closed when the caller likes, an
    owned one the relay has already dropped and must be closed now.
    """

    def __init__(
        self,
        need_leg: Callable[[Client | None], None],
        leg_idle: Callable[[Leg], None],
        max_sessions: int = 10,
    ) -> None:
        self._need_leg = need_leg
        self._leg_idle = leg_idle
        self._max_sessions = max_sessions
        self._clients: list[Client] = []
        self._legs: list[Leg] = []
        self._channels: dict[int, Channel] = {}
        self._next_id = 0
        self._waiting: list[Channel] = []  # session opens waiting for a leg with room
        # need_leg calls not yet answered by add_leg or leg_failed, per owner (None: shared)
        self._legs_requested: dict[Client | None, int] = {}
        self._held = 0  # data bytes granted to senders or queued, over all channels (<= JOB_WINDOW)
        self._congested: set[Client | Leg] = set()
        self._starved: dict[Flow, Channel] = {}  # flows owed a grant the job's budget or an open held back
        self._held_readers: set[Client] = set()  # clients not read from while a leg is congested

    # -- bookkeeping -------------------------------------------------------------------

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def channels(self) -> int:
        return len(self._channels)

    @property
    def legs(self) -> list[Leg]:
        return list(self._legs)

    def attach(self, link: ClientLink) -> Client:
        client = Client(link)
        self._clients.append(client)
        return client

    def add_leg(self, link: LegLink, owner: Client | None = None) -> Leg | None:
        """A new upstream connection is ready: waiting session opens go to it.

        None if it is not wanted (its owner left, or has nothing left for it): close it.
        """
        self._leg_answered(owner)
        if owner is not None and not owner.attached:
            return None
        leg = Leg(link, capacity=self._max_sessions, owner=owner)
        self._legs.append(leg)
        waiting, self._waiting = self._waiting, []
        for channel in waiting:
            self._open_on_a_leg(channel)
        if owner is not None and not leg.channels:
            self._legs.remove(leg)
            return None
        return leg

    def leg_failed(self, reason: str, owner: Client | None = None) -> None:
        """A leg asked for with need_leg could not be made: the waiting opens for that owner
        that the legs still being made cannot take fail, the most recent first."""
        keep = self._leg_answered(owner) * self._max_sessions
        theirs = [channel for channel in self._waiting if self._owner_wanted(channel) is owner]
        failing = theirs[keep:]
        self._waiting = [channel for channel in self._waiting if channel not in failing]
        if owner is not None:
            reason = f"could not connect for agent or X11 forwarding: {reason}"
        for channel in failing:
            self._fail_session(channel, reason)

    def _leg_answered(self, owner: Client | None) -> int:
        """One need_leg call for `owner` was answered: how many are still out."""
        left = self._legs_requested.pop(owner, 0) - 1
        if left > 0:
            self._legs_requested[owner] = left
        return max(0, left)

    @staticmethod
    def _owner_wanted(channel: Channel) -> Client | None:
        """Who must own the leg a channel goes on (None: a shared leg)."""
        return channel.client if channel.forwarding else None

    def remove_leg(self, leg: Leg) -> None:
        """An upstream connection is gone: its channels end towards their clients."""
        if leg not in self._legs:
            return
        self._legs.remove(leg)
        self._congested.discard(leg)
        self._release_readers()
        for relay_id in list(leg.channels):
            channel = self._channels[relay_id]
            if channel.held is not None:  # confirmed by the relay, still pending at the job
                self._fail_session(channel, "connection to the job lost")
                continue
            self._forget(channel)
            if not channel.client.attached or channel.client_id is None:
                continue
            if channel.server_id is None:  # its open was still pending at the job
                channel.client.link.send(
                    CHANNEL_OPEN_FAILURE,
                    open_failure(channel.client_id, OPEN_CONNECT_FAILED, b"connection to the job lost"),
                )
            else:
                channel.client.link.send(CHANNEL_CLOSE, u32(channel.client_id))

    def detach(self, client: Client) -> None:
        """The client connection is gone: close its channels towards the job."""
        if not client.attached:
            return
        client.attached = False
        self._clients.remove(client)
        self._congested.discard(client)
        self._held_readers.discard(client)
        self._waiting = [c for c in self._waiting if c.client is not client]
        self._legs_requested.pop(client, None)
        for leg in [leg for leg in self._legs if leg.owner is client]:
            self._drop_owned_leg(leg)
        for leg in self._legs:
            for key in [k for k, c in leg.forwards.items() if c is client]:
                del leg.forwards[key]
                self._cancel_forward(leg, key)
        for relay_id in list(client.channels):
            channel = self._channels[relay_id]
            if channel.leg is None:
                self._forget(channel)  # was waiting for a leg
            elif channel.server_id is None:
                continue  # open still pending at the job: closed when it answers
            elif channel.client_id is None:
                # the job opened it towards this client, which never answered
                channel.leg.link.send(
                    CHANNEL_OPEN_FAILURE, open_failure(channel.server_id, OPEN_CONNECT_FAILED, b"client went away")
                )
                self._forget(channel)
            elif not channel.client_closed:
                channel.client_closed = True
                self._drop_queue(channel.up)
                channel.leg.link.send(CHANNEL_CLOSE, u32(channel.server_id))
                self._forget_if_done(channel)

    def _drop_owned_leg(self, leg: Leg) -> None:
        """Its owner left: its channels go without a word (the connection closes) and so does it."""
        self._legs.remove(leg)
        for relay_id in list(leg.channels):
            self._forget(self._channels[relay_id])
        self._leg_idle(leg)

    def shutdown(self, reason: str) -> None:
        """The job is gone: every client connection ends with the reason.

        Open sessions first get the reason on stderr, then a close: behind ssh's ControlMaster
        the user's ssh is a mux client, which never sees the master's disconnect message.
        """
        clients, self._clients = self._clients, []
        told = [self._tell_sessions(client, reason) for client in clients]
        self._channels.clear()
        self._legs.clear()
        self._waiting.clear()
        self._held = 0
        self._starved.clear()
        self._congested.clear()
        self._held_readers.clear()
        for client, closing in zip(clients, told):
            client.attached = False
            client.channels.clear()
            client.link.disconnect(reason, closing=closing)

    def _tell_sessions(self, client: Client, reason: str) -> int:
        """Write the reason to each of the client's open sessions with room for it in their
        window, and close them; how many."""
        told = 0
        for relay_id in sorted(client.channels):
            channel = self._channels[relay_id]
            if channel.kind != b"session" or channel.client_id is None or channel.server_id is None \
                    or channel.client_closed or channel.server_closed:
                continue
            end = "\r\n" if channel.pty_requested else "\n"  # a terminal is in raw mode meanwhile
            note = f"condor-relay: {reason}{end}".encode()
            if channel.down.window < len(note):
                continue  # no room to say it (a download filled the window): the disconnect message will
            client.link.send(CHANNEL_EXTENDED_DATA, u32(channel.client_id) + u32(EXTENDED_DATA_STDERR) + string(note))
            client.link.send(CHANNEL_CLOSE, u32(channel.client_id))
            told += 1
        return told

    def _cancel_forward(self, leg: Leg, key: tuple[bytes, int] | bytes) -> None:
        """Stop the job listening for a client that is gone (no reply wanted)."""
        if isinstance(key, tuple):
            request = string(b"cancel-tcpip-forward") + b"\0" + string(key[0]) + u32(key[1])
        else:
            request = string(b"cancel-streamlocal-forward@openssh.com") + b"\0" + string(key)
        leg.link.send(GLOBAL_REQUEST, request)

    def _allocate(self, kind: bytes, client: Client, leg: Leg | None, client_id: int | None,
                  server_id: int | None) -> Channel:
        while self._next_id in self._channels:
            self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        channel = Channel(self._next_id, kind, client, None, client_id, server_id)
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        self._channels[channel.relay_id] = channel
        client.channels.add(channel.relay_id)
        if leg is not None:
            self._place(channel, leg)
        return channel

    def _place(self, channel: Channel, leg: Leg) -> None:
        channel.leg = leg
        leg.channels.add(channel.relay_id)
        if channel.kind == b"session":
            leg.sessions += 1

    def _forget(self, channel: Channel) -> None:
        for flow in (channel.up, channel.down):
            if any(msgnum == CHANNEL_CLOSE for msgnum, _, _ in flow.queue):
                _, link, recipient = self._route(channel, flow)  # the answer the other side waits for
                if link is not None and recipient is not None:
                    link.send(CHANNEL_CLOSE, u32(recipient))
            self._drop_queue(flow)
            self._held -= flow.granted
            flow.granted = 0
            self._starved.pop(flow, None)
        self._channels.pop(channel.relay_id, None)
        channel.client.channels.discard(channel.relay_id)
        self._unplace(channel)

    def _unplace(self, channel: Channel) -> None:
        """Take a channel off its leg; a leg left with none is idle, and an owned one dropped."""
        leg = channel.leg
        if leg is not None and channel.relay_id in leg.channels:
            leg.channels.discard(channel.relay_id)
            if channel.kind == b"session":
                leg.sessions -= 1
                self._take_waiting(leg)
            if not leg.channels and leg in self._legs:
                if leg.owner is not None:
                    self._legs.remove(leg)
                self._leg_idle(leg)

    def _take_waiting(self, leg: Leg) -> None:
        """A session left `leg`: the oldest session waiting for a leg like it takes its room,
        rather than waiting for a leg still being negotiated (or failing with it)."""
        if leg not in self._legs or leg.sessions >= leg.capacity:
            return
        channel = next((c for c in self._waiting if self._owner_wanted(c) is leg.owner), None)
        if channel is not None:
            self._waiting.remove(channel)
            self._open_on_a_leg(channel)

    def waiting(self, owner: Client | None = None) -> int:
        """Session opens waiting for a leg of `owner` (None: a shared leg)."""
        return sum(1 for channel in self._waiting if self._owner_wanted(channel) is owner)

    def _forget_if_done(self, channel: Channel) -> None:
        if channel.client_closed and channel.server_closed:
            self._forget(channel)

    def _channel(self, recipient: int) -> Channel:
        channel = self._channels.get(recipient)
        if channel is None:
            raise ProtocolViolation(f"message for unknown channel {recipient}")
        return channel

    def _primary(self) -> Leg:
        if not self._legs:
            raise ProtocolViolation("no connection to the job")
        return self._legs[0]

    # -- flow control --------------------------------------------------------------------

    def congested(self, side: Client | Leg, congested: bool) -> None:
        """A client's or leg's transport has more than its threshold waiting to be written
        (or has drained): hold back what goes to it meanwhile, then send it on."""
        if congested:
            if side.attached if isinstance(side, Client) else side in self._legs:
                self._congested.add(side)
            return
        self._congested.discard(side)
        if isinstance(side, Leg):
            self._release_readers()
        for relay_id in list(side.channels):
            channel = self._channels.get(relay_id)
            if channel is not None:
                flow = channel.up if isinstance(side, Leg) else channel.down
                self._pump(channel, flow)
                self._grant(channel, flow)

    def _release_readers(self) -> None:
        held, self._held_readers = self._held_readers, set()
        for client in held:
            client.link.hold_reading(False)

    def _route(self, channel: Channel, flow: Flow) -> tuple[Client | Leg | None, ClientLink | LegLink | None,
                                                            int | None]:
        """Where `flow` goes: its receiver, that side's link and the channel's id there
        (None while unknown, or when the client is gone)."""
        if flow is channel.down:
            client = channel.client
            return client, client.link, channel.client_id if client.attached else None
        leg = channel.leg
        return leg, leg.link if leg is not None else None, channel.server_id

    def _budget(self, flow: Flow) -> int:
        """What the job's budget lets `flow` be granted now, RESERVE at least."""
        reserve = min(flow.limit, RESERVE) - flow.granted - flow.queued
        return max(JOB_WINDOW - self._held, reserve, 0)

    def _granted_open(self, channel: Channel, flow: Flow, rest: bytes) -> bytes:
        """An open's or confirmation's window, packet size and type data with the window the
        relay grants the sender and the packet size it takes in place of the receiver's."""
        self._held -= flow.granted  # a session open moved to another leg is granted anew
        flow.granted = 0
        flow.granted = min(flow.limit, self._budget(flow))
        self._held += flow.granted
        if 2 * flow.granted < flow.limit:
            self._starved[flow] = channel
        return u32(flow.granted) + u32(RELAY_MAX_PACKET) + rest[8:]

    def _adjusted(self, channel: Channel, flow: Flow, amount: int) -> None:
        """The receiver of `flow` opened its window by `amount`."""
        flow.window += amount
        if flow.window > 0xFFFFFFFF:
            raise ProtocolViolation(f"window adjust overflows the window of channel {channel.relay_id}")
        flow.limit = min(CHANNEL_WINDOW, max(flow.limit, flow.window))
        self._pump(channel, flow)
        self._grant(channel, flow)

    def _forward(self, channel: Channel, flow: Flow, msgnum: int, payload: bytes) -> None:
        """Pass a channel message from `flow`'s sender on, behind what is queued before it."""
        size = 0
        if msgnum in DATA_MESSAGES:
            start = data_start(msgnum)
            size = Reader(payload[start - 4 : start]).u32()
            if start + size != len(payload):
                raise ProtocolViolation(f"data on channel {channel.relay_id} does not match its length")
            if size > flow.granted:
                raise ProtocolViolation(f"peer ignored channel window: {size} bytes on channel {channel.relay_id} "
                                        f"with {flow.granted} granted")
            flow.granted -= size
        receiver, link, recipient = self._route(channel, flow)
        if link is None or recipient is None:
            self._held -= size  # nobody to give it to: dropped
            return
        if msgnum == CHANNEL_CLOSE and channel.client_closed and channel.server_closed:
            self._drop_queue(flow)  # the other side closed already: what is queued is moot
        if not flow.queue and receiver not in self._congested and size <= min(flow.window, flow.max_packet):
            link.send(msgnum, readdressed(recipient, payload))
            if size:
                flow.window -= size
                self._release(channel, flow, size)
            return
        if msgnum in DATA_MESSAGES:
            flow.queued += size
        else:
            flow.extra += len(payload)
            if flow.extra > QUEUE_SLACK:
                raise ProtocolViolation(f"too many messages for channel {channel.relay_id} while its receiver "
                                        "does not read")
        flow.queue.append((msgnum, payload, 0))
        self._pump(channel, flow)

    def _pump(self, channel: Channel, flow: Flow) -> None:
        """Send on as much of `flow`'s queue as its receiver's window and transport take,
        splitting data at the receiver's maximum packet size."""
        receiver, link, recipient = self._route(channel, flow)
        if link is None or recipient is None:
            return
        sent = 0
        queue = flow.queue
        while queue and receiver not in self._congested:
            msgnum, payload, done = queue[0]
            if msgnum not in DATA_MESSAGES:
                queue.popleft()
                flow.extra -= len(payload)
                link.send(msgnum, readdressed(recipient, payload))
                continue
            start = data_start(msgnum)
            left = len(payload) - start - done
            size = min(left, flow.window, flow.max_packet)
            if size <= 0 < left:
                break
            if size == left and not done:
                link.send(msgnum, readdressed(recipient, payload))
            else:
                begin = start + done
                link.send(msgnum, b"".join((u32(recipient), payload[4 : start - 4], u32(size),
                                            memoryview(payload)[begin : begin + size])))
            if size == left:
                queue.popleft()
            else:
                queue[0] = (msgnum, payload, done + size)
            flow.window -= size
            flow.queued -= size
            sent += size
        if sent:
            self._release(channel, flow, sent)

    def _release(self, channel: Channel, flow: Flow, size: int) -> None:
        """`size` bytes of `flow` left the relay: refill its sender's window, or another's."""
        self._held -= size
        self._grant(channel, flow)
        if self._starved:
            starved, self._starved = self._starved, {}
            for other, owner in starved.items():
                if owner.relay_id in self._channels:
                    self._grant(owner, other)

    def _grant(self, channel: Channel, flow: Flow) -> None:
        """Open the sender's window again once at least half of `flow`'s limit is free (what
        a congested receiver does not take stays queued, so its sender is granted no more),
        as far as the job's budget goes (the rest once data moves on)."""
        if channel.client_closed or channel.server_closed or channel.relay_id not in self._channels:
            return
        room = flow.limit - flow.granted - flow.queued
        if 2 * room < flow.limit or room <= 0:
            return
        _, link, recipient = self._route(channel, channel.up if flow is channel.down else channel.down)  # the sender
        amount = min(room, self._budget(flow))
        if amount < room or link is None or recipient is None:
            self._starved[flow] = channel
        if amount <= 0 or link is None or recipient is None:
            return
        flow.granted += amount
        self._held += amount
        link.send(CHANNEL_WINDOW_ADJUST, u32(recipient) + u32(amount))

    def _drop_queue(self, flow: Flow) -> None:
        self._held -= flow.queued
        flow.queue.clear()
        flow.queued = flow.extra = 0

    # -- from a client -----------------------------------------------------------------

    def from_client(self, client: Client, msgnum: int, payload: bytes) -> None:
        """Handle one connection-layer message from a client connection."""
        if not client.attached:
            return
        check_size(msgnum, payload)
        check_client_message(msgnum, payload)
        if msgnum in (CHANNEL_OPEN, GLOBAL_REQUEST) and not self._congested.isdisjoint(self._legs):
            # bypasses the channels' flow control: stop reading this client until the leg drains
            self._held_readers.add(client)
            client.link.hold_reading(True)
        if msgnum in CHANNEL_MESSAGES:
            self._client_channel_message(client, msgnum, payload)
        elif msgnum == CHANNEL_OPEN:
            self._client_open(client, payload)
        elif msgnum in (CHANNEL_OPEN_CONFIRMATION, CHANNEL_OPEN_FAILURE):
            self._client_open_reply(client, msgnum, payload)
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
        reader = Reader(payload)
        channel = self._owned(client, reader.u32())
        if channel.held is not None:
            self._hold(channel, msgnum, payload)
            return
        if channel.leg is None or channel.server_id is None or channel.client_id is None:
            raise ProtocolViolation(f"message {msgnum} on channel {channel.relay_id} before it was open")
        if channel.client_closed:
            if msgnum == CHANNEL_CLOSE:
                return
            raise ProtocolViolation(f"message {msgnum} on channel {channel.relay_id} after its close")
        # What sshd would end the whole connection for, though each message parses:
        if msgnum in (CHANNEL_DATA, CHANNEL_EXTENDED_DATA) and channel.client_eof:
            raise ProtocolViolation(f"data on channel {channel.relay_id} after its EOF")
        if msgnum == CHANNEL_WINDOW_ADJUST:
            self._adjusted(channel, channel.down, reader.u32())
            return
        if msgnum == CHANNEL_EOF:
            channel.client_eof = True
        elif msgnum == CHANNEL_REQUEST:
            name = reader.string()
            if name in _FORWARDING_REQUESTS:
                payload = self._forwarding_checked(channel, payload)
            elif name == b"pty-req":
                if channel.pty_requested:
                    raise ProtocolViolation(f"second pty request on channel {channel.relay_id}")
                channel.pty_requested = True
        elif msgnum == CHANNEL_CLOSE:
            channel.client_closed = True
        self._forward(channel, channel.up, msgnum, payload)
        if msgnum == CHANNEL_CLOSE:
            self._forget_if_done(channel)

    @staticmethod
    def _forwarding_checked(channel: Channel, payload: bytes) -> bytes:
        """A forwarding request as it may go to the channel's leg: on a leg its client does
        not own it would set up forwarding for others' sessions, so sshd gets one it refuses."""
        assert channel.leg is not None
        reader = Reader(payload)
        reader.u32()
        if reader.string() not in _FORWARDING_REQUESTS or channel.leg.owner is channel.client:
            return payload
        return payload[:4] + string(_REFUSED_REQUEST) + bytes([reader.boolean()])

    def _hold(self, channel: Channel, msgnum: int, payload: bytes) -> None:
        """A client message on a session the job has not confirmed yet: kept for it, and
        the leg picked once the messages settle which kind it must be."""
        if channel.server_closed:  # no leg took it and the relay closed it: the client's close ends it
            if msgnum == CHANNEL_CLOSE:
                self._forget(channel)
            return
        if channel.client_closed:
            if msgnum == CHANNEL_CLOSE:
                return
            raise ProtocolViolation(f"message {msgnum} on channel {channel.relay_id} after its close")
        if msgnum in (CHANNEL_DATA, CHANNEL_EXTENDED_DATA):  # its window is 0 until then
            raise ProtocolViolation(f"data on channel {channel.relay_id} before its session started")
        reader = Reader(payload)
        reader.u32()
        settles = False  # whether the leg it needs is known (or the client may await an answer)
        if msgnum == CHANNEL_CLOSE:
            channel.client_closed = True
            if channel.leg is None:  # the job never heard of it
                if channel in self._waiting:
                    self._waiting.remove(channel)
                channel.client.link.send(CHANNEL_CLOSE, u32(channel.client_id))
                self._forget(channel)
                return
        elif msgnum == CHANNEL_WINDOW_ADJUST:  # the relay's own flow control takes it, as later on
            self._adjusted(channel, channel.down, reader.u32())
            return
        elif msgnum == CHANNEL_EOF:
            channel.client_eof = True
        elif msgnum == CHANNEL_REQUEST:
            name = reader.string()
            if name == b"pty-req":
                if channel.pty_requested:
                    raise ProtocolViolation(f"second pty request on channel {channel.relay_id}")
                channel.pty_requested = True
            channel.forwarding = channel.forwarding or (name in _FORWARDING_REQUESTS and not channel.leg_picked)
            settles = reader.boolean() or name not in _SETUP_REQUESTS
        channel.held.append((msgnum, payload))
        channel.held_bytes += len(payload)
        if len(channel.held) > MAX_HELD_MESSAGES or channel.held_bytes > MAX_HELD_BYTES:
            raise ProtocolViolation(f"too many messages on channel {channel.relay_id} before the job opened it")
        if len(channel.held) * 2 >= MAX_HELD_MESSAGES or channel.held_bytes * 2 >= MAX_HELD_BYTES:
            settles = True
        if settles and not channel.leg_picked:
            channel.leg_picked = True
            self._open_on_a_leg(channel)

    def _fail_session(self, channel: Channel, reason: str) -> None:
        """No leg can take a session the relay confirmed itself: the client gets failure for
        the requests it awaits, the reason on its stderr, and the channel's close."""
        self._unplace(channel)
        channel.leg = None
        channel.server_closed = True
        held, channel.held = channel.held or [], []
        if not channel.client.attached or channel.client_closed:
            if channel.client.attached:
                channel.client.link.send(CHANNEL_CLOSE, u32(channel.client_id))
            self._forget(channel)
            return
        send = channel.client.link.send
        for msgnum, payload in held:
            if msgnum == CHANNEL_REQUEST:
                request = Reader(payload)
                request.u32(), request.skip_string()
                if request.boolean():
                    send(CHANNEL_FAILURE, u32(channel.client_id))
        end = "\r\n" if channel.pty_requested else "\n"
        note = f"condor-relay: {reason}{end}".encode()
        if channel.down.window >= len(note):
            send(CHANNEL_EXTENDED_DATA, u32(channel.client_id) + u32(EXTENDED_DATA_STDERR) + string(note))
        send(CHANNEL_CLOSE, u32(channel.client_id))

    def _client_open(self, client: Client, payload: bytes) -> None:
        reader = Reader(payload)
        kind = reader.string()
        sender = reader.u32()
        if kind == b"session" and client.no_more_sessions:
            client.link.send(
                CHANNEL_OPEN_FAILURE, open_failure(sender, OPEN_ADMINISTRATIVELY_PROHIBITED, b"no more sessions")
            )
            return
        if len(client.channels) >= MAX_CHANNELS_PER_CLIENT:
            client.link.send(CHANNEL_OPEN_FAILURE, open_failure(sender, OPEN_RESOURCE_SHORTAGE, _TOO_MANY_CHANNELS))
            return
        channel = self._allocate(kind, client, None, client_id=sender, server_id=None)
        channel.open_rest = reader.rest()
        rest = Reader(channel.open_rest)
        channel.down.receiver_window(rest.u32(), rest.u32())
        if kind != b"session":
            self._open_on_a_leg(channel)
            return
        channel.held = []  # its leg is picked once its requests say whether it forwards
        client.link.send(CHANNEL_OPEN_CONFIRMATION, u32(sender) + u32(channel.relay_id) + u32(0)
                         + u32(RELAY_MAX_PACKET))

    def _open_on_a_leg(self, channel: Channel) -> None:
        owner = self._owner_wanted(channel)
        if channel.kind == b"session":
            leg = next((leg for leg in self._legs if leg.owner is owner and leg.sessions < leg.capacity), None)
        else:
            leg = self._legs[0] if self._legs else None
        if leg is None:
            self._waiting.append(channel)
            # negotiated side by side, as many as the waiting opens fill (a few at a time)
            wanted = min(-(-self.waiting(owner) // self._max_sessions), MAX_LEGS_IN_NEGOTIATION)
            while self._legs_requested.get(owner, 0) < wanted:
                self._legs_requested[owner] = self._legs_requested.get(owner, 0) + 1
                self._need_leg(owner)
            return
        self._place(channel, leg)
        leg.link.send(CHANNEL_OPEN, string(channel.kind) + u32(channel.relay_id)
                      + self._granted_open(channel, channel.down, channel.open_rest))

    def _client_open_reply(self, client: Client, msgnum: int, payload: bytes) -> None:
        reader = Reader(payload)
        channel = self._owned(client, reader.u32())
        if channel.client_id is not None or channel.server_id is None or channel.leg is None:
            raise ProtocolViolation(f"open reply for channel {channel.relay_id} that was not being opened")
        if msgnum == CHANNEL_OPEN_CONFIRMATION:
            channel.client_id = reader.u32()
            rest = reader.rest()
            window = Reader(rest)
            channel.down.receiver_window(window.u32(), window.u32())
            channel.leg.link.send(msgnum, u32(channel.server_id) + u32(channel.relay_id)
                                  + self._granted_open(channel, channel.down, rest))
        else:
            self._forget(channel)
            channel.leg.link.send(msgnum, u32(channel.server_id) + reader.rest())

    def _client_global_request(self, client: Client, payload: bytes) -> None:
        reader = Reader(payload)
        name = reader.string()
        want_reply = reader.boolean()
        if name in _LOCAL_GLOBAL_REQUESTS:
            if name == b"no-more-sessions@openssh.com":
                client.no_more_sessions = True
            if want_reply:
                # sshd answers keepalives with a failure too; the client only wants an answer
                client.link.send(REQUEST_FAILURE, b"")
            return
        leg = self._primary()
        if name.startswith(b"cancel-") and name in GLOBAL_FIELDS:
            if leg.forwards.get(forward_key(name, Reader(reader.rest()))) is not client:
                if want_reply:  # not this client's forward: the job's sshd is not asked
                    client.link.send(REQUEST_FAILURE, b"")
                return
        if want_reply:
            leg.pending_replies.append((client, name, reader.rest()))
        leg.link.send(GLOBAL_REQUEST, payload)

    # -- from a leg --------------------------------------------------------------------

    def from_leg(self, leg: Leg, msgnum: int, payload: bytes) -> None:
        """Handle one connection-layer message from the job's sshd on `leg`."""
        check_size(msgnum, payload)
        if msgnum in CHANNEL_MESSAGES:
            self._leg_channel_message(leg, msgnum, payload)
        elif msgnum in (CHANNEL_OPEN_CONFIRMATION, CHANNEL_OPEN_FAILURE):
            self._leg_open_reply(leg, msgnum, payload)
        elif msgnum == CHANNEL_OPEN:
            self._leg_open(leg, payload)
        elif msgnum == GLOBAL_REQUEST:
            reader = Reader(payload)
            reader.string()
            if reader.boolean():  # e.g. keepalive; hostkeys-00 must not reach clients
                leg.link.send(REQUEST_FAILURE, b"")
        elif msgnum in (REQUEST_SUCCESS, REQUEST_FAILURE):
            self._leg_global_reply(leg, msgnum, payload)
        else:
            raise ProtocolViolation(f"unexpected message {msgnum} from the job")

    def _leg_channel(self, leg: Leg, payload: bytes) -> tuple[Channel, Reader]:
        reader = Reader(payload)
        channel = self._channel(reader.u32())
        if channel.leg is not leg:
            raise ProtocolViolation(f"channel {channel.relay_id} is not on this connection")
        return channel, reader

    def _leg_channel_message(self, leg: Leg, msgnum: int, payload: bytes) -> None:
        channel, reader = self._leg_channel(leg, payload)
        if msgnum == CHANNEL_WINDOW_ADJUST:
            self._adjusted(channel, channel.up, reader.u32())
            return
        if msgnum == CHANNEL_CLOSE:
            channel.server_closed = True
            if not channel.client.attached:
                channel.client_closed = True
        self._forward(channel, channel.down, msgnum, payload)
        if msgnum == CHANNEL_CLOSE:
            self._forget_if_done(channel)

    def _leg_open_reply(self, leg: Leg, msgnum: int, payload: bytes) -> None:
        channel, reader = self._leg_channel(leg, payload)
        if channel.server_id is not None or channel.client_id is None:
            raise ProtocolViolation(f"open reply for channel {channel.relay_id} that was not being opened")
        if msgnum == CHANNEL_OPEN_FAILURE:
            if channel.kind == b"session" and leg.sessions > 1 and not channel.moved:
                self._move_refused_session(channel, leg)
                return
            if channel.held is not None:
                reader.u32()  # the reason code
                text = reader.string().decode(errors="replace")
                self._fail_session(channel, f"the job refused the session: {text}")
                return
            self._forget(channel)
            if channel.client.attached:
                channel.client.link.send(msgnum, u32(channel.client_id) + reader.rest())
            return
        channel.server_id = reader.u32()
        channel.open_rest = b""
        rest = reader.rest()
        window = Reader(rest)
        channel.up.receiver_window(window.u32(), window.u32())
        if not channel.client.attached:
            channel.client_closed = True
            leg.link.send(CHANNEL_CLOSE, u32(channel.server_id))
            return
        if channel.held is not None:
            self._replay(channel, rest)
            return
        channel.client.link.send(msgnum, u32(channel.client_id) + u32(channel.relay_id)
                                 + self._granted_open(channel, channel.up, rest))

    def _replay(self, channel: Channel, rest: bytes) -> None:
        """The job confirmed a session the relay had confirmed (with window 0): the window the
        relay grants goes to the client, the held messages to the job, in order."""
        assert channel.held is not None and channel.server_id is not None
        held, channel.held, channel.held_bytes = channel.held, None, 0
        granted = Reader(self._granted_open(channel, channel.up, rest)).u32()
        if granted:
            channel.client.link.send(CHANNEL_WINDOW_ADJUST, u32(channel.client_id) + u32(granted))
        for msgnum, payload in held:
            if msgnum == CHANNEL_REQUEST:
                payload = self._forwarding_checked(channel, payload)
            self._forward(channel, channel.up, msgnum, payload)
        if channel.client_closed:
            self._forget_if_done(channel)
        else:
            self._grant(channel, channel.down)  # the client's adjusts while it was held

    def _move_refused_session(self, channel: Channel, leg: Leg) -> None:
        """sshd refused a session beside others: take that as its MaxSessions and retry.

        Its limit may be lower than ours, or a just-closed session may not be released
        yet; either way this connection takes no more than it holds now.
        """
        leg.channels.discard(channel.relay_id)
        leg.sessions -= 1
        leg.capacity = min(leg.capacity, leg.sessions)
        channel.leg = None
        channel.moved = True
        if channel.client.attached:
            self._open_on_a_leg(channel)
        else:
            self._forget(channel)

    def _leg_open(self, leg: Leg, payload: bytes) -> None:
        reader = Reader(payload)
        kind = reader.string()
        sender = reader.u32()
        window, max_packet = reader.u32(), reader.u32()
        client = self._route_server_open(leg, kind, Reader(reader.rest()))
        if client is None:
            leg.link.send(
                CHANNEL_OPEN_FAILURE,
                open_failure(sender, OPEN_ADMINISTRATIVELY_PROHIBITED, b"no client for this " + kind + b" channel"),
            )
            return
        if len(client.channels) >= MAX_CHANNELS_PER_CLIENT:
            leg.link.send(CHANNEL_OPEN_FAILURE, open_failure(sender, OPEN_RESOURCE_SHORTAGE, _TOO_MANY_CHANNELS))
            return
        channel = self._allocate(kind, client, leg, client_id=None, server_id=sender)
        channel.up.receiver_window(window, max_packet)
        client.link.send(CHANNEL_OPEN, string(kind) + u32(channel.relay_id)
                         + self._granted_open(channel, channel.up, payload[len(kind) + 8 :]))

    @staticmethod
    def _route_server_open(leg: Leg, kind: bytes, extra: Reader) -> Client | None:
        """Pick the client a channel opened by the job's sshd belongs to: agent and X11
        channels only ever to the owner of the leg (no one's on a shared leg)."""
        if kind == b"forwarded-tcpip":
            address, port = extra.string(), extra.u32()
            return leg.forwards.get((address, port))
        if kind == b"forwarded-streamlocal@openssh.com":
            return leg.forwards.get(extra.string())
        if kind in (b"auth-agent@openssh.com", b"x11") and leg.owner is not None and leg.owner.attached:
            return leg.owner
        return None

    def _leg_global_reply(self, leg: Leg, msgnum: int, payload: bytes) -> None:
        if not leg.pending_replies:
            raise ProtocolViolation("global request reply with no request outstanding")
        client, name, data = leg.pending_replies.popleft()
        if msgnum == REQUEST_SUCCESS:
            self._note_forward(leg, client, name, Reader(data), payload)
        if client.attached:
            client.link.send(msgnum, payload)

    def _note_forward(self, leg: Leg, client: Client, name: bytes, request: Reader, reply: bytes) -> None:
        """Remember which client a successful (cancel-)forward request belongs to."""
        if name not in GLOBAL_FIELDS:
            return
        key = forward_key(name, request)
        if name == b"tcpip-forward" and isinstance(key, tuple) and key[1] == 0 and len(reply) >= 4:
            key = (key[0], Reader(reply).u32())  # the port the job's sshd picked
        if name.startswith(b"cancel-"):
            leg.forwards.pop(key, None)
        elif client.attached:
            leg.forwards[key] = client
        else:
            self._cancel_forward(leg, key)  # its client left before the job answered
