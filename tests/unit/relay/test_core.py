"""The relay core without sockets: channel-id translation, routing and clean-up."""

import struct

import pytest

from relayd.common import errors
from relayd.relay import core as r
from relayd.relay import state as st
from relayd.relay import wire as w

u32, s = w.u32, w.string


class Link:
    def __init__(self):
        self.sent = []
        self.disconnected = None
        self.reading_held = False

    def hold_reading(self, held):
        self.reading_held = held

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
    relay.from_client(client, w.CHANNEL_OPEN, s(b"session") + u32(client_id) + u32(window) + u32(32768))
    num, payload = client.link.sent.pop()
    assert num == w.CHANNEL_OPEN_CONFIRMATION and payload[:4] == u32(client_id)
    assert payload[8:] == u32(0) + u32(r.RELAY_MAX_PACKET)  # no window until the session starts
    return struct.unpack(">L", payload[4:8])[0]


def request(relay, client, relay_id, name, want_reply=False, data=b""):
    relay.from_client(client, w.CHANNEL_REQUEST, u32(relay_id) + s(name) + bytes([want_reply]) + data)


def open_session(relay, upstream, client, client_id, server_id, leg=None):
    """A session started with a shell, opened at the job on `leg` (the first one by default)."""
    relay_id = session_open(relay, client, client_id)
    request(relay, client, relay_id, b"shell")
    num, payload = upstream.pop()
    assert (num, payload) == (w.CHANNEL_OPEN, s(b"session") + u32(relay_id) + u32(2 << 20) + u32(r.RELAY_MAX_PACKET))
    relay.from_leg(leg or relay.leg, w.CHANNEL_OPEN_CONFIRMATION,
                   u32(relay_id) + u32(server_id) + u32(1 << 20) + u32(16384))
    assert upstream.pop() == (w.CHANNEL_REQUEST, u32(server_id) + s(b"shell") + b"\0")
    assert client.link.sent.pop() == (w.CHANNEL_WINDOW_ADJUST, u32(client_id) + u32(1 << 20))
    return relay_id


