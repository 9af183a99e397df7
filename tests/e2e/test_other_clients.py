"""SSH clients other than OpenSSH, through the block exactly as `relayd ssh-config install` writes it.

paramiko (with the ProxyCommand from ssh_config, as Fabric does) and asyncssh (which reads
ssh_config itself) start the ProxyCommand with pipes and no ProxyUseFdpass: the helper copies.
Both pin the relay's host key strictly from the generated known_hosts; paramiko has no
HostKeyAlias, so its test takes the key pinned under the alias, as the README tells users to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import paramiko
import pytest
from harness import RELAYD

from relayd.sandbox import pool as sandbox

SIZE = 10 * 1024 * 1024
# The relay's reasons reach these clients only inside SSH (a USERAUTH banner or the DISCONNECT
# reason): they never show the ProxyCommand's stderr.


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def ssh_config(relay, monkeypatch) -> Path:
    """$HOME/.ssh/config as `relayd ssh-config install` writes it. This process takes the test's
    environment, so the ProxyCommands the clients start (and their own ~) stay in the sandbox."""
    relay.run([RELAYD, "ssh-config", "install"], check=True)
    for name in os.environ:
        if name.startswith(("XDG_", "SSH_", "CONDOR_RELAY")):
            monkeypatch.delenv(name)
    for name, value in relay.home.env.items():
        monkeypatch.setenv(name, value)
    return Path(relay.home.env["HOME"]) / ".ssh" / "config"


@pytest.fixture
def key(tmp_path) -> Path:
    """A user key: paramiko's SSHClient never tries `none`, so it needs one (any: the relay takes
    the first request, its socket being the user's own)."""
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


# -- paramiko ------------------------------------------------------------------------------

def close(client: paramiko.SSHClient, proxy: paramiko.ProxyCommand) -> None:
    transport = client.get_transport()
    client.close()
    if transport is not None:
        transport.join(10)  # the transport's thread ends by ending the ProxyCommand (SIGTERM)
    proxy.process.wait(10)


@contextlib.contextmanager
def paramiko_client(config: Path, host: str, key: Path) -> Iterator[paramiko.SSHClient]:
    found = paramiko.SSHConfig.from_path(str(config)).lookup(host)
    client = pinned_client(found, host)
    proxy = paramiko.ProxyCommand(found["proxycommand"])
    try:
        client.connect(host, username=found.get("user"), key_filename=str(key), look_for_keys=False,
                       allow_agent=False, sock=proxy, timeout=30, banner_timeout=30, auth_timeout=30)
        yield client
    finally:
        close(client, proxy)


