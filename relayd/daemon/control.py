"""One connection on the daemon's unix socket: a request, replies, then maybe SSH.

    AWAIT_REQUEST --CONNECT--> OK, SSH (bytes go to a ClientTransport at once)
                  --CAPTURE--> AWAIT_CAPTURE --payload+fd--> CLOSED
                  --STATUS--> (one OK line with the JSON snapshot) CLOSED
                  --STOP--> OK, SIGTERM to the daemon; closed when it shuts down
                  --CONNECT to a direct name--> DIRECT --job reached--> OK + the job's socket, CLOSED
                  --HOSTKEY--> (OK <key> or ERROR, for the direct path's KnownHostsCommand) CLOSED
    any state --error or bad input--> CLOSED (after one ERROR line where possible)

A CONNECT is answered OK at once and the socket carries SSH from then on: the daemon
resolves and reaches the job while ssh does its key exchange with the relay, and tells the
user how that goes through SSH (see relayd.ssh.client_transport), which reaches them wherever the
helper's stderr goes. A request (and a capture's payload) must be complete within
REQUEST_TIMEOUT: the helper and the hook send theirs at once.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from enum import Enum, auto
from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet import defer, interfaces, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relayd.common import humanize
from relayd.common.errors import BadRequest, RelayError
from relayd.common.peercred import peer_credentials
from relayd.common.protocol import (
    MAX_CAPTURE_PAYLOAD,
    MAX_REQUEST_LINE,
    Capture,
    HostKey,
    Status,
    Stop,
    json_reply,
    parse_request,
    reply,
)

if TYPE_CHECKING:
    from relayd.common.protocol import Connect
    from relayd.daemon.job_session import JobSession
    from relayd.ssh.client_transport import ClientTransport
    from relayd.ssh.traffic import Traffic

log = Logger()

REQUEST_TIMEOUT = 10.0  # seconds


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket."""
    return peer_credentials(sock)[1]


class ControlService(Protocol):
    """What a connection on the daemon's socket needs from the daemon, and no more."""

    reactor: IReactorTime

    def opened(self, connection: ControlConnection) -> None:
        """A connection came (the daemon is no longer idle)."""

    def closed(self, connection: ControlConnection) -> None:
        """It went (it may have been refused before `opened`)."""

    async def connect(self, request: Connect, progress: Callable[[str], None]) -> JobSession:
        """The job's session once it is ready; raises a RelayError with the user's message.
        Cancelled when the client leaves before then (a wait for a job on demand ends with its last client)."""

    def client_transport(self) -> ClientTransport:
        """A new SSH server transport for a client, with the relay's host key."""

    def deliver_capture(self, token: str, payload: bytes, fd: int) -> None:
        """Hand a negotiated socket to the negotiation waiting for it; ValueError if none is."""

    def status(self, asking: ControlConnection) -> dict[str, Any]:
        """The status document, without the asking connection."""

    def is_direct(self, host: str) -> bool:
        """Whether `host` names the direct path (relayd.daemon.direct)."""

    async def connect_direct(self, request: Connect, helper_pid: int) -> socket.socket:
        """The job's TCP socket for the ssh that ran the helper `helper_pid`; raises a RelayError."""

    def host_key_line(self, command_pid: int) -> str | None:
        """The direct path's host key for the ssh that ran `command_pid`, if any."""


class _State(Enum):
    AWAIT_REQUEST = auto()
    AWAIT_CAPTURE = auto()
    DIRECT = auto()
    SSH = auto()
    CLOSED = auto()


