"""Copy bytes between stdin/stdout and the relayed connection, for clients that cannot take it.

Behind an outer ssh (`relayd connect --stdio`) a file descriptor cannot cross; and paramiko,
asyncssh, sshj and Windows' ssh start the ProxyCommand with pipes. This process then stays in
the path and copies.

One thread per direction, each with blocking reads and writes through one reused buffer: a
write that waits for a client busy writing itself never stops the other direction, and memory
stays at two buffers. The copy ends when the relay hangs up or the client stops reading; the
client's EOF on stdin is passed on as a half-close, after which the relay hangs up. Stdlib only.
"""

from __future__ import annotations

import _socket
import os
import threading

CHUNK = 256 * 1024


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _upward(sock: _socket.socket, stdin: int) -> None:
    """stdin to the relay; stdin's end is passed on as a half-close."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    try:
        while n := os.readv(stdin, [buffer]):
            sock.sendall(view[:n])
    except OSError:  # stdin failed, or the relay is gone (the other direction sees that and ends the copy)
        pass
    try:
        sock.shutdown(_socket.SHUT_WR)
    except OSError:
        pass


def splice(sock: _socket.socket, stdin: int = 0, stdout: int = 1) -> None:
    """Copy both ways until the relay closes the connection or the client stops reading."""
    sock.setblocking(True)
    threading.Thread(target=_upward, args=(sock, stdin), daemon=True).start()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    try:
        while n := sock.recv_into(buffer):
            _write_all(stdout, view[:n])
    except (BrokenPipeError, ConnectionResetError):  # the client closed its end, or the relay aborted
        pass