def pinned_client(found: paramiko.SSHConfigDict, host: str) -> paramiko.SSHClient:
    """A client that trusts the relay's pinned key for `host`, and nothing else."""
    client = paramiko.SSHClient()
    # paramiko matches known_hosts names exactly and has no HostKeyAlias: the key pinned under the alias
    pinned = paramiko.HostKeys(found["userknownhostsfile"]).lookup(found["hostkeyalias"])
    for kind, host_key in pinned.items():
        client.get_host_keys().add(host, kind, host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def paramiko_round_trip(client: paramiko.SSHClient, data: bytes) -> tuple[bytes, int]:
    """`data` through `cat` on the job, sent while the echo is read."""
    channel = client.get_transport().open_session()
    channel.exec_command("cat")

    def send() -> None:
        channel.sendall(data)
        channel.shutdown_write()

    sender = threading.Thread(target=send)
    sender.start()
    received = bytearray()
    while chunk := channel.recv(1 << 20):
        received += chunk
    sender.join()
    return bytes(received), channel.recv_exit_status()


def test_paramiko_exec_round_trip_and_sftp(relay, ssh_config, key, tmp_path):
    host = relay.running_job()
    with paramiko_client(ssh_config, host, key) as client:
        _, out, _ = client.exec_command("echo hello; exit 3")
        assert (out.read(), out.channel.recv_exit_status()) == (b"hello\n", 3)

        data = os.urandom(SIZE)
        received, status = paramiko_round_trip(client, data)
        assert (sha256(received), status) == (sha256(data), 0)

        (tmp_path / "up.bin").write_bytes(data)
        with client.open_sftp() as sftp:
            sftp.put(str(tmp_path / "up.bin"), "paramiko.bin")
            sftp.get("paramiko.bin", str(tmp_path / "down.bin"))
        assert sha256((tmp_path / "down.bin").read_bytes()) == sha256(data)
        _, out, _ = client.exec_command("sha256sum paramiko.bin")
        assert out.read().split()[0].decode() == sha256(data)


def test_channels_beyond_the_cap_are_refused_one_by_one_and_the_connection_lives_on(relay, ssh_config, key):
    """A client (here paramiko, forwarding 513 connections at once) gets "resource shortage"
    for each channel past MAX_CHANNELS_PER_CLIENT, and may open again once one closes."""
    host = relay.running_job()
    accepted: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0), backlog=1024) as listener, \
            paramiko_client(ssh_config, host, key) as client:
        threading.Thread(target=accept_all, args=(listener, accepted), daemon=True).start()
        transport = client.get_transport()
        target = ("127.0.0.1", listener.getsockname()[1])
        channels = [transport.open_channel("direct-tcpip", target, ("127.0.0.1", 0)) for _ in range(512)]
        with pytest.raises(paramiko.ChannelException) as refused:
            transport.open_channel("direct-tcpip", target, ("127.0.0.1", 0))
        assert refused.value.code == 4  # paramiko keeps the code and drops the text; ssh shows both
        channels.pop().close()
        channels.append(when_free(lambda: transport.open_channel("direct-tcpip", target, ("127.0.0.1", 0))))
        channels.pop().close()
        _, out, _ = when_free(lambda: client.exec_command("echo still here"))
        assert out.read() == b"still here\n"
    for connection in accepted:
        connection.close()


def when_free(open_channel):
    """Retry an open refused at the cap: a closed channel's slot is free once the job has
    closed its side too."""
    for _ in range(50):
        with contextlib.suppress(paramiko.ChannelException):
            return open_channel()
        time.sleep(0.1)
    return open_channel()


def accept_all(listener: socket.socket, accepted: list[socket.socket]) -> None:
    with contextlib.suppress(OSError):  # the listener closed
        while True:
            accepted.append(listener.accept()[0])


def paramiko_failure(config: Path, host: str, key: Path, caplog: pytest.LogCaptureFixture) -> str:
    """What paramiko tells of a failed connection: its exception carries no reason (it says the
    transport shut down), but it logs the banner and the disconnect reason (INFO)."""
    found = paramiko.SSHConfig.from_path(str(config)).lookup(host)
    client = pinned_client(found, host)
    proxy = paramiko.ProxyCommand(found["proxycommand"])
    caplog.set_level(logging.INFO, logger="paramiko")
    try:
        with pytest.raises(paramiko.SSHException):
            client.connect(host, key_filename=str(key), look_for_keys=False, allow_agent=False, sock=proxy,
                           timeout=10, banner_timeout=10, auth_timeout=10)
        return "\n".join(record.getMessage() for record in caplog.records)
    finally:
        close(client, proxy)


def test_paramiko_hears_the_reason_for_a_bad_name(relay, ssh_config, key, caplog):
    said = paramiko_failure(ssh_config, "job-x.condor", key, caplog)
    assert "Auth banner: b\"condor-relay: 'job-x.condor' is not a job name" in said
    assert "Disconnect (code 11): 'job-x.condor' is not a job name" in said


def test_paramiko_hears_why_a_held_job_cannot_be_reached(relay, ssh_config, key, caplog):
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="held", HoldReason="Disk quota exceeded")
    said = paramiko_failure(ssh_config, f"job-{cluster}.{proc}.condor", key, caplog)
    assert f"Disconnect (code 11): job {cluster}.{proc} is held: Disk quota exceeded" in said


# -- asyncssh ------------------------------------------------------------------------------

def run_async(coroutine) -> object:
    return asyncio.run(asyncio.wait_for(coroutine, 120))


