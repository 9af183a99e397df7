"""The starter's side of START_SSHD, done locally.

What a real starter does when condor_ssh_to_job asks for an sshd: as the job
user, run (the equivalent of) condor_ssh_to_job_sshd_setup in the job's
sandbox -- a fresh `.condor_ssh_to_job_N` directory, one ssh-keygen key pair
that is both the sshd's HostKey and the only authorized client key, the job
environment in env.sh, authorized_keys with the forced shell setup command,
sshd_config -- and then start `sshd -i -e -f <dir>/sshd_config` on the same
TCP connection that carried the request.  Here that connection is a loopback
TCP pair: the sshd gets the accepted end, the caller keeps the other.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayd.common.jobstates import SUSPENDED, TRANSFERRING_OUTPUT

from . import jobprocs, sshd_config
from .condor_args import ArgsError, join_system, split_v2_raw
from .jobuser import JobUser, resolve_job_user, run_as
from .layout import PoolLayout, PoolSettings
from .processes import spawn_detached

SSH_KEYGEN = "/usr/bin/ssh-keygen"
SSHD = "/usr/sbin/sshd"
# HTCondor's SSH_TO_JOB_SSH_KEYGEN_ARGS default; the client's -keygen-options
# words come after it, so a later `-t` wins.
KEYGEN_ARGS = ["-N", "", "-C", "", "-q", "-f", "%f", "-t", "rsa"]


class StarterError(Exception):
    """START_SSHD failed; message is the starter's ErrorString, retry its Retry flag."""

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message, retry)
        self.message = message
        self.retry = retry


@dataclass
class SshdSession:
    """What the tool gets back: the socket now speaking SSH and the reply attributes."""

    sock: socket.socket
    remote_user: str
    public_server_key: bytes
    private_client_key: bytes


@dataclass
class SshdSetup:
    """A prepared sshd directory: sshd_config, host key (also the client key), authorized_keys."""

    sshd_dir: Path
    remote_user: str
    public_key: bytes
    private_key: bytes


def start_sshd(layout: PoolLayout, settings: PoolSettings, ad: dict[str, Any],
               slot_name: str, keygen_options: str, shells: str) -> SshdSession:
    """Handle START_SSHD for a claimed job; raises StarterError."""
    if not settings.enable_ssh_to_job:
        raise StarterError("Rejecting request, because ENABLE_SSH_TO_JOB=false")
    if ad["JobStatus"] == TRANSFERRING_OUTPUT:
        raise StarterError("Rejecting request, because the job is finished.")
    if ad["JobStatus"] == SUSPENDED:
        raise StarterError("This slot is currently suspended.", retry=True)
    user, setup = prepare_sshd_dir(layout, settings, ad, slot_name, keygen_options, shells)
    cluster, proc = ad["ClusterId"], ad["ProcId"]
    client, server = _loopback_pair()
    try:
        log = os.open(setup.sshd_dir / "sshd.log", os.O_WRONLY | os.O_APPEND)
        try:
            sshd = spawn_detached(
                [SSHD, "-i", "-e", "-f", str(setup.sshd_dir / "sshd_config")],
                user=user, cwd=layout.scratch_dir(cluster, proc),
                env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
                stdio=(server.fileno(), server.fileno(), log), remove_on_exit=setup.sshd_dir)
        finally:
            os.close(log)
    except OSError as exc:
        client.close()
        raise StarterError(f"Failed to start sshd: {exc}") from None
    finally:
        server.close()
    jobprocs.record_sshd(layout, cluster, proc, sshd)
    return SshdSession(client, setup.remote_user, setup.public_key, setup.private_key)


def prepare_sshd_dir(layout: PoolLayout, settings: PoolSettings, ad: dict[str, Any], slot_name: str,
                     keygen_options: str = "", shells: str = "") -> tuple[JobUser, SshdSetup]:
    """condor_ssh_to_job_sshd_setup's part of START_SSHD, as the job user; raises StarterError.

    Also what the benchmark and the tests use to run an sshd equivalent to a job's.
    """
    try:
        client_args = split_v2_raw(keygen_options)
    except ArgsError as exc:
        raise StarterError(f"Failed to produce ssh-keygen arg list: {exc}") from None
    user = resolve_job_user(settings.job_user)
    cluster, proc = ad["ClusterId"], ad["ProcId"]
    env = jobprocs.job_environment(layout, ad)
    process = jobprocs.job_process(layout, cluster, proc)
    env["_CONDOR_JOB_PIDS"] = "" if process is None else str(process.pid)
    env["_CONDOR_SLOT_NAME"] = slot_name
    shell = _preferred_shell(shells)
    if shell:
        env["_CONDOR_SHELL"] = shell
    setup = run_as(user, _setup_sshd_dir, layout.scratch_dir(cluster, proc),
                   [SSH_KEYGEN, *KEYGEN_ARGS, *client_args], env, layout.shell_setup)
    return user, setup


def _preferred_shell(shells: str) -> str | None:
    """The first executable entry of the client's comma-separated -shells list."""
    for shell in shells.split(","):
        if shell and os.access(shell, os.X_OK):
            return shell
    return None


def _setup_sshd_dir(scratch: Path, keygen_argv: list[str], env: dict[str, str],
                    shell_setup: Path) -> SshdSetup:
    """condor_ssh_to_job_sshd_setup's work; runs as the job user."""
    num = 1
    while True:
        sshd_dir = scratch / f".condor_ssh_to_job_{num}"
        try:
            sshd_dir.mkdir(mode=0o700)
            break
        except FileExistsError:
            num += 1
        except OSError:
            raise StarterError(f"condor_ssh_to_job_sshd_setup failed: "
                               f"Failed to create {sshd_dir}\n") from None
    key = sshd_dir / "sshkey"
    argv = [str(key) if word == "%f" else word for word in keygen_argv]
    keygen = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=scratch)
    (sshd_dir / "keygen.log").write_bytes(keygen.stdout)
    if keygen.returncode != 0:
        raise StarterError(
            "condor_ssh_to_job_sshd_setup failed: "
            f"{keygen.stdout.decode(errors='replace')}"
            f"Failed to create ssh key {key} with command {join_system(argv)}\n")
    env_file = sshd_dir / "env.sh"
    env_file.write_text("".join(f"export {name}={_sh_quote(value)}\n"
                                for name, value in env.items()))
    public_key = key.with_name("sshkey.pub").read_bytes()
    authorized_keys = sshd_dir / "authorized_keys"
    authorized_keys.write_bytes(f'command="{shell_setup} {env_file}" '.encode() + public_key)
    (sshd_dir / "sshd_config").write_text(sshd_config.render(key, authorized_keys))
    (sshd_dir / "sshd.log").touch(mode=0o600)  # the starter sends sshd's stderr here
    remote_user = pwd.getpwuid(os.geteuid()).pw_name  # what the setup script's whoami says
    return SshdSetup(sshd_dir, remote_user, public_key, key.read_bytes())


def _sh_quote(value: str) -> str:
    """Single-quote for sh, as `export -p` prints values."""
    return "'" + value.replace("'", "'\\''") + "'"


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair over 127.0.0.1: (client end, server end).

    The accepted peer is checked, so another local process racing to the
    listening port cannot take the sshd's place.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        client = socket.create_connection(listener.getsockname())
        deadline = time.monotonic() + 10
        while True:
            listener.settimeout(max(0.0, deadline - time.monotonic()))
            server, peer = listener.accept()
            if peer == client.getsockname():
                server.settimeout(None)
                return client, server
            server.close()
