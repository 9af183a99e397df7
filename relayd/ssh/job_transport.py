"""An upstream leg: one SSH client connection to a job's sshd, shared by many clients.

It runs over the TCP socket the negotiation captured, trusts only the server key the
negotiation returned, and authenticates with the negotiated key as the negotiated user.
After that it carries raw connection-layer messages between the job and its `Relay`.
"""

from __future__ import annotations

import socket
from typing import Callable

from twisted.conch.ssh import service, transport, userauth
from twisted.conch.ssh.common import NS
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorSocket
from twisted.python.failure import Failure

from relayd.common.errors import HostKeyRefused, JobUnreachable
from relayd.condor.negotiate import Credentials
from relayd.ssh.packet_transport import PacketTransport
from relayd.ssh.traffic import Traffic


class _NegotiatedKeyAuth(userauth.SSHUserAuthClient):
    """Public-key authentication with the one negotiated key, and nothing else.

    Conch's own publickey method signs RSA with SHA-1 (`ssh-rsa`), which OpenSSH refuses
    since 8.8; the starter's default key is RSA, so sign with rsa-sha2-512 when the
    server lists it in server-sig-algs (RFC 8308), as OpenSSH's client does.
    """

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


class _ConnectionService(service.SSHService):
    name = b"ssh-connection"

    def __init__(self, upstream: UpstreamConnection) -> None:
        self._upstream = upstream

    def serviceStarted(self) -> None:
        self._upstream._authenticated()

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        self._upstream.traffic.count_received(len(packet))
        self._upstream.on_message(self._upstream, messageNum, packet)


class _UpstreamTransport(PacketTransport, transport.SSHClientTransport):

    def __init__(self, upstream: UpstreamConnection, credentials: Credentials) -> None:
        self._upstream = upstream
        self._credentials = credentials
        self.disconnect_reason: str | None = None
        self.refusal: HostKeyRefused | None = None  # why we broke off, if we did
        self._service_requested = False

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        try:
            self._credentials.host_key.check(hostKey)
        except HostKeyRefused as exc:
            self.refusal = exc
            return defer.fail(self.refusal)
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        # Conch calls this at every NEWKEYS: the service is asked for once, as sshd
        # answers a second request (after a re-key) with UNIMPLEMENTED.
        if not self._service_requested:
            self._service_requested = True
            self.requestService(_NegotiatedKeyAuth(self._credentials, _ConnectionService(self._upstream)))

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.disconnect_reason = description.decode(errors="replace")

    def congested(self, congested: bool) -> None:
        self._upstream.on_congestion(self._upstream, congested)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self._upstream._lost(self.disconnect_reason, self.refusal)


class _OneProtocolFactory(protocol.Factory):
    noisy = False

    def __init__(self, proto: protocol.Protocol) -> None:
        self._proto = proto

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return self._proto


class UpstreamConnection:
    """One authenticated SSH connection to a job's sshd.

    `on_message(conn, msgnum, payload)` receives its connection-layer messages and
    `on_lost(conn, reason)` is called once when it ends. `traffic` counts its messages
    (a job's legs share one counter, so status shows the job's total). `on_congestion(conn,
    congested)` hears when more than the write threshold waits for the job's sshd, and when
    it drained.
    """

    def __init__(
        self,
        reactor: IReactorSocket,
        on_message: Callable[[UpstreamConnection, int, bytes], None],
        on_lost: Callable[[UpstreamConnection, str | None], None],
        traffic: Traffic | None = None,
    ) -> None:
        self.on_message = on_message
        self.on_congestion: Callable[[UpstreamConnection, bool], None] = lambda conn, congested: None
        self.traffic = traffic if traffic is not None else Traffic()
        self._on_lost = on_lost
        self._reactor = reactor
        self._transport: _UpstreamTransport | None = None
        self._ready: defer.Deferred[UpstreamConnection] = defer.Deferred()
        self.closed = False

    def start(self, credentials: Credentials) -> defer.Deferred[UpstreamConnection]:
        """Speak SSH over the negotiated socket; fires once authenticated."""
        sock = credentials.job_socket
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._transport = _UpstreamTransport(self, credentials)
        try:
            self._reactor.adoptStreamConnection(sock.fileno(), sock.family, _OneProtocolFactory(self._transport))
        finally:
            sock.close()
        return self._ready

    def _authenticated(self) -> None:
        self._ready.callback(self)

    def _lost(self, reason: str | None, refusal: HostKeyRefused | None) -> None:
        self.closed = True
        if not self._ready.called:
            detail = f" ({reason})" if reason else ""
            self._ready.errback(refusal or JobUnreachable(f"the job's sshd closed the connection{detail}"))
        else:
            self._on_lost(self, reason)

    def send(self, msgnum: int, payload: bytes) -> None:
        if self._transport is not None and not self.closed:
            self.traffic.count_sent(len(payload))
            self._transport.sendPacket(msgnum, payload)

    def close(self, reason: str) -> None:
        """Disconnect from the job's sshd, telling it why."""
        if self._transport is not None and not self.closed:
            self._transport.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, reason.encode())
