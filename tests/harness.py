"""The test suite's library: run the real thing (a sandbox pool, the daemon, OpenSSH clients)
and check what users see.

Every test gets its own HOME and XDG directories; ssh always gets `-F <config>`, since
OpenSSH reads ~/.ssh/config from the passwd home, not from $HOME, and that config is the
block exactly as `relayd ssh-config install` writes it by default (the test's
$HOME/.ssh/config). No pytest here: the benchmark (bench/) uses it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from relayd.sandbox import pool as sandbox
from relayd.sandbox.processes import ProcessId, kill_tree

VENV_BIN = Path(sys.executable).parent


RELAYD = str(VENV_BIN / "relayd")
# In the environment of every process the suite starts: the pytest process's pid.
SUITE_MARK = "CONDOR_RELAY_SUITE_RUN"


@dataclass
class Home:
    """An isolated user environment: HOME and XDG dirs under the test's tmp_path."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, root: Path) -> Home:
        dirs = {"HOME": root / "home", "XDG_CONFIG_HOME": root / "config", "XDG_STATE_HOME": root / "state",
                "XDG_RUNTIME_DIR": root / "run", "TMP": root / "tmp"}
        for path in dirs.values():
            path.mkdir(parents=True, mode=0o700)
        env = {k: v for k, v in os.environ.items()
               if k == SUITE_MARK or not k.startswith(("XDG_", "SSH_", "CONDOR_RELAY"))}
        env.update({k: str(v) for k, v in dirs.items()})
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        return cls(root, env)

    @property
    def config_file(self) -> Path:
        return Path(self.env["XDG_CONFIG_HOME"]) / "condor-relay" / "config.yaml"

    @property
    def socket(self) -> Path:
        return Path(self.env["XDG_RUNTIME_DIR"]) / "condor-relay" / "relay.sock"


class RelayProcess:
    """A running `relayd run` with a generated ssh config."""

    def __init__(self, home: Home, pool_dir: Path, relayd: str = RELAYD) -> None:
        self.home = home
        self.pool_dir = pool_dir
        self.relayd = relayd
        self.log_path = home.root / "relayd.log"
        self.ssh_config = Path(home.env["HOME"]) / ".ssh" / "config"
        self.process: subprocess.Popen | None = None

    def configure(self, **settings: object) -> None:
        import yaml

        base = {"condor_ssh_to_job": str(self.pool_dir / "bin" / "condor_ssh_to_job"), "job_lookup": "sandbox",
                "sandbox_pool": str(self.pool_dir)}
        base.update(settings)
        self.home.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.home.config_file.write_text(yaml.safe_dump(base))

    def start(self) -> None:
        self.process = subprocess.Popen([self.relayd, "run"], env=self.home.env, stdout=open(self.log_path, "ab"),
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self.accepting():  # not just present: a killed daemon leaves its socket file
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relayd did not start:\n{self.log()}")
            time.sleep(0.05)
        self.write_ssh_config()

    def write_ssh_config(self) -> None:
        """The block as users get it: `relayd ssh-config install` into the test's ~/.ssh/config."""
        subprocess.run([self.relayd, "ssh-config", "install"], env=self.home.env, check=True, capture_output=True)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def accepting(self) -> bool:
        """Whether a daemon listens on the socket."""
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.home.socket))
            except OSError:
                return False
        return True

    def exchange(self, request: bytes, fds: list[int] | None = None) -> list[str]:
        """Send raw bytes on the daemon's socket and half-close; its reply lines until it hangs up."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(20)
            sock.connect(str(self.home.socket))
            reply = b""
            # An oversized request is cut short: the daemon hangs up with some of it unread,
            # which resets the connection once its reply has been read.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                socket.send_fds(sock, [request], fds) if fds else sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    reply += chunk
        return reply.decode(errors="replace").splitlines()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The daemon's resident memory (field="VmHWM": its peak so far)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:")))

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def zombies(self) -> list[int]:
        """Children of the daemon that exited and were not reaped."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
            except (OSError, ValueError):
                continue
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if state == "Z" and int(ppid) == self.pid:
                found.append(int(entry.name))
        return found

    def running_job(self) -> str:
        """Submit a running job to the pool; its host name."""
        cluster, proc = sandbox.submit_job(self.pool_dir, status="running")
        return f"job-{cluster}.{proc}.condor"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ssh_argv(self, *args: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), *args]

    def ssh(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.ssh_argv(*args), env=self.home.env, input=input, capture_output=True,
                              timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)

    def ssh_on_terminal(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
                        ) -> subprocess.CompletedProcess:
        """ssh with its stderr on a pseudo-terminal, as a user at a terminal runs it; what the
        terminal shows comes back as `stderr` (see screen_lines)."""
        return on_terminal(self.ssh_argv(*args), env or self.home.env, timeout)

    def run(self, argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.home.env, capture_output=True, timeout=timeout, **kw)

    def negotiations(self) -> int:
        return len(sandbox.read_negotiations(self.pool_dir))


