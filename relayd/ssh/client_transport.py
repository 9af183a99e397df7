"""The client side: ssh talks SSH to the relay's own host key over the daemon's unix socket.

The helper hands ssh this socket at once, so the key exchange with the relay overlaps the
job's lookup and negotiation. The socket's peer was already checked to be the daemon's own
user (SO_PEERCRED), so user authentication accepts the client's first request (ssh tries
`none` first) -- but answers it only once the job's session is ready. Until then the relay
speaks to the user through SSH itself: progress as SSH_MSG_USERAUTH_BANNER lines, which ssh
prints at its default LogLevel even where it sends the helper's stderr to /dev/null (behind
ControlPersist), and a failure as a banner and the reason of SSH_MSG_DISCONNECT, which
libraries such as asyncssh raise with. From then on connection-layer messages go to the
job's `Relay` untouched but for channel ids.
"""

from __future__ import annotations

from typing import Protocol

from twisted.conch.ssh import factory, keys, service, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.internet import interfaces
from twisted.python.failure import Failure

from relayd.common.errors import ProtocolViolation
from relayd.condor.names import JobName
from relayd.relay.core import Relay
from relayd.relay.state import Client, ClientLink
from relayd.relay.wire import CHANNEL_CLOSE
from relayd.ssh.packet_transport import PacketTransport
from relayd.ssh.traffic import Traffic

DISCONNECT_LINGER = 5.0  # seconds a disconnected client has to hang up before the relay drops it
# How long the relay waits for a client to close the sessions it closed (so that their last
# words are written out) before it sends DISCONNECT.
CLOSING_SECONDS = 1.0
# How long a refused client has to reach user authentication, where it can be shown a banner,
# before it is disconnected without one.
BANNER_WAIT = 10.0
MAX_EARLY_BANNERS = 20  # progress lines kept for a client still in its key exchange
# Progress is shown only once reaching the job takes longer than this: a warm or quick
# connection prints nothing, a slow negotiation or a wait says what it is doing.
PROGRESS_DELAY = 1.0
MESSAGE_PREFIX = "condor-relay: "


def banner_text(message: str) -> str:
    """`message` as banner lines: each line prefixed, so it reads as the relay's own."""
    return "".join(f"{MESSAGE_PREFIX}{line}\n" for line in message.splitlines() or [""])


class _WaitingUserAuth(service.SSHService):
    """Accepts the client's first authentication request once its job's session is ready."""

    name = b"ssh-userauth"

    def serviceStarted(self) -> None:
        self.transport.userauth_started()

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        if messageNum != userauth.MSG_USERAUTH_REQUEST:
            return  # e.g. USERAUTH_INFO_RESPONSE leftovers; nothing to answer
        try:
            user, service_name, _method, _ = getNS(packet, 3)
        except Exception:
            self.transport.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad userauth request")
            return
        if service_name != b"ssh-connection":
            self.transport.sendDisconnect(transport.DISCONNECT_SERVICE_NOT_AVAILABLE, b"only ssh-connection")
            return
        self.transport.authentication_requested(user)


class _ClientConnection(service.SSHService):
    name = b"ssh-connection"

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        self.transport.relay_from_client(messageNum, packet)


class SharedSession(Protocol):
    """What a client's transport needs from its job's session (relayd.daemon.job_session)."""

    job: JobName
    relay: Relay

    def attach(self, link: ClientLink) -> Client: ...

    def detach(self, client: Client) -> None: ...


