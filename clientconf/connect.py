"""`relayd connect HOST PORT`: the ProxyCommand helper ssh runs for every connection.

It asks the daemon for HOST over the unix socket (starting the daemon if none listens),
shows the daemon's progress and errors on stderr, and on success hands the connected
socket itself to ssh (ProxyUseFdpass) and exits, so no copy process stays in the data
path. With `--stdio` (behind an outer ssh, where no descriptor can be passed) it copies
between stdin/stdout and the socket instead. Stdlib only, to start fast.
"""

from __future__ import annotations

import os
import socket
import sys

from clientconf.autostart import StartFailed, start_daemon, try_connect
from clientconf.progress import TICK_SECONDS, ProgressDisplay
from relayd.protocol import BadRequest, format_connect

EXIT_ERROR = 255  # what ssh itself returns when a connection fails


class _Failed(Exception):
    """The connection cannot be made; str() is the message for the user."""


class _DaemonGone(_Failed):
    """The daemon closed the connection before answering (e.g. it was exiting idle)."""


def _read_line(sock: socket.socket, display: ProgressDisplay) -> str:
    """Read one reply line without consuming the SSH bytes that may follow it."""
    data = b""
    while True:
        try:
            chunk = sock.recv(4096, socket.MSG_PEEK)
        except TimeoutError:
            display.tick()
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise _DaemonGone("the relay daemon closed the connection")
        end = chunk.find(b"\n")
        if end >= 0:
            data += sock.recv(end + 1)
            return data[:-1].decode(errors="replace")
        data += sock.recv(len(chunk))
        if len(data) > 64 * 1024:
            raise _Failed("the relay daemon sent an overlong reply")


def _hand_to_ssh(sock: socket.socket) -> None:
    """Pass the connected socket to ssh through our stdout (ProxyUseFdpass)."""
    try:
        out = socket.socket(fileno=os.dup(1))
    except OSError:
        raise _Failed(
            "stdout is not a socket: use this helper with 'ProxyUseFdpass yes' (see relayd ssh-config print)"
        ) from None
    with out:
        socket.send_fds(out, [b"\0"], [sock.fileno()])


def _open(socket_path: str, autostart: bool, display: ProgressDisplay) -> socket.socket:
    """A connection to the daemon, started first if need be."""
    try:
        sock = try_connect(socket_path)
        if sock is not None:
            return sock
        if not autostart:
            raise _Failed(f"the relay daemon is not running (no listener on {socket_path}); start it with 'relayd run'")
        return start_daemon(socket_path, display)
    except StartFailed as exc:
        raise _Failed(str(exc)) from None
    except OSError as exc:
        raise _Failed(f"cannot reach the relay daemon at {socket_path}: {exc.strerror or exc}") from None


def _ask(sock: socket.socket, request: bytes, display: ProgressDisplay) -> None:
    """Send the request and follow the replies until OK; raises _Failed otherwise."""
    if display.interactive:
        sock.settimeout(TICK_SECONDS)
    sock.sendall(request)
    while True:
        kind, _, text = _read_line(sock, display).partition(" ")
        if kind == "OK":
            sock.setblocking(True)  # ssh gets this very descriptor, flags included
            return
        if kind == "ERROR":
            raise _Failed(text)
        if kind == "PROGRESS":
            display.step(text)


def _attempt(socket_path: str, request: bytes, autostart: bool, display: ProgressDisplay) -> socket.socket:
    sock = _open(socket_path, autostart, display)
    try:
        _ask(sock, request, display)
    except BaseException:
        sock.close()
        raise
    return sock


def _connected(socket_path: str, request: bytes, autostart: bool, display: ProgressDisplay) -> socket.socket:
    """The daemon's socket after its OK."""
    try:
        return _attempt(socket_path, request, autostart, display)
    except _DaemonGone:
        if not autostart:
            raise
        return _attempt(socket_path, request, autostart, display)  # a daemon exiting idle dropped us


WAIT_ENV = "CONDOR_RELAY_WAIT"  # e.g. CONDOR_RELAY_WAIT=600 ssh job-1.0.condor


def connect(socket_path: str, host: str, port: int, stdio: bool = False, autostart: bool = True,
            user: str | None = None) -> int:
    """Run the helper; returns the exit status (255 on failure, as ssh's own)."""
    display = ProgressDisplay(sys.stderr)
    try:
        wait = os.environ.get(WAIT_ENV)
        try:
            request = format_connect(host, port, user, float(wait) if wait else None)
        except ValueError as exc:
            raise _Failed(f"{exc} (from {WAIT_ENV}={wait})" if wait and not isinstance(exc, BadRequest)
                          else str(exc)) from None
        sock = _connected(socket_path, request, autostart, display)
        display.clear()
        with sock:
            if stdio:
                from clientconf.splice import splice  # noqa: PLC0415

                splice(sock)
            else:
                _hand_to_ssh(sock)
    except (BadRequest, _Failed) as exc:
        display.say(str(exc))
        return EXIT_ERROR
    except OSError as exc:
        display.say(f"connection to the relay daemon failed: {exc.strerror or exc}")
        return EXIT_ERROR
    return 0
