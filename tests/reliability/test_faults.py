"""Faults around the daemon: a negotiator that hangs or fails, an sshd killed mid-transfer,
the daemon killed with SIGKILL, a full disk. Each must end in a clear message, lose no
byte silently, and leave the daemon serving everyone else."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import (
    RELAYD,
    EchoSession,
    RelayProcess,
    assert_fails,
    kill_job_sshds,
    negotiator_environments,
    wait_for,
)

from relayd.condor.names import parse_host
from relayd.sandbox import pool as sandbox

MIB = 1024 * 1024
TRANSFER = 200 * MIB
KILL_AFTER = 64 * MIB
CHUNK = MIB


def job_id(host: str) -> tuple[int, int]:
    job = parse_host(host, "condor")
    return job.cluster, job.proc


def kill_sshds(relay: RelayProcess, host: str) -> None:
    kill_job_sshds(relay.pool_dir, *job_id(host))


def assert_failed_loudly(done: subprocess.Popen, host: str) -> None:
    """ssh exits 255 with the relay's reason."""
    stderr = done.stderr.read().decode()
    assert done.returncode == 255, stderr
    # the reason comes on the session's stderr (or, with no session open, in the disconnect message)
    assert f"connection to job {job_id(host)[0]}.0 lost" in stderr and "Broken pipe" not in stderr, stderr


def test_back_to_back_negotiations_all_finish_and_leave_no_zombie(relay):
    # Regression: without SIGCHLD handling a tool whose exit was seen only through its
    # closed pipes stayed a zombie, and that job's negotiation never ended.
    hosts = [relay.running_job() for _ in range(12)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda host: relay.ssh(host, "true", timeout=30), hosts))
    assert [r.returncode for r in results] == [0] * len(hosts), [r.stderr for r in results]
    assert relay.negotiations() == len(hosts)
    assert wait_for(lambda: not relay.zombies(), timeout=5), relay.zombies()


def test_hanging_negotiator_is_killed_with_its_process_group(relay):
    relay.stop()
    relay.configure(negotiation_timeout=1.5)
    relay.start()
    sandbox.configure_pool(relay.pool_dir, negotiation_fault="hang")
    host = relay.running_job()
    done = relay.ssh(host, "true", timeout=30)
    assert done.returncode == 255
    assert f"condor_ssh_to_job did not finish within 1.5 s for job {job_id(host)[0]}.0" in done.stderr.decode()
    # the tool and the child it left waiting went with their process group, and were reaped
    assert wait_for(lambda: not negotiator_environments(relay.pool_dir), timeout=5)
    assert wait_for(lambda: not relay.zombies(), timeout=5), relay.zombies()
    sandbox.configure_pool(relay.pool_dir, negotiation_fault="")
    assert relay.ssh(host, "true").returncode == 0


@pytest.mark.parametrize(
    "fault, message",
    [
        ({"enable_ssh_to_job": False}, "Rejecting request, because ENABLE_SSH_TO_JOB=false"),
        ({"negotiation_fault": "no_socket"}, "condor_ssh_to_job finished without handing over a connection"),
    ],
    ids=["exits-non-zero", "exits-0-without-a-socket"],
)
def test_failing_negotiator_gives_its_reason_and_the_daemon_carries_on(relay, fault, message):
    host = relay.running_job()
    sandbox.configure_pool(relay.pool_dir, **fault)
    done = relay.ssh(host, "true")
    assert_fails(done, message)
    assert wait_for(lambda: not relay.zombies(), timeout=5), relay.zombies()
    sandbox.configure_pool(relay.pool_dir, enable_ssh_to_job=True, negotiation_fault="")
    assert relay.ssh(host, "true").returncode == 0


