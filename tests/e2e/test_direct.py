"""The direct path (job-N.M.direct.condor): ssh, scp and rsync to a fresh sshd of the job's own,
the job's key served from the daemon's memory through its agent socket, per ssh process."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import assert_ssh_fails, kill_job_sshds, wait_for

from relayd.daemon.direct import (
    AGENT_FAILURE,
    AGENT_IDENTITIES_ANSWER,
    AGENT_SOCKET,
    AGENTC_REQUEST_IDENTITIES,
    AGENTC_SIGN_REQUEST,
)
from relayd.relay.wire import string, u32
from relayd.sandbox import pool as sandbox

JOB_USER = "condor-relay-job"  # the user the sandbox's job sshd runs as (tests run as root)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def direct_job(relay) -> tuple[str, str]:
    """(user@host for ssh, host for scp/rsync with -l) of a new running job's direct name."""
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running")
    host = f"job-{cluster}.{proc}.direct.condor"
    return f"{JOB_USER}@{host}", host


@contextlib.contextmanager
def live_ssh(relay, target: str) -> Iterator[None]:
    """An ssh to `target` whose session lasts (20 s at most), from when it is up to the block's end."""
    ssh = subprocess.Popen(relay.ssh_argv(target, "echo up; sleep 20"), env=relay.home.env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert ssh.stdout is not None and ssh.stdout.readline() == b"up\n"
        yield
    finally:
        ssh.kill()
        ssh.communicate()


def agent_ask(relay, message: bytes) -> bytes:
    """One request on the daemon's agent socket from this (test) process; the reply's body."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(relay.home.socket.parent / AGENT_SOCKET))
        sock.sendall(u32(len(message)) + message)
        head = sock.recv(4, socket.MSG_WAITALL)
        return sock.recv(struct.unpack(">L", head)[0], socket.MSG_WAITALL)


def test_ssh_reaches_its_own_sshd_with_no_relay_in_between(relay):
    target, _ = direct_job(relay)
    done = relay.ssh(target, "echo hello; id -un; exit 7")
    assert done.returncode == 7, done.stderr
    assert done.stdout == f"hello\n{JOB_USER}\n".encode()
    assert "upstream connection" not in relay.log()  # no relayed leg was opened


def test_binary_round_trip_both_ways(relay):
    target, _ = direct_job(relay)
    data = os.urandom(20 * 1024 * 1024)
    up = relay.ssh(target, "cat > up.bin && sha256sum up.bin", input=data, timeout=120)
    assert up.returncode == 0, up.stderr
    assert up.stdout.split()[0].decode() == sha256(data)
    down = relay.ssh(target, "cat up.bin", timeout=120)
    assert down.returncode == 0, down.stderr
    assert sha256(down.stdout) == sha256(data)


def test_scp_and_rsync_both_ways(relay, tmp_path):
    _, host = direct_job(relay)
    (tmp_path / "up.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    scp = ["scp", "-F", str(relay.ssh_config), "-o", f"User={JOB_USER}"]
    assert relay.run(scp + [str(tmp_path / "up.bin"), f"{host}:up.bin"]).returncode == 0
    done = relay.run(scp + [f"{host}:up.bin", str(tmp_path / "down.bin")])
    assert done.returncode == 0, done.stderr
    assert sha256((tmp_path / "down.bin").read_bytes()) == sha256((tmp_path / "up.bin").read_bytes())

    src = tmp_path / "tree"
    for i in range(30):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"f{i}").write_bytes(os.urandom(1000 + i))
    rsync = ["rsync", "-a", "-e", f"ssh -F {relay.ssh_config} -l {JOB_USER}"]
    assert relay.run(rsync + [f"{src}/", f"{host}:tree/"]).returncode == 0
    back = tmp_path / "back"
    done = relay.run(rsync + [f"{host}:tree/", f"{back}/"])
    assert done.returncode == 0, done.stderr
    for path in src.rglob("f*"):
        assert (back / path.relative_to(src)).read_bytes() == path.read_bytes()


def test_wrong_user_is_told_which_one_the_job_takes(relay):
    _, host = direct_job(relay)
    assert_ssh_fails(relay, f"nobody@{host}", f"logs in only as {JOB_USER}", f"{JOB_USER}@{host}")


def test_agent_gives_the_key_only_to_the_ssh_it_was_negotiated_for(relay):
    target, _ = direct_job(relay)
    with live_ssh(relay, target):
        # the job's public key, from its sshd's authorized_keys in the job's sandbox
        authorized = Path(sandbox.load_ads(relay.pool_dir)[-1]["Iwd"]) / ".condor_ssh_to_job_1" / "authorized_keys"
        words = authorized.read_text().split()
        blob = base64.b64decode(words[words.index("ssh-ed25519") + 1])
        # another process (this test, a pid other than that ssh's) sees no key and cannot sign
        assert agent_ask(relay, bytes([AGENTC_REQUEST_IDENTITIES])) == bytes([AGENT_IDENTITIES_ANSWER]) + u32(0)
        sign = bytes([AGENTC_SIGN_REQUEST]) + string(blob) + string(b"session data") + u32(0)
        assert agent_ask(relay, sign) == bytes([AGENT_FAILURE])


def test_job_key_never_reaches_the_disk(relay):
    tmp = Path(tempfile.mkdtemp(prefix="cr-tmp-"))  # condor_ssh_to_job ignores a $TMP over 50 characters
    relay.home.env["TMP"] = str(tmp)
    relay.stop()
    relay.start()
    target, _ = direct_job(relay)
    try:
        done = relay.ssh(target, "cat .condor_ssh_to_job_1/sshkey")  # the starter's copy, in the job
        assert done.returncode == 0, done.stderr
        job_key = done.stdout.splitlines()[2]  # a line from the middle: wherever the key was written
        assert done.stdout.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        assert wait_for(lambda: not list(tmp.iterdir()))  # the tool removed its session dir
        for path in [p for root in (relay.home.root, tmp) for p in root.rglob("*") if p.is_file()]:
            if not path.is_symlink():
                assert job_key not in path.read_bytes(), path
    finally:
        tmp.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_reach_the_agent_socket(relay):
    target, _ = direct_job(relay)
    with live_ssh(relay, target):
        agent = str(relay.home.socket.parent / AGENT_SOCKET)
        probe = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')"
        done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3",
                               "-c", probe, agent], capture_output=True, timeout=30)
        assert done.returncode != 0 and b"PermissionError" in done.stderr, done  # from connect(), not exec


def test_sshd_killed_mid_download_fails_loudly(relay):
    """With no relay in the path, ssh itself says the connection ended, and exits 255: a short
    stream is never taken for the whole of it."""
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running")
    target = f"{JOB_USER}@job-{cluster}.{proc}.direct.condor"
    pull = subprocess.Popen(relay.ssh_argv(target, f"head -c {200 << 20} /dev/urandom"), env=relay.home.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received = 0
    while chunk := pull.stdout.read1(1 << 20):
        if received < (64 << 20) <= received + len(chunk):
            kill_job_sshds(relay.pool_dir, cluster, proc)
        received += len(chunk)
    pull.wait(30)
    stderr = pull.stderr.read().decode()
    assert 64 << 20 <= received < 200 << 20
    # OpenSSH's own words, which vary with the moment: "Connection to ... closed by remote
    # host." or "client_loop: send disconnect: Broken pipe"
    assert pull.returncode == 255 and stderr.strip(), stderr
