"""The opt-in `ssh_multiplexing: true`: ssh's ControlMaster in front of the relay.

Each job gets one ssh master (one client of the daemon); every later ssh, scp, sftp and
rsync is a mux client of it. The daemon's socket directory holds the masters' sockets, so
these tests use a short XDG_RUNTIME_DIR (a unix socket path is limited to 107 bytes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from harness import Home, RelayProcess, assert_ssh_fails, wait_for

from clientconf.daemonctl import status
from relayd.sandbox import pool as sandbox


@pytest.fixture
def mux_home(tmp_path: Path):
    home = Home.make(tmp_path)
    runtime = tempfile.mkdtemp(prefix="cr-")
    home.env["XDG_RUNTIME_DIR"] = runtime
    yield home
    shutil.rmtree(runtime, ignore_errors=True)


def start(home: Home, pool: Path, **settings: object) -> RelayProcess:
    relay = RelayProcess(home, pool)
    relay.configure(ssh_multiplexing=True, **settings)
    relay.start()
    assert "ControlMaster auto" in relay.ssh_config.read_text()
    return relay


@pytest.fixture
def mux_relay(mux_home: Home, pool: Path):
    relay = start(mux_home, pool)
    yield relay
    relay.stop()


def masters(relay: RelayProcess) -> list[str]:
    return [name for name in os.listdir(relay.home.socket.parent) if name.startswith("mux-")]


def job(relay: RelayProcess) -> tuple[str, tuple[int, int]]:
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running")
    return f"job-{cluster}.{proc}.condor", (cluster, proc)


def test_every_tool_shares_the_jobs_master(mux_relay, tmp_path):
    relay = mux_relay
    host, _ = job(relay)
    assert relay.ssh(host, "true").returncode == 0
    assert len(masters(relay)) == 1
    assert relay.ssh("-O", "check", host).returncode == 0

    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3 << 20))
    assert relay.run(["scp", "-F", str(relay.ssh_config), str(blob), f"{host}:blob"]).returncode == 0
    fetched = tmp_path / "fetched"
    done = relay.run(["sftp", "-F", str(relay.ssh_config), f"{host}:blob", str(fetched)])
    assert done.returncode == 0, done.stderr
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(20):
        (tree / f"f{i}").write_bytes(os.urandom(1000 + i))
    rsync = ["rsync", "-a", "-e", f"ssh -F {relay.ssh_config}"]
    assert relay.run(rsync + [f"{tree}/", f"{host}:tree/"]).returncode == 0
    remote = relay.ssh(host, "sha256sum blob; cat tree/f7")

    assert remote.returncode == 0
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert remote.stdout.split()[0].decode() == digest == hashlib.sha256(fetched.read_bytes()).hexdigest()
    assert remote.stdout.endswith((tree / "f7").read_bytes())
    # one master, so one client of the daemon and one negotiation for all of it
    document = status(str(relay.home.socket))
    assert [u["clients"] for u in document["upstreams"]] == [1]
    assert relay.negotiations() == 1


def test_the_slot_is_released_when_the_master_leaves(mux_home, pool):
    idle = 3
    relay = start(mux_home, pool, idle_timeout=idle)
    try:
        host, (cluster, proc) = job(relay)
        assert relay.ssh(host, "true").returncode == 0
        assert masters(relay) and sandbox.sshd_pids(pool, cluster, proc)
        # The master persists `idle` seconds (ControlPersist) after its last session; the
        # daemon counts its own idle_timeout from that session too, not from the master's
        # leaving, so the job's sshd goes with the master, not `idle` seconds later.
        assert wait_for(lambda: not masters(relay), timeout=idle + 10)
        left = time.monotonic()
        assert wait_for(lambda: not sandbox.sshd_pids(pool, cluster, proc), timeout=idle + 5)
        assert time.monotonic() - left < idle - 1
    finally:
        relay.stop()


def test_a_job_that_ends_tells_the_mux_clients_why(mux_home, pool):
    relay = start(mux_home, pool, watch_interval=0.5)
    try:
        host, (cluster, proc) = job(relay)
        assert relay.ssh(host, "true").returncode == 0  # the master, persisting
        session = subprocess.Popen(relay.ssh_argv(host, "echo up; sleep 60"), env=relay.home.env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert session.stdout is not None and session.stdout.readline() == b"up\n"
        sandbox.set_status(pool, cluster, proc, "completed")
        _, err = session.communicate(timeout=30)
        assert session.returncode == 255
        assert f"condor-relay: job {cluster}.{proc} left the queue (completed or removed)" in err.decode()
        assert wait_for(lambda: not masters(relay))  # the daemon ended the master's connection too
    finally:
        relay.stop()


def test_messages_reach_the_user_behind_controlpersist_too(mux_home, pool):
    # ssh sends the helper's stderr to /dev/null when ControlPersist is set; the relay's
    # messages travel inside SSH (banners, the disconnect reason), which ssh still prints.
    relay = start(mux_home, pool)
    try:
        held = sandbox.submit_job(pool, status="held", HoldReason="over memory")
        assert_ssh_fails(relay, f"job-{held[0]}.{held[1]}.condor", f"job {held[0]}.{held[1]} is held: over memory")
        assert_ssh_fails(relay, "job-1x.condor", "not a job name")
        assert not masters(relay)
    finally:
        relay.stop()