def test_sshd_killed_mid_transfer_fails_loudly_and_spares_other_jobs(relay):
    victim = relay.running_job()
    bystander = EchoSession(relay, relay.running_job())

    # download: ssh must not end as if a short stream were the whole of it
    pull = subprocess.Popen(relay.ssh_argv(victim, f"head -c {TRANSFER} /dev/urandom"), env=relay.home.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received = 0
    while chunk := pull.stdout.read1(CHUNK):
        if received < KILL_AFTER <= received + len(chunk):
            kill_sshds(relay, victim)
        received += len(chunk)
    pull.wait(30)
    assert KILL_AFTER <= received < TRANSFER
    assert_failed_loudly(pull, victim)

    # upload, over a fresh negotiation
    push = subprocess.Popen(relay.ssh_argv(victim, "cat > upload"), env=relay.home.env, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    data = os.urandom(CHUNK)
    with contextlib.suppress(BrokenPipeError):
        for sent in range(0, TRANSFER, CHUNK):
            if sent == KILL_AFTER:
                kill_sshds(relay, victim)
            push.stdin.write(data)
        push.stdin.close()
    push.wait(30)
    assert_failed_loudly(push, victim)

    bystander.finish()


def test_sshd_killed_during_an_upload_reaches_ssh_as_the_relays_reason(relay):
    # Regression: the daemon closed its end with the upload unread, so ssh's next write
    # often failed with a broken pipe before it read the DISCONNECT.
    host = relay.running_job()
    data = os.urandom(CHUNK)
    for _ in range(15):
        push = subprocess.Popen(relay.ssh_argv(host, "cat > /dev/null"), env=relay.home.env, stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with contextlib.suppress(BrokenPipeError):
            for sent in range(0, TRANSFER, CHUNK):
                if sent == 8 * MIB:
                    kill_sshds(relay, host)
                push.stdin.write(data)
        with contextlib.suppress(BrokenPipeError):
            push.stdin.close()
        push.wait(30)
        assert_failed_loudly(push, host)


def test_daemon_killed_with_sigkill_restarts_over_its_stale_socket(relay):
    host = relay.running_job()
    assert relay.ssh(host, "true").returncode == 0
    second = relay.run([RELAYD, "run"], timeout=30)
    assert second.returncode == 1 and b"another relayd is already listening" in second.stderr, second.stderr
    relay.process.kill()
    relay.process.wait()
    assert relay.home.socket.exists() and not relay.accepting()
    # the upstream died with the daemon, so the job's slot is not held by a stray sshd
    assert wait_for(lambda: not sandbox.sshd_pids(relay.pool_dir, *job_id(host)))
    relay.start()
    assert relay.ssh(host, "true").returncode == 0
    assert relay.negotiations() == 2


@contextlib.contextmanager
def tiny_filesystem(path: Path, pages: int) -> Iterator[Path]:
    """A tmpfs of `pages` pages mounted at `path`."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * 4}k,mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(path: Path, leave_pages: int) -> None:
    """Write to `path` until the filesystem has only `leave_pages` pages left."""
    page = os.statvfs(path.parent).f_bsize
    with open(path, "wb", buffering=0) as filler:
        while os.statvfs(path.parent).f_bavail > leave_pages:
            filler.write(b"\0" * page)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_full_disk_stops_the_daemon_with_a_message_and_no_partial_key(home, pool, tmp_path):
    relay = RelayProcess(home, pool)
    relay.configure()
    with tiny_filesystem(tmp_path / "small", pages=2) as small:
        home.env["XDG_STATE_HOME"] = str(small)
        state = small / "condor-relay"
        fill(small / "filler", leave_pages=0)
        full = relay.run([RELAYD, "run"], timeout=30)
        assert full.returncode == 1, full.stderr
        assert b"relayd: cannot write the host key " in full.stderr and b"No space left on device" in full.stderr
        assert list(state.iterdir()) == []  # neither a truncated key nor a leftover temp file

        (small / "filler").unlink()
        fill(small / "filler", leave_pages=1)  # room for the key, none for known_hosts
        half = relay.run([RELAYD, "run"], timeout=30)
        assert half.returncode == 1 and b"No space left on device" in half.stderr, half.stderr
        assert sorted(p.name for p in state.iterdir()) == ["host_key"]
        key = (state / "host_key").read_bytes()

        (small / "filler").unlink()
        relay.start()
        try:
            assert (state / "host_key").read_bytes() == key  # the complete key was kept
            assert relay.ssh(relay.running_job(), "true").returncode == 0
        finally:
            relay.stop()
