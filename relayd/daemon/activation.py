"""systemd socket activation: serve the listening socket systemd passes as fd 3.

systemd binds the socket (so `ssh job-1.0.condor` works before the daemon runs), starts
the service on the first connection with LISTEN_PID/LISTEN_FDS set, and keeps the socket
when the daemon exits idle, so the next connection starts it again.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from relayd.common.errors import ActivationError

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@dataclass(frozen=True)
class PassedSocket:
    fd: int
    path: str


def systemd_socket() -> PassedSocket | None:
    """The unix socket systemd passed to this process, or None if it passed none.

    The LISTEN_* variables are removed either way, so that condor_ssh_to_job and the
    other processes the daemon starts do not take the socket for theirs.
    """
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    for name in _VARIABLES:
        os.environ.pop(name, None)
    if not pid or not count or pid != str(os.getpid()):
        return None
    if count != "1":
        raise ActivationError(f"systemd passed {count} sockets; the socket unit must have one ListenStream")
    try:
        sock = socket.socket(fileno=LISTEN_FDS_START)
    except OSError as exc:
        raise ActivationError(f"fd {LISTEN_FDS_START} from systemd is not a socket ({exc.strerror})") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
            raise ActivationError("the socket systemd passed is not a listening unix stream socket (ListenStream=)")
        path = sock.getsockname()
        if not isinstance(path, str) or not path.startswith("/"):
            raise ActivationError(f"the socket systemd passed has no file system path ({path!r})")
        sock.setblocking(False)
        sock.set_inheritable(False)
    finally:
        sock.detach()
    return PassedSocket(LISTEN_FDS_START, path)
