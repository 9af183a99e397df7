"""`relayd connect HOST PORT`: the ProxyCommand helper ssh runs for every connection.

It asks the daemon for HOST over the unix socket (starting the daemon if none listens),
and once the daemon says OK -- at once: the daemon reaches the job while ssh does its key
exchange, and reports progress and failures through SSH itself -- it hands the connected
socket to ssh (ProxyUseFdpass) and exits, so no copy process stays in the data path.
With `--stdio` (behind an outer ssh, where no descriptor can be passed), or for a client
that gave it pipes (paramiko, asyncssh, sshj, Windows' ssh), it copies between
stdin/stdout and the socket instead. When it fails itself (no daemon, a bad request),
relayd.ssh.refusal tells ssh why over SSH in the daemon's place.

Its start-up is on every connection's critical path (about 11 ms, 8 of them Python's own),
so it imports only light stdlib modules: main() parses the command line itself (argparse
would add 5 ms), sockets are _socket's (socket.py builds enums on import: 4 ms), and ssh
runs it as condor-relay-connect (scripts/), skipping the console-script wrapper's
`import re` (3 ms); `relayd connect` runs the same main().
"""

from __future__ import annotations

import _socket
import os
import stat
import sys
from collections import namedtuple

from clientconf.autostart import start_daemon, try_connect
from clientconf.progress import TICK_SECONDS, ProgressDisplay
from relayd.common.errors import BadRequest, StartFailed
from relayd.common.paths import socket_path
from relayd.common.protocol import format_connect

EXIT_ERROR = 255  # what ssh itself returns when a connection fails


class _Failed(Exception):
    """The connection cannot be made; str() is the message for the user."""


class _DaemonGone(_Failed):
    """The daemon closed the connection before answering (e.g. it was exiting idle)."""


def _read_line(sock: _socket.socket, display: ProgressDisplay) -> tuple[str, int | None]:
    """Read one reply line without consuming the SSH bytes that may follow it; with it, the
    descriptor the daemon attached (the direct path's job socket), if any."""
    data = b""
    fd = None
    while True:
        try:
            chunk = sock.recv(4096, _socket.MSG_PEEK)
        except TimeoutError:
            display.tick()
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise _DaemonGone("the relay daemon closed the connection")
        end = chunk.find(b"\n")
        part, fd = _recv_with_fd(sock, end + 1 if end >= 0 else len(chunk), fd)
        data += part
        if end >= 0:
            return data[:-1].decode(errors="replace"), fd
        if len(data) > 64 * 1024:
            raise _Failed("the relay daemon sent an overlong reply")


def _recv_with_fd(sock: _socket.socket, size: int, fd: int | None) -> tuple[bytes, int | None]:
    """recv(size), keeping a descriptor sent along (at most one: any more are closed)."""
    data, ancillary, _, _ = sock.recvmsg(size, _socket.CMSG_SPACE(8))
    for level, kind, raw in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            for i in range(0, len(raw) - len(raw) % 4, 4):
                received = int.from_bytes(raw[i : i + 4], sys.byteorder)
                if fd is None:
                    fd = received
                else:
                    os.close(received)
    return data, fd


def _descriptor_taker() -> _socket.socket | None:
    """Our stdout as a socket when ssh waits for the connection on it (ProxyUseFdpass), else None.

    OpenSSH gives the helper one end of a unix stream socketpair as both stdin and stdout, and
    writes nothing on it. Other clients give pipes (paramiko, asyncssh, sshj, Windows' ssh) or
    a socketpair they send their version line on at once (libssh), and would read the byte that
    carries SCM_RIGHTS as SSH data: so this looks, and never tries.
    """
    try:
        stdin, stdout = os.fstat(0), os.fstat(1)
    except OSError:
        return None
    if not stat.S_ISSOCK(stdout.st_mode) or (stdin.st_dev, stdin.st_ino) != (stdout.st_dev, stdout.st_ino):
        return None
    out = _socket.socket(fileno=os.dup(1))
    try:
        if out.family == _socket.AF_UNIX and out.getsockopt(_socket.SOL_SOCKET, _socket.SO_TYPE) == _socket.SOCK_STREAM:
            out.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)  # data, or EOF: not a waiting OpenSSH
    except BlockingIOError:
        return out
    except OSError:
        pass
    out.close()
    return None


