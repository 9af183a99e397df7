"""The upstream leg: one SSH client connection to a job's sshd, shared by many clients.

It runs over the TCP socket the negotiation captured, trusts only the server key the
negotiation returned, and authenticates with the negotiated key as the negotiated user.
After that it carries raw connection-layer messages between the job and the `Relay`.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from twisted.conch.ssh import service, transport, userauth
from twisted.conch.ssh.common import NS
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorSocket, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from relayd.names import JobName
from relayd.negotiate import Credentials, NegotiationFailed
from relayd.relay import Client, ClientLink, ProtocolViolation, Relay

log = Logger()


class _NegotiatedKeyAuth(userauth.SSHUserAuthClient):
    """Public-key authentication with the one negotiated key, and nothing else.

    Conch's own publickey method signs RSA with SHA-1 (`ssh-rsa`), which OpenSSH refuses
    since 8.8; the starter's default key is RSA, so sign with rsa-sha2-512 when the
    server lists it in server-sig-algs (RFC 8308), as OpenSSH's client does.
    """

    _log = Logger(namespace="relayd.ssh")
    preferredOrder = [b"publickey"]

    def __init__(self, credentials: Credentials, instance: service.SSHService) -> None:
        super().__init__(credentials.user.encode(), instance)
        self._key = credentials.private_key
        self._offered = False

    def tryAuth(self, kind):  # type: ignore[no-untyped-def]
        return super().tryAuth(kind) if kind == b"publickey" else None

    def _algorithm(self) -> bytes:
        if self._key.type() != "RSA":
            return self._key.sshType()
        offered = self.transport.peerExtensions.get(b"server-sig-algs", b"").split(b",")
        for algorithm in (b"rsa-sha2-512", b"rsa-sha2-256"):
            if algorithm in offered:
                return algorithm
        return b"ssh-rsa"

    def auth_publickey(self) -> bool:  # type: ignore[override]
        if self._offered:
            return False
        self._offered = True
        algorithm, blob = self._algorithm(), self._key.public().blob()
        signed = (
            NS(self.transport.sessionID)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + NS(self.user)
            + NS(self.instance.name)
            + NS(b"publickey")
            + b"\x01"
            + NS(algorithm)
            + NS(blob)
        )
        signature = self._key.sign(signed, signatureType=algorithm)
        self.askForAuth(b"publickey", b"\x01" + NS(algorithm) + NS(blob) + NS(signature))
        return True


class _UpstreamConnection(service.SSHService):
    name = b"ssh-connection"

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    def serviceStarted(self) -> None:
        self._upstream._authenticated()

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        self._upstream._from_job(messageNum, packet)


class _UpstreamTransport(transport.SSHClientTransport):
    _log = Logger(namespace="relayd.ssh")

    def __init__(self, upstream: Upstream, credentials: Credentials) -> None:
        self._upstream = upstream
        self._credentials = credentials
        self.disconnect_reason: str | None = None

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        if hostKey == self._credentials.server_key.blob():
            return defer.succeed(True)
        return defer.fail(NegotiationFailed("the job's sshd presented a key other than the negotiated one"))

    def connectionSecure(self) -> None:
        self.requestService(_NegotiatedKeyAuth(self._credentials, _UpstreamConnection(self._upstream)))

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.disconnect_reason = description.decode(errors="replace")

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self._upstream._lost(self.disconnect_reason)


class _OneProtocolFactory(protocol.Factory):
    noisy = False

    def __init__(self, proto: protocol.Protocol) -> None:
        self._proto = proto

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return self._proto


class Upstream:
    """One authenticated connection to a job, multiplexing its clients through a Relay.

    Closes itself after `idle_timeout` seconds without clients, because a live sshd keeps
    the job's slot claimed even after the job exits.
    """

    def __init__(
        self,
        job: JobName,
        reactor: IReactorSocket | IReactorTime,
        idle_timeout: float,
        on_closed: Callable[[Upstream], None],
    ) -> None:
        self.job = job
        self.created = time.monotonic()
        self.ready: defer.Deferred[Upstream] = defer.Deferred()
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._on_closed = on_closed
        self._transport: _UpstreamTransport | None = None
        self._idle_timer = None
        self._closing_reason: str | None = None
        self.closed = False
        self.relay = Relay(self._send_to_job)

    def start(self, credentials: Credentials) -> defer.Deferred[Upstream]:
        """Speak SSH over the negotiated socket; `ready` fires once authenticated."""
        sock = credentials.job_socket
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._transport = _UpstreamTransport(self, credentials)
        try:
            self._reactor.adoptStreamConnection(  # type: ignore[union-attr]
                sock.fileno(), sock.family, _OneProtocolFactory(self._transport)
            )
        finally:
            sock.close()
        return self.ready

    # -- called by the SSH client transport ---------------------------------------------

    def _authenticated(self) -> None:
        log.info("upstream to job {job} authenticated", job=self.job.job_id)
        self._arm_idle_timer()
        self.ready.callback(self)

    def _from_job(self, msgnum: int, payload: bytes) -> None:
        try:
            self.relay.from_upstream(msgnum, payload)
        except ProtocolViolation as exc:
            log.error("job {job} broke the protocol: {exc}", job=self.job.job_id, exc=exc)
            self.close(f"protocol error from job {self.job.job_id}'s sshd")

    def _lost(self, reason: str | None) -> None:
        self.closed = True
        self._cancel_idle_timer()
        message = self._closing_reason or (
            f"connection to job {self.job.job_id} lost" + (f": {reason}" if reason else "")
        )
        if not self.ready.called:
            self.ready.errback(NegotiationFailed(f"job {self.job.job_id}: the job's sshd closed the connection"
                                                 + (f" ({reason})" if reason else "")))
        self.relay.shutdown(message)
        log.info("upstream to job {job} closed: {message}", job=self.job.job_id, message=message)
        self._on_closed(self)

    def _send_to_job(self, msgnum: int, payload: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.sendPacket(msgnum, payload)

    # -- clients -------------------------------------------------------------------------

    def attach(self, link: ClientLink) -> Client:
        self._cancel_idle_timer()
        return self.relay.attach(link)

    def detach(self, client: Client) -> None:
        self.relay.detach(client)
        if not self.relay.clients:
            self._arm_idle_timer()

    def close(self, reason: str) -> None:
        """Disconnect from the job; every client is told `reason`."""
        if self.closed or self._transport is None:
            return
        self._closing_reason = reason
        self._transport.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, reason.encode())

    # -- idle timer ------------------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        self._cancel_idle_timer()
        if not self.closed:
            self._idle_timer = self._reactor.callLater(  # type: ignore[union-attr]
                self._idle_timeout, self.close, f"no clients for {self._idle_timeout:g} s"
            )

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
