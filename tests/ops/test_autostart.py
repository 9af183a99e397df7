"""The helper starts the daemon when none listens; the daemon exits again when idle."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from harness import assert_ssh_fails, wait_for
from opshelpers import alive, daemon_log, status

from relayd.sandbox import pool as sandbox


def test_concurrent_helpers_start_one_daemon(unstarted_relay):
    relay = unstarted_relay
    sandbox.submit_job(relay.pool_dir, status="running")
    with ThreadPoolExecutor(8) as workers:
        results = list(workers.map(lambda i: relay.ssh("job-1.0.condor", f"echo {i}"), range(8)))
    for i, done in enumerate(results):
        assert done.returncode == 0 and done.stdout == f"{i}\n".encode(), done.stderr
    assert daemon_log(relay.home).count("relayd listening on") == 1
    assert relay.negotiations() == 1
    document = status(relay.home)
    assert document is not None and document["activation"] == "helper"


def test_idle_daemon_exits_and_the_next_ssh_starts_another(unstarted_relay):
    relay = unstarted_relay
    relay.configure(exit_when_idle=1, idle_timeout=0.5)
    sandbox.submit_job(relay.pool_dir, status="running")
    assert relay.ssh("job-1.0.condor", "true").returncode == 0
    first = status(relay.home)
    assert first is not None and first["exit_when_idle"] == 1
    # the upstream closes after idle_timeout, then the daemon after exit_when_idle
    assert wait_for(lambda: not alive(first["pid"]), timeout=10), daemon_log(relay.home)
    assert not relay.home.socket.exists()
    assert "exiting (exit_when_idle)" in daemon_log(relay.home)
    assert relay.ssh("job-1.0.condor", "true").returncode == 0
    second = status(relay.home)
    assert second is not None and second["pid"] != first["pid"]


def test_no_start_fails_fast_when_no_daemon_runs(unstarted_relay):
    relay = unstarted_relay
    block = relay.ssh_config.read_text()
    relay.ssh_config.write_text(block.replace(" --user %r ", " --no-start --user %r "))
    assert "--no-start" in relay.ssh_config.read_text()
    assert_ssh_fails(relay, "job-1.0.condor", "the relay daemon is not running")
    assert not relay.home.socket.exists()