class ClientTransport(PacketTransport, transport.SSHServerTransport):
    """One ssh client's connection: authenticated once its job's session is ready.

    The daemon drives it with `progress`, then either `bind` (the session is ready) or
    `refuse` (it cannot be had); the client's own pace decides when each takes effect.
    """

    session: SharedSession
    client: Client | None = None
    username = b""
    disconnect_reason: str | None = None  # why the relay ended this client, for the connection log
    refusal: str | None = None  # why the client's job cannot be reached, once known
    bound = False  # it was let in to its job's session (it stays True after it leaves)
    _closing = 0  # sessions the relay closed whose close the client has yet to answer
    _closing_timer: interfaces.IDelayedCall | None = None
    _linger: interfaces.IDelayedCall | None = None
    _refusal_timer: interfaces.IDelayedCall | None = None
    _progress_timer: interfaces.IDelayedCall | None = None
    _held_progress: str | None = None  # the latest step, while PROGRESS_DELAY has not passed
    _in_userauth = False  # the client reached user authentication: banners can be shown
    _asked = False  # it sent its authentication request, which waits for the session
    _lost = False

    def __init__(self) -> None:
        self.traffic = Traffic()
        self._early_banners: list[str] = []

    def hang_up(self) -> None:
        """Half-close and discard what ssh still sends until it hangs up: closing outright while
        ssh writes (an upload) fails its write with a broken pipe before it reads the reason."""
        self.unregister_producer()
        self.transport.loseWriteConnection()
        # abort, not lose: a client that reads nothing would keep unsent bytes, and so us, waiting
        # (standard I/O, relayd.ssh.refusal's transport, cannot abort: losing it is as good there)
        end = getattr(self.transport, "abortConnection", self.transport.loseConnection)
        self._linger = self.factory.reactor.callLater(DISCONNECT_LINGER, end)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self._log.debug("client disconnected: {reason}", reason=description)

    # -- before the session is ready ------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self._progress_timer = self.factory.reactor.callLater(PROGRESS_DELAY, self._progress_due)

    def _progress_due(self) -> None:
        self._progress_timer = None
        held, self._held_progress = self._held_progress, None
        if held is not None:
            self.progress(held)

    def progress(self, text: str) -> None:
        """Tell the user what the relay is doing (a banner line), once it takes a while."""
        if self._lost or self._disconnected or self.client is not None:
            return
        if self._progress_timer is not None:
            self._held_progress = text
        elif self._in_userauth:
            self._banner(text)
        elif len(self._early_banners) < MAX_EARLY_BANNERS:
            self._early_banners.append(text)

    def _banner(self, text: str) -> None:
        self.sendPacket(userauth.MSG_USERAUTH_BANNER, NS(banner_text(text).encode()) + NS(b""))

    def userauth_started(self) -> None:
        self._in_userauth = True
        early, self._early_banners = self._early_banners, []
        for text in early:
            self._banner(text)
        if self.refusal is not None:
            self._refuse_now()

    def authentication_requested(self, user: bytes) -> None:
        if self._asked:
            return  # ssh sends one request and waits; a second one gets the same answer
        self._asked = True
        self.username = user
        if self.client is not None:
            self._accept()

    def bind(self, session: SharedSession) -> None:
        """The job's session is ready: attach to it and let the client in."""
        if self._lost or self._disconnected:
            return
        self.session = session
        self.client = session.attach(self)
        self.bound = True
        if self._asked:
            self._accept()

    def _accept(self) -> None:
        self.sendPacket(userauth.MSG_USERAUTH_SUCCESS, b"")
        self.setService(_ClientConnection())

    def refuse(self, message: str) -> None:
        """The job cannot be reached: say why (a banner, then DISCONNECT with the reason)."""
        if self._lost or self._disconnected:
            return
        self.refusal = message
        if self._in_userauth:
            self._refuse_now()
        else:  # still in key exchange: wait for the client to get where a banner is shown
            self._refusal_timer = self.factory.reactor.callLater(BANNER_WAIT, self._refuse_now)

    def _refuse_now(self) -> None:
        _cancel(self._refusal_timer)
        if self._disconnected or self.refusal is None:
            return
        if self._in_userauth:
            self._banner(self.refusal)
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, self.refusal.encode())

    # -- relaying -----------------------------------------------------------------------------

    def relay_from_client(self, messageNum: int, packet: bytes) -> None:
        if self._closing_timer is not None:  # ended by the relay: only the closes count
            if messageNum == CHANNEL_CLOSE and self._closing:
                self._closing -= 1
                if not self._closing:
                    self._end()
            return
        assert self.client is not None
        self.traffic.count_received(len(packet))
        try:
            self.session.relay.from_client(self.client, messageNum, packet)
        except ProtocolViolation as exc:
            self._log.warn("dropped a client of job {job}: {exc}", job=self.session.job.job_id, exc=exc)
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, str(exc).encode())

    def congested(self, congested: bool) -> None:
        if self.client is not None:
            self.session.relay.congested(self.client, congested)

    # ClientLink
    def hold_reading(self, held: bool) -> None:
        if held:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def send(self, msgnum: int, payload: bytes) -> None:
        self.traffic.count_sent(len(payload))
        self.sendPacket(msgnum, payload)

    def disconnect(self, reason: str, closing: int = 0) -> None:
        self.disconnect_reason = reason
        if closing:
            self._closing = closing
            self._closing_timer = self.factory.reactor.callLater(CLOSING_SECONDS, self._end)
        else:
            self._end()

    def _end(self) -> None:
        self._closing = 0
        _cancel(self._closing_timer)
        assert self.disconnect_reason is not None
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, self.disconnect_reason.encode())

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        _cancel(self._progress_timer)
        _cancel(self._closing_timer)
        _cancel(self._linger)
        _cancel(self._refusal_timer)
        super().connectionLost(reason)
        if self.client is not None:
            self.session.detach(self.client)
            self.client = None


def _cancel(call: interfaces.IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


class ClientTransportFactory(factory.SSHFactory):
    """Builds client-side transports that present the relay's host key."""

    noisy = False
    protocol = ClientTransport
    services = {b"ssh-userauth": _WaitingUserAuth}

    def __init__(self, reactor: interfaces.IReactorTime, host_key: keys.Key) -> None:
        self.reactor = reactor
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}
        self.primes = None

    def getService(self, transport, service):  # type: ignore[no-untyped-def]
        return self.services.get(service)
