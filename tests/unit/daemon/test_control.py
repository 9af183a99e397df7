"""A connection on the daemon's socket, in process: a client that leaves while its job is
being reached takes its wait with it (the daemon's connect is cancelled)."""

from __future__ import annotations

import socket

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.internet import defer, task
from twisted.python.failure import Failure

from relayd.daemon.control import ControlConnection
from relayd.ssh.client_transport import ClientTransport, ClientTransportFactory
from unit.daemon.test_timers import SocketTransport

HOST_KEY = keys.Key(ed25519.Ed25519PrivateKey.generate())


class Service:
    """A daemon whose connect waits until the test says (or until it is cancelled)."""

    def __init__(self, clock: task.Clock) -> None:
        self.reactor = clock
        self.factory = ClientTransportFactory(clock, HOST_KEY)
        self.waits: list[defer.Deferred] = []
        self.cancelled = 0
        self.open: set[ControlConnection] = set()

    def opened(self, connection: ControlConnection) -> None:
        self.open.add(connection)

    def closed(self, connection: ControlConnection) -> None:
        self.open.discard(connection)

    def is_direct(self, host: str) -> bool:
        return False

    def client_transport(self) -> ClientTransport:
        return self.factory.buildProtocol(None)

    async def connect(self, request, progress):  # noqa: ANN001
        self.waits.append(defer.Deferred())
        try:
            return await self.waits[-1]
        except defer.CancelledError:
            self.cancelled += 1
            raise


def test_a_client_that_leaves_while_connecting_cancels_its_connect():
    ours, theirs = socket.socketpair()
    try:
        service = Service(task.Clock())
        connection = ControlConnection(service)
        connection.makeConnection(SocketTransport(ours))
        connection.dataReceived(b"CONNECT cpu.condor 22\n")
        assert len(service.waits) == 1 and service.cancelled == 0
        connection.connectionLost(Failure(ConnectionError("ssh was killed")))
        assert service.cancelled == 1
        assert connection._failure is None and not service.open  # left while connecting: no error to log
    finally:
        ours.close()
        theirs.close()
