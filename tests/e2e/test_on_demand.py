"""Jobs on demand: `ssh cpu.condor` submits a job of the profile, waits, connects, shares
it with every later connection (also after a daemon restart), and gives the slot back.

On the sandbox pool, whose negotiator starts a job `start_delay` seconds after it was
submitted (when its one slot can run it), and whose schedd removes a job once its
heartbeat is older than periodic_remove allows (relayd.sandbox.demand).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time

import pytest
from harness import assert_fails, assert_ssh_fails, on_terminal, to_file, wait_for
from opshelpers import status

from relayd.common.jobstates import HELD, IDLE, REMOVED, RUNNING
from relayd.sandbox import pool as sandbox
from relayd.sandbox.demand import schedd_cycle

RUNS = {"file": to_file, "terminal": on_terminal}
PROFILES = {
    "cpu": {"submit": {"request_cpus": 1, "request_memory": "1GB"}, "linger": 60},
    "gpu": {"submit": {"request_gpus": 1}},
}


def configure(relay, start_delay: float = 1.5, **settings) -> None:
    relay.stop()
    sandbox.configure_pool(relay.pool_dir, start_delay=start_delay)
    relay.configure(profiles=settings.pop("profiles", PROFILES), heartbeat_interval=settings.pop("heartbeat", 1),
                    watch_interval=0.5, **settings)
    relay.start()


def relay_jobs(relay) -> list[dict]:
    """Every job the relay submitted, removed ones included."""
    return [ad for ad in sandbox.load_ads(relay.pool_dir, include_history=True) if "CondorRelayProfile" in ad]


def status_of(relay, cluster: int) -> int:
    schedd_cycle(relay.pool_dir)  # the pool's periodic work, as a real schedd does on its own
    return next(ad["JobStatus"] for ad in relay_jobs(relay) if ad["ClusterId"] == cluster)


def relayd(relay, *args: str) -> subprocess.CompletedProcess:
    return relay.run([relay.relayd, *args], timeout=60)


@pytest.mark.parametrize("stderr", RUNS)
def test_first_use_submits_waits_and_connects_with_progress(relay, stderr):
    configure(relay)
    done = RUNS[stderr](relay.ssh_argv("cpu.condor", "echo hi"), relay.home.env)
    assert done.returncode == 0 and done.stdout == b"hi\n", done.stderr
    [ad] = relay_jobs(relay)
    job = f"{ad['ClusterId']}.{ad['ProcId']}"
    shown = done.stderr.decode()
    assert f"condor-relay: submitted a job of profile cpu as {job}; job {job} is idle for " in shown, shown
    assert f"condor-relay: job {job} is running on slot1_" in shown, shown
    assert ad["JobStatus"] == RUNNING and ad["JobBatchName"] == "condor-relay-cpu"
    assert ad["JobSubmitMethod"] >= 100 and ad["RequestMemory"] == 1024
    assert ad["PeriodicRemove"] == "(time() - CondorRelayHeartbeat) > 5"


def test_two_tools_share_one_job_found_again_after_a_restart(relay, tmp_path):
    configure(relay)
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 * 1024 * 1024))
    rsync = ["rsync", "-a", "-e", f"ssh -F {relay.ssh_config}", str(data), "cpu.condor:data.bin"]
    results = {}
    tools = [threading.Thread(target=lambda: results.update(ssh=relay.ssh("cpu.condor", "echo hi"))),
             threading.Thread(target=lambda: results.update(rsync=relay.run(rsync)))]
    for tool in tools:
        tool.start()
    for tool in tools:
        tool.join()
    assert results["ssh"].returncode == 0 and results["ssh"].stdout == b"hi\n", results["ssh"].stderr
    assert results["rsync"].returncode == 0, results["rsync"].stderr
    [ad] = relay_jobs(relay)  # one submission for both
    relay.stop()
    relay.start()
    done = relay.ssh("cpu.condor", "sha256sum data.bin")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].decode() == hashlib.sha256(data.read_bytes()).hexdigest()
    assert [a["ClusterId"] for a in relay_jobs(relay)] == [ad["ClusterId"]]
    assert f"job {ad['ClusterId']}.0 of profile cpu found again" in relay.log()


def test_removed_after_linger(relay):
    configure(relay, profiles={"cpu": {"submit": {"request_cpus": 1}, "linger": 2}})
    assert relay.ssh("cpu.condor", "true").returncode == 0
    [ad] = relay_jobs(relay)
    assert wait_for(lambda: status_of(relay, ad["ClusterId"]) == REMOVED, timeout=15)
    assert f"removing job {ad['ClusterId']}.0 of profile cpu: no client for 2.0 s" in relay.log()
    assert not sandbox.sshd_pids(relay.pool_dir, ad["ClusterId"], 0)  # the slot is not held


def test_relayd_jobs_and_release(relay):
    configure(relay)
    assert relay.ssh("cpu.condor", "true").returncode == 0
    [ad] = relay_jobs(relay)
    job = f"{ad['ClusterId']}.{ad['ProcId']}"
    assert wait_for(lambda: "removed in" in relayd(relay, "jobs").stdout.decode(), timeout=10)
    listed = relayd(relay, "jobs").stdout.decode()
    assert f"cpu.condor  {job}" in listed and "running" in listed, listed
    released = relayd(relay, "release", "cpu")
    assert released.returncode == 0 and released.stdout.decode() == f"removed job {job} (profile cpu)\n"
    assert status_of(relay, ad["ClusterId"]) == REMOVED
    again = relayd(relay, "release", "cpu")
    assert again.returncode == 1 and b"no job of profile cpu in the queue" in again.stderr
    # the next connection gets a new job
    assert relay.ssh("cpu.condor", "true").returncode == 0
    assert len(relay_jobs(relay)) == 2


def test_the_pool_removes_the_job_once_the_daemon_is_killed(relay):
    configure(relay, heartbeat=1)  # periodic_remove after 5 s without a heartbeat
    assert relay.ssh("cpu.condor", "true").returncode == 0
    [ad] = relay_jobs(relay)
    time.sleep(7)  # past the heartbeat timeout: the daemon's heartbeats keep the job
    assert status_of(relay, ad["ClusterId"]) == RUNNING
    os.kill(relay.pid, signal.SIGKILL)
    relay.process.wait()
    assert wait_for(lambda: status_of(relay, ad["ClusterId"]) == REMOVED, timeout=15)
    assert not sandbox.sshd_pids(relay.pool_dir, ad["ClusterId"], 0)


def test_unknown_profile_names_the_known_ones_and_submits_nothing(relay):
    configure(relay)
    assert_ssh_fails(relay, "nope.condor", "no profile 'nope'", "known profiles: cpu, gpu")
    assert relay_jobs(relay) == []


def test_a_request_no_slot_can_match_fails_early_with_the_clause(relay):
    configure(relay)
    started = time.monotonic()
    assert_ssh_fails(relay, "gpu.condor", "no slot in the pool can run profile gpu: "
                                          "0 of 1 slots satisfy TARGET.GPUs >= RequestGPUs; removed the job")
    assert time.monotonic() - started < 20
    assert {ad["JobStatus"] for ad in relay_jobs(relay)} == {REMOVED}


@pytest.mark.parametrize("stderr", RUNS)
def test_a_job_held_while_waiting_fails_with_the_reason_and_is_removed(relay, stderr):
    configure(relay, start_delay=60)

    def hold() -> None:
        wait_for(lambda: [ad for ad in relay_jobs(relay) if ad["JobStatus"] == IDLE], timeout=20)
        ad = relay_jobs(relay)[-1]
        sandbox.set_status(relay.pool_dir, ad["ClusterId"], 0, HELD, hold_reason="over disk quota")

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        done = RUNS[stderr](relay.ssh_argv("cpu.condor", "true"), relay.home.env)
    finally:
        holder.join()
    [ad] = relay_jobs(relay)
    assert_fails(done, f"job {ad['ClusterId']}.0 of profile cpu was held: over disk quota; removed the job")
    assert ad["JobStatus"] == REMOVED


def test_vscode_window_on_a_profile_listed_by_ssh_config_jobs(relay):
    from e2e.test_channels import http_get_through_socks, stop, vscode_window

    configure(relay)
    printed = relayd(relay, "ssh-config", "install", "--jobs")
    assert printed.returncode == 0, printed.stderr
    text = relay.ssh_config.read_text()
    assert "\nHost *.condor\n" in text and "\nHost cpu.condor\n" in text and "\nHost gpu.condor\n" in text
    windows = []
    try:
        for _ in range(2):  # the second window (and the first's reconnects) reach the same job
            window, socks_port, server_port = vscode_window(relay, "cpu.condor")
            windows.append(window)
            response = http_get_through_socks(socks_port, server_port)
            assert response.startswith(b"HTTP/1.0 200") and response.endswith(b"vscode server in the job")
    finally:
        for window in windows:
            stop(window)
    assert len(relay_jobs(relay)) == 1 and relay.negotiations() == 1


def test_a_job_past_its_max_lifetime_is_held_then_replaced(relay):
    configure(relay, profiles={"cpu": {"submit": {"request_cpus": 1}, "max_lifetime": 2}})
    assert relay.ssh("cpu.condor", "true").returncode == 0
    [first] = relay_jobs(relay)
    assert first["AllowedJobDuration"] == 2
    assert wait_for(lambda: status_of(relay, first["ClusterId"]) == HELD, timeout=10)
    done = relay.ssh("cpu.condor", "echo new")
    assert done.returncode == 0 and done.stdout == b"new\n", done.stderr
    assert wait_for(lambda: status_of(relay, first["ClusterId"]) == REMOVED, timeout=10)
    assert [ad["JobStatus"] for ad in relay_jobs(relay)] == [REMOVED, RUNNING]


def test_without_a_schedd_the_htcondor_submitter_says_so(relay):
    configure(relay, job_lookup="htcondor")
    assert_ssh_fails(relay, "cpu.condor", "cannot query (the local schedd): ")


def waiting_ssh(relay, stderr, command: str = "true") -> subprocess.Popen:
    """An ssh to cpu.condor in the background (it waits for the job), its stderr to a file."""
    with stderr.open("wb") as file:
        return subprocess.Popen(relay.ssh_argv("cpu.condor", command), env=relay.home.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=file)


def kill(client: subprocess.Popen) -> None:
    client.kill()
    client.wait()
    client.stdout.close()


def waiting_clients(relay) -> int:
    return sum(c["host"] == "cpu.condor" for c in (status(relay.home) or {}).get("clients", []))


def test_a_wait_whose_clients_all_left_stops_and_the_job_goes_after_linger(relay, tmp_path):
    # The job would start only after 60 s: the relay must neither wait for it nor keep it
    # that long once its one client is gone, but count its linger from the client's departure.
    configure(relay, start_delay=60, profiles={"cpu": {"submit": {"request_cpus": 1}, "linger": 2}})
    stderr = tmp_path / "stderr"
    client = waiting_ssh(relay, stderr)
    try:  # killed while it shows the wait, as a user's Ctrl-C or ConnectTimeout ends it
        assert wait_for(lambda: b"waiting for a slot" in stderr.read_bytes(), timeout=20), stderr.read_bytes()
        assert waiting_clients(relay) == 1
        assert [ad["JobStatus"] for ad in relay_jobs(relay)] == [IDLE]
    finally:
        kill(client)
    [ad] = relay_jobs(relay)
    job = f"{ad['ClusterId']}.{ad['ProcId']}"
    assert wait_for(lambda: status_of(relay, ad["ClusterId"]) == REMOVED, timeout=15)
    log = relay.log()
    assert f"stopped waiting for job {job} of profile cpu: its clients left" in log, log
    assert f"removing job {job} of profile cpu: no client for 2.0 s" in log, log


def test_a_client_that_came_during_the_wait_keeps_it_when_the_first_leaves(relay, tmp_path):
    configure(relay, start_delay=8, profiles={"cpu": {"submit": {"request_cpus": 1}, "linger": 2}})
    first = waiting_ssh(relay, tmp_path / "first")
    try:
        assert wait_for(lambda: b"waiting for a slot" in (tmp_path / "first").read_bytes(), timeout=20)
        second = waiting_ssh(relay, tmp_path / "second", "echo second")
        try:
            assert wait_for(lambda: waiting_clients(relay) == 2, timeout=10)
            kill(first)
            out, _ = second.communicate(timeout=60)
        finally:
            kill(second)
    finally:
        kill(first)
    assert second.returncode == 0 and out == b"second\n", (tmp_path / "second").read_text()
    [ad] = relay_jobs(relay)  # one submission, kept for the client that stayed
    assert "stopped waiting" not in relay.log()
    assert wait_for(lambda: status_of(relay, ad["ClusterId"]) == REMOVED, timeout=15)
