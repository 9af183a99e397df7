"""SIGHUP reloads the config (keeping the old one when the new one is broken); SIGTERM and
`relayd stop` close clients with a reason."""

from __future__ import annotations

import signal
import subprocess

from harness import RELAYD, wait_for

from relayd.sandbox import pool as sandbox


def reload(relay, marker: str) -> None:
    relay.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: marker in relay.log()), relay.log()


def test_sighup_applies_a_good_config_and_keeps_the_old_one_for_a_broken_one(relay):
    sandbox.submit_job(relay.pool_dir, status="running")
    sandbox.submit_job(relay.pool_dir, status="running")
    good_tool = str(relay.pool_dir / "bin" / "condor_ssh_to_job")

    relay.home.config_file.write_text("job_lookup: [not, a, string]\n")
    reload(relay, "config not reloaded")
    assert f"{relay.home.config_file}:1: job_lookup must be a string" in relay.log()
    assert relay.ssh("job-1.0.condor", "true").returncode == 0  # the old config still works

    relay.configure(condor_ssh_to_job="/nonexistent/condor_ssh_to_job")
    reload(relay, "config reloaded")
    done = relay.ssh("job-2.0.condor", "true")  # a new session: the new config applies
    assert done.returncode == 255
    assert b"condor_ssh_to_job not found ('/nonexistent/condor_ssh_to_job')" in done.stderr
    assert relay.ssh("job-1.0.condor", "true").returncode == 0  # the running session is unaffected

    relay.configure(condor_ssh_to_job=good_tool)
    reload(relay, "config reloaded")
    assert relay.ssh("job-2.0.condor", "true").returncode == 0


def test_sigterm_tells_connected_clients_and_exits(relay):
    sandbox.submit_job(relay.pool_dir, status="running")
    session = subprocess.Popen(relay.ssh_argv("job-1.0.condor", "echo started; sleep 30"), env=relay.home.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert session.stdout.readline() == b"started\n"
    relay.process.send_signal(signal.SIGTERM)
    assert relay.process.wait(timeout=10) == 0
    _, err = session.communicate(timeout=10)
    assert session.returncode == 255
    assert b"relayd is shutting down" in err
    assert not relay.home.socket.exists()
    assert wait_for(lambda: not sandbox.sshd_pids(relay.pool_dir, 1, 0))


def test_relayd_stop(relay):
    done = subprocess.run([RELAYD, "stop"], env=relay.home.env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and f"relayd (pid {relay.process.pid}) stopped" in done.stdout
    assert relay.process.wait(timeout=10) == 0
    again = subprocess.run([RELAYD, "stop"], env=relay.home.env, capture_output=True, text=True, timeout=30)
    assert again.returncode == 3 and "not running" in again.stderr
