"""What the relay has to say reaches the user, in the setup users get.

ssh runs with the block exactly as `relayd ssh-config install` writes it, once with its
stderr sent to a file and once on a terminal. Messages travel inside SSH (banners, and
the DISCONNECT reason), so they reach the user wherever ssh sends the helper's stderr,
and OpenSSH's own `mm_receive_fd` / `proxy dialer` lines never appear.
"""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import tempfile
import threading

import pytest
from harness import OPENSSH_FDPASS_NOISE, assert_fails, assert_ssh_fails, on_terminal, screen_lines, to_file

from relayd.sandbox import pool as sandbox

RUNS = {"file": to_file, "terminal": on_terminal}


def host_of(job: tuple[int, int]) -> str:
    return f"job-{job[0]}.{job[1]}.condor"


@pytest.mark.parametrize("stderr", RUNS)
def test_a_quick_connection_says_nothing(relay, stderr):
    host = relay.running_job()
    done = RUNS[stderr](relay.ssh_argv(host, "echo hi"), relay.home.env)
    assert done.returncode == 0 and done.stdout == b"hi\n"
    assert done.stderr == b"", done.stderr


@pytest.mark.parametrize("stderr", RUNS)
def test_a_slow_negotiation_shows_progress(relay, stderr):
    sandbox.configure_pool(relay.pool_dir, negotiation_delay=2.5)
    host = relay.running_job()
    done = RUNS[stderr](relay.ssh_argv(host, "echo hi"), relay.home.env)
    assert done.returncode == 0 and done.stdout == b"hi\n", done.stderr
    job = host.split(".condor")[0].removeprefix("job-")
    assert f"condor-relay: negotiating with job {job} through condor_ssh_to_job\n".encode() in done.stderr
    assert not any(noise.encode() in done.stderr for noise in OPENSSH_FDPASS_NOISE)


@pytest.mark.parametrize("stderr", RUNS)
def test_waiting_for_an_idle_job_shows_progress(relay, stderr):
    job = sandbox.submit_job(relay.pool_dir, status="idle")
    flip = threading.Timer(2.5, sandbox.set_status, (relay.pool_dir, *job, "running"))
    flip.start()
    env = dict(relay.home.env, CONDOR_RELAY_WAIT="60")
    try:
        done = RUNS[stderr](relay.ssh_argv(host_of(job), "echo running"), env)
    finally:
        flip.join()
    assert done.returncode == 0 and done.stdout == b"running\n", done.stderr
    assert f"condor-relay: job {job[0]}.{job[1]} is idle, waiting: ".encode() in done.stderr, done.stderr


@pytest.mark.parametrize("stderr", RUNS)
def test_a_job_held_while_waited_for_says_why(relay, stderr):
    job = sandbox.submit_job(relay.pool_dir, status="idle")
    hold = threading.Timer(1.5, sandbox.set_status, (relay.pool_dir, *job, "held"), {"hold_reason": "over quota"})
    hold.start()
    env = dict(relay.home.env, CONDOR_RELAY_WAIT="60")
    try:
        done = RUNS[stderr](relay.ssh_argv(host_of(job), "true"), env)
    finally:
        hold.join()
    assert_fails(done, f"job {job[0]}.{job[1]} is held: over quota")


def test_held_and_finished_jobs_and_bad_names_both_ways(relay):
    held = sandbox.submit_job(relay.pool_dir, status="held", HoldReason="Disk quota exceeded")
    assert_ssh_fails(relay, host_of(held), f"job {held[0]}.{held[1]} is held: Disk quota exceeded")
    done = sandbox.submit_job(relay.pool_dir, status="completed")
    assert_ssh_fails(relay, host_of(done), f"job {done[0]}.{done[1]} is not in the queue")
    assert_ssh_fails(relay, "job-1.0.nolabel.condor", "unknown schedd label 'nolabel'")
    assert_ssh_fails(relay, "job-1x.condor", "not a job name")


def test_condor_ssh_to_job_s_own_words_on_a_failed_negotiation(relay):
    host = relay.running_job()
    sandbox.configure_pool(relay.pool_dir, enable_ssh_to_job=False)
    assert_ssh_fails(relay, host, "Rejecting request, because ENABLE_SSH_TO_JOB=false")


def test_a_daemon_that_cannot_start_says_why(unstarted_relay):
    relay = unstarted_relay
    relay.home.config_file.write_text("idle_timeout: 30\nno_such_key: 1\n")
    assert_ssh_fails(relay, "job-1.0.condor", "relayd did not start",
                     f"{relay.home.config_file}:2: unknown key 'no_such_key'")
    assert not relay.home.socket.exists()


class OpenSession:
    """`ssh HOST 'echo started; sleep 60'`, up once constructed, its stderr on a file or a terminal."""

    def __init__(self, relay, host: str, stderr: str) -> None:
        self.stderr_kind = stderr
        self.err_file = tempfile.TemporaryFile()
        if stderr == "terminal":
            self.controller, terminal = pty.openpty()
            err = terminal
        else:
            err = self.err_file
        self.process = subprocess.Popen(relay.ssh_argv(host, "echo started; sleep 60"), env=relay.home.env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        if stderr == "terminal":
            os.close(terminal)
        assert self.process.stdout.readline() == b"started\n"

    def ended(self, timeout: float = 20) -> tuple[int, str]:
        """Its exit status and what it printed on stderr (as the terminal shows it)."""
        returncode = self.process.wait(timeout)
        if self.stderr_kind == "terminal":
            shown = b""
            with contextlib.suppress(OSError):
                while chunk := os.read(self.controller, 65536):
                    shown += chunk
            os.close(self.controller)
            return returncode, screen_lines(shown).decode()
        self.err_file.seek(0)
        return returncode, self.err_file.read().decode()


@pytest.mark.parametrize(
    "status, hold_reason, expected",
    [
        ("held", "over memory", "job {job} is held: over memory; connection closed"),
        ("removed", None, "job {job} left the queue (completed or removed); connection closed"),
        ("idle", None, "job {job} was evicted or vacated and is idle again; connection closed"),
    ],
    ids=["held", "removed", "vacated"],
)
def test_a_session_whose_job_ended_says_why_before_the_watch_polls(relay, status, hold_reason, expected):
    # The watch polls every 15 s by default; the job's sshds die at once (as the starter kills them).
    job = sandbox.submit_job(relay.pool_dir, status="running")
    sessions = [OpenSession(relay, host_of(job), kind) for kind in RUNS]
    try:
        sandbox.set_status(relay.pool_dir, *job, status, hold_reason=hold_reason)
        for session in sessions:
            returncode, err = session.ended()
            assert returncode == 255, err
            assert f"condor-relay: {expected.format(job=f'{job[0]}.{job[1]}')}" in err.splitlines(), err
    finally:
        for session in sessions:
            session.process.kill()
