"""A job sshd that ignores the windows it is granted, for the memory-bound tests.

    python rogue_sshd.py HOST_KEY

Listens on 127.0.0.1 (an EC2 instance, as far as the relay knows), prints its port, and
accepts any user. A session that execs anything gets that channel flooded with data as
fast as the connection takes it, whatever window the relay granted: what the review's
modified sshd did. Twisted Conch, because OpenSSH's sshd cannot be made to do it.
"""

from __future__ import annotations

import struct
import sys

from twisted.conch.ssh import factory, keys, service, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.internet import reactor, task

CHANNEL_OPEN, OPEN_CONFIRMATION, DATA, REQUEST, SUCCESS = 90, 91, 94, 98, 99
CHUNK = b"z" * 32768
CHUNKS_PER_TICK = 64  # 2 MiB every 10 ms, while the socket keeps up


class AnyUser(service.SSHService):
    name = b"ssh-userauth"

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        if messageNum == userauth.MSG_USERAUTH_REQUEST:
            self.transport.sendPacket(userauth.MSG_USERAUTH_SUCCESS, b"")
            self.transport.setService(Flooding())


class Flooding(service.SSHService):
    name = b"ssh-connection"

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        if messageNum == CHANNEL_OPEN:
            _, rest = getNS(packet)
            (peer,) = struct.unpack(">L", rest[:4])
            self.transport.sendPacket(OPEN_CONFIRMATION, struct.pack(">LLLL", peer, 0, 1 << 21, 32768))
        elif messageNum == REQUEST:
            (peer,) = struct.unpack(">L", packet[:4])
            name, rest = getNS(packet[4:])
            if rest[:1] == b"\x01":
                self.transport.sendPacket(SUCCESS, struct.pack(">L", peer))
            if name == b"exec":
                task.LoopingCall(self._flood, peer).start(0.01)

    def _flood(self, peer: int) -> None:
        wire = self.transport.transport
        if len(wire.dataBuffer) + wire._tempDataLen > 8 << 20:
            return  # the relay reads slower than this: do not grow here instead
        for _ in range(CHUNKS_PER_TICK):
            self.transport.sendPacket(DATA, struct.pack(">L", peer) + NS(CHUNK))


class RogueServer(transport.SSHServerTransport):
    def connectionLost(self, reason: object = None) -> None:
        print("connection lost", flush=True)
        super().connectionLost(reason)


class RogueFactory(factory.SSHFactory):
    protocol = RogueServer
    services = {b"ssh-userauth": AnyUser}

    def __init__(self, host_key: keys.Key) -> None:
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}
        self.primes = None

    def getService(self, transport, service):  # type: ignore[no-untyped-def]
        return self.services.get(service)


def main(host_key_path: str) -> None:
    listening = reactor.listenTCP(0, RogueFactory(keys.Key.fromFile(host_key_path)), interface="127.0.0.1")
    print(listening.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])