def _hand_to_ssh(sock: _socket.socket, copy: bool) -> None:
    """Pass the connected socket to ssh through our stdout (as socket.send_fds) when ssh takes
    it; otherwise, or with `copy` (--stdio), stay and copy between stdin/stdout and the socket."""
    out = None if copy else _descriptor_taker()
    if out is None:
        from clientconf.splice import splice  # noqa: PLC0415

        splice(sock)
        return
    try:
        descriptor = sock.fileno().to_bytes(4, sys.byteorder)  # one C int
        out.sendmsg([b"\0"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, descriptor)])
    finally:
        out.close()


def _open(socket_path: str, autostart: bool, display: ProgressDisplay) -> _socket.socket:
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


def _ask(sock: _socket.socket, request: bytes, display: ProgressDisplay) -> _socket.socket:
    """Send the request and read the reply: the socket to hand to ssh (the daemon's, or the
    job's when the daemon attached it to its OK), or raise _Failed."""
    if display.interactive:
        sock.settimeout(TICK_SECONDS)
    sock.sendall(request)
    line, fd = _read_line(sock, display)
    kind, _, text = line.partition(" ")
    if kind != "OK":
        if fd is not None:
            os.close(fd)
        raise _Failed(text if kind == "ERROR" else f"unexpected reply from the relay daemon: {kind[:40]!r}")
    if fd is not None:
        sock.close()
        job = _socket.socket(fileno=fd)
        job.setblocking(True)
        return job
    sock.setblocking(True)  # ssh gets this very descriptor, flags included
    return sock


def _attempt(socket_path: str, request: bytes, autostart: bool, display: ProgressDisplay) -> _socket.socket:
    sock = _open(socket_path, autostart, display)
    try:
        return _ask(sock, request, display)
    except BaseException:
        sock.close()
        raise


def _connected(socket_path: str, request: bytes, autostart: bool, display: ProgressDisplay) -> _socket.socket:
    """The socket for ssh after the daemon's OK."""
    try:
        return _attempt(socket_path, request, autostart, display)
    except _DaemonGone:
        if not autostart:
            raise
        return _attempt(socket_path, request, autostart, display)  # a daemon exiting idle dropped us


WAIT_ENV = "CONDOR_RELAY_WAIT"  # e.g. CONDOR_RELAY_WAIT=600 ssh job-1.0.condor


def connect(socket_path: str, host: str, port: int, stdio: bool = False, autostart: bool = True,
            user: str | None = None) -> int:
    """Run the helper; returns the exit status (255 when it could not even refuse over SSH)."""
    display = ProgressDisplay(sys.stderr)
    try:
        wait = os.environ.get(WAIT_ENV)
        try:
            request = format_connect(host, port, user, float(wait) if wait else None)
        except ValueError as exc:
            raise _Failed(f"{exc} (from {WAIT_ENV}={wait})" if wait and not isinstance(exc, BadRequest)
                          else str(exc)) from None
        try:
            sock = _connected(socket_path, request, autostart, display)
        except OSError as exc:
            raise _Failed(f"connection to the relay daemon failed: {exc.strerror or exc}") from None
        display.clear()
    except (BadRequest, _Failed) as exc:
        display.clear()
        return _refuse(str(exc), stdio)
    return _hand_over(sock, stdio)


def _hand_over(sock: _socket.socket, stdio: bool) -> int:
    """Give ssh the connection: pass the socket itself, or copy through stdin/stdout."""
    try:
        _hand_to_ssh(sock, copy=stdio)
    except OSError as exc:
        sys.stderr.write(f"condor-relay: {exc}\n")
        return EXIT_ERROR
    finally:
        sock.close()
    return 0


def _refuse(message: str, stdio: bool) -> int:
    """Tell ssh why over SSH: relayd.ssh.refusal speaks as the relay on one end of a socket pair,
    and ssh gets the other end as it would the daemon's socket. Someone who runs the helper
    by hand at a terminal just reads the message."""
    if os.isatty(1):
        sys.stderr.write(f"condor-relay: {message}\n")
        return EXIT_ERROR
    import subprocess  # noqa: PLC0415 (the failure path only)

    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        subprocess.Popen([sys.executable, "-m", "relayd.ssh.refusal", message], stdin=theirs.fileno(),
                         stdout=theirs.fileno(), cwd="/", start_new_session=True)
    except OSError as exc:
        ours.close()
        sys.stderr.write(f"condor-relay: {message}\n")
        sys.stderr.write(f"condor-relay: (could not start relayd.ssh.refusal: {exc.strerror or exc})\n")
        return EXIT_ERROR
    finally:
        theirs.close()
    return _hand_over(ours, stdio)


