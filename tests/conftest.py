"""Fixtures that run the real thing: a sandbox pool, the daemon, and OpenSSH clients.

Every test gets its own HOME and XDG directories; ssh always gets `-F <generated file>`,
since OpenSSH reads ~/.ssh/config from the passwd home, not from $HOME.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relayd.sandbox import pool as sandbox

VENV_BIN = Path(sys.executable).parent
RELAYD = str(VENV_BIN / "relayd")


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
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SSH_", "CONDOR_RELAY"))}
        env.update({k: str(v) for k, v in dirs.items()})
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        return cls(root, env)

    @property
    def config_file(self) -> Path:
        return Path(self.env["XDG_CONFIG_HOME"]) / "condor-relay" / "config.yaml"

    @property
    def socket(self) -> Path:
        return Path(self.env["XDG_RUNTIME_DIR"]) / "condor-relay" / "relay.sock"


class Relay:
    """A running `relayd run` with a generated ssh config."""

    def __init__(self, home: Home, pool_dir: Path, relayd: str = RELAYD) -> None:
        self.home = home
        self.pool_dir = pool_dir
        self.relayd = relayd
        self.log_path = home.root / "relayd.log"
        self.ssh_config = home.root / "ssh_config"
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
        while not self.home.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relayd did not start:\n{self.log()}")
            time.sleep(0.05)
        block = subprocess.run([self.relayd, "ssh-config", "print"], env=self.home.env, check=True,
                               capture_output=True, text=True).stdout
        self.ssh_config.write_text(block)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ssh_argv(self, *args: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), *args]

    def ssh(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.ssh_argv(*args), env=self.home.env, input=input, capture_output=True,
                              timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)

    def run(self, argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.home.env, capture_output=True, timeout=timeout, **kw)

    def negotiations(self) -> int:
        return len(sandbox.read_negotiations(self.pool_dir))


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home.make(tmp_path)


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
def running_relay(home: Home, pool_dir: Path) -> Iterator[Relay]:
    """The daemon with the default sandbox config, stopped afterwards."""
    relay = Relay(home, pool_dir)
    relay.configure()
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture
def pool():
    with sandbox_pool() as pool_dir:
        yield pool_dir


@pytest.fixture
def relay(home: Home, pool: Path, request):
    with running_relay(home, pool) as relay:
        yield relay
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        sys.stderr.write(f"--- relayd log ---\n{relay.log()}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
