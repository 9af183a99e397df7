"""`relayd connect --stdio`: copy bytes between stdin/stdout and the relayed connection.

For a laptop whose ssh reaches the relay through an outer ssh to the access point: a
file descriptor cannot cross that ssh, so this process stays in the path and copies.
Stdlib only.
"""

from __future__ import annotations

import _socket
import os
import selectors

CHUNK = 256 * 1024


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def splice(sock: _socket.socket, stdin: int = 0, stdout: int = 1) -> None:
    """Copy until the relay closes the connection; stdin's end is passed on as a half-close."""
    sock.setblocking(True)
    with selectors.DefaultSelector() as selector:
        selector.register(stdin, selectors.EVENT_READ)
        selector.register(sock, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is sock:
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    _write_all(stdout, data)
                else:
                    data = os.read(stdin, CHUNK)
                    if data:
                        sock.sendall(data)
                    else:
                        selector.unregister(stdin)
                        sock.shutdown(_socket.SHUT_WR)
