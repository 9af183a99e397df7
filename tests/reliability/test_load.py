"""Load and integrity: many clients pushing and pulling through one job at once, and a
long run of sequential connections with the daemon's memory and descriptors measured.

`make test` runs 300 sequential connections (about 20 s on two cores);
CONDOR_RELAY_LOAD=full runs the 1000 that the README's figures come from."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import sys

import pytest
from harness import wait_for

CLIENTS = 50
MIB_PER_CLIENT = 20
SEQUENTIAL_CONNECTIONS = 1000 if os.environ.get("CONDOR_RELAY_LOAD") == "full" else 300
# What a run of sequential connections may add to the daemon's resident memory: some
# slack for Python's allocator, and far less per connection than one leaked connection
# (its SSH transport, keys and buffers) would hold. Descriptors may not grow at all.
RSS_SLACK_KIB = 1024
RSS_PER_CONNECTION_KIB = 1

# Runs in the job: echoes stdin to stdout and writes the sha256 of what it read to stderr.
ECHO_AND_HASH = (
    "import hashlib, sys\n"
    "digest = hashlib.sha256()\n"
    "while block := sys.stdin.buffer.read1(65536):\n"
    "    digest.update(block)\n"
    "    sys.stdout.buffer.write(block)\n"
    "sys.stdout.flush()\n"
    "sys.stderr.write(digest.hexdigest())\n"
)


async def push_and_pull(relay, host: str, client: int, block: bytes) -> tuple[str, str, str]:
    """Send MIB_PER_CLIENT MiB through the job and back; (sent, echoed, job-side) sha256."""
    ssh = await asyncio.create_subprocess_exec(
        *relay.ssh_argv(host, "python3 echo_and_hash.py"), env=relay.home.env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    sent, echoed = hashlib.sha256(), hashlib.sha256()

    async def push() -> None:
        for index in range(MIB_PER_CLIENT):
            chunk = struct.pack(">II", client, index) + block[8:]  # no two clients send the same stream
            sent.update(chunk)
            ssh.stdin.write(chunk)
            await ssh.stdin.drain()
        ssh.stdin.close()

    async def pull() -> None:
        while data := await ssh.stdout.read(1 << 16):
            echoed.update(data)

    _, _, job_side = await asyncio.gather(push(), pull(), ssh.stderr.read())
    assert await ssh.wait() == 0, job_side
    return sent.hexdigest(), echoed.hexdigest(), job_side.decode()


@pytest.mark.load
def test_concurrent_clients_push_and_pull_through_one_job_intact(relay):
    host = relay.running_job()
    assert relay.ssh(host, "cat > echo_and_hash.py", input=ECHO_AND_HASH.encode()).returncode == 0
    block = os.urandom(1 << 20)

    async def all_clients() -> list[tuple[str, str, str]]:
        return await asyncio.gather(*(push_and_pull(relay, host, i, block) for i in range(CLIENTS)))

    results = asyncio.run(all_clients())
    for sent, echoed, job_side in results:
        assert sent == job_side == echoed
    assert len({sent for sent, _, _ in results}) == CLIENTS
    # sshd takes 10 sessions per connection: 50 at once need at least 5 upstream connections
    assert relay.negotiations() >= CLIENTS // 10
    sys.stderr.write(f"load: {CLIENTS} clients x {MIB_PER_CLIENT} MiB each way, {relay.negotiations()} "
                     f"negotiations, daemon RSS {relay.rss_kib()} KiB, fds {relay.open_fds()}\n")


@pytest.mark.load
def test_sequential_connections_leak_neither_memory_nor_descriptors(relay):
    host = relay.running_job()
    warm_up = 50  # the first connections fill caches and pools that then stay
    for _ in range(warm_up):
        assert relay.ssh(host, "true").returncode == 0
    rss_before, fds_before = relay.rss_kib(), relay.open_fds()
    for _ in range(SEQUENTIAL_CONNECTIONS):
        done = relay.ssh(host, "true")
        assert done.returncode == 0, done.stderr
    # ssh can exit a moment before the daemon sees its socket close
    wait_for(lambda: relay.open_fds() <= fds_before, timeout=5)
    rss_after, fds_after = relay.rss_kib(), relay.open_fds()
    sys.stderr.write(f"load: {SEQUENTIAL_CONNECTIONS} connections: RSS {rss_before} -> {rss_after} KiB, "
                     f"fds {fds_before} -> {fds_after}\n")
    assert fds_after <= fds_before
    assert rss_after - rss_before <= RSS_SLACK_KIB + RSS_PER_CONNECTION_KIB * SEQUENTIAL_CONNECTIONS
    assert relay.negotiations() == 1  # one upstream served them all
