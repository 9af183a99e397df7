"""The relay core without sockets: channel-id translation, routing and clean-up."""

import struct

import pytest

from relayd import relay as r


def u32(v):
    return struct.pack(">L", v)


def s(b):
    return u32(len(b)) + b


class Link:
    def __init__(self):
        self.sent = []
        self.disconnected = None

    def send(self, msgnum, payload):
        self.sent.append((msgnum, payload))

    def disconnect(self, reason, closing=0):
        self.disconnected = reason
        self.closing = closing


class LegLink:
    def __init__(self, sent):
        self.sent = sent

    def send(self, msgnum, payload):
        self.sent.append((msgnum, payload))


class Harness:
    def __init__(self, max_sessions=10):
        self.legs_wanted = 0
        self.idle = []
        self.relay = r.Relay(self.want_leg, self.idle.append, max_sessions=max_sessions)

    def want_leg(self, owner):
        assert owner is None  # owned legs: see OwnerHarness
        self.legs_wanted += 1


@pytest.fixture
def setup():
    upstream = []
    harness = Harness()
    relay = harness.relay
    relay.leg = relay.add_leg(LegLink(upstream))
    return relay, upstream


def session_open(relay, client, client_id, window=2 << 20):
    """The client opens a session, which the relay confirms itself as sshd does: its relay id."""
    relay.from_client(client, r.CHANNEL_OPEN, s(b"session") + u32(client_id) + u32(window) + u32(32768))
    num, payload = client.link.sent.pop()
    assert num == r.CHANNEL_OPEN_CONFIRMATION and payload[:4] == u32(client_id)
    assert payload[8:] == u32(0) + u32(32768)  # no window until the session starts
    return struct.unpack(">L", payload[4:8])[0]


def request(relay, client, relay_id, name, want_reply=False, data=b""):
    relay.from_client(client, r.CHANNEL_REQUEST, u32(relay_id) + s(name) + bytes([want_reply]) + data)


def open_session(relay, upstream, client, client_id, server_id, leg=None):
    """A session started with a shell, opened at the job on `leg` (the first one by default)."""
    relay_id = session_open(relay, client, client_id)
    request(relay, client, relay_id, b"shell")
    num, payload = upstream.pop()
    assert (num, payload) == (r.CHANNEL_OPEN, s(b"session") + u32(relay_id) + u32(2 << 20) + u32(32768))
    relay.from_leg(leg or relay.leg, r.CHANNEL_OPEN_CONFIRMATION,
                   u32(relay_id) + u32(server_id) + u32(1 << 20) + u32(16384))
    assert upstream.pop() == (r.CHANNEL_REQUEST, u32(server_id) + s(b"shell") + b"\0")
    assert client.link.sent.pop() == (r.CHANNEL_WINDOW_ADJUST, u32(client_id) + u32(1 << 20))
    return relay_id