def asyncssh_connect(config: Path, host: str) -> asyncssh.SSHClientConnection:
    """Everything from the block: ProxyCommand, HostKeyAlias and UserKnownHostsFile (strict)."""
    return asyncssh.connect(host, config=[str(config)], agent_path=None, connect_timeout=30)


async def asyncssh_session(config: Path, host: str, data: bytes, tmp_path: Path) -> dict[str, object]:
    async with asyncssh_connect(config, host) as conn:
        done = await conn.run("echo hello; exit 3")
        process = await conn.create_process("cat", encoding=None)

        async def send() -> None:
            process.stdin.write(data)
            await process.stdin.drain()
            process.stdin.write_eof()

        _, echoed = await asyncio.gather(send(), process.stdout.read())
        await process.wait()
        (tmp_path / "up.bin").write_bytes(data)
        async with conn.start_sftp_client() as sftp:
            await sftp.put(str(tmp_path / "up.bin"), "asyncssh.bin")
            await sftp.get("asyncssh.bin", str(tmp_path / "down.bin"))
        on_job = await conn.run("sha256sum asyncssh.bin")
    return {"exec": (done.stdout, done.exit_status), "echoed": (sha256(echoed), process.exit_status),
            "sftp": sha256((tmp_path / "down.bin").read_bytes()), "on job": on_job.stdout.split()[0]}


def test_asyncssh_exec_round_trip_and_sftp(relay, ssh_config, tmp_path):
    data = os.urandom(SIZE)
    got = run_async(asyncssh_session(ssh_config, relay.running_job(), data, tmp_path))
    assert got == {"exec": ("hello\n", 3), "echoed": (sha256(data), 0), "sftp": sha256(data), "on job": sha256(data)}


async def asyncssh_failure(config: Path, host: str) -> str:
    try:
        async with asyncssh_connect(config, host):
            pass
    except (OSError, asyncssh.Error) as exc:
        return str(exc)
    raise AssertionError(f"asyncssh reached {host}")


def test_asyncssh_hears_the_reason_for_a_bad_name(relay, ssh_config):
    assert "is not a job name" in run_async(asyncssh_failure(ssh_config, "job-x.condor"))


def test_asyncssh_hears_why_a_held_job_cannot_be_reached(relay, ssh_config):
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="held", HoldReason="Disk quota exceeded")
    assert "Disk quota exceeded" in run_async(asyncssh_failure(ssh_config, f"job-{cluster}.{proc}.condor"))



# -- the relay's host key for clients without HostKeyAlias ---------------------------------

@pytest.fixture
def without_alias(ssh_config, tmp_path) -> Path:
    """The installed block less its HostKeyAlias: as a client that ignores the option reads it."""
    path = tmp_path / "without_alias"
    path.write_text("".join(line for line in ssh_config.read_text().splitlines(True) if "HostKeyAlias" not in line))
    return path


def test_the_pin_names_the_job_hosts_as_well_as_the_alias(relay):
    printed = relay.run([RELAYD, "ssh-config", "known-hosts"], check=True).stdout.decode()
    assert printed.startswith("condor-relay,*.condor ssh-ed25519 ") and printed.count("\n") == 1
    known_hosts = Path(relay.home.env["XDG_STATE_HOME"]) / "condor-relay" / "known_hosts"
    assert known_hosts.read_text() == printed
    doctor = relay.run([RELAYD, "doctor", "--ssh-config", str(relay.ssh_config)], text=True)
    assert doctor.returncode == 0 and "does not pin" not in doctor.stdout, doctor.stdout  # its pin check agrees


def test_openssh_without_the_alias_checks_the_job_name_against_the_pin(relay, without_alias):
    done = relay.run(["ssh", "-F", str(without_alias), relay.running_job(), "echo reached"])
    assert (done.returncode, done.stdout) == (0, b"reached\n"), done.stderr


def test_asyncssh_without_the_alias_checks_the_job_name_against_the_pin(relay, without_alias):
    async def reach() -> str:
        async with asyncssh_connect(without_alias, relay.running_job()) as conn:
            return (await conn.run("echo reached")).stdout

    assert run_async(reach()) == "reached\n"