@implementer(interfaces.IFileDescriptorReceiver)
class ControlConnection(protocol.Protocol):
    def __init__(self, service: ControlService) -> None:
        self._service = service
        self._state = _State.AWAIT_REQUEST
        self._buffer = b""
        self._fds: list[int] = []
        self._capture: Capture | None = None
        self._ssh: ClientTransport | None = None
        self._connecting: defer.Deferred[JobSession] | None = None
        self._failure: str | None = None
        self._request_timer: interfaces.IDelayedCall | None = None
        self.host: str | None = None  # the host a CONNECT asked for
        self.opened = time.monotonic()

    @property
    def state(self) -> str:
        if self._state is _State.SSH and self._ssh is not None and not self._ssh.bound:
            return "connecting"
        return self._state.name.lower()

    @property
    def traffic(self) -> Traffic | None:
        """The SSH client's byte counts, once relaying."""
        return self._ssh.traffic if self._ssh is not None else None

    def connectionMade(self) -> None:
        uid = peer_uid(self.transport.getHandle())
        if uid != os.getuid():
            log.warn("refused a connection from uid {uid}: only uid {own} may use this relay", uid=uid, own=os.getuid())
            self._state = _State.CLOSED
            self.transport.abortConnection()
            return
        self._service.opened(self)
        self._request_timer = self._service.reactor.callLater(REQUEST_TIMEOUT, self._request_timed_out)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        if self._state is _State.CLOSED or len(self._fds) >= 1:
            os.close(descriptor)  # only a capture carries one descriptor
        else:
            self._fds.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        if self._state is _State.SSH:
            assert self._ssh is not None
            self._ssh.dataReceived(data)
            return
        if self._state is _State.CLOSED:
            return
        self._buffer += data
        if self._state is _State.AWAIT_REQUEST:
            self._read_request()
        if self._state is _State.AWAIT_CAPTURE:
            self._read_capture()
        if self._state not in (_State.AWAIT_REQUEST, _State.AWAIT_CAPTURE):
            self._stop_request_timer()

    def _stop_request_timer(self) -> None:
        if self._request_timer is not None and self._request_timer.active():
            self._request_timer.cancel()
        self._request_timer = None

    def _request_timed_out(self) -> None:
        if self._state in (_State.AWAIT_REQUEST, _State.AWAIT_CAPTURE):
            self._fail(f"no complete request within {REQUEST_TIMEOUT:g} s")

    def _read_request(self) -> None:
        line, found, rest = self._buffer.partition(b"\n")
        if not found:
            if len(self._buffer) > MAX_REQUEST_LINE:
                self._fail("request line too long")
            return
        self._buffer = rest
        try:
            request = parse_request(line.rstrip(b"\r"))
        except BadRequest as exc:
            self._fail(str(exc))
            return
        if isinstance(request, Capture):
            self._capture = request
            self._state = _State.AWAIT_CAPTURE
            return
        if isinstance(request, Status):
            self.transport.write(json_reply(self._service.status(asking=self)))
            self._close()
            return
        if isinstance(request, HostKey):
            line = self._service.host_key_line(peer_credentials(self.transport.getHandle())[0])
            self.transport.write(reply("OK", line) if line else reply("ERROR", "no direct connection for this ssh"))
            self._close()
            return
        if isinstance(request, Stop):
            log.info("stop requested through the socket")
            self.transport.write(reply("OK"))
            self._state = _State.CLOSED  # the shutdown closes it, so `relayd stop` sees when it is done
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.host = request.host
        if self._service.is_direct(request.host):
            self._state = _State.DIRECT
            helper_pid = peer_credentials(self.transport.getHandle())[0]
            reaching = defer.ensureDeferred(self._service.connect_direct(request, helper_pid))
            reaching.addCallbacks(self._hand_direct, self._direct_failed)
            return
        self._start_ssh()
        self._connecting = defer.ensureDeferred(self._service.connect(request, self._ssh_progress))
        self._connecting.addCallbacks(self._connected, self._connect_failed)

    def _start_ssh(self) -> None:
        """Answer OK and speak SSH from here on; what ssh sent with the request goes along."""
        self.transport.write(reply("OK"))
        self._state = _State.SSH
        self._ssh = self._service.client_transport()
        self._ssh.makeConnection(self.transport)
        if self._buffer:
            data, self._buffer = self._buffer, b""
            self._ssh.dataReceived(data)

    def _read_capture(self) -> None:
        payload, found, _ = self._buffer.partition(b"\n")
        if not found:
            if len(self._buffer) > MAX_CAPTURE_PAYLOAD:
                self._fail("capture too large")
            return
        if len(self._fds) != 1:
            self._fail("capture came without the job's socket")
            return
        assert self._capture is not None
        try:
            self._service.deliver_capture(self._capture.token, payload, self._fds.pop())
        except ValueError as exc:
            self._fail(str(exc))
            return
        self.transport.write(reply("OK"))
        self._close()

    def _hand_direct(self, job_socket: socket.socket) -> None:
        """OK with the job's socket attached; the helper passes it on to ssh."""
        try:
            if self._state is _State.DIRECT:
                socket.send_fds(self.transport.getHandle(), [reply("OK")], [job_socket.fileno()])
        except OSError as exc:
            self._failure = f"could not hand over the job's socket: {exc}"
        finally:
            job_socket.close()
        self._close()

    def _direct_failed(self, failure: Failure) -> None:
        if not failure.check(RelayError):
            log.failure("direct connect failed", failure)
        self._fail(str(failure.value) if failure.check(RelayError)
                   else f"internal error in relayd: {failure.getErrorMessage()}")

    def _ssh_progress(self, text: str) -> None:
        if self._ssh is not None:
            self._ssh.progress(text)

    def _connected(self, session) -> None:  # type: ignore[no-untyped-def]
        if self._ssh is not None and self._state is _State.SSH:
            self._ssh.bind(session)

    def _connect_failed(self, failure: Failure) -> None:
        if failure.check(defer.CancelledError):
            return  # its client left (connectionLost)
        if failure.check(RelayError):
            message = str(failure.value)
        else:
            log.failure("connect failed", failure)
            message = f"internal error in relayd: {failure.getErrorMessage()}"
        self._failure = message
        if self._ssh is not None and self._state is _State.SSH:
            self._ssh.refuse(message)

    def _fail(self, message: str) -> None:
        if self._state is _State.CLOSED:
            return
        self._failure = message
        if self.host is None:
            log.info("request failed: {message}", message=message)
        self.transport.write(reply("ERROR", message))
        self._close()

    def shutdown(self, reason: str) -> None:
        """The daemon is stopping: a client still waiting for its job hears why; one bound to a
        session is told by its session."""
        if self._state is not _State.SSH:
            self._close()
        elif self._ssh is not None and not self._ssh.bound:
            self._ssh.refuse(reason)

    def _close(self) -> None:
        self._state = _State.CLOSED
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        was = self._state
        self._state = _State.CLOSED
        self._stop_request_timer()
        if self._connecting is not None:
            self._connecting.cancel()  # a no-op once connected or failed
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self._ssh is not None:
            self._ssh.connectionLost(reason)
        if self.host is not None:
            self._log_end(was)
        self._service.closed(self)

    def _log_end(self, state: _State) -> None:
        """One line per client connection: job, duration, bytes and outcome."""
        if self._failure is not None:
            outcome = f"failed ({self._failure})"
        elif self._ssh is not None and self._ssh.disconnect_reason:
            outcome = f"ended by the relay ({self._ssh.disconnect_reason})"
        elif self._ssh is not None and not self._ssh.bound:
            outcome = "client left while connecting"
        else:
            outcome = "closed"
        traffic = self.traffic
        log.info(
            "{host}: {outcome} after {duration}; {to_client} to the client, {from_client} from it",
            host=self.host, outcome=outcome, duration=humanize.duration(time.monotonic() - self.opened),
            to_client=humanize.size(traffic.sent if traffic else 0),
            from_client=humanize.size(traffic.received if traffic else 0),
        )


class ControlFactory(protocol.Factory):
    noisy = False

    def __init__(self, service: ControlService) -> None:
        self._service = service

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return ControlConnection(self._service)
