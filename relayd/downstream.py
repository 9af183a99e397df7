"""The client leg: ssh talks SSH to the relay's own host key over the daemon's unix socket.

The socket's peer was already checked to be the daemon's own user (SO_PEERCRED), so user
authentication accepts the client's first request (ssh tries `none` first). From then on
connection-layer messages go to the job's `Relay` untouched but for channel ids.
"""

from __future__ import annotations

from twisted.conch.ssh import factory, keys, service, transport, userauth
from twisted.conch.ssh.common import getNS
from twisted.internet import interfaces
from twisted.python.failure import Failure

from relayd.jobs import JobSession
from relayd.relay import CHANNEL_CLOSE, Client, ProtocolViolation
from relayd.sshtransport import PacketTransport
from relayd.traffic import Traffic

DISCONNECT_LINGER = 5.0  # seconds a disconnected client has to hang up before the relay drops it
# How long the relay waits for a client to close the sessions it closed (so that their last
# words are written out) before it sends DISCONNECT.
CLOSING_SECONDS = 1.0


class _AcceptingUserAuth(service.SSHService):
    name = b"ssh-userauth"

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
        self.transport.username = user
        self.transport.sendPacket(userauth.MSG_USERAUTH_SUCCESS, b"")
        self.transport.setService(_ClientConnection())


class _ClientConnection(service.SSHService):
    name = b"ssh-connection"

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        self.transport.relay_from_client(messageNum, packet)


class ClientTransport(PacketTransport, transport.SSHServerTransport):
    """One ssh client's connection, bound to a job's session when the daemon said OK."""

    session: JobSession
    client: Client | None = None
    username = b""
    disconnect_reason: str | None = None  # why the relay ended this client, for the connection log
    _closing = 0  # sessions the relay closed whose close the client has yet to answer
    _closing_timer: interfaces.IDelayedCall | None = None
    _linger: interfaces.IDelayedCall | None = None

    def __init__(self) -> None:
        self.traffic = Traffic()

    def hang_up(self) -> None:
        """Half-close and discard what ssh still sends until it hangs up: closing outright while
        ssh writes (an upload) fails its write with a broken pipe before it reads the reason."""
        self.unregister_producer()
        self.transport.loseWriteConnection()
        # abort, not lose: a client that reads nothing would keep unsent bytes, and so us, waiting
        self._linger = self.factory.reactor.callLater(DISCONNECT_LINGER, self.transport.abortConnection)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self._log.debug("client disconnected: {reason}", reason=description)

    def bind(self, session: JobSession) -> None:
        self.session = session
        self.client = session.attach(self)

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
        _cancel(self._closing_timer)
        _cancel(self._linger)
        super().connectionLost(reason)
        if self.client is not None:
            self.session.detach(self.client)
            self.client = None


def _cancel(call: interfaces.IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


class ClientTransportFactory(factory.SSHFactory):
    """Builds client-leg transports that present the relay's host key."""

    noisy = False
    protocol = ClientTransport
    services = {b"ssh-userauth": _AcceptingUserAuth}

    def __init__(self, reactor: interfaces.IReactorTime, host_key: keys.Key) -> None:
        self.reactor = reactor
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}
        self.primes = None

    def getService(self, transport, service):  # type: ignore[no-untyped-def]
        return self.services.get(service)
