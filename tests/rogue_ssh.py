"""An SSH client that breaks the protocol on purpose, for the reliability tests.

    python rogue_ssh.py SOCKET HOST CASE [CASE ...]

Each case is one connection through the daemon's socket (CONNECT, then SSH) that
misbehaves as its name says, at the transport level (after the banner, after key
exchange) or at the connection level (after authentication, on an open session channel).
One JSON line per case reports whether the daemon dropped the connection and why.
Twisted Conch, not OpenSSH, because OpenSSH cannot be made to send malformed packets.

Three cases misbehave within the protocol, for the resource tests:
- "global-request-too-long": a 262,138-byte global request, over the relay's packet
  layer (AES-GCM, whose padding lets it through the relay's 256 KiB packet limit);
- "cancel-tcpip-forward:ADDRESS:PORT": cancels a remote forward that another client made;
  reports the relay's reply;
- "huge-window-unread": opens a session with a 4 GiB window, runs `cat /dev/zero` and
  reads nothing for DROP_TIMEOUT seconds.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Callable

from twisted.conch.ssh import channel, connection, transport, userauth
from twisted.internet import defer, protocol, reactor, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from relayd.common.protocol import format_connect
from relayd.ssh.packet_transport import PacketTransport

DROP_TIMEOUT = 5.0
from relayd.relay.wire import CHANNEL_CLOSE as CLOSE
from relayd.relay.wire import CHANNEL_DATA as DATA
from relayd.relay.wire import CHANNEL_EOF as EOF
from relayd.relay.wire import CHANNEL_EXTENDED_DATA as EXTENDED_DATA
from relayd.relay.wire import CHANNEL_OPEN, GLOBAL_REQUEST, string, u32
from relayd.relay.wire import CHANNEL_REQUEST as REQUEST
from relayd.relay.wire import CHANNEL_WINDOW_ADJUST as WINDOW_ADJUST


def request(recipient: int, name: bytes, data: bytes) -> tuple[int, bytes]:
    return REQUEST, u32(recipient) + string(name) + b"\x01" + data


def pty_request(recipient: int, modes: bytes) -> tuple[int, bytes]:
    return request(recipient, b"pty-req", string(b"xterm") + u32(80) + u32(24) + u32(0) + u32(0) + string(modes))


def running(recipient: int) -> tuple[int, bytes]:
    """Start `cat` on the session: sshd ignores data on a channel that runs nothing yet."""
    return request(recipient, b"exec", string(b"cat"))


# Connection-level cases: given the session channel's id at the relay, the messages to send.
MESSAGES: dict[str, Callable[[int], list[tuple[int, bytes]]]] = {
    "data-string-runs-past-end": lambda r: [running(r), (DATA, u32(r) + u32(100) + b"0123456789")],
    "data-trailing-bytes": lambda r: [running(r), (DATA, u32(r) + string(b"x") + b"junk")],
    "window-adjust-overflow": lambda r: [(WINDOW_ADJUST, u32(r) + u32(0xFFFFFFFF))],
    "exec-truncated": lambda r: [request(r, b"exec", u32(50) + b"ls")],
    "exec-with-nul": lambda r: [request(r, b"exec", string(b"true\0rm -rf ."))],
    "shell-trailing-bytes": lambda r: [request(r, b"shell", b"junk")],
    "env-without-value": lambda r: [request(r, b"env", string(b"LANG"))],
    "window-change-short": lambda r: [request(r, b"window-change", u32(80))],
    "pty-modes-truncated": lambda r: [pty_request(r, b"\x01\x00")],
    "pty-requested-twice": lambda r: [pty_request(r, b"\x00"), pty_request(r, b"\x00")],
    "eof-trailing-bytes": lambda r: [(EOF, u32(r) + b"junk")],
    "stderr-data-after-eof": lambda r: [running(r), (EOF, u32(r)), (EXTENDED_DATA, u32(r) + u32(1) + string(b"x"))],
    "data-after-close": lambda r: [running(r), (CLOSE, u32(r)), (DATA, u32(r) + string(b"x"))],
    "data-for-unknown-channel": lambda r: [(DATA, u32(r + 100000) + string(b"x"))],
    "unknown-message-number": lambda r: [(200, b"x")],
    "open-session-trailing-bytes": lambda r: [
        (CHANNEL_OPEN, string(b"session") + u32(7) + u32(65536) + u32(32768) + b"x")
    ],
    "open-direct-tcpip-truncated": lambda r: [
        (CHANNEL_OPEN, string(b"direct-tcpip") + u32(7) + u32(65536) + u32(32768) + string(b"localhost"))
    ],
    "global-forward-without-port": lambda r: [
        (GLOBAL_REQUEST, string(b"tcpip-forward") + b"\x01" + string(b"localhost"))
    ],
}
RAW_CASES = ("garbage-after-banner", "overlong-banner")
LONG_REQUEST = 262_138  # payload bytes: one over what sshd takes once re-padded for aes*-ctr
TRANSPORT_CASES = (*RAW_CASES, "garbage-after-key-exchange")


class RawRogue(protocol.Protocol):
    """Misbehaves before any SSH is spoken: bytes that are not a version exchange."""

    def __init__(self, case: str, done: defer.Deferred[dict[str, object]]) -> None:
        self.case = case
        self.done = done

    def connectionMade(self) -> None:
        if self.case == "garbage-after-banner":
            self.transport.write(b"SSH-2.0-rogue\r\n" + os.urandom(64 * 1024))
        else:
            self.transport.write(b"x" * 8192)

    def connectionLost(self, reason: object = None) -> None:
        if not self.done.called:
            self.done.callback({"case": self.case, "dropped": True, "reason": None})


class RogueTransport(transport.SSHClientTransport):
    """Misbehaves after key exchange, or after authentication on an open session."""

    def __init__(self, case: str, done: defer.Deferred[dict[str, object]]) -> None:
        self.case = case
        self.done = done
        self.reason: str | None = None

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        if self.case == "garbage-after-key-exchange":
            self.transport.write(os.urandom(4096))
        elif self.case.startswith("cancel-tcpip-forward:"):
            _, address, port = self.case.split(":")
            self.requestService(userauth.SSHUserAuthClient(b"rogue", CancelingConnection(address, int(port),
                                                                                         self.done)))
        elif self.case == "huge-window-unread":
            self.requestService(userauth.SSHUserAuthClient(b"rogue", UnreadConnection()))
        else:
            self.requestService(userauth.SSHUserAuthClient(b"rogue", RogueConnection(MESSAGES[self.case])))

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.reason = description.decode(errors="replace")

    def connectionLost(self, reason: object = None) -> None:
        if not self.done.called:
            self.done.callback({"case": self.case, "dropped": True, "reason": self.reason})


class LongRequestTransport(PacketTransport, RogueTransport):
    """Sends one global request longer than the job's sshd takes, over the relay's own packet
    layer: Conch's CTR framing could not carry it past the relay's packet limit."""

    def connectionSecure(self) -> None:
        name = string(b"x-padding@example.org") + b"\0"
        padding = b"p" * (LONG_REQUEST - len(name) - 4)
        self.requestService(userauth.SSHUserAuthClient(
            b"rogue", RogueConnection(lambda r: [running(r), (GLOBAL_REQUEST, name + string(padding))])))


class CancelingConnection(connection.SSHConnection):
    """Asks the job to stop listening on a port this connection never asked for."""

    def __init__(self, address: str, port: int, done: defer.Deferred[dict[str, object]]) -> None:
        super().__init__()
        self._request = string(address.encode()) + u32(port)
        self._done = done

    def serviceStarted(self) -> None:
        super().serviceStarted()
        answer = self.sendGlobalRequest(b"cancel-tcpip-forward", self._request, wantReply=True)
        answer.addCallbacks(lambda _: "success", lambda _: "failure").addCallback(self._answered)

    def _answered(self, reply: str) -> None:
        if not self._done.called:
            self._done.callback({"case": "cancel-tcpip-forward", "dropped": False, "reply": reply})


class UnreadConnection(connection.SSHConnection):
    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.openChannel(UnreadSession(conn=self, localWindow=0xFFFFFFFF))


class UnreadSession(channel.SSHChannel):
    """Grants the job 4 GiB of window for `cat /dev/zero`, then stops reading the socket."""

    name = b"session"

    def channelOpen(self, specificData: bytes) -> None:
        self.conn.sendRequest(self, b"exec", string(b"cat /dev/zero"))
        self.conn.transport.transport.pauseProducing()


class RogueConnection(connection.SSHConnection):
    def __init__(self, messages: Callable[[int], list[tuple[int, bytes]]]) -> None:
        super().__init__()
        self._messages = messages

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.openChannel(RogueSession(self._messages, conn=self))


class RogueSession(channel.SSHChannel):
    name = b"session"

    def __init__(self, messages: Callable[[int], list[tuple[int, bytes]]], conn: connection.SSHConnection) -> None:
        super().__init__(conn=conn)
        self._messages = messages

    def channelOpen(self, specificData: bytes) -> None:
        for msgnum, payload in self._messages(self.conn.channelsToRemoteChannel[self]):
            self.conn.transport.sendPacket(msgnum, payload)


def _read_line(sock: socket.socket) -> str:
    """One reply line, read byte by byte so no SSH bytes after it are consumed."""
    line = b""
    while (byte := sock.recv(1)) not in (b"\n", b""):
        line += byte
    return line.decode(errors="replace")


def open_relayed_socket(socket_path: str, host: str) -> socket.socket:
    """CONNECT through the daemon, as the ProxyCommand helper does, and return the socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    sock.sendall(format_connect(host, 22))
    while (line := _read_line(sock)).startswith("PROGRESS"):
        pass
    if line != "OK":
        raise RuntimeError(f"the daemon refused: {line}")
    return sock


async def run_case(socket_path: str, host: str, case: str) -> dict[str, object]:
    done: defer.Deferred[dict[str, object]] = defer.Deferred()
    kind = RawRogue if case in RAW_CASES else LongRequestTransport if case == "global-request-too-long" \
        else RogueTransport
    rogue = kind(case, done)
    factory = protocol.Factory.forProtocol(lambda: rogue)
    sock = open_relayed_socket(socket_path, host)
    reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, factory)
    sock.close()
    timer = reactor.callLater(DROP_TIMEOUT, lambda: done.callback({"case": case, "dropped": False}))
    result = await done
    if timer.active():
        timer.cancel()
    else:
        rogue.transport.abortConnection()
    return result


async def main(reactor_: object, socket_path: str, host: str, *cases: str) -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    for case in cases:
        print(json.dumps(await run_case(socket_path, host, case)), flush=True)


if __name__ == "__main__":
    task.react(lambda r: defer.ensureDeferred(main(r, *sys.argv[1:])))
