"""Small loopback helpers for forwarding tests: an echo server and a SOCKS5 client."""

from __future__ import annotations

import socket
import struct
import threading
import time


class EchoServer:
    """A threaded TCP (or unix-socket) echo server on loopback."""

    def __init__(self, unix_path: str | None = None) -> None:
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(unix_path)
        else:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def round_trip(sock: socket.socket, data: bytes) -> bytes:
    """Send data and read the same number of bytes back (from an echo peer)."""
    sender = threading.Thread(target=sock.sendall, args=(data,))
    sender.start()
    received = bytearray()
    while len(received) < len(data):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    sender.join()
    return bytes(received)


def connect_retry(address, timeout: float = 15.0, family: int = socket.AF_INET) -> socket.socket:
    """Connect, retrying while the listener (e.g. an ssh -L port) comes up."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(family)
        try:
            sock.connect(address)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def socks5_connect(proxy_port: int, host: str, port: int) -> socket.socket:
    """Open a connection through a SOCKS5 proxy (ssh -D), no authentication."""
    sock = connect_retry(("127.0.0.1", proxy_port))
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    name = host.encode()
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
    reply = sock.recv(10)
    if reply[1] != 0:
        raise ConnectionError(f"SOCKS5 connect failed with code {reply[1]}")
    return sock


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
