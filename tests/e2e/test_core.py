"""End to end through the daemon: real ssh, scp, sftp and rsync against a sandbox job's sshd."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import assert_ssh_fails

from relayd.sandbox import pool as sandbox

HOST = "job-1.0.condor"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def running_job(relay) -> str:
    cluster, proc = sandbox.submit_job(relay.pool_dir, status="running")
    return f"job-{cluster}.{proc}.condor"


def test_exit_status_comes_back(relay):
    host = running_job(relay)
    done = relay.ssh(host, "echo hello; exit 7")
    assert done.returncode == 7, done.stderr
    assert done.stdout == b"hello\n"


def test_cwd_is_the_job_sandbox_and_job_env_is_restored(relay):
    host = running_job(relay)
    done = relay.ssh(host, "pwd; echo $_CONDOR_JOB_PIDS")
    assert done.returncode == 0, done.stderr
    cwd, pids = done.stdout.decode().splitlines()
    ad = sandbox.load_ads(relay.pool_dir)[0]
    assert cwd == ad["Iwd"]
    assert pids and pids.split()[0].isdigit()
    assert Path(f"/proc/{pids.split()[0]}").exists()  # the job's real process


def test_50_mib_binary_round_trip(relay):
    host = running_job(relay)
    data = os.urandom(50 * 1024 * 1024)
    done = relay.ssh(host, "cat", input=data, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) == len(data) and sha256(done.stdout) == sha256(data)


def test_pty_shell_driven_with_input(relay):
    host = running_job(relay)
    done = relay.ssh("-tt", host, input=b"echo marker-$((6*7)); tty\nexit 3\n")
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 3, (out, done.stderr)
    assert "marker-42" in out and "/dev/pts/" in out


def test_scp_both_ways(relay, tmp_path):
    host = running_job(relay)
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "up.bin").write_bytes(data)
    scp = ["scp", "-F", str(relay.ssh_config)]
    assert relay.run(scp + [str(tmp_path / "up.bin"), f"{host}:up.bin"]).returncode == 0
    down = relay.run(scp + [f"{host}:up.bin", str(tmp_path / "down.bin")])
    assert down.returncode == 0, down.stderr
    assert sha256((tmp_path / "down.bin").read_bytes()) == sha256(data)


def test_sftp_both_ways(relay, tmp_path):
    host = running_job(relay)
    data = os.urandom(2 * 1024 * 1024 + 5)
    (tmp_path / "up.bin").write_bytes(data)
    batch = tmp_path / "batch"
    batch.write_text(f"put {tmp_path / 'up.bin'} sftp.bin\nget sftp.bin {tmp_path / 'down.bin'}\n")
    done = relay.run(["sftp", "-F", str(relay.ssh_config), "-b", str(batch), host])
    assert done.returncode == 0, done.stderr
    assert sha256((tmp_path / "down.bin").read_bytes()) == sha256(data)
    listed = relay.ssh(host, "sha256sum sftp.bin")
    assert listed.stdout.split()[0].decode() == sha256(data)


def test_rsync_both_ways(relay, tmp_path):
    host = running_job(relay)
    src = tmp_path / "src"
    files = {}
    for i in range(40):
        path = src / f"d{i % 4}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        files[path.relative_to(src)] = os.urandom(1000 * i + 1)
        path.write_bytes(files[path.relative_to(src)])
    rsync = ["rsync", "-a", "-e", f"ssh -F {relay.ssh_config}"]
    up = relay.run(rsync + [f"{src}/", f"{host}:dir/"])
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back"
    down = relay.run(["rsync", "-av", "-e", f"ssh -F {relay.ssh_config}", f"{host}:dir/", f"{back}/"])
    assert down.returncode == 0, down.stderr
    for rel, data in files.items():
        assert sha256((back / rel).read_bytes()) == sha256(data)


def test_parallel_cold_connections_negotiate_once(relay):
    host = running_job(relay)
    before = relay.negotiations()
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda i: relay.ssh(host, f"echo {i}"), range(10)))
    assert [r.returncode for r in results] == [0] * 10, [r.stderr for r in results]
    assert sorted(int(r.stdout) for r in results) == list(range(10))
    assert relay.negotiations() - before == 1
    again = relay.ssh(host, "true")
    assert again.returncode == 0 and relay.negotiations() - before == 1


def test_bad_name(relay):
    assert_ssh_fails(relay, "job-x.condor", "not a job name", "expected job-<cluster>")


def test_missing_idle_and_held_jobs(relay):
    assert_ssh_fails(relay, "job-999.0.condor", "job 999.0 is not in the queue")
    idle = sandbox.submit_job(relay.pool_dir, status="idle")
    assert_ssh_fails(relay, f"job-{idle[0]}.{idle[1]}.condor", f"job {idle[0]}.{idle[1]} is idle")
    held = sandbox.submit_job(relay.pool_dir, status="held", HoldReason="Disk quota exceeded")
    assert_ssh_fails(relay, f"job-{held[0]}.{held[1]}.condor", "is held: Disk quota exceeded")
    assert relay.negotiations() == 0  # the lookup answered before any negotiation


def test_without_lookup_the_tools_own_messages_reach_the_user(relay):
    relay.stop()
    relay.configure(job_lookup="none")
    relay.start()
    held = sandbox.submit_job(relay.pool_dir, status="held", HoldReason="Disk quota exceeded")
    assert_ssh_fails(relay, f"job-{held[0]}.{held[1]}.condor", 'The job is on hold: "Disk quota exceeded"')
    assert_ssh_fails(relay, "job-999.0.condor", "Unable to fetch job ad")


def test_more_sessions_than_maxsessions_open_more_upstreams(relay):
    host = running_job(relay)
    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(lambda i: relay.ssh(host, f"sleep 2; echo {i}", timeout=120), range(40)))
    assert [r.returncode for r in results] == [0] * 40, [r.stderr for r in results if r.returncode]
    assert sorted(int(r.stdout) for r in results) == list(range(40))
    # sshd allows 10 sessions per connection: 40 at once need more than one negotiation
    assert 2 <= relay.negotiations() <= 4
