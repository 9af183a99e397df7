"""The daemon's clocks, in process with twisted.internet.task.Clock: a job session's idle
clock, exit-when-idle, and the control socket's request timeout."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from relayd.common.errors import NegotiationFailed
from relayd.condor.names import JobName
from relayd.daemon.control import REQUEST_TIMEOUT, ControlConnection
from relayd.daemon.exit_when_idle import LOCK_RETRY_SECONDS, IdleExit
from relayd.daemon.job_session import LEG_RETRY_DELAYS, JobSession
from relayd.relay import wire
from relayd.ssh.traffic import Traffic

IDLE = 30.0


class FakeLeg:
    """Stands for an UpstreamConnection: starts at once, records what the relay sends."""

    def __init__(self, reactor, on_message, on_lost, traffic: Traffic) -> None:  # noqa: ANN001
        self.reactor, self.on_message, self.on_lost, self.traffic = reactor, on_message, on_lost, traffic
        self.sent: list[tuple[int, bytes]] = []
        self.closed_with: str | None = None

    def start(self, credentials: object) -> defer.Deferred[FakeLeg]:
        return defer.succeed(self)

    def send(self, msgnum: int, payload: bytes) -> None:
        self.sent.append((msgnum, payload))

    def close(self, reason: str) -> None:
        """Disconnect: the connection is lost a moment later, as a real one's is."""
        self.closed_with = reason
        self.reactor.callLater(0, self.on_lost, self, None)


class FakeClient:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.disconnected: str | None = None

    def send(self, msgnum: int, payload: bytes) -> None:
        self.sent.append((msgnum, payload))

    def hold_reading(self, held: bool) -> None:
        pass

    def disconnect(self, reason: str, closing: int = 0) -> None:
        self.disconnected = reason


def ready_session(clock: task.Clock, closed: list[JobSession]) -> tuple[JobSession, list[FakeLeg]]:
    legs: list[FakeLeg] = []

    def new_leg(*args) -> FakeLeg:  # noqa: ANN002
        legs.append(FakeLeg(*args))
        return legs[-1]

    session = JobSession(JobName(1, 0), lambda progress, first: defer.succeed(object()), clock, IDLE, closed.append,
                         new_connection=new_leg)
    session.start()
    assert session.ready and len(legs) == 1
    return session, legs


def open_tcpip_channel(session: JobSession, client, leg: FakeLeg) -> int:  # noqa: ANN001
    """A direct-tcpip channel from `client`, confirmed by the job: its relay id."""
    open_payload = (wire.string(b"direct-tcpip") + wire.u32(0) + wire.u32(65536) + wire.u32(32768)
                    + wire.string(b"localhost") + wire.u32(22) + wire.string(b"127.0.0.1") + wire.u32(1))
    session.relay.from_client(client, wire.CHANNEL_OPEN, open_payload)
    relay_id = int.from_bytes(leg.sent[-1][1][16:20], "big")
    session.relay.from_leg(session.relay.legs[0], wire.CHANNEL_OPEN_CONFIRMATION,
                           wire.u32(relay_id) + wire.u32(7) + wire.u32(65536) + wire.u32(32768))
    return relay_id


def test_a_session_with_no_client_closes_after_idle_timeout():
    clock, closed = task.Clock(), []
    session, legs = ready_session(clock, closed)
    clock.advance(IDLE - 1)
    assert not closed
    clock.advance(1)
    assert closed == [session] and legs[0].closed_with == f"unused for {IDLE:g} s"


def test_an_attached_client_keeps_the_session_however_long():
    clock, closed = task.Clock(), []
    session, legs = ready_session(clock, closed)
    client = session.attach(FakeClient())
    open_tcpip_channel(session, client, legs[0])
    clock.advance(IDLE * 10)
    assert not closed and legs[0].closed_with is None


def test_a_client_that_leaves_after_idle_timeout_without_channels_lets_the_session_go_at_once():
    clock, closed = task.Clock(), []
    session, _ = ready_session(clock, closed)
    client = session.attach(FakeClient())
    clock.advance(IDLE * 3)  # attached, but the job has had no channel all along
    assert not closed
    session.detach(client)
    clock.advance(0)
    assert closed == [session]


def test_the_clock_counts_from_the_jobs_last_channel_not_from_the_last_client():
    # An ssh ControlMaster stays attached ControlPersist seconds after its last session: the
    # slot must go IDLE seconds after that session, not IDLE seconds after the master.
    clock, closed = task.Clock(), []
    session, legs = ready_session(clock, closed)
    client = session.attach(FakeClient())
    channel = open_tcpip_channel(session, client, legs[0])
    clock.advance(100)
    session.relay.from_client(client, wire.CHANNEL_CLOSE, wire.u32(0))
    session.relay.from_leg(session.relay.legs[0], wire.CHANNEL_CLOSE, wire.u32(channel))
    clock.advance(IDLE - 10)  # the master lingers, then leaves
    session.detach(client)
    clock.advance(9)
    assert not closed
    clock.advance(1)
    assert closed == [session]


def test_exit_when_idle_waits_its_seconds_and_is_reset_by_a_client(tmp_path: Path):
    clock, exits, idle = task.Clock(), [], [True]
    watcher = IdleExit(clock, lambda: idle[0], lambda: 60.0, tmp_path / "start.lock", lambda: exits.append(1))
    watcher.update()
    clock.advance(59)
    idle[0] = False  # a client came
    watcher.update()
    clock.advance(120)
    assert exits == []
    idle[0] = True
    watcher.update()
    clock.advance(60)
    assert exits == [1]