def test_two_clients_with_the_same_channel_ids_do_not_collide(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    ra = open_session(relay, upstream, a, 0, 100)
    rb = open_session(relay, upstream, b, 0, 101)
    assert ra != rb
    relay.from_client(a, r.CHANNEL_DATA, u32(ra) + s(b"from a"))
    relay.from_client(b, r.CHANNEL_DATA, u32(rb) + s(b"from b"))
    assert upstream[-2:] == [(r.CHANNEL_DATA, u32(100) + s(b"from a")), (r.CHANNEL_DATA, u32(101) + s(b"from b"))]
    relay.from_leg(relay.leg, r.CHANNEL_EXTENDED_DATA, u32(rb) + u32(1) + s(b"err"))
    assert b.link.sent == [(r.CHANNEL_EXTENDED_DATA, u32(0) + u32(1) + s(b"err"))]
    assert a.link.sent == []


def test_window_adjust_and_requests_pass_through(setup):
    relay, upstream = setup
    a = relay.attach(Link())
    rid = open_session(relay, upstream, a, 3, 7)
    relay.from_client(a, r.CHANNEL_WINDOW_ADJUST, u32(rid) + u32(65536))
    relay.from_client(a, r.CHANNEL_REQUEST, u32(rid) + s(b"exec") + b"\1" + s(b"true"))
    assert upstream[-2:] == [
        (r.CHANNEL_WINDOW_ADJUST, u32(7) + u32(65536)),
        (r.CHANNEL_REQUEST, u32(7) + s(b"exec") + b"\1" + s(b"true")),
    ]
    relay.from_leg(relay.leg, r.CHANNEL_SUCCESS, u32(rid))
    relay.from_leg(relay.leg, r.CHANNEL_REQUEST, u32(rid) + s(b"exit-status") + b"\0" + u32(7))
    exit_status = (r.CHANNEL_REQUEST, u32(3) + s(b"exit-status") + b"\0" + u32(7))
    assert a.link.sent == [(r.CHANNEL_SUCCESS, u32(3)), exit_status]


def test_close_from_both_sides_frees_the_channel(setup):
    relay, upstream = setup
    a = relay.attach(Link())
    rid = open_session(relay, upstream, a, 0, 9)
    relay.from_leg(relay.leg, r.CHANNEL_CLOSE, u32(rid))
    assert relay.channels == 1
    relay.from_client(a, r.CHANNEL_CLOSE, u32(rid))
    assert upstream[-1] == (r.CHANNEL_CLOSE, u32(9))
    assert relay.channels == 0


def test_detached_client_closes_its_channels_upstream(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    ra = open_session(relay, upstream, a, 0, 10)
    open_session(relay, upstream, b, 0, 11)
    relay.detach(a)
    assert upstream[-1] == (r.CHANNEL_CLOSE, u32(10))
    relay.from_leg(relay.leg, r.CHANNEL_DATA, u32(ra) + s(b"late"))  # dropped, not sent to b
    relay.from_leg(relay.leg, r.CHANNEL_CLOSE, u32(ra))
    assert b.link.sent == [] and relay.channels == 1 and relay.clients == 1


def test_open_pending_when_client_leaves_is_closed_on_confirmation(setup):
    relay, upstream = setup
    a = relay.attach(Link())
    rid = session_open(relay, a, 0, window=1000)
    request(relay, a, rid, b"exec", data=s(b"true"))
    assert upstream[-1][0] == r.CHANNEL_OPEN
    relay.detach(a)
    relay.from_leg(relay.leg, r.CHANNEL_OPEN_CONFIRMATION, u32(rid) + u32(5) + u32(1000) + u32(1000))
    assert upstream[-1] == (r.CHANNEL_CLOSE, u32(5))
    relay.from_leg(relay.leg, r.CHANNEL_CLOSE, u32(rid))
    assert relay.channels == 0


def test_foreign_channel_is_a_protocol_violation(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    ra = open_session(relay, upstream, a, 0, 1)
    with pytest.raises(r.ProtocolViolation):
        relay.from_client(b, r.CHANNEL_DATA, u32(ra) + s(b"sneaky"))
    with pytest.raises(r.ProtocolViolation):
        relay.from_client(b, r.CHANNEL_DATA, b"\0")


def test_keepalive_is_answered_locally_and_hostkeys_are_not_passed_on(setup):
    relay, upstream = setup
    a = relay.attach(Link())
    relay.from_client(a, r.GLOBAL_REQUEST, s(b"keepalive@openssh.com") + b"\1")
    assert a.link.sent == [(r.REQUEST_FAILURE, b"")] and upstream == []
    relay.from_leg(relay.leg, r.GLOBAL_REQUEST, s(b"hostkeys-00@openssh.com") + b"\0" + s(b"key"))
    assert a.link.sent == [(r.REQUEST_FAILURE, b"")] and upstream == []


def test_no_more_sessions_applies_to_that_client_only(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    relay.from_client(a, r.GLOBAL_REQUEST, s(b"no-more-sessions@openssh.com") + b"\0")
    relay.from_client(a, r.CHANNEL_OPEN, s(b"session") + u32(4) + u32(1) + u32(1))
    assert a.link.sent[-1][0] == r.CHANNEL_OPEN_FAILURE and upstream == []
    assert relay.channels == 0
    open_session(relay, upstream, b, 0, 1)


def test_remote_forward_channels_go_to_the_client_that_asked(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    relay.from_client(a, r.GLOBAL_REQUEST, s(b"tcpip-forward") + b"\1" + s(b"localhost") + u32(0))
    relay.from_client(b, r.GLOBAL_REQUEST, s(b"tcpip-forward") + b"\1" + s(b"localhost") + u32(8022))
    relay.from_leg(relay.leg, r.REQUEST_SUCCESS, u32(40001))  # a's, with the allocated port
    relay.from_leg(relay.leg, r.REQUEST_SUCCESS, b"")
    assert a.link.sent == [(r.REQUEST_SUCCESS, u32(40001))] and b.link.sent == [(r.REQUEST_SUCCESS, b"")]
    extra = s(b"localhost") + u32(40001) + s(b"127.0.0.1") + u32(5555)
    relay.from_leg(relay.leg, r.CHANNEL_OPEN, s(b"forwarded-tcpip") + u32(77) + u32(1000) + u32(500) + extra)
    num, payload = a.link.sent[-1]
    assert num == r.CHANNEL_OPEN and payload.endswith(u32(1000) + u32(500) + extra)
    rid = struct.unpack(">L", payload[19:23])[0]
    relay.from_client(a, r.CHANNEL_OPEN_CONFIRMATION, u32(rid) + u32(12) + u32(2000) + u32(600))
    assert upstream[-1] == (r.CHANNEL_OPEN_CONFIRMATION, u32(77) + u32(rid) + u32(2000) + u32(600))
    relay.detach(a)  # the job stops listening for a client that is gone
    assert (r.GLOBAL_REQUEST, s(b"cancel-tcpip-forward") + b"\0" + s(b"localhost") + u32(40001)) in upstream


def test_unroutable_server_open_is_refused(setup):
    relay, upstream = setup
    relay.attach(Link())
    relay.from_leg(relay.leg, r.CHANNEL_OPEN, s(b"auth-agent@openssh.com") + u32(3) + u32(1) + u32(1))
    assert upstream[-1][0] == r.CHANNEL_OPEN_FAILURE and upstream[-1][1][:4] == u32(3)


def test_shutdown_disconnects_every_client(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    open_session(relay, upstream, a, 0, 1)
    sent = len(upstream)
    relay.shutdown("job 1.0 completed")
    assert a.link.disconnected == b.link.disconnected == "job 1.0 completed"
    assert len(upstream) == sent and relay.channels == 0 and relay.clients == 0
    # the open session hears why (a ControlMaster's mux client sees nothing else), then closes
    note = b"condor-relay: job 1.0 completed\n"
    assert a.link.sent[-2:] == [(r.CHANNEL_EXTENDED_DATA, u32(0) + u32(1) + s(note)), (r.CHANNEL_CLOSE, u32(0))]
    assert (a.link.closing, b.link.closing) == (1, 0)


def test_sessions_beyond_max_sessions_wait_for_another_leg():
    harness = Harness(max_sessions=2)
    relay = harness.relay
    first = []
    relay.add_leg(LegLink(first))
    client = relay.attach(Link())
    for i in range(3):
        request(relay, client, session_open(relay, client, i, window=100), b"shell")
    assert len(first) == 2 and harness.legs_wanted == 1
    relay.from_client(client, r.CHANNEL_OPEN, s(b"direct-tcpip") + u32(9) + u32(100) + u32(100) + s(b"h") + u32(1)
                      + s(b"o") + u32(2))
    assert len(first) == 3 and first[-1][1].startswith(s(b"direct-tcpip"))  # not limited by MaxSessions
    second = []
    leg2 = relay.add_leg(LegLink(second))
    assert len(second) == 1 and second[0][1].startswith(s(b"session"))
    rid = struct.unpack(">L", second[0][1][11:15])[0]
    relay.from_leg(leg2, r.CHANNEL_OPEN_CONFIRMATION, u32(rid) + u32(0) + u32(100) + u32(100))
    assert client.link.sent[-1] == (r.CHANNEL_WINDOW_ADJUST, u32(2) + u32(100))
    assert second[-1] == (r.CHANNEL_REQUEST, u32(0) + s(b"shell") + b"\0")
    with pytest.raises(r.ProtocolViolation):  # a leg may only speak for its own channels
        relay.from_leg(relay.legs[0], r.CHANNEL_DATA, u32(rid) + s(b"x"))
    relay.from_client(client, r.CHANNEL_CLOSE, u32(rid))
    relay.from_leg(leg2, r.CHANNEL_CLOSE, u32(rid))
    assert harness.idle == [leg2]


def test_waiting_sessions_fail_when_no_leg_can_be_made():
    harness = Harness(max_sessions=1)
    relay = harness.relay
    relay.add_leg(LegLink([]))
    client = relay.attach(Link())
    request(relay, client, session_open(relay, client, 0, window=100), b"shell")
    rid = session_open(relay, client, 1, window=100)
    request(relay, client, rid, b"pty-req", data=s(b"xterm") + u32(80) + u32(24) + u32(0) + u32(0) + s(b""))
    request(relay, client, rid, b"shell", want_reply=True)
    relay.leg_failed("job 1.0: too many negotiations")
    note = b"condor-relay: job 1.0: too many negotiations\r\n"  # the pty is in raw mode
    assert client.link.sent[-3:] == [(r.CHANNEL_FAILURE, u32(1)), (r.CHANNEL_EXTENDED_DATA, u32(1) + u32(1) + s(note)),
                                     (r.CHANNEL_CLOSE, u32(1))]
    relay.from_client(client, r.CHANNEL_WINDOW_ADJUST, u32(rid) + u32(100))  # sent before it saw the close
    relay.from_client(client, r.CHANNEL_CLOSE, u32(rid))
    assert relay.channels == 1


def test_lost_leg_closes_its_channels_towards_clients(setup):
    relay, upstream = setup
    a = relay.attach(Link())
    open_session(relay, upstream, a, 5, 50)
    relay.remove_leg(relay.leg)
    assert a.link.sent[-1] == (r.CHANNEL_CLOSE, u32(5)) and relay.channels == 0


def test_a_session_refused_beside_others_moves_to_another_leg():
    harness = Harness(max_sessions=10)
    relay = harness.relay
    first = []
    relay.leg = leg1 = relay.add_leg(LegLink(first))
    client = relay.attach(Link())
    open_session(relay, first, client, 0, 10)
    rid = session_open(relay, client, 1, window=100)
    request(relay, client, rid, b"shell")
    relay.from_leg(leg1, r.CHANNEL_OPEN_FAILURE, u32(rid) + u32(2) + s(b"open failed") + s(b""))
    assert harness.legs_wanted == 1 and leg1.capacity == 1  # the job's sshd allows 1 here
    second = []
    relay.add_leg(LegLink(second))
    assert second[-1] == (r.CHANNEL_OPEN, s(b"session") + u32(rid) + u32(100) + u32(32768))


def test_a_burst_of_sessions_negotiates_legs_side_by_side():
    harness = Harness(max_sessions=2)
    relay = harness.relay
    relay.add_leg(LegLink([]))
    client = relay.attach(Link())
    for i in range(2 + 5):
        request(relay, client, session_open(relay, client, i, window=100), b"shell")
    assert harness.legs_wanted == 3  # 5 waiting opens fill three more legs, asked for at once
    relay.leg_failed("the starter refused")  # the two legs still coming take four of them
    refused = [p for n, p in client.link.sent if n == r.CHANNEL_CLOSE]
    assert [p[:4] for p in refused] == [u32(6)]  # the most recent one
    relay.from_client(client, r.CHANNEL_CLOSE, u32(6))
    for _ in range(2):
        sent = []
        relay.add_leg(LegLink(sent))
        assert len(sent) == 2
    assert harness.legs_wanted == 3 and relay.channels == 6
    for i in range(20):
        request(relay, client, session_open(relay, client, 100 + i, window=100), b"shell")
    assert harness.legs_wanted == 3 + r.MAX_LEGS_IN_NEGOTIATION


def test_shutdown_leaves_a_session_with_a_full_window_to_the_disconnect_message(setup):
    relay, upstream = setup
    client = relay.attach(Link())
    relay_id = open_session(relay, upstream, client, 0, 1)
    chunk = b"x" * 32768
    for _ in range((2 << 20) // len(chunk)):  # a download fills the client's whole window
        relay.from_leg(relay.leg, r.CHANNEL_DATA, u32(relay_id) + s(chunk))
    relay.shutdown("connection to job 1.0 lost")
    assert client.link.sent[-1][0] == r.CHANNEL_DATA  # no note (no room for it), no close
    assert client.link.disconnected == "connection to job 1.0 lost" and client.link.closing == 0
