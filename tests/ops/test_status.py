"""`relayd status --json`: the daemon, each upstream and each client connection."""

from __future__ import annotations

import os
import subprocess
import time

from harness import RELAYD, wait_for
from opshelpers import status

from relayd.sandbox import pool as sandbox

UPSTREAM_FIELDS = {"job", "host", "schedd", "slot", "state", "age", "idle", "connections", "clients", "channels",
                   "bytes_to_job", "bytes_from_job", "negotiations"}


def test_status_json_shows_upstreams_and_clients(relay):
    sandbox.submit_job(relay.pool_dir, status="running")
    payload = os.urandom(256 * 1024)
    assert relay.ssh("job-1.0.condor", "cat > /dev/null", input=payload).returncode == 0
    session = subprocess.Popen(relay.ssh_argv("job-1.0.condor", "echo started; sleep 30"), env=relay.home.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert session.stdout.readline() == b"started\n"
        document = status(relay.home)
        assert document is not None
        assert document["pid"] == relay.process.pid
        assert document["activation"] == "foreground" and document["exit_when_idle"] is None
        assert document["socket"] == str(relay.home.socket)
        assert document["uptime"] >= 0 and document["started"] <= time.time()
        assert document["negotiations"] == 1
        [upstream] = document["upstreams"]
        assert set(upstream) == UPSTREAM_FIELDS
        assert upstream["job"] == "1.0" and upstream["host"] == "job-1.0.condor"
        assert upstream["schedd"] is None and upstream["slot"] == "slot1_1@sandbox.local"
        assert upstream["state"] == "ready" and upstream["connections"] == 1 and upstream["negotiations"] == 1
        assert upstream["clients"] == 1 and upstream["channels"] == 1
        assert upstream["bytes_to_job"] > len(payload) and upstream["bytes_from_job"] > 0
        [client] = document["clients"]
        assert client["host"] == "job-1.0.condor" and client["state"] == "ssh"
        assert client["bytes_from_client"] > 0 and client["bytes_to_client"] > 0
        human = subprocess.run([RELAYD, "status"], env=relay.home.env, capture_output=True, text=True, timeout=30)
        assert human.returncode == 0 and "slot1_1@sandbox.local" in human.stdout and "upstreams: 1" in human.stdout
    finally:
        session.kill()
        session.wait()
    assert wait_for(lambda: (status(relay.home) or {}).get("clients") == [])
    # one log line per client connection: job, duration, bytes and outcome
    assert "job-1.0.condor: closed after" in relay.log() and "to the client" in relay.log()


def test_status_when_not_running(home):
    done = subprocess.run([RELAYD, "status", "--json"], env=home.env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3 and "relayd is not running" in done.stderr


def test_status_shows_jobs_on_demand_waiting_then_running(relay, tmp_path):
    relay.stop()
    sandbox.configure_pool(relay.pool_dir, start_delay=4)
    relay.configure(profiles={"cpu": {"submit": {"request_cpus": 1}, "linger": 30}}, heartbeat_interval=1,
                    watch_interval=0.5)
    relay.start()
    with (tmp_path / "stderr").open("wb") as stderr:
        client = subprocess.Popen(relay.ssh_argv("cpu.condor", "echo hi"), env=relay.home.env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert wait_for(lambda: ((status(relay.home) or {}).get("on_demand") or [{}])[0].get("clients") == 1,
                        timeout=20)
        [waiting] = status(relay.home)["on_demand"]
        human = subprocess.run([RELAYD, "status"], env=relay.home.env, capture_output=True, text=True, timeout=30)
        out, _ = client.communicate(timeout=60)
    finally:
        client.kill()
        client.wait()
    job = waiting["job"]
    assert waiting == {"host": "cpu.condor", "profile": "cpu", "schedd": None, "job": job, "state": "idle",
                       "clients": 1, "left": None}
    assert "jobs on demand: 1" in human.stdout and f"cpu.condor  {job}  cpu      idle   1        in use" in \
        human.stdout, human.stdout
    assert out == b"hi\n", (tmp_path / "stderr").read_text()
    assert wait_for(lambda: status(relay.home)["on_demand"][0]["clients"] == 0)
    [running] = status(relay.home)["on_demand"]
    assert running["job"] == job and running["state"] == "running" and 20 < running["left"] <= 30
    human = subprocess.run([RELAYD, "status"], env=relay.home.env, capture_output=True, text=True, timeout=30)
    assert f"cpu.condor  {job}  cpu      running  0        removed in " in human.stdout, human.stdout
