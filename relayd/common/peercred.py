"""Who is at the other end of a unix socket, as the kernel recorded it. Stdlib only, and
_socket rather than socket: the ProxyCommand helper imports this on every connection."""

from __future__ import annotations

import _socket
import sys

_SOL_LOCAL, _LOCAL_PEERCRED, _LOCAL_PEERPID = 0, 1, 2  # macOS <sys/un.h>
_XUCRED_SIZE = 76  # struct xucred: u_int version, uid_t uid, short ngroups, gid_t groups[16]


def _int(raw: bytes, offset: int) -> int:
    return int.from_bytes(raw[offset : offset + 4], sys.byteorder)


def peer_credentials(sock: _socket.socket) -> tuple[int, int]:
    """(pid, uid) of the peer of a connected unix socket (SO_PEERCRED; macOS: LOCAL_PEERCRED).

    For the side that connected, the peer is the process that called listen(): the daemon,
    or systemd when it passed the socket. Neither can be forged by the peer.
    """
    if hasattr(_socket, "SO_PEERCRED"):
        raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # struct ucred: pid, uid, gid
        return _int(raw, 0), _int(raw, 4)
    uid = _int(sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED_SIZE), 4)
    return _int(sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4), 0), uid
