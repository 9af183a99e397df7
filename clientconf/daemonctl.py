"""Asking a running daemon over its socket: `relayd status`, `relayd stop`, `relayd doctor`."""

from __future__ import annotations

import json
import socket
from typing import Any

from relayd.common.errors import DaemonError, NotRunning

REPLY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 15.0


def _request(socket_path: str, line: bytes) -> tuple[socket.socket, str]:
    """Send one request line; returns the socket and the first reply line."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REPLY_TIMEOUT_SECONDS)
    try:
        sock.connect(socket_path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise NotRunning(f"relayd is not running (no listener on {socket_path})") from None
    try:
        sock.sendall(line)
        with sock.makefile("rb") as replies:
            reply = replies.readline().decode(errors="replace").rstrip("\n")
    except OSError as exc:
        sock.close()
        raise DaemonError(f"no answer from relayd at {socket_path}: {exc}") from None
    if not reply.startswith("OK"):
        sock.close()
        raise DaemonError(reply.partition(" ")[2] or "relayd closed the connection without answering")
    return sock, reply


def status(socket_path: str) -> dict[str, Any]:
    """The daemon's status document (see relayd.daemon.status)."""
    sock, reply = _request(socket_path, b"STATUS\n")
    sock.close()
    try:
        document = json.loads(reply[3:])
    except ValueError:
        raise DaemonError("relayd's status is not JSON") from None
    if not isinstance(document, dict):
        raise DaemonError("relayd's status is not a JSON object")
    return document


def stop(socket_path: str) -> None:
    """Ask the daemon to shut down and wait until it has closed its connections."""
    sock, _ = _request(socket_path, b"STOP\n")
    sock.settimeout(STOP_TIMEOUT_SECONDS)
    with sock:
        try:
            while sock.recv(4096):
                pass
        except TimeoutError:
            raise DaemonError(f"relayd did not finish within {STOP_TIMEOUT_SECONDS:g} s") from None
        except ConnectionResetError:
            pass
