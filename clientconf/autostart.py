"""Starting the daemon from the helper when nobody listens on its socket.

So that `relayd ssh-config install` is all a user needs: the first `ssh job-1.0.condor`
starts `relayd run --on-demand`, which exits again when idle (relayd.daemon.exit_when_idle).

Race-free: the helper takes an exclusive flock on the start lock in the runtime dir,
tries the socket again, and only then starts a daemon and waits for it to listen.
Concurrent helpers queue on the lock and find the daemon the first one started; a daemon
exiting idle holds the same lock until it is gone. The lock is opened with O_NOFOLLOW and
the start output created anew: neither follows a symlink put in their place. Stdlib
only, and _socket rather than socket, as clientconf.connect says.
"""

from __future__ import annotations

import _socket
import fcntl
import os
import sys
import time

from clientconf.progress import ProgressDisplay
from relayd.common.errors import StartFailed, UnusablePath
from relayd.common.paths import default_paths, private_dir, unsafe_dir
from relayd.common.peercred import peer_credentials

START_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.05


def try_connect(socket_path: str) -> _socket.socket | None:
    """A connection to the daemon, or None when nothing listens there.

    Raises StartFailed when the listener is not this user's (checked before anything is sent).
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
        uid = peer_credentials(sock)[1]
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    if uid != os.getuid():
        sock.close()
        raise StartFailed(f"{socket_path} is served by uid {uid}, not by you (uid {os.getuid()}); nothing sent")
    return sock


def _open(path: str, flags: int) -> int:
    """os.open that refuses a symlink (O_NOFOLLOW), as StartFailed."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StartFailed(f"cannot open {path}: {exc.strerror}") from None


def _lock(path: str, display: ProgressDisplay, deadline: float) -> int:
    fd = _open(path, os.O_RDWR | os.O_CREAT)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise StartFailed(f"another relayd start did not finish within {START_TIMEOUT_SECONDS:g} s") from None
            display.tick()
            time.sleep(POLL_SECONDS)


def _output(path: str) -> str:
    try:
        with open(_open(path, os.O_RDONLY), errors="replace") as out:
            return " ".join(line.strip() for line in out if line.strip())
    except StartFailed:
        return ""


def _fresh(path: str) -> int:
    """`path` created anew for writing: whatever was there (a symlink too) is removed, not followed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StartFailed(f"cannot replace {path}: {exc.strerror}") from None
    return _open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def start_daemon(socket_path: str, display: ProgressDisplay) -> _socket.socket:
    """Connect to the daemon at `socket_path`, starting it first if none is listening."""
    import subprocess  # noqa: PLC0415 (not needed on the helper's fast path)

    paths = default_paths().with_socket(socket_path)
    why = unsafe_dir(str(paths.runtime_dir))  # a socket named in an ssh config from before the rule
    if why is not None:
        raise StartFailed(f"not starting relayd: {paths.runtime_dir} is not safe ({why}); "
                          "run `relayd ssh-config install` again")
    try:
        private_dir(paths.state_dir)  # first: the runtime dir may be inside it (its fallback)
        private_dir(paths.runtime_dir)
    except UnusablePath as exc:
        raise StartFailed(str(exc)) from None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    lock = _lock(str(paths.start_lock), display, deadline)
    try:
        sock = try_connect(socket_path)
        if sock is not None:
            return sock  # another helper started it while we waited for the lock
        display.step("starting relayd")
        out = _fresh(str(paths.start_output))  # under the lock: no other helper writes it now
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "relayd", "run", "--on-demand", "--socket", socket_path],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd="/", start_new_session=True,
            )
        finally:
            os.close(out)
        while time.monotonic() < deadline:
            sock = try_connect(socket_path)
            if sock is not None:
                return sock
            if process.poll() is not None:
                detail = _output(str(paths.start_output)) or f"exit status {process.returncode}"
                raise StartFailed(f"relayd did not start: {detail}")
            display.tick()
            time.sleep(POLL_SECONDS)
        raise StartFailed(f"relayd did not listen on {socket_path} within {START_TIMEOUT_SECONDS:g} s")
    finally:
        os.close(lock)