def test_exit_when_idle_waits_for_a_helper_holding_the_start_lock(tmp_path: Path):
    import fcntl

    clock, exits = task.Clock(), []
    lock = tmp_path / "start.lock"
    with open(lock, "w") as helper:
        fcntl.flock(helper, fcntl.LOCK_EX)  # a helper is starting or reaching the daemon
        watcher = IdleExit(clock, lambda: True, lambda: 5.0, lock, lambda: exits.append(1))
        watcher.update()
        clock.advance(5)
        assert exits == []
    clock.advance(LOCK_RETRY_SECONDS)
    assert exits == [1]


def test_exit_when_idle_zero_never_exits(tmp_path: Path):
    clock, exits = task.Clock(), []
    watcher = IdleExit(clock, lambda: True, lambda: 0.0, tmp_path / "start.lock", lambda: exits.append(1))
    watcher.update()
    clock.advance(10**6)
    assert exits == []


class FakeService:
    """The ControlService a connection needs, with a Clock for its reactor."""

    def __init__(self, clock: task.Clock) -> None:
        self.reactor = clock
        self.open: set[ControlConnection] = set()

    def opened(self, connection: ControlConnection) -> None:
        self.open.add(connection)

    def closed(self, connection: ControlConnection) -> None:
        self.open.discard(connection)


class SocketTransport(StringTransport):
    """A StringTransport whose handle is one end of a real socket pair (for SO_PEERCRED)."""

    def __init__(self, handle: socket.socket) -> None:
        super().__init__()
        self._handle = handle

    def getHandle(self) -> socket.socket:
        return self._handle


@pytest.fixture
def connection():
    ours, theirs = socket.socketpair()
    clock = task.Clock()
    service = FakeService(clock)
    conn = ControlConnection(service)
    transport = SocketTransport(ours)
    conn.makeConnection(transport)
    yield conn, transport, clock, service
    ours.close()
    theirs.close()


def test_a_half_sent_request_gets_an_error_after_the_request_timeout(connection):
    conn, transport, clock, service = connection
    conn.dataReceived(b"CONNECT job-1.0.con")
    clock.advance(REQUEST_TIMEOUT - 0.1)
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(0.1)
    assert transport.value() == f"ERROR no complete request within {REQUEST_TIMEOUT:g} s\n".encode()
    assert transport.disconnecting


def test_a_complete_request_stops_the_request_timer(connection):
    conn, transport, clock, service = connection
    conn.dataReceived(b"GARBAGE\n")
    assert transport.value().startswith(b"ERROR unknown request")
    transport.clear()
    clock.advance(REQUEST_TIMEOUT * 2)
    assert transport.value() == b""
    assert not clock.getDelayedCalls()


def burst_session(clock: task.Clock, failures: int) -> tuple[JobSession, list[FakeLeg], list[bool]]:
    """A ready session with MaxSessions 1 whose next `failures` extra negotiations fail."""
    legs: list[FakeLeg] = []
    asked: list[bool] = []

    def new_leg(*args) -> FakeLeg:  # noqa: ANN002
        legs.append(FakeLeg(*args))
        return legs[-1]

    def open_leg(progress, first: bool) -> defer.Deferred[object]:  # noqa: ANN001
        asked.append(first)
        if not first and asked.count(False) <= failures:
            return defer.fail(NegotiationFailed("condor_ssh_to_job: the starter is busy"))
        return defer.succeed(object())

    session = JobSession(JobName(1, 0), open_leg, clock, IDLE, [].append, max_sessions=1, new_connection=new_leg)
    session.start()
    return session, legs, asked


def start_session(session: JobSession, client, client_id: int) -> None:  # noqa: ANN001
    session.relay.from_client(client, wire.CHANNEL_OPEN, wire.string(b"session") + wire.u32(client_id)
                              + wire.u32(65536) + wire.u32(32768))
    relay_id = int.from_bytes(client.link.sent[-1][1][4:8], "big")
    session.relay.from_client(client, wire.CHANNEL_REQUEST, wire.u32(relay_id) + wire.string(b"exec") + b"\1"
                              + wire.string(b"true"))


def test_a_failed_extra_leg_is_negotiated_again_while_sessions_wait_for_it():
    clock = task.Clock()
    session, legs, asked = burst_session(clock, failures=1)
    client = session.relay.attach(FakeClient())
    start_session(session, client, 0)
    start_session(session, client, 1)  # MaxSessions 1: waits for a second leg, whose negotiation fails
    assert asked == [True, False] and len(legs) == 1 and session.relay.waiting() == 1
    clock.advance(LEG_RETRY_DELAYS[0])
    assert asked == [True, False, False] and len(legs) == 2 and session.relay.waiting() == 0
    assert legs[1].sent[0][0] == wire.CHANNEL_OPEN  # the waiting session went to the new leg
    assert not any(msgnum == wire.CHANNEL_FAILURE for msgnum, _ in client.link.sent)


def test_waiting_sessions_fail_with_the_reason_once_the_retries_are_spent():
    clock = task.Clock()
    session, legs, asked = burst_session(clock, failures=len(LEG_RETRY_DELAYS) + 1)
    client = session.relay.attach(FakeClient())
    start_session(session, client, 0)
    start_session(session, client, 1)
    for delay in LEG_RETRY_DELAYS:
        clock.advance(delay)
    assert asked.count(False) == len(LEG_RETRY_DELAYS) + 1 and len(legs) == 1
    assert (wire.CHANNEL_FAILURE, wire.u32(1)) in client.link.sent
    note = [payload for msgnum, payload in client.link.sent if msgnum == wire.CHANNEL_EXTENDED_DATA][-1]
    assert b"the starter is busy" in note