def test_two_clients_with_the_same_channel_ids_do_not_collide(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    ra = open_session(relay, upstream, a, 0, 100)
    rb = open_session(relay, upstream, b, 0, 101)
    assert ra != rb
    relay.from_client(a, w.CHANNEL_DATA, u32(ra) + s(b"from a"))
    relay.from_client(b, w.CHANNEL_DATA, u32(rb) + s(b"from b"))
    assert upstream[-2:] == [(w.CHANNEL_DATA, u32(100) + s(b"from a")), (w.CHANNEL_DATA, u32(101) + s(b"from b"))]
    relay.from_leg(relay.leg, w.CHANNEL_EXTENDED_DATA, u32(rb) + u32(1) + s(b"err"))
    assert b.link.sent == [(w.CHANNEL_EXTENDED_DATA, u32(0) + u32(1) + s(b"err"))]
    assert a.link.sent == []


def test_requests_pass_through_and_window_adjusts_stay_at_the_relay(setup):
    relay, upstream = setup
    a = relay.attach(Link())
    rid = open_session(relay, upstream, a, 3, 7)
    sent = len(upstream)
    relay.from_client(a, w.CHANNEL_WINDOW_ADJUST, u32(rid) + u32(65536))
    relay.from_client(a, w.CHANNEL_REQUEST, u32(rid) + s(b"exec") + b"\1" + s(b"true"))
    assert upstream[sent:] == [(w.CHANNEL_REQUEST, u32(7) + s(b"exec") + b"\1" + s(b"true"))]
    relay.from_leg(relay.leg, w.CHANNEL_SUCCESS, u32(rid))
    relay.from_leg(relay.leg, w.CHANNEL_REQUEST, u32(rid) + s(b"exit-status") + b"\0" + u32(7))
    exit_status = (w.CHANNEL_REQUEST, u32(3) + s(b"exit-status") + b"\0" + u32(7))
    assert a.link.sent == [(w.CHANNEL_SUCCESS, u32(3)), exit_status]


def test_close_from_both_sides_frees_the_channel(setup):
    relay, upstream = setup
    a = relay.attach(Link())
    rid = open_session(relay, upstream, a, 0, 9)
    relay.from_leg(relay.leg, w.CHANNEL_CLOSE, u32(rid))
    assert relay.channels == 1
    relay.from_client(a, w.CHANNEL_CLOSE, u32(rid))
    assert upstream[-1] == (w.CHANNEL_CLOSE, u32(9))
    assert relay.channels == 0


def test_detached_client_closes_its_channels_upstream(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    ra = open_session(relay, upstream, a, 0, 10)
    open_session(relay, upstream, b, 0, 11)
    relay.detach(a)
    assert upstream[-1] == (w.CHANNEL_CLOSE, u32(10))
    relay.from_leg(relay.leg, w.CHANNEL_DATA, u32(ra) + s(b"late"))  # dropped, not sent to b
    relay.from_leg(relay.leg, w.CHANNEL_CLOSE, u32(ra))
    assert b.link.sent == [] and relay.channels == 1 and relay.clients == 1


def test_open_pending_when_client_leaves_is_closed_on_confirmation(setup):
    relay, upstream = setup
    a = relay.attach(Link())
    rid = session_open(relay, a, 0, window=1000)
    request(relay, a, rid, b"exec", data=s(b"true"))
    assert upstream[-1][0] == w.CHANNEL_OPEN
    relay.detach(a)
    relay.from_leg(relay.leg, w.CHANNEL_OPEN_CONFIRMATION, u32(rid) + u32(5) + u32(1000) + u32(1000))
    assert upstream[-1] == (w.CHANNEL_CLOSE, u32(5))
    relay.from_leg(relay.leg, w.CHANNEL_CLOSE, u32(rid))
    assert relay.channels == 0


def test_foreign_channel_is_a_protocol_violation(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    ra = open_session(relay, upstream, a, 0, 1)
    with pytest.raises(errors.ProtocolViolation):
        relay.from_client(b, w.CHANNEL_DATA, u32(ra) + s(b"sneaky"))
    with pytest.raises(errors.ProtocolViolation):
        relay.from_client(b, w.CHANNEL_DATA, b"\0")


def test_keepalive_is_answered_locally_and_hostkeys_are_not_passed_on(setup):
    relay, upstream = setup
    a = relay.attach(Link())
    relay.from_client(a, w.GLOBAL_REQUEST, s(b"keepalive@openssh.com") + b"\1")
    assert a.link.sent == [(w.REQUEST_FAILURE, b"")] and upstream == []
    relay.from_leg(relay.leg, w.GLOBAL_REQUEST, s(b"hostkeys-00@openssh.com") + b"\0" + s(b"key"))
    assert a.link.sent == [(w.REQUEST_FAILURE, b"")] and upstream == []


def test_no_more_sessions_applies_to_that_client_only(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    relay.from_client(a, w.GLOBAL_REQUEST, s(b"no-more-sessions@openssh.com") + b"\0")
    relay.from_client(a, w.CHANNEL_OPEN, s(b"session") + u32(4) + u32(1) + u32(1))
    assert a.link.sent[-1][0] == w.CHANNEL_OPEN_FAILURE and upstream == []
    assert relay.channels == 0
    open_session(relay, upstream, b, 0, 1)


def test_remote_forward_channels_go_to_the_client_that_asked(setup):
    relay, upstream = setup
    a, b = relay.attach(Link()), relay.attach(Link())
    relay.from_client(a, w.GLOBAL_REQUEST, s(b"tcpip-forward") + b"\1" + s(b"localhost") + u32(0))
    relay.from_client(b, w.GLOBAL_REQUEST, s(b"tcpip-forward") + b"\1" + s(b"localhost") + u32(8022))
    relay.from_leg(relay.leg, w.REQUEST_SUCCESS, u32(40001))  # a's, with the allocated port
    relay.from_leg(relay.leg, w.REQUEST_SUCCESS, b"")
    assert a.link.sent == [(w.REQUEST_SUCCESS, u32(40001))] and b.link.sent == [(w.REQUEST_SUCCESS, b"")]
    extra = s(b"localhost") + u32(40001) + s(b"127.0.0.1") + u32(5555)
    relay.from_leg(relay.leg, w.CHANNEL_OPEN, s(b"forwarded-tcpip") + u32(77) + u32(1000) + u32(500) + extra)
    num, payload = a.link.sent[-1]
    assert num == w.CHANNEL_OPEN and payload.endswith(u32(1000) + u32(r.RELAY_MAX_PACKET) + extra)
    rid = struct.unpack(">L", payload[19:23])[0]
    relay.from_client(a, w.CHANNEL_OPEN_CONFIRMATION, u32(rid) + u32(12) + u32(2000) + u32(600))
    assert upstream[-1] == (w.CHANNEL_OPEN_CONFIRMATION, u32(77) + u32(rid) + u32(2000) + u32(r.RELAY_MAX_PACKET))
    relay.detach(a)  # the job stops listening for a client that is gone
    assert (w.GLOBAL_REQUEST, s(b"cancel-tcpip-forward") + b"\0" + s(b"localhost") + u32(40001)) in upstream


def test_unroutable_server_open_is_refused(setup):
    relay, upstream = setup
    relay.attach(Link())
    relay.from_leg(relay.leg, w.CHANNEL_OPEN, s(b"auth-agent@openssh.com") + u32(3) + u32(1) + u32(1))
    assert upstream[-1][0] == w.CHANNEL_OPEN_FAILURE and upstream[-1][1][:4] == u32(3)


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
    assert a.link.sent[-2:] == [(w.CHANNEL_EXTENDED_DATA, u32(0) + u32(1) + s(note)), (w.CHANNEL_CLOSE, u32(0))]
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
    relay.from_client(client, w.CHANNEL_OPEN, s(b"direct-tcpip") + u32(9) + u32(100) + u32(100) + s(b"h") + u32(1)
                      + s(b"o") + u32(2))
    assert len(first) == 3 and first[-1][1].startswith(s(b"direct-tcpip"))  # not limited by MaxSessions
    second = []
    leg2 = relay.add_leg(LegLink(second))
    assert len(second) == 1 and second[0][1].startswith(s(b"session"))
    rid = struct.unpack(">L", second[0][1][11:15])[0]
    relay.from_leg(leg2, w.CHANNEL_OPEN_CONFIRMATION, u32(rid) + u32(0) + u32(100) + u32(100))
    assert client.link.sent[-1] == (w.CHANNEL_WINDOW_ADJUST, u32(2) + u32(100))
    assert second[-1] == (w.CHANNEL_REQUEST, u32(0) + s(b"shell") + b"\0")
    with pytest.raises(errors.ProtocolViolation):  # a leg may only speak for its own channels
        relay.from_leg(relay.legs[0], w.CHANNEL_DATA, u32(rid) + s(b"x"))
    relay.from_client(client, w.CHANNEL_CLOSE, u32(rid))
    relay.from_leg(leg2, w.CHANNEL_CLOSE, u32(rid))
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
    assert client.link.sent[-3:] == [(w.CHANNEL_FAILURE, u32(1)), (w.CHANNEL_EXTENDED_DATA, u32(1) + u32(1) + s(note)),
                                     (w.CHANNEL_CLOSE, u32(1))]
    relay.from_client(client, w.CHANNEL_WINDOW_ADJUST, u32(rid) + u32(100))  # sent before it saw the close
    relay.from_client(client, w.CHANNEL_CLOSE, u32(rid))
    assert relay.channels == 1


def test_lost_leg_closes_its_channels_towards_clients(setup):
    relay, upstream = setup
    a = relay.attach(Link())
    open_session(relay, upstream, a, 5, 50)
    relay.remove_leg(relay.leg)
    assert a.link.sent[-1] == (w.CHANNEL_CLOSE, u32(5)) and relay.channels == 0


def test_a_session_refused_beside_others_moves_to_another_leg():
    harness = Harness(max_sessions=10)
    relay = harness.relay
    first = []
    relay.leg = leg1 = relay.add_leg(LegLink(first))
    client = relay.attach(Link())
    open_session(relay, first, client, 0, 10)
    rid = session_open(relay, client, 1, window=100)
    request(relay, client, rid, b"shell")
    relay.from_leg(leg1, w.CHANNEL_OPEN_FAILURE, u32(rid) + u32(2) + s(b"open failed") + s(b""))
    assert harness.legs_wanted == 1 and leg1.capacity == 1  # the job's sshd allows 1 here
    second = []
    relay.add_leg(LegLink(second))
    assert second[-1] == (w.CHANNEL_OPEN, s(b"session") + u32(rid) + u32(100) + u32(r.RELAY_MAX_PACKET))


def test_a_burst_of_sessions_negotiates_legs_side_by_side():
    harness = Harness(max_sessions=2)
    relay = harness.relay
    relay.add_leg(LegLink([]))
    client = relay.attach(Link())
    for i in range(2 + 5):
        request(relay, client, session_open(relay, client, i, window=100), b"shell")
    assert harness.legs_wanted == 3  # 5 waiting opens fill three more legs, asked for at once
    relay.leg_failed("the starter refused")  # the two legs still coming take four of them
    refused = [p for n, p in client.link.sent if n == w.CHANNEL_CLOSE]
    assert [p[:4] for p in refused] == [u32(6)]  # the most recent one
    relay.from_client(client, w.CHANNEL_CLOSE, u32(6))
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
        relay.from_leg(relay.leg, w.CHANNEL_DATA, u32(relay_id) + s(chunk))
    relay.shutdown("connection to job 1.0 lost")
    assert client.link.sent[-1][0] == w.CHANNEL_DATA  # no note (no room for it), no close
    assert client.link.disconnected == "connection to job 1.0 lost" and client.link.closing == 0


# -- agent and X11 forwarding: a leg of the client's own ------------------------------------


class OwnerHarness:
    """A relay with a shared first leg that records which legs it asks for, by owner."""

    def __init__(self):
        self.wanted = []
        self.idle = []
        self.relay = r.Relay(self.wanted.append, self.idle.append)
        self.shared = []
        self.relay.leg = self.relay.add_leg(LegLink(self.shared))

    def owned_leg(self, owner):
        """Answer the need_leg call for `owner`; the new leg and what it was sent."""
        self.wanted.remove(owner)
        sent = []
        return self.relay.add_leg(LegLink(sent), owner), sent


AGENT = b"auth-agent-req@openssh.com"
X11 = b"\0" + s(b"MIT-MAGIC-COOKIE-1") + s(b"00" * 16) + u32(0)


def forwarding_session(harness, client, client_id, server_id, name=AGENT, data=b"", want_reply=False):
    """What `ssh -A job` (or -X) does: a session asking to forward, then a shell, on its own leg."""
    rid = session_open(harness.relay, client, client_id)
    request(harness.relay, client, rid, name, want_reply=want_reply, data=data)
    assert harness.wanted[-1] is client and harness.shared == []
    request(harness.relay, client, rid, b"shell")
    leg, sent = harness.owned_leg(client)
    assert leg.owner is client and sent[0][0] == w.CHANNEL_OPEN
    harness.relay.from_leg(leg, w.CHANNEL_OPEN_CONFIRMATION, u32(rid) + u32(server_id) + u32(0) + u32(32768))
    assert sent[1:] == [(w.CHANNEL_REQUEST, u32(server_id) + s(name) + bytes([want_reply]) + data),
                        (w.CHANNEL_REQUEST, u32(server_id) + s(b"shell") + b"\0")]
    return rid, leg, sent


def test_two_clients_forwarding_their_agents_get_a_leg_each_and_only_their_own_agent():
    harness = OwnerHarness()
    relay = harness.relay
    a, b = relay.attach(Link()), relay.attach(Link())
    _, leg_a, sent_a = forwarding_session(harness, a, 0, 100)
    _, leg_b, sent_b = forwarding_session(harness, b, 0, 200)
    assert leg_a is not leg_b and len(relay.legs) == 3
    # the job's processes in each session reach their own client's agent, whoever asked last
    for leg, sent, owner, other in ((leg_a, sent_a, a, b), (leg_b, sent_b, b, a)):
        before = len(other.link.sent)
        relay.from_leg(leg, w.CHANNEL_OPEN, s(b"auth-agent@openssh.com") + u32(7) + u32(4096) + u32(1024))
        num, payload = owner.link.sent[-1]
        assert num == w.CHANNEL_OPEN and payload.startswith(s(b"auth-agent@openssh.com"))
        assert len(other.link.sent) == before


def test_x11_channels_go_to_the_owner_of_the_leg_only():
    harness = OwnerHarness()
    relay = harness.relay
    a, plain = relay.attach(Link()), relay.attach(Link())
    open_session(relay, harness.shared, plain, 0, 1)
    _, leg, sent = forwarding_session(harness, a, 0, 100, name=b"x11-req", data=X11, want_reply=True)
    relay.from_leg(leg, w.CHANNEL_OPEN, s(b"x11") + u32(8) + u32(4096) + u32(1024) + s(b"127.0.0.1") + u32(40000))
    assert a.link.sent[-1][0] == w.CHANNEL_OPEN and plain.link.sent == []
    # on the shared leg nobody forwards X11: such a channel is refused
    relay.from_leg(relay.leg, w.CHANNEL_OPEN, s(b"x11") + u32(9) + u32(4096) + u32(1024) + s(b"127.0.0.1") + u32(1))
    assert harness.shared[-1][0] == w.CHANNEL_OPEN_FAILURE and plain.link.sent == []


def test_a_plain_session_never_goes_on_an_owned_leg():
    harness = OwnerHarness()
    relay = harness.relay
    a, plain = relay.attach(Link()), relay.attach(Link())
    _, leg, sent = forwarding_session(harness, a, 0, 100)
    for i in range(3):  # neither another client's nor the owner's own plain sessions
        for client in (plain, a):
            open_session(relay, harness.shared, client, 10 + i, 20 + i)
    assert leg.sessions == 1 and len(sent) == 3
    # global requests stay on the shared leg too
    relay.from_client(a, w.GLOBAL_REQUEST, s(b"tcpip-forward") + b"\1" + s(b"localhost") + u32(0))
    assert harness.shared[-1][0] == w.GLOBAL_REQUEST and len(sent) == 3


def test_an_owners_second_forwarding_session_reuses_its_leg():
    harness = OwnerHarness()
    relay = harness.relay
    a = relay.attach(Link())
    _, leg, sent = forwarding_session(harness, a, 0, 100)
    rid = session_open(relay, a, 1)
    request(relay, a, rid, AGENT)
    assert harness.wanted == [] and sent[-1] == (w.CHANNEL_OPEN, s(b"session") + u32(rid) + u32(2 << 20) + u32(r.RELAY_MAX_PACKET))


def test_the_owner_leaving_closes_its_leg_and_a_finished_session_too():
    harness = OwnerHarness()
    relay = harness.relay
    a, b = relay.attach(Link()), relay.attach(Link())
    _, leg_a, sent_a = forwarding_session(harness, a, 0, 100)
    relay.from_leg(leg_a, w.CHANNEL_OPEN, s(b"auth-agent@openssh.com") + u32(7) + u32(4096) + u32(1024))
    relay.detach(a)
    assert harness.idle == [leg_a] and leg_a not in relay.legs
    assert len(sent_a) == 3  # nothing more is said on it: it is closed
    # b's leg goes once its session (and the agent channel in it) have closed
    rid, leg_b, _ = forwarding_session(harness, b, 0, 200)
    relay.from_leg(leg_b, w.CHANNEL_OPEN, s(b"auth-agent@openssh.com") + u32(8) + u32(4096) + u32(1024))
    agent_rid = struct.unpack(">L", b.link.sent[-1][1][26:30])[0]
    relay.from_client(b, w.CHANNEL_OPEN_CONFIRMATION, u32(agent_rid) + u32(5) + u32(4096) + u32(1024))
    for relay_id in (rid, agent_rid):
        relay.from_leg(leg_b, w.CHANNEL_CLOSE, u32(relay_id))
        relay.from_client(b, w.CHANNEL_CLOSE, u32(relay_id))
        assert (leg_b in relay.legs) == (relay_id == rid)
    assert harness.idle == [leg_a, leg_b] and relay.legs == [relay.leg]


def test_a_leg_for_an_owner_who_left_is_not_taken():
    harness = OwnerHarness()
    relay = harness.relay
    a = relay.attach(Link())
    rid = session_open(relay, a, 0)
    request(relay, a, rid, AGENT)
    relay.detach(a)
    leg, sent = harness.owned_leg(a)
    assert leg is None and sent == [] and relay.legs == [relay.leg]


def test_requests_are_replayed_in_order_and_their_replies_reach_the_client():
    harness = OwnerHarness()
    relay = harness.relay
    a = relay.attach(Link())
    rid = session_open(relay, a, 3)
    pty = s(b"xterm") + u32(80) + u32(24) + u32(0) + u32(0) + s(b"\x81" + u32(38400) + b"\0")
    held = [(b"x11-req", True, X11), (AGENT, False, b""), (b"pty-req", True, pty),
            (b"env", False, s(b"LANG") + s(b"C")), (b"exec", True, s(b"xterm"))]
    for name, want_reply, data in held:
        request(relay, a, rid, name, want_reply, data)
    relay.from_client(a, w.CHANNEL_EOF, u32(rid))  # ssh -n: EOF may come before the job confirms
    leg, sent = harness.owned_leg(a)
    assert a.link.sent == [] and len(sent) == 1
    relay.from_leg(leg, w.CHANNEL_OPEN_CONFIRMATION, u32(rid) + u32(42) + u32(0) + u32(32768))
    assert sent[1:] == [(w.CHANNEL_REQUEST, u32(42) + s(n) + bytes([want]) + d) for n, want, d in held] + [
        (w.CHANNEL_EOF, u32(42))]
    assert a.link.sent == []  # the job's confirmation is consumed; its window was 0
    for reply in (w.CHANNEL_SUCCESS, w.CHANNEL_FAILURE, w.CHANNEL_SUCCESS):
        relay.from_leg(leg, reply, u32(rid))
    relay.from_leg(leg, w.CHANNEL_WINDOW_ADJUST, u32(rid) + u32(2 << 20))  # sshd starts the session
    assert a.link.sent == [(w.CHANNEL_SUCCESS, u32(3)), (w.CHANNEL_FAILURE, u32(3)), (w.CHANNEL_SUCCESS, u32(3)),
                           (w.CHANNEL_WINDOW_ADJUST, u32(3) + u32(2 << 20))]


def test_a_refused_open_fails_the_awaited_requests_and_says_why():
    harness = OwnerHarness()
    relay = harness.relay
    a = relay.attach(Link())
    rid = session_open(relay, a, 3)
    request(relay, a, rid, b"x11-req", True, X11)
    request(relay, a, rid, b"env", False, s(b"LANG") + s(b"C"))
    request(relay, a, rid, b"shell", True)
    leg, sent = harness.owned_leg(a)
    relay.from_leg(leg, w.CHANNEL_OPEN_FAILURE, u32(rid) + u32(2) + s(b"open failed") + s(b""))
    note = b"condor-relay: the job refused the session: open failed\n"
    assert a.link.sent == [(w.CHANNEL_FAILURE, u32(3)), (w.CHANNEL_FAILURE, u32(3)),
                           (w.CHANNEL_EXTENDED_DATA, u32(3) + u32(1) + s(note)), (w.CHANNEL_CLOSE, u32(3))]
    assert harness.idle == [leg] and relay.legs == [relay.leg]  # the owned leg has nothing left
    relay.from_client(a, w.CHANNEL_CLOSE, u32(rid))
    assert relay.channels == 0


def test_a_failed_owned_leg_says_why():
    harness = OwnerHarness()
    relay = harness.relay
    a = relay.attach(Link())
    rid = session_open(relay, a, 0)
    request(relay, a, rid, AGENT)
    request(relay, a, rid, b"exec", True, s(b"ssh-add -l"))
    harness.wanted.remove(a)
    relay.leg_failed("job 1.0: too many negotiations", a)
    assert a.link.sent[0] == (w.CHANNEL_FAILURE, u32(0))
    assert b"could not connect for agent or X11 forwarding: job 1.0: too many negotiations" in a.link.sent[1][1]
    assert a.link.sent[2] == (w.CHANNEL_CLOSE, u32(0))


def test_forwarding_asked_for_after_the_leg_was_picked_is_refused_by_the_job():
    harness = OwnerHarness()
    relay = harness.relay
    a = relay.attach(Link())
    rid = session_open(relay, a, 0)
    request(relay, a, rid, b"pty-req", True, s(b"xterm") + u32(80) + u32(24) + u32(0) + u32(0) + s(b""))
    request(relay, a, rid, AGENT, True)  # asyncssh awaits its pty before asking to forward
    assert harness.wanted == [] and harness.shared[-1][0] == w.CHANNEL_OPEN
    relay.from_leg(relay.leg, w.CHANNEL_OPEN_CONFIRMATION, u32(rid) + u32(5) + u32(0) + u32(32768))
    assert harness.shared[-1] == (w.CHANNEL_REQUEST, u32(5) + s(b"forwarding-refused@condor-relay") + b"\1")
    request(relay, a, rid, b"x11-req", False, X11)  # after the job confirmed: the same
    assert harness.shared[-1] == (w.CHANNEL_REQUEST, u32(5) + s(b"forwarding-refused@condor-relay") + b"\0")


def test_a_session_closed_before_it_started_never_reaches_the_job():
    harness = OwnerHarness()
    relay = harness.relay
    a = relay.attach(Link())
    rid = session_open(relay, a, 0)
    request(relay, a, rid, b"env", False, s(b"A") + s(b"b"))
    relay.from_client(a, w.CHANNEL_CLOSE, u32(rid))
    assert a.link.sent == [(w.CHANNEL_CLOSE, u32(0))] and harness.shared == [] and relay.channels == 0


def test_held_messages_are_bounded():
    harness = OwnerHarness()
    relay = harness.relay
    a = relay.attach(Link())
    rid = session_open(relay, a, 0)
    for i in range(r.MAX_HELD_MESSAGES // 2):
        request(relay, a, rid, b"env", False, s(b"V%d" % i) + s(b"x"))
    assert harness.shared[-1][0] == w.CHANNEL_OPEN  # half the bound picks the leg
    with pytest.raises(errors.ProtocolViolation):
        for i in range(r.MAX_HELD_MESSAGES // 2 + 1):
            request(relay, a, rid, b"env", False, s(b"W%d" % i) + s(b"x"))
    with pytest.raises(errors.ProtocolViolation):  # data: its window is 0 until the session starts
        relay.from_client(a, w.CHANNEL_DATA, u32(session_open(relay, a, 1)) + s(b"x"))


def test_a_close_before_the_job_confirmed_follows_the_held_requests():
    harness = OwnerHarness()
    relay = harness.relay
    a = relay.attach(Link())
    rid = session_open(relay, a, 0)
    request(relay, a, rid, b"exec", True, s(b"sleep 9"))
    relay.from_client(a, w.CHANNEL_CLOSE, u32(rid))  # ssh interrupted at once
    relay.from_leg(relay.leg, w.CHANNEL_OPEN_CONFIRMATION, u32(rid) + u32(6) + u32(0) + u32(32768))
    assert harness.shared[1:] == [(w.CHANNEL_REQUEST, u32(6) + s(b"exec") + b"\1" + s(b"sleep 9")),
                                  (w.CHANNEL_CLOSE, u32(6))]
    relay.from_leg(relay.leg, w.CHANNEL_SUCCESS, u32(rid))
    relay.from_leg(relay.leg, w.CHANNEL_CLOSE, u32(rid))
    assert a.link.sent == [(w.CHANNEL_SUCCESS, u32(0)), (w.CHANNEL_CLOSE, u32(0))] and relay.channels == 0


def test_a_lost_owned_leg_ends_a_session_it_had_not_confirmed_with_the_reason():
    harness = OwnerHarness()
    relay = harness.relay
    a = relay.attach(Link())
    rid = session_open(relay, a, 0)
    request(relay, a, rid, AGENT)
    request(relay, a, rid, b"exec", True, s(b"true"))
    leg, _ = harness.owned_leg(a)
    relay.remove_leg(leg)
    assert a.link.sent[0] == (w.CHANNEL_FAILURE, u32(0)) and a.link.sent[-1] == (w.CHANNEL_CLOSE, u32(0))
    assert b"connection to the job lost" in a.link.sent[1][1] and relay.legs == [relay.leg]

# -- flow control: the relay's own windows ---------------------------------------------------


def data(recipient, size):
    return u32(recipient) + s(b"x" * size)


TCPIP = s(b"direct-tcpip")
TCPIP_FIELDS = s(b"localhost") + u32(22) + s(b"127.0.0.1") + u32(40000)
ID_AT = slice(len(TCPIP), len(TCPIP) + 4)  # in the open the leg gets: the relay's id,
WINDOW_AT = slice(len(TCPIP) + 4, len(TCPIP) + 8)  # then the window granted the job


def tcpip_open(relay, client, window):
    """A direct-tcpip open, which (unlike a session) the relay passes to the job at once."""
    relay.from_client(client, w.CHANNEL_OPEN, TCPIP + u32(0) + u32(window) + u32(32768) + TCPIP_FIELDS)


def test_the_relay_grants_at_most_its_channel_window(setup):
    relay, upstream = setup
    client = relay.attach(Link())
    tcpip_open(relay, client, 64 << 20)
    num, payload = upstream.pop()
    assert payload[WINDOW_AT.start:WINDOW_AT.stop + 4] == u32(st.CHANNEL_WINDOW) + u32(r.RELAY_MAX_PACKET)  # not the client's 64 MiB
    relay_id = struct.unpack(">L", payload[ID_AT])[0]
    relay.from_leg(relay.leg, w.CHANNEL_OPEN_CONFIRMATION, u32(relay_id) + u32(1) + u32(64 << 20) + u32(32768))
    assert client.link.sent[-1][1][8:] == u32(st.CHANNEL_WINDOW) + u32(r.RELAY_MAX_PACKET)


def test_a_job_that_ignores_the_window_is_dropped(setup):
    relay, upstream = setup
    client = relay.attach(Link())
    relay_id = open_session(relay, upstream, client, 0, 1)  # the leg got the client's 2 MiB
    relay.congested(client, True)  # so the relay grants no more
    for _ in range(64):
        relay.from_leg(relay.leg, w.CHANNEL_DATA, data(relay_id, 32768))
    with pytest.raises(errors.ProtocolViolation, match="peer ignored channel window"):
        relay.from_leg(relay.leg, w.CHANNEL_DATA, data(relay_id, 1))


def test_a_client_that_ignores_the_window_is_dropped(setup):
    relay, upstream = setup
    client = relay.attach(Link())
    relay_id = open_session(relay, upstream, client, 0, 1)  # the client got the job's 1 MiB
    with pytest.raises(errors.ProtocolViolation, match="peer ignored channel window"):
        relay.from_client(client, w.CHANNEL_DATA, data(relay_id, (1 << 20) + 1))


def test_data_waits_for_the_receivers_window_and_the_sender_is_refilled_as_it_moves_on(setup):
    relay, upstream = setup
    client = relay.attach(Link())
    tcpip_open(relay, client, 65536)
    relay_id = struct.unpack(">L", upstream.pop()[1][ID_AT])[0]
    relay.from_leg(relay.leg, w.CHANNEL_OPEN_CONFIRMATION, u32(relay_id) + u32(1) + u32(1 << 20) + u32(32768))
    client.link.sent.clear()
    relay.from_leg(relay.leg, w.CHANNEL_DATA, data(relay_id, 32768))
    relay.from_leg(relay.leg, w.CHANNEL_DATA, data(relay_id, 32768))
    relay.from_leg(relay.leg, w.CHANNEL_EOF, u32(relay_id))
    assert [m for m, _ in client.link.sent] == [w.CHANNEL_DATA, w.CHANNEL_DATA, w.CHANNEL_EOF]
    # refilled as the data moved on, with no adjust from the client
    assert [p for m, p in upstream if m == w.CHANNEL_WINDOW_ADJUST] == [u32(1) + u32(32768)] * 2
    relay.from_leg(relay.leg, w.CHANNEL_DATA, data(relay_id, 100))  # the client's window is spent
    relay.from_leg(relay.leg, w.CHANNEL_CLOSE, u32(relay_id))
    assert len(client.link.sent) == 3
    relay.from_client(client, w.CHANNEL_WINDOW_ADJUST, u32(relay_id) + u32(60))
    relay.from_client(client, w.CHANNEL_WINDOW_ADJUST, u32(relay_id) + u32(60))
    assert client.link.sent[3:] == [(w.CHANNEL_DATA, data(0, 60)), (w.CHANNEL_DATA, data(0, 40)),
                                    (w.CHANNEL_CLOSE, u32(0))]


def test_client_data_is_split_at_the_jobs_packet_size(setup):
    relay, upstream = setup
    client = relay.attach(Link())
    relay_id = open_session(relay, upstream, client, 0, 1)  # the job takes 16 KiB packets
    upstream.clear()
    relay.from_client(client, w.CHANNEL_DATA, u32(relay_id) + s(bytes(range(256)) * 200))
    assert [len(p) - 8 for _, p in upstream] == [16384, 16384, 16384, 2048]
    assert b"".join(p[8:] for _, p in upstream) == bytes(range(256)) * 200
    assert all(m == w.CHANNEL_DATA and p[:8] == u32(1) + u32(len(p) - 8) for m, p in upstream)


def test_a_congested_client_gets_no_more_window_granted_until_it_drains(setup):
    relay, upstream = setup
    slow, other = relay.attach(Link()), relay.attach(Link())
    slow_id = open_session(relay, upstream, slow, 0, 1)
    other_id = open_session(relay, upstream, other, 0, 2)
    relay.congested(slow, True)
    upstream.clear()
    for _ in range(64):  # the slow client's whole grant, and more for the other client
        relay.from_leg(relay.leg, w.CHANNEL_DATA, data(slow_id, 32768))
        relay.from_leg(relay.leg, w.CHANNEL_DATA, data(other_id, 32768))
    assert len(other.link.sent) == 64 and not [p for m, p in slow.link.sent if m == w.CHANNEL_DATA]
    adjusts = [p for m, p in upstream if m == w.CHANNEL_WINDOW_ADJUST]
    assert adjusts and all(p[:4] == u32(2) for p in adjusts)  # the other client's channel only
    with pytest.raises(errors.ProtocolViolation, match="peer ignored channel window"):
        relay.from_leg(relay.leg, w.CHANNEL_DATA, data(slow_id, 1))
    relay.congested(slow, False)  # drained: what was held goes on, and the job may send again
    assert len([m for m, _ in slow.link.sent if m == w.CHANNEL_DATA]) == 64
    assert upstream[-1][0] == w.CHANNEL_WINDOW_ADJUST and upstream[-1][1][:4] == u32(1)


def test_the_jobs_grants_stay_within_its_budget_and_a_reserve_per_channel():
    harness = Harness(max_sessions=100)
    relay = harness.relay
    upstream = []
    relay.leg = relay.add_leg(LegLink(upstream))
    stopped = relay.attach(Link())
    windows = []
    for _ in range(st.JOB_WINDOW // st.CHANNEL_WINDOW + 2):  # each channel is granted what the job has left
        tcpip_open(relay, stopped, 2 << 20)
        windows.append(struct.unpack(">L", upstream[-1][1][WINDOW_AT])[0])
    # beyond the budget, the least a channel gets, so that it never waits on the others
    assert windows == [st.CHANNEL_WINDOW] * (st.JOB_WINDOW // st.CHANNEL_WINDOW) + [st.RESERVE] * 2
    first = struct.unpack(">L", upstream[0][1][ID_AT])[0]
    relay.from_leg(relay.leg, w.CHANNEL_OPEN_CONFIRMATION, u32(first) + u32(1) + u32(1 << 20) + u32(16384))
    assert stopped.link.sent[-1][1][8:12] == u32(st.RESERVE)  # the up direction too
    upstream.clear()
    for _ in range(16):  # the job sends the client some of what it was granted, which moves on
        relay.from_leg(relay.leg, w.CHANNEL_DATA, data(first, 16384))
    # what moved on is granted again, to the channels that got least, down to the budget
    adjusts = [p for m, p in upstream + stopped.link.sent if m == w.CHANNEL_WINDOW_ADJUST]
    assert sum(struct.unpack(">L", p[4:])[0] for p in adjusts) == 16 * 16384 - 3 * st.RESERVE


def test_a_client_that_opens_towards_a_congested_leg_is_not_read_from_until_it_drains(setup):
    relay, upstream = setup
    client = relay.attach(Link())
    relay.congested(relay.leg, True)
    relay.from_client(client, w.GLOBAL_REQUEST, s(b"tcpip-forward") + b"\0" + s(b"localhost") + u32(8000))
    assert client.link.reading_held
    relay.congested(relay.leg, False)
    assert not client.link.reading_held


def test_messages_that_would_outgrow_the_jobs_packet_limit_are_refused(setup):
    relay, upstream = setup
    client = relay.attach(Link())
    name = s(b"x-flood@example.org") + b"\0"
    relay.from_client(client, w.GLOBAL_REQUEST, name + s(b"y" * (262_120 - len(name) - 4)))
    with pytest.raises(errors.ProtocolViolation, match="longer than"):
        relay.from_client(client, w.GLOBAL_REQUEST, name + s(b"y" * (262_138 - len(name) - 4)))


def test_only_the_owner_cancels_a_remote_forward(setup):
    relay, upstream = setup
    owner, other = relay.attach(Link()), relay.attach(Link())
    forward = s(b"localhost") + u32(8022)
    relay.from_client(owner, w.GLOBAL_REQUEST, s(b"tcpip-forward") + b"\1" + forward)
    relay.from_leg(relay.leg, w.REQUEST_SUCCESS, b"")
    sent = len(upstream)
    relay.from_client(other, w.GLOBAL_REQUEST, s(b"cancel-tcpip-forward") + b"\1" + forward)
    assert other.link.sent == [(w.REQUEST_FAILURE, b"")] and len(upstream) == sent
    relay.from_client(owner, w.GLOBAL_REQUEST, s(b"cancel-tcpip-forward") + b"\1" + forward)
    assert upstream[-1] == (w.GLOBAL_REQUEST, s(b"cancel-tcpip-forward") + b"\1" + forward)


def test_a_close_queued_behind_data_still_answers_the_clients_close(setup):
    relay, upstream = setup
    client = relay.attach(Link())
    relay_id = open_session(relay, upstream, client, 5, 1)
    relay.congested(client, True)
    relay.from_leg(relay.leg, w.CHANNEL_DATA, data(relay_id, 1000))
    relay.from_leg(relay.leg, w.CHANNEL_CLOSE, u32(relay_id))  # queued behind the data
    relay.from_client(client, w.CHANNEL_CLOSE, u32(relay_id))  # the client closes on its own
    assert client.link.sent == [(w.CHANNEL_CLOSE, u32(5))] and relay.channels == 0
    assert upstream[-1] == (w.CHANNEL_CLOSE, u32(1))


def test_a_client_has_at_most_max_channels_open_and_may_open_again_once_one_closes(setup):
    relay, upstream = setup
    client, other = relay.attach(Link()), relay.attach(Link())

    def direct(client_id):
        return (s(b"direct-tcpip") + u32(client_id) + u32(1 << 20) + u32(32768)
                + s(b"localhost") + u32(22) + s(b"127.0.0.1") + u32(40000))

    for i in range(r.MAX_CHANNELS_PER_CLIENT):
        relay.from_client(client, w.CHANNEL_OPEN, direct(i))
    opened = len(upstream)
    relay.from_client(client, w.CHANNEL_OPEN, direct(9999))
    assert len(upstream) == opened  # never reaches the job
    num, payload = client.link.sent[-1]
    assert num == w.CHANNEL_OPEN_FAILURE and payload[:8] == u32(9999) + u32(w.OPEN_RESOURCE_SHORTAGE)
    assert b"512 channels open on this connection" in payload
    relay.from_client(other, w.CHANNEL_OPEN, direct(0))  # another client is not affected
    assert len(upstream) == opened + 1
    first = struct.unpack(">L", upstream[0][1][16:20])[0]  # the job refuses the first open: freed
    relay.from_leg(relay.leg, w.CHANNEL_OPEN_FAILURE, u32(first) + u32(w.OPEN_CONNECT_FAILED) + s(b"no") + s(b""))
    relay.from_client(client, w.CHANNEL_OPEN, direct(10000))
    assert len(upstream) == opened + 2


def test_the_job_cannot_open_more_than_max_channels_towards_a_client(setup):
    relay, upstream = setup
    client = relay.attach(Link())
    relay.from_client(client, w.GLOBAL_REQUEST, s(b"tcpip-forward") + b"\1" + s(b"localhost") + u32(8022))
    relay.from_leg(relay.leg, w.REQUEST_SUCCESS, b"")
    extra = s(b"localhost") + u32(8022) + s(b"127.0.0.1") + u32(5555)
    for i in range(r.MAX_CHANNELS_PER_CLIENT + 1):
        relay.from_leg(relay.leg, w.CHANNEL_OPEN, s(b"forwarded-tcpip") + u32(i) + u32(1000) + u32(500) + extra)
    opens = [payload for num, payload in client.link.sent if num == w.CHANNEL_OPEN]
    assert len(opens) == r.MAX_CHANNELS_PER_CLIENT
    num, payload = upstream[-1]
    assert num == w.CHANNEL_OPEN_FAILURE and payload[:8] == u32(r.MAX_CHANNELS_PER_CLIENT) + u32(w.OPEN_RESOURCE_SHORTAGE)


def test_a_session_ending_on_a_full_leg_gives_its_room_to_the_oldest_waiting_one():
    harness = Harness(max_sessions=2)
    relay = harness.relay
    first = []
    leg = relay.add_leg(LegLink(first))
    client = relay.attach(Link())
    ids = [session_open(relay, client, i, window=100) for i in range(4)]
    for rid in ids:
        request(relay, client, rid, b"exec", data=s(b"true"))
    assert [payload[11:15] for _, payload in first] == [u32(ids[0]), u32(ids[1])] and relay.waiting() == 2
    relay.from_leg(leg, w.CHANNEL_OPEN_CONFIRMATION, u32(ids[0]) + u32(50) + u32(100) + u32(100))
    relay.from_leg(leg, w.CHANNEL_CLOSE, u32(ids[0]))
    relay.from_client(client, w.CHANNEL_CLOSE, u32(ids[0]))
    assert first[-1][0] == w.CHANNEL_OPEN and first[-1][1][11:15] == u32(ids[2])  # the oldest, on the freed room
    assert relay.waiting() == 1 and harness.legs_wanted == 1  # the other still waits for the new leg
