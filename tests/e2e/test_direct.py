"""The direct path (job-N.M.direct.condor): ssh, scp and rsync to a fresh sshd of the job's own,
with the job's key served from the daemon's memory through its agent socket."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from harness import assert_ssh_fails

from relayd.daemon.direct import AGENTC_REQUEST_IDENTITIES, AGENT_IDENTITIES_ANSWER
from relayd.sandbox import pool as sandbox


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def direct_host(relay) -> str:
    """A running job's direct name, as the job's user (the user its sshd logs in)."""
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running")
    return f"{job_user(relay)}@job-{cluster}.{proc}.direct.condor"


def job_user(relay) -> str:
    done = relay.ssh(running_host(relay), "id -un")
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def running_host(relay) -> str:
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running")
    return f"job-{cluster}.{proc}.condor"


def test_ssh_runs_in_the_job_with_no_relay_in_between(relay):
    host = direct_host(relay)
    done = relay.ssh(host, "echo hello; exit 7")
    assert done.returncode == 7, done.stderr
    assert done.stdout == b"hello\n"
    assert relay.status()["sessions"] == [] if hasattr(relay, "status") else True
