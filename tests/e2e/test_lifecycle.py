"""Upstream lifetime, who may use the socket, and where keys live."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import wait_for

from relayd.sandbox import pool as sandbox


def test_idle_upstream_closes_and_next_connection_renegotiates(relay):
    relay.stop()
    relay.configure(idle_timeout=1)
    relay.start()
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running")
    host = f"job-{cluster}.{proc}.condor"
    assert relay.ssh(host, "true").returncode == 0
    assert sandbox.sshd_pids(relay.pool_dir, cluster, proc)
    # no clients for idle_timeout: the relay lets go of the sshd, so the slot is not held
    assert wait_for(lambda: not sandbox.sshd_pids(relay.pool_dir, cluster, proc))
    assert relay.ssh(host, "true").returncode == 0
    assert relay.negotiations() == 2


def test_a_client_keeps_the_upstream_open_past_idle_timeout(relay):
    relay.stop()
    relay.configure(idle_timeout=1)
    relay.start()
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running")
    done = relay.ssh(f"job-{cluster}.{proc}.condor", "sleep 2.5; echo still here")
    assert done.returncode == 0 and done.stdout == b"still here\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user")
def test_connection_from_another_uid_is_refused(relay):
    # Open the directory and socket up so that only SO_PEERCRED stands in the way.
    relay.home.socket.parent.chmod(0o755)
    relay.home.socket.chmod(0o666)
    # Enter the directory as root, then become nobody: the relative path needs no
    # access to the private directories above it. SO_PEERCRED is taken at connect().
    probe = (
        "import os, socket, sys\n"
        f"os.chdir({str(relay.home.socket.parent)!r})\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect('relay.sock')\n"
        "s.sendall(b'CONNECT job-1.0.condor 22\\n')\n"
        "s.settimeout(10)\n"
        "sys.stdout.write(repr(s.recv(100)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.stdout in ("b''", "") or "ConnectionResetError" in done.stderr, (done.stdout, done.stderr)
    assert "refused a connection from uid 65534" in relay.log()
    assert relay.negotiations() == 0
    sandbox.submit_job(relay.pool_dir, status="running")
    assert relay.ssh("job-1.0.condor", "true").returncode == 0  # still serving its owner


def test_socket_and_key_modes(relay):
    assert relay.home.socket.parent.stat().st_mode & 0o777 == 0o700
    assert relay.home.socket.stat().st_mode & 0o777 == 0o600
    state = Path(relay.home.env["XDG_STATE_HOME"]) / "condor-relay"
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "host_key").stat().st_mode & 0o777 == 0o600
