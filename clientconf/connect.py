"""`relayd connect HOST PORT`: the ProxyCommand helper ssh runs for every connection.

It asks the daemon for HOST over the unix socket, shows the daemon's progress and errors
on stderr, and on success hands the connected socket itself to ssh (ProxyUseFdpass) and
exits, so no copy process stays in the data path. Stdlib only, to start fast.
"""

from __future__ import annotations

import os
import socket
import sys

from relayd.protocol import format_connect

EXIT_ERROR = 255  # what ssh itself returns when a connection fails


def _say(message: str) -> None:
    sys.stderr.write(f"condor-relay: {message}\n")
    sys.stderr.flush()


def _read_line(sock: socket.socket) -> str:
    """Read one reply line without consuming the SSH bytes that may follow it."""
    data = b""
    while True:
        chunk = sock.recv(4096, socket.MSG_PEEK)
        if not chunk:
            raise ConnectionError("the relay daemon closed the connection")
        end = chunk.find(b"\n")
        if end >= 0:
            data += sock.recv(end + 1)
            return data[:-1].decode(errors="replace")
        data += sock.recv(len(chunk))
        if len(data) > 64 * 1024:
            raise ConnectionError("the relay daemon sent an overlong reply")


def _hand_to_ssh(sock: socket.socket) -> None:
    """Pass the connected socket to ssh through our stdout (ProxyUseFdpass)."""
    try:
        out = socket.socket(fileno=os.dup(1))
    except OSError:
        raise ConnectionError(
            "stdout is not a socket: use this helper with 'ProxyUseFdpass yes' (see relayd ssh-config print)"
        ) from None
    with out:
        socket.send_fds(out, [b"\0"], [sock.fileno()])


WAIT_ENV = "CONDOR_RELAY_WAIT"  # e.g. CONDOR_RELAY_WAIT=600 ssh job-1.0.condor


def connect(socket_path: str, host: str, port: int, show_progress: bool, user: str | None = None) -> int:
    try:
        wait = os.environ.get(WAIT_ENV)
        request = format_connect(host, port, user, float(wait) if wait else None)
    except ValueError as exc:
        _say(str(exc))
        return EXIT_ERROR
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError):
            _say(f"the relay daemon is not running (no listener on {socket_path}); start it with 'relayd run'")
            return EXIT_ERROR
        except OSError as exc:
            _say(f"cannot reach the relay daemon at {socket_path}: {exc.strerror}")
            return EXIT_ERROR
        try:
            sock.sendall(request)
            while True:
                kind, _, text = _read_line(sock).partition(" ")
                if kind == "OK":
                    _hand_to_ssh(sock)
                    return 0
                if kind == "ERROR":
                    _say(text)
                    return EXIT_ERROR
                if kind == "PROGRESS" and show_progress:
                    _say(text)
        except (ConnectionError, OSError) as exc:
            _say(str(exc))
            return EXIT_ERROR
