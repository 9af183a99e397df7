"""The bench's rig: one sandbox job, reached the ways a user could reach it.

- `relay`: through relayd and the ssh config it generates (the tests' `Relay`), and the
  same with ssh's ControlMaster in front (`ssh_mux`; its control sockets need a short
  XDG_RUNTIME_DIR, as a unix socket path holds at most 107 bytes);
- `direct`: OpenSSH to an sshd equivalent to the job's -- the same binary, sshd_config,
  key and forced command the sandbox starter sets up -- run as `sshd -i` by ProxyCommand
  for each connection, as the job user; `direct-cm` is the same through ControlMaster;
- `direct-tcp`: the same sshd through ControlMaster, but on a loopback TCP socket, as the
  starter runs the job's sshd (`bench/sshd_on_tcp.py`);
- `condor_ssh_to_job`: the negotiator itself, once per call, asking the starter for the
  same key type as relayd does (its `keygen_options`), so both pay the same key generation.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relayd.config import Config
from relayd.sandbox import pool as sandbox
from relayd.sandbox.layout import PoolLayout
from relayd.sandbox.starter import SSHD, prepare_sshd_dir
from tests.harness import RELAYD, Home, RelayProcess


class CommandFailed(RuntimeError):
    pass


class Rig:
    """Everything in one private temp dir; `close()` stops it all and removes it."""

    def __init__(self, relayd: str = RELAYD) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="condor-relay-bench-"))
        self.root.chmod(0o711)  # as root, the unprivileged job user must reach the pool
        self.pool_dir = self.root / "pool"
        sandbox.create_pool(self.pool_dir)
        self.cluster, self.proc = sandbox.submit_job(self.pool_dir, status="running")
        self.job_id = f"{self.cluster}.{self.proc}"
        self.host = f"job-{self.job_id}.condor"
        self.direct_host = ""  # user@job-N.M.direct.condor, once the job's user is known
        self.home = Home.make(self.root / "user")
        self.runtime_dir = tempfile.mkdtemp(prefix="crb-")
        self.home.env["XDG_RUNTIME_DIR"] = self.runtime_dir
        self.env = self.home.env
        self.relay = RelayProcess(self.home, self.pool_dir, relayd)
        self.direct_config = self.root / "direct_ssh_config"
        self._write_direct_config()
        self.cm_socket = self.root / "cm.sock"

    # -- set-up ----------------------------------------------------------------------------

    def start_relay(self, **settings: object) -> None:
        """(Re)start the daemon with these config settings."""
        self.relay.stop()
        self.relay.configure(**settings)
        self.relay.start()
        self.relay_settings = settings

    def set_idle_timeout(self, seconds: float) -> None:
        """Change the running daemon's idle_timeout (SIGHUP) and the block's ControlPersist with it,
        keeping the daemon (and so its memory history); sessions and ssh masters opened from now
        on take it."""
        assert self.relay.process is not None
        self.relay_settings = {**self.relay_settings, "idle_timeout": seconds}
        self.relay.configure(**self.relay_settings)
        reloads = self.relay.log().count("config reloaded")
        self.relay.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.relay.log().count("config reloaded") == reloads:
            if time.monotonic() > deadline:
                raise CommandFailed("relayd did not reload its config")
            time.sleep(0.05)
        self.relay.write_ssh_config()

    def close_direct_master(self) -> None:
        """End the direct path's ssh master (ssh's ControlMaster in the block), and so its sshd."""
        subprocess.run(self.ssh(self.direct_host, "-O", "exit"), env=self.env, capture_output=True)

    def _write_direct_config(self) -> None:
        layout = PoolLayout(self.pool_dir)
        ad = sandbox.load_ads(self.pool_dir)[0]
        user, setup = prepare_sshd_dir(layout, layout.settings(), ad, slot_name=ad["RemoteHost"])
        scratch = layout.scratch_dir(self.cluster, self.proc)
        key = self.root / "direct_key"
        key.write_bytes(setup.private_key)
        key.chmod(0o600)
        known_hosts = self.root / "direct_known_hosts"
        known_hosts.write_bytes(b"direct " + setup.public_key)
        self.direct_host = f"{setup.remote_user}@job-{self.job_id}.direct.condor"  # the user its sshd takes
        sshd = [SSHD, "-i", "-e", "-f", str(setup.sshd_dir / "sshd_config")]
        if os.geteuid() == 0:
            sshd = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", *sshd]
        # ssh runs ProxyCommand with `exec`; env -C gives sshd the job's sandbox as cwd, as the starter does.
        proxy = f"{shlex.join(['env', '-C', str(scratch), *sshd])} 2>>{shlex.quote(str(setup.sshd_dir / 'sshd.log'))}"
        on_tcp = shlex.join([sys.executable, "-m", "bench.sshd_on_tcp", "env", "-C", str(scratch), *sshd])
        self.direct_config.write_text(
            "Host direct-cm\n"
            "    ControlMaster auto\n"
            f"    ControlPath {self.root}/cm.sock\n"
            "    ControlPersist 600\n"
            "Host direct-tcp\n"
            "    ControlMaster auto\n"
            f"    ControlPath {self.root}/cm-tcp.sock\n"
            "    ControlPersist 600\n"
            f"    ProxyCommand env -C {shlex.quote(str(Path(__file__).parent.parent))} {on_tcp} "
            f"2>>{shlex.quote(str(setup.sshd_dir / 'sshd.log'))}\n"
            "    ProxyUseFdpass yes\n"
            "Host direct direct-cm direct-tcp\n"
            f"    ProxyCommand {proxy}\n"
            f"    User {setup.remote_user}\n"
            f"    IdentityFile {key}\n"
            "    IdentitiesOnly yes\n"
            "    HostKeyAlias direct\n"
            f"    UserKnownHostsFile {known_hosts}\n"
            "    StrictHostKeyChecking yes\n"
            "    ControlMaster no\n"
            "    ControlPath none\n"
        )

    def close(self) -> None:
        for master in ("direct-cm", "direct-tcp"):
            subprocess.run(self.ssh(master, "-O", "exit"), env=self.env, capture_output=True)
        self.close_direct_master()
        self.relay.stop()
        sandbox.stop_pool(self.pool_dir)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    # -- commands --------------------------------------------------------------------------

    def ssh(self, host: str, *args: str) -> list[str]:
        """ssh argv for `host`: the relay's job name, `direct` or `direct-cm`."""
        config = self.relay.ssh_config if host.endswith(".condor") else self.direct_config
        return ["ssh", "-F", str(config), host, *args]

    def ssh_mux(self, *args: str) -> list[str]:
        """ssh argv for the job through the relay with ssh's ControlMaster in front, as the
        block has it with `ssh_multiplexing: true`."""
        return ["ssh", "-o", "ControlMaster=auto", "-o", f"ControlPath={self.runtime_dir}/bench-mux-%C",
                "-o", "ControlPersist=60", "-F", str(self.relay.ssh_config), self.host, *args]

    def condor_ssh_to_job(self, *command: str, ssh: str | None = None) -> list[str]:
        """The tool's argv for `command` in the job; `ssh` replaces the ssh it runs (-ssh)."""
        keygen = Config().keygen_options  # what relayd asks the starter for
        options = (["-keygen-options", keygen] if keygen else []) + (["-ssh", ssh] if ssh else [])
        return [str(self.pool_dir / "bin" / "condor_ssh_to_job"), *options, self.job_id, *command]

    def run(self, argv: list[str], **kw: object) -> float:
        """Run argv to completion and return its wall time; raises CommandFailed."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("timeout", 600)
        kw.setdefault("stdout", subprocess.DEVNULL)
        start = time.perf_counter()
        done = subprocess.run(argv, env=self.env, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise CommandFailed(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
        return elapsed

    def relay_pid(self) -> int:
        assert self.relay.process is not None
        return self.relay.process.pid

    def upstream_open(self) -> bool:
        return bool(sandbox.sshd_pids(self.pool_dir, self.cluster, self.proc))

    def wait_upstream_closed(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.upstream_open():
            if time.monotonic() > deadline:
                raise CommandFailed("the relay kept its upstream open past idle_timeout")
            time.sleep(0.05)
