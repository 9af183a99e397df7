"""The client half of condor_ssh_to_job: session directory, fdpass, proxy mode.

The tool keeps the TCP socket that now speaks SSH, puts the keys in a private
session directory and listens on `<session dir>/fdpass`.  Whatever connects
there first (ssh's ProxyCommand, i.e. the tool in -proxy mode, or a relay's
capture hook) receives the socket: one sendmsg carrying one b"\\0" byte and
SCM_RIGHTS with the fd.  Only one connection is ever served.
"""

from __future__ import annotations

import array
import errno
import os
import random
import select
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

_MAX_TMP_LEN = 50  # HTCondor falls back to /tmp beyond this, for AF_UNIX path limits
_SUN_PATH_MAX = 107
_BUFSIZE = 65536


class SessionError(Exception):
    """A client-side failure; str() is the real tool's message (no newline)."""


def session_parent() -> str:
    """$TMP (not TMPDIR), or /tmp if unset or longer than 50 characters."""
    tmp = os.environ.get("TMP")
    return "/tmp" if tmp is None or len(tmp) > _MAX_TMP_LEN else tmp


def make_session_dir(username: str) -> Path:
    """Create `<tmp>/<user>.condor_ssh_to_job_<hex>` with mode 0700."""
    parent = session_parent()
    for _ in range(1999):
        path = Path(f"{parent}/{username}.condor_ssh_to_job_{random.getrandbits(32):x}")
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise SessionError(f"Failed to create ssh session dir {path}: {exc.strerror}") from None
    raise SessionError("Failed to create ssh session dir in 2000 tries.")


def write_client_files(session_dir: Path, private_key: bytes,
                       public_key: bytes) -> tuple[Path, Path]:
    """Write ssh_key (0400) and known_hosts (0600, `* <key>`); returns their paths."""
    key_file = session_dir / "ssh_key"
    known_hosts = session_dir / "known_hosts"
    for path, mode, data in ((key_file, 0o400, private_key),
                             (known_hosts, 0o600, b"* " + public_key)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return key_file, known_hosts


def remove_session_dir(session_dir: Path) -> None:
    shutil.rmtree(session_dir, ignore_errors=True)


def listen_fdpass(path: Path) -> socket.socket:
    """The named socket the proxy connects to, accessible to this user only."""
    if len(str(path)) > _SUN_PATH_MAX:
        raise SessionError(f"full socket name is too long: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise SessionError(f"failed to bind to {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    sock.listen(5)
    return sock


def run_serving_fdpass(argv: Sequence[str], fdpass: socket.socket, ssh_sock: socket.socket,
                       debug: Callable[[str], None]) -> int:
    """Run argv, hand ssh_sock to the first connection on fdpass, and wait.

    Returns the child's exit code, or -signal if it was killed (Popen's
    convention).  SHELL is unset for the child, as the real tool does.
    """
    env = {k: v for k, v in os.environ.items() if k != "SHELL"}
    try:
        child = subprocess.Popen(list(argv), env=env)
    except OSError as exc:
        sys.stderr.write(f"Error executing {argv[0]}: {exc.strerror}\n")
        return 1
    pidfd = os.pidfd_open(child.pid)
    listening: socket.socket | None = fdpass
    try:
        while True:
            watched: list[int | socket.socket] = [pidfd]
            if listening is not None:
                watched.append(listening)
            ready, _, _ = select.select(watched, [], [])
            if listening is not None and listening in ready:
                _serve_one(listening, ssh_sock, debug)
                listening.close()
                listening = None
            if pidfd in ready:
                return child.wait()
    finally:
        os.close(pidfd)


def _serve_one(listening: socket.socket, ssh_sock: socket.socket,
               debug: Callable[[str], None]) -> None:
    try:
        conn, _ = listening.accept()
    except OSError as exc:
        sys.stderr.write(f"Error accepting connection on {listening.getsockname()}: "
                         f"{exc.strerror}\n")
        return
    listening.close()  # only one connection is ever served: refuse the rest from now on
    with conn:
        try:
            send_fd(conn, ssh_sock.fileno())
        except OSError as exc:
            sys.stderr.write(f"Error passing socket to proxy: {exc.strerror}\n")
        else:
            debug("Passed ssh connection to ssh proxy.")


def send_fd(conn: socket.socket, fd: int) -> None:
    """fdpass_send: one b"\\0" byte with the fd as SCM_RIGHTS."""
    sent = conn.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    if sent != 1:
        raise OSError(errno.EIO, "unexpected return from sendmsg")


def receive_fd(name: str) -> int:
    """fdpass_recv: connect to the named socket and take the fd it sends."""
    if len(name) > _SUN_PATH_MAX:
        raise SessionError(f"full socket name is too long: {name}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(name)
        except OSError as exc:
            raise SessionError(f"failed to connect to {name}: {exc.strerror}") from None
        fds = array.array("i")
        try:
            data, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
        except OSError as exc:
            raise SessionError(f"failed to receive ssh fd: {exc.strerror}") from None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:fds.itemsize])
        if data != b"\0" or not fds:
            raise SessionError("failed to receive ssh fd: Success")
        return fds[0]


class _Pair:
    """One direction of the proxy: bytes read from src are written to dst."""

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst
        self.buf = b""
        self.done = False

    def close(self) -> None:
        """Pass EOF on: shut down what can be shut down, then close both fds."""
        for fd, how in ((self.src, socket.SHUT_RD), (self.dst, socket.SHUT_WR)):
            if stat.S_ISSOCK(os.fstat(fd).st_mode):  # a pipe's EOF is its close
                sock = socket.socket(fileno=fd)
                try:
                    sock.shutdown(how)
                except OSError:
                    pass
                finally:
                    sock.detach()
            os.close(fd)
        self.done = True


def proxy(fd: int) -> None:
    """Relay stdin to fd and fd to stdout until both directions reach EOF.

    Raises SessionError("Error reading from socket N: ...") on read errors,
    like HTCondor's SocketProxy.
    """
    pairs = [_Pair(fd, 1), _Pair(0, os.dup(fd))]
    for pair in pairs:
        os.set_blocking(pair.src, False)
        os.set_blocking(pair.dst, False)
    while active := [p for p in pairs if not p.done]:
        readers = [p.src for p in active if not p.buf]
        writers = [p.dst for p in active if p.buf]
        readable, writable, _ = select.select(readers, writers, [])
        for pair in active:
            if pair.buf and pair.dst in writable:
                try:
                    pair.buf = pair.buf[os.write(pair.dst, pair.buf):]
                except BlockingIOError:
                    continue
                except OSError:
                    pair.close()  # the reader went away; nothing more to deliver
            elif not pair.buf and pair.src in readable:
                try:
                    data = os.read(pair.src, _BUFSIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise SessionError(
                        f"Error reading from socket {pair.src}: {exc.strerror}\n") from None
                if data:
                    pair.buf = data
                else:
                    pair.close()