def known_hosts(socket_path: str, host: str) -> int:
    """ssh's KnownHostsCommand for the direct path: print the host key the daemon negotiated
    for the ssh that runs us, as a known_hosts line for `host` (%H); nothing if there is none,
    and ssh then refuses the job's sshd as unknown."""
    try:
        sock = try_connect(socket_path)
        if sock is None:
            return 0
        try:
            sock.sendall(b"HOSTKEY\n")
            line, fd = _read_line(sock, ProgressDisplay(sys.stderr, interactive=False))
        finally:
            sock.close()
    except (OSError, _Failed, StartFailed) as exc:
        sys.stderr.write(f"condor-relay: no host key for {host}: {exc}\n")
        return 0
    if fd is not None:
        os.close(fd)
    kind, _, key = line.partition(" ")
    if kind == "OK" and key.isprintable():
        sys.stdout.write(f"{host} {key}\n")
    return 0


SUMMARY = "ProxyCommand helper (used by the generated ssh_config)"
USAGE = ("usage: relayd connect [-h] [--socket SOCKET] [--stdio] [--no-start] [--user USER] [--known-hosts]"
         " host [port]")
HELP = f"""{USAGE}

{SUMMARY}: connects to HOST's port PORT through the relay daemon.

positional arguments:
  host             the job's host name (%h)
  port             its ssh port (%p; default: 22)

options:
  -h, --help       show this help message and exit
  --socket SOCKET  the daemon's socket (default: $XDG_RUNTIME_DIR/condor-relay/relay.sock)
  --stdio          copy through stdin/stdout instead of passing the socket (behind an outer ssh)
  --no-start       fail instead of starting the daemon
  --user USER      the user ssh connects as (%r); used for EC2 instances
  --known-hosts    print the direct path's host key for HOST (ssh's KnownHostsCommand, %H)
"""
EXIT_USAGE = 2  # as argparse, for the other subcommands


class _Usage(Exception):
    """A bad command line; str() says what is wrong."""


class _Help(Exception):
    """-h or --help."""


_Args = namedtuple("_Args", "host port socket stdio autostart user known_hosts")


def _port(word: str) -> int:
    if word.isascii() and word.isdigit() and 0 < int(word) < 65536:
        return int(word)
    raise _Usage(f"argument port: invalid port {word!r} (1 to 65535)")


def _parse(argv: list[str]) -> _Args:
    """The command line as argparse would read it (`--opt VALUE` or `--opt=VALUE`, `--`),
    without abbreviated option names."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    positional: list[str] = []
    words = iter(argv)
    for word in words:
        name, equals, value = word.partition("=")
        if word == "--":
            positional += words
        elif word in ("-h", "--help"):
            raise _Help
        elif name in ("--socket", "--user"):
            if not equals:
                try:
                    value = next(words)
                except StopIteration:
                    raise _Usage(f"argument {name}: expected one argument") from None
            values[name] = value
        elif word in ("--stdio", "--no-start", "--known-hosts"):
            flags.add(word)
        elif word.startswith("-") and word != "-":
            raise _Usage(f"unrecognized argument: {word}")
        else:
            positional.append(word)
    if not positional:
        raise _Usage("the following arguments are required: host")
    if len(positional) > 2:
        raise _Usage(f"unrecognized arguments: {' '.join(positional[2:])}")
    port = _port(positional[1]) if len(positional) == 2 else 22
    return _Args(positional[0], port, socket_path(values.get("--socket")), "--stdio" in flags,
                 "--no-start" not in flags, values.get("--user"), "--known-hosts" in flags)


def main(argv: list[str]) -> int:
    """`relayd connect ARGV`: the exit status, 2 for a bad command line."""
    try:
        args = _parse(argv)
    except _Help:
        sys.stdout.write(HELP)
        return 0
    except _Usage as exc:
        sys.stderr.write(f"{USAGE}\nrelayd connect: error: {exc}\n")
        return EXIT_USAGE
    if args.known_hosts:
        return known_hosts(args.socket, args.host)
    return connect(args.socket, args.host, args.port, stdio=args.stdio, autostart=args.autostart, user=args.user)
