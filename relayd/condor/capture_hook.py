"""The `-ssh` hook condor_ssh_to_job runs in place of ssh during a negotiation.

condor_ssh_to_job calls it as it would call ssh (`-oUser=%u -oIdentityFile=%i
-oUserKnownHostsFile=%k -oProxyCommand=%x ...`). The hook reads the session's key, the
job sshd's public key and the user name, takes the TCP socket to the job's sshd from the
tool's `fdpass` socket, and hands all of it to the daemon over its unix socket
(SCM_RIGHTS). It exits 0 once the daemon has confirmed; condor_ssh_to_job then removes
its session directory, so the keys exist only in the daemon's memory afterwards.

The daemon passes its socket path, its pid and a one-time token in the environment. The
hook sends nothing unless the socket's listener is that very process of this user (an
inherited socketpair would need condor_ssh_to_job to keep our descriptors open, which
nothing promises). Stdlib only.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys

from relayd.common.errors import RelayError
from relayd.common.peercred import peer_credentials

SOCKET_ENV = "CONDOR_RELAY_CAPTURE_SOCKET"
TOKEN_ENV = "CONDOR_RELAY_CAPTURE_TOKEN"
PID_ENV = "CONDOR_RELAY_CAPTURE_PID"  # the daemon's, which listens on its socket


def _ssh_options(args: list[str]) -> dict[str, str]:
    options = {}
    for arg in args:
        if arg.startswith("-o") and "=" in arg:
            key, _, value = arg[2:].partition("=")
            options.setdefault(key.lower(), value)
    return options


def _fdpass_path(proxy_command: str) -> str:
    words = shlex.split(proxy_command)
    if "-proxy" not in words or words.index("-proxy") + 1 >= len(words):
        raise RelayError(f"unexpected ProxyCommand from condor_ssh_to_job: {proxy_command!r}")
    return words[words.index("-proxy") + 1]


def _receive_job_socket(fdpass: str) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(fdpass)
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    if len(fds) != 1:
        raise RelayError("condor_ssh_to_job passed no socket")
    return fds[0]


def collect(args: list[str]) -> tuple[dict[str, str], int]:
    """Read what the negotiation produced: (keys and user, job socket fd)."""
    options = _ssh_options(args)
    try:
        user = options["user"]
        with open(options["identityfile"]) as key_file:
            private_key = key_file.read()
        with open(options["userknownhostsfile"]) as hosts_file:
            known_host = hosts_file.readline().split(None, 1)
        fdpass = _fdpass_path(options["proxycommand"])
    except KeyError as missing:
        raise RelayError(f"condor_ssh_to_job did not pass -o{missing.args[0]}") from None
    except OSError as exc:
        raise RelayError(f"cannot read the negotiated keys: {exc}") from None
    if len(known_host) != 2:
        raise RelayError("the negotiated known_hosts file has no key")
    return {"user": user, "private_key": private_key, "server_key": known_host[1].strip()}, _receive_job_socket(fdpass)


def check_listener(sock: socket.socket, socket_path: str, daemon_pid: int) -> None:
    """Raise RelayError unless the listener is the daemon that started this negotiation."""
    pid, uid = peer_credentials(sock)
    if uid != os.getuid():
        raise RelayError(f"{socket_path} is served by uid {uid}, not by this user (uid {os.getuid()}); nothing sent")
    if pid != daemon_pid:
        raise RelayError(f"{socket_path} is served by pid {pid}, not by the relayd that started this negotiation "
                        f"(pid {daemon_pid}); nothing sent")


def hand_over(socket_path: str, daemon_pid: int, token: str, keys: dict[str, str], job_fd: int) -> None:
    """Send the capture to the daemon, once checked, and wait for its confirmation."""
    message = f"CAPTURE {token}\n".encode() + json.dumps(keys).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        check_listener(sock, socket_path, daemon_pid)
        socket.send_fds(sock, [message], [job_fd])
        answer = sock.makefile("rb").readline().decode(errors="replace").strip()
    if answer != "OK":
        raise RelayError(f"the relay daemon refused the capture: {answer or 'no answer'}")


def main() -> int:
    try:
        socket_path, token, daemon_pid = os.environ[SOCKET_ENV], os.environ[TOKEN_ENV], int(os.environ[PID_ENV])
    except (KeyError, ValueError):
        print("condor-relay-capture: run by relayd through condor_ssh_to_job only", file=sys.stderr)
        return 2
    try:
        keys, job_fd = collect(sys.argv[1:])
        hand_over(socket_path, daemon_pid, token, keys, job_fd)
    except (RelayError, OSError) as exc:
        print(f"condor-relay-capture: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