class EchoSession:
    """An ssh session through `cat`, kept open across a test: what must come through intact.

    It is up once constructed: the first chunk has made the round trip.
    """

    CHUNK = 64 * 1024

    def __init__(self, relay: RelayProcess, host: str) -> None:
        self.process = subprocess.Popen(relay.ssh_argv(host, "cat"), env=relay.home.env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.sent = bytearray()
        self.feed()
        assert self.process.stdout is not None
        self.received = self.process.stdout.read(self.CHUNK)

    def feed(self) -> None:
        """Send another chunk (no more than ssh's windows hold, as nothing is read yet)."""
        chunk = os.urandom(self.CHUNK)
        assert self.process.stdin is not None
        self.process.stdin.write(chunk)
        self.process.stdin.flush()
        self.sent += chunk

    def finish(self) -> None:
        """Send a last chunk, close the input, and check that every byte came back in order."""
        last = os.urandom(self.CHUNK)
        self.sent += last
        out, err = self.process.communicate(last, timeout=60)
        assert self.process.returncode == 0, err
        assert hashlib.sha256(self.received + out).digest() == hashlib.sha256(self.sent).digest()


def negotiator_environments(pool_dir: Path) -> dict[int, dict[str, str]]:
    """The environments of the live processes this pool's condor_ssh_to_job started (they
    inherit its CONDOR_RELAY_SANDBOX), by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            raw = (entry / "environ").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        environ = dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item)
        if environ.get("CONDOR_RELAY_SANDBOX") == str(pool_dir):
            found[int(entry.name)] = environ
    return found


def kill_job_sshds(pool_dir: Path, cluster: int, proc: int) -> None:
    """SIGKILL every sshd of the job with its session processes, as an OOM killer might."""
    for pid in sandbox.sshd_pids(pool_dir, cluster, proc):
        process = ProcessId.of(pid)
        if process is not None:
            kill_tree(process)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll until predicate() is true; its final value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def on_terminal(argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `argv` with stderr on a pseudo-terminal (stdin empty, stdout a pipe); what the
    terminal shows comes back as `stderr` (see screen_lines)."""
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal closed, every writer exited
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    out = process.stdout.read() if process.stdout else b""
    returncode = process.wait(timeout=10)
    return subprocess.CompletedProcess(argv, returncode, out, screen_lines(shown))


def screen_lines(shown: bytes) -> bytes:
    """The lines a terminal is left showing: a line redrawn after CR keeps its last drawing,
    and erase-to-end-of-line codes are gone."""
    lines = shown.replace(b"\r\n", b"\n").split(b"\n")
    return b"\n".join(line.rsplit(b"\r", 1)[-1].replace(b"\x1b[K", b"") for line in lines)


OPENSSH_FDPASS_NOISE = ("mm_receive_fd", "proxy dialer")


def assert_fails(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """ssh failed as ssh does (255) and the relay's message is its own line, without the
    lines OpenSSH prints when a ProxyUseFdpass helper passes nothing."""
    err = done.stderr.decode()
    assert done.returncode == 255, err
    assert not any(noise in err for noise in OPENSSH_FDPASS_NOISE), err
    ours = [line for line in err.splitlines() if line.startswith("condor-relay: ")]
    assert ours, err
    for fragment in fragments:  # the error is the last of the relay's lines (progress comes first)
        assert fragment in ours[-1], err


def assert_ssh_fails(relay: RelayProcess, host: str, *fragments: str, env: dict[str, str] | None = None) -> None:
    """`ssh host true` fails with the relay's message both with stderr to a file and on a terminal."""
    env = env or relay.home.env
    assert_fails(to_file(relay.ssh_argv(host, "true"), env), *fragments)
    assert_fails(on_terminal(relay.ssh_argv(host, "true"), env), *fragments)


def to_file(argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `argv` with stderr sent to a file, as a script or VS Code's log does."""
    with tempfile.TemporaryFile() as err:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                              timeout=timeout)
        err.seek(0)
        done.stderr = err.read()
    return done


@contextlib.contextmanager
def sandbox_pool() -> Iterator[Path]:
    """A sandbox pool in a temp dir of its own, stopped and removed afterwards."""
    # Not under tmp_path: pytest's base directory is private to us, and as root the
    # pool's job user must be able to traverse to its sandboxes.
    base = Path(tempfile.mkdtemp(prefix="condor-relay-pool-"))
    base.chmod(0o711)
    pool_dir = base / "pool"
    try:
        sandbox.create_pool(pool_dir)
        yield pool_dir
    finally:
        sandbox.stop_pool(pool_dir)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def running_relay(home: Home, pool_dir: Path) -> Iterator[RelayProcess]:
    """The daemon with the default sandbox config, stopped afterwards."""
    relay = RelayProcess(home, pool_dir)
    relay.configure()
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


def suite_processes() -> dict[int, str]:
    """The live processes this suite run started (but pytest itself), with their command lines."""
    mark = f"{SUITE_MARK}={os.getpid()}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found[int(entry.name)] = args
    return found
